"""The ``score`` run: every example's assistant-token loss under one model.

    load sources -> load model -> tokenise (templates) -> one scoring pass (passes) -> tables (folder)

On sources of preference pairs it is the pair score run (:mod:`curation.runs.pair_score`); sources that
mix pairs and SFT examples are refused with one line.

The run folder is described in :mod:`curation.runs.folder`; the pass commits chunks into the score
cache, so a killed run loses at most one chunk and re-running the same command finishes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from curation.config import option
from curation.progress import Progress, Reporter
from curation.runs.steps import RunConfig


@dataclass(kw_only=True)
class ScoreConfig(RunConfig):
    """Settings of a scoring run (the CLI, the job store and the Score page build this)."""

    compile: bool = option(False, "torch.compile the decoder (a one-off compilation first; see the README's "
                                  "benchmark for whether it pays on your machine)", result=False)


def run_score(cfg: ScoreConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a scoring run and return its output folder.

    ``progress`` receives ``phase, done, total, tokens, tokens_per_s, eta_s`` (:mod:`curation.progress`).
    """
    from curation.runs.steps import claim, data_kind, load_inputs, tokenise, write_tables
    from curation.scoring.engine import open_engine
    from curation.scoring.passes import PassSettings, score_pass

    if data_kind(cfg) == "pairs":
        from curation.runs.pair_score import run_pair_score

        return run_pair_score(cfg, progress)
    t0 = time.time()
    report = Reporter(progress)
    data, lm, template, max_length = load_inputs(cfg, report, "sft")
    settings = PassSettings.of(cfg, lm, template, max_length, compile=cfg.compile)
    run, meta = claim("score", cfg, data, lm, template, settings)
    examples, encoded, rejected, table = tokenise(run, data, lm.tokenizer, template, max_length, report)
    ids = [e.example_id for e in examples]
    t_loaded = time.time()

    with open_engine(cfg) as settings.engine:
        rows = score_pass(lm.source(), lm.fingerprint, ids, encoded, settings, report, "scoring", embed=True)

    report(phase="writing tables", done=len(examples), total=len(examples))
    write_tables(run, table, encoded, rows, rejected)
    run.write_embeddings(ids, rows)
    meta["timings_s"] = {"load": round(t_loaded - t0, 2), "score": round(time.time() - t_loaded, 2),
                         "total": round(time.time() - t0, 2)}
    run.finish(meta)
    report(phase="done", done=len(examples), total=len(examples))
    return run.path

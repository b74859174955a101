"""The ``score`` run: every example's assistant-token loss under one model.

    load sources -> load model -> tokenise (templates) -> one scoring pass (passes) -> tables (runs)

The run folder is described in :mod:`curation.runs`; the pass commits chunks into the score
cache, so a killed run loses at most one chunk and re-running the same command finishes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from curation.config import RunConfig, option

Progress = Callable[[dict], None]


@dataclass(kw_only=True)
class ScoreConfig(RunConfig):
    """Settings of a scoring run (the CLI, the job store and the Score page build this)."""

    compile: bool = option(False, "torch.compile the decoder (a one-off compilation first; see the README's "
                                  "benchmark for whether it pays on your machine)", result=False)


def run_score(cfg: ScoreConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a scoring run and return its output folder.

    ``progress`` receives dicts with ``phase, done, total, tokens, tokens_per_s, eta_s``.
    """
    from curation.engine import open_engine
    from curation.passes import PassSettings, Reporter, ScoreCache, score_pass
    from curation.runs import claim, load_inputs, tokenise, write_tables

    t0 = time.time()
    report = Reporter(progress)
    data, lm, template, max_length = load_inputs(cfg, report)
    settings = PassSettings(ScoreCache(cfg.cache), template.fingerprint, max_length, lm.dtype, lm.device,
                            cfg.batch_tokens, cfg.chunk_examples, cfg.compile)
    run, meta = claim("score", cfg, data, lm, template, settings)
    examples, encoded, rejected, table = tokenise(run, data, lm.tokenizer, template, max_length, report)
    t_loaded = time.time()

    with open_engine(cfg) as settings.engine:
        rows = score_pass(lm.source(), lm.fingerprint, [e.example_id for e in examples], encoded, settings, report,
                          "scoring")

    report(phase="writing tables", done=len(examples), total=len(examples))
    write_tables(run, table, encoded, rows, rejected)
    meta["timings_s"] = {"load": round(t_loaded - t0, 2), "score": round(time.time() - t_loaded, 2),
                         "total": round(time.time() - t0, 2)}
    run.finish(meta)
    report(phase="done", done=len(examples), total=len(examples))
    return run.path

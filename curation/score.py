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
                          "scoring", embed=True)

    report(phase="writing tables", done=len(examples), total=len(examples))
    write_tables(run, table, encoded, rows, rejected)
    run.write_embeddings([e.example_id for e in examples], rows)
    meta["timings_s"] = {"load": round(t_loaded - t0, 2), "score": round(time.time() - t_loaded, 2),
                         "total": round(time.time() - t0, 2)}
    run.finish(meta)
    report(phase="done", done=len(examples), total=len(examples))
    return run.path


def run_embed(run_dir: str | Path, progress: Progress | None = None) -> Path:
    """Add ``embeddings.npy`` to a finished run scored before the scoring pass kept embeddings.

    The run's base pass runs again through the score cache with its own settings (model, template,
    max length, dtype, device: the same cache key), so examples whose cached row already has an
    embedding are not recomputed, and the run's losses are not touched."""
    from dataclasses import fields

    from curation.passes import PassSettings, Reporter, ScoreCache, score_pass
    from curation.runs import Run, RunError, encode_examples, load_inputs

    report = Reporter(progress)
    run = Run(run_dir)
    meta = run.require_finished()
    if not (run.path / Run.EXAMPLES).is_file() or "base_pass" not in meta:
        raise RunError(f"{run.path} was scored by the previous version (no examples.parquet); score it again "
                       "into a new --out to get embeddings")
    names = {f.name for f in fields(RunConfig) if f.init}
    saved = {k: v for k, v in meta["config"].items() if k in names}
    cfg = RunConfig(**{**saved, "engine": "local", "ray_address": None, "workers": None, "gpus_per_worker": 0.0,
                       "max_length": meta["max_length"], "cache": meta["base_pass"]["cache"]})
    data, lm, template, max_length = load_inputs(cfg, report)
    settings = PassSettings(ScoreCache(cfg.cache), template.fingerprint, max_length, lm.dtype, lm.device,
                            cfg.batch_tokens, cfg.chunk_examples)
    if settings.key(lm.fingerprint) != meta["base_pass"]["key"]:
        raise RunError(f"{run.path}: the model, template, dtype or device differ from the run's (another cache "
                       "key), so its losses cannot be reused; run embed where the run was scored, with the same model")
    want = run.scores()["example_id"].astype(str).tolist()
    report(phase="tokenising", done=0, total=len(data.examples))
    examples, encs, _ = encode_examples(data, lm.tokenizer, template, max_length)
    encoded = {ex.example_id: enc for ex, enc in zip(examples, encs)}
    missing = [i for i in want if i not in encoded]
    if missing:
        raise RunError(f"{len(missing)} example(s) of the run (e.g. {missing[0]}) are no longer in its sources; "
                       "score the current files into a new --out")
    rows = score_pass(lm.source(), lm.fingerprint, want, [encoded[i] for i in want], settings, report,
                      "embedding", embed=True)
    run.write_embeddings(want, rows)
    report(phase="done", done=len(want), total=len(want))
    return run.path

"""The ``score`` run: load data, score it in committed chunks, write the score tables.

Output folder::

    scores.parquet        one row per accepted example (see SCORE_COLUMNS)
    token_losses.parquet  per-token losses and token ids of assistant tokens (for the inspector)
    rejected.jsonl        every input record that was not scored, with source, place and reason
    run.json              provenance: config, model fingerprint, template, data fingerprints, timings
    parts/                chunks committed so far (a rerun with the same config skips them)

Work is committed in chunks of ``chunk_examples`` examples, each written atomically, so a killed
run loses at most one chunk and a rerun of the same command finishes it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from curation import __version__
from curation.atomic import write_json, write_parquet
from curation.load import RecordError, Rejected, SourceSpec, load_sources, parse_source_arg

SCORE_COLUMNS = [
    "example_id", "source", "source_index", "domain", "n_prompt_tokens", "n_response_tokens",
    "n_tokens_full", "truncated", "scored", "loss", "loss_sum",
]


class RunMismatch(RuntimeError):
    """The output folder holds a run with other settings; runs never mix silently."""


@dataclass
class ScoreConfig:
    """Settings of a scoring run (the CLI, the jobs and the dashboard all build this)."""

    sources: list[str]  # "[DOMAIN=]PATH" entries
    out: str  # output folder
    model: str = "default"  # "default", a model folder, a .gguf file or a hub id
    max_length: int = 2048  # tokens; longer examples are cut at the end and flagged
    batch_tokens: int = 1024  # padded tokens per forward pass (batch x longest)
    limit: int | None = None  # first N records of each source
    template: str = "auto"  # auto | chat | alpaca | path to a Jinja file
    device: str | None = None  # auto: cuda if available, else cpu
    dtype: str | None = None  # auto: bfloat16 on cuda, float32 on cpu
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> column name
    format: str | None = None  # force a record shape (see curation.load.FORMATS)
    chunk_examples: int = 256  # examples per committed chunk (the most a kill can lose)
    compile: bool = False  # torch.compile the decoder: ~1 min compile, no faster on 2 CPU cores

    def __post_init__(self):
        if not self.sources:
            raise ValueError("give at least one source: [DOMAIN=]PATH")
        for name in ("max_length", "batch_tokens", "chunk_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")

    def source_specs(self) -> list[SourceSpec]:
        return [parse_source_arg(s, columns=self.columns, format=self.format) for s in self.sources]

    def result_key(self) -> dict:
        """The settings that change results (not batch size, chunking or output place)."""
        d = asdict(self)
        for k in ("out", "batch_tokens", "chunk_examples", "compile"):
            d.pop(k)
        return d


Progress = Callable[[dict], None]


def run_score(cfg: ScoreConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a scoring run and return its output folder.

    ``progress`` receives dicts with ``phase, done, total, tokens, tokens_per_s, eta_s``.
    """
    from curation.models import load_model
    from curation.scorer import check_head_path
    from curation.templates import resolve_template

    out = Path(cfg.out)
    t0 = time.time()
    report = _reporter(progress)
    report(phase="loading data")
    data = load_sources(cfg.source_specs(), limit=cfg.limit)
    report(phase="loading model")
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    check_head_path(lm.model)
    template = resolve_template(lm.tokenizer, cfg.template)
    t_loaded = time.time()

    run = {
        "kind": "score",
        "code_version": __version__,
        "config": asdict(cfg),
        "model": lm.describe(),
        "template": {"name": template.name, "fingerprint": template.fingerprint},
        "max_length": cfg.max_length,
        "sources": [asdict(s) for s in data.sources],
        "n_examples": len(data.examples),
        "n_rejected_on_load": len(data.rejected),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }
    key = _run_key(run)
    run["run_key"] = key
    _claim_folder(out, key)

    chunks = [data.examples[i : i + cfg.chunk_examples]
              for i in range(0, len(data.examples), cfg.chunk_examples)]
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    todo = [k for k in range(len(chunks)) if not (parts / f"scores-{k:05d}.parquet").is_file()]
    done_examples = sum(len(chunks[k]) for k in range(len(chunks)) if k not in set(todo))
    report(phase="scoring", done=done_examples, total=len(data.examples))
    stats = {"tokens": 0, "t": time.time()}
    for k in todo:
        _score_chunk(lm, template, cfg, chunks[k], parts, k, report, stats, done_examples)
        done_examples += len(chunks[k])
        # A commit is a milestone: the job store records it at once (not throttled), so the
        # status of a job killed right after it counts the chunk that resume will keep.
        report(done=done_examples, committed=k)
    report(phase="writing tables", done=done_examples, total=len(data.examples))
    _merge(out, len(chunks), data.rejected)
    run["timings_s"] = {
        "load": round(t_loaded - t0, 2), "score": round(time.time() - t_loaded, 2),
        "total": round(time.time() - t0, 2),
    }
    run["tokens_scored_this_session"] = stats["tokens"]
    run["finished"] = True
    write_json(out / "run.json", run)
    report(phase="done", done=done_examples, total=len(data.examples))
    return out


def read_scores(run_dir: str | Path):
    """Read a run's score table as a pandas DataFrame."""
    import pandas as pd

    return pd.read_parquet(Path(run_dir) / "scores.parquet")


def read_run(run_dir: str | Path) -> dict:
    """Read a run's provenance (``run.json``)."""
    return json.loads((Path(run_dir) / "run.json").read_text())


# ----------------------------------------------------------------------------------------------


def _reporter(progress: Progress | None):
    state: dict = {}

    def report(**kw):
        state.update(kw)
        if progress is not None:
            progress(dict(state))

    return report


def _run_key(run: dict) -> str:
    """Hash of everything that determines the results: settings, model weights, template, data."""
    ident = {
        "config": {k: v for k, v in run["config"].items()
                   if k not in ("out", "batch_tokens", "chunk_examples", "compile")},
        "chunk_examples": run["config"]["chunk_examples"],  # chunk boundaries must match to reuse parts
        "model": run["model"]["fingerprint"], "dtype": run["model"]["dtype"],
        "template": run["template"]["fingerprint"],
        "data": [(s["source"], s["fingerprint"], s["n_records"]) for s in run["sources"]],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _claim_folder(out: Path, key: str) -> None:
    """Mark ``out`` as this run's folder, or refuse if it holds a different run."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "run.json"
    if marker.is_file():
        existing = json.loads(marker.read_text()).get("run_key")
        if existing != key:
            raise RunMismatch(
                f"{out} holds another run (key {existing}, this one {key}): different data, model "
                "or settings. Use a new --out folder or delete that one."
            )
        return
    write_json(marker, {"run_key": key, "finished": False})


def _score_chunk(lm, template, cfg: ScoreConfig, examples, parts: Path, k: int, report, stats, done0):
    """Encode and score one chunk; write its part files atomically."""
    import pyarrow as pa

    from curation.scorer import score_examples
    from curation.templates import encode_many

    encoded = encode_many(lm.tokenizer, template, [e.messages for e in examples], cfg.max_length)
    ok = [i for i, e in enumerate(encoded) if not isinstance(e, RecordError)]
    rejected = [asdict(Rejected(examples[i].source, examples[i].source_index, None, str(encoded[i]),
                                examples[i].example_id))
                for i, e in enumerate(encoded) if isinstance(e, RecordError)]
    done = [0]

    def on_batch(n_ex, n_tok):
        done[0] += n_ex
        stats["tokens"] += n_tok
        elapsed = max(time.time() - stats["t"], 1e-9)
        tps = stats["tokens"] / elapsed
        report(done=done0 + done[0], tokens=stats["tokens"], tokens_per_s=tps, chunk=k)

    losses = score_examples(lm.model, [encoded[i] for i in ok], cfg.batch_tokens, on_batch=on_batch,
                            compile=cfg.compile)
    rows = []
    tok_rows = {"example_id": [], "positions": [], "token_ids": [], "token_losses": []}
    for i, res in zip(ok, losses):
        ex, enc = examples[i], encoded[i]
        scored = res.n_tokens > 0
        rows.append({
            "example_id": ex.example_id, "source": ex.source, "source_index": ex.source_index,
            "domain": ex.domain, "n_prompt_tokens": enc.n_prompt_tokens,
            "n_response_tokens": enc.n_response_tokens, "n_tokens_full": enc.n_tokens_full,
            "truncated": enc.truncated, "scored": scored,
            "loss": res.loss, "loss_sum": res.loss_sum if scored else None,
        })
        tok_rows["example_id"].append(ex.example_id)
        tok_rows["positions"].append(res.positions)
        tok_rows["token_ids"].append(enc.input_ids[res.positions])
        tok_rows["token_losses"].append(res.token_losses.astype(np.float16))
    write_parquet(parts / f"tokens-{k:05d}.parquet", _token_table(tok_rows))
    (parts / f"rejected-{k:05d}.json").write_text(json.dumps(rejected))
    # The scores part is written last: its presence marks the chunk as committed.
    write_parquet(parts / f"scores-{k:05d}.parquet", pa.Table.from_pylist(rows, schema=_score_schema()))


def _score_schema():
    import pyarrow as pa

    return pa.schema([
        ("example_id", pa.string()), ("source", pa.string()), ("source_index", pa.int64()),
        ("domain", pa.string()), ("n_prompt_tokens", pa.int32()), ("n_response_tokens", pa.int32()),
        ("n_tokens_full", pa.int32()), ("truncated", pa.bool_()), ("scored", pa.bool_()),
        ("loss", pa.float64()), ("loss_sum", pa.float64()),
    ])


def _token_table(cols: dict):
    import pyarrow as pa

    return pa.table({
        "example_id": pa.array(cols["example_id"], pa.string()),
        "positions": pa.array([p.tolist() for p in cols["positions"]], pa.list_(pa.int32())),
        "token_ids": pa.array([t.tolist() for t in cols["token_ids"]], pa.list_(pa.int32())),
        "token_losses": pa.array([x.tolist() for x in cols["token_losses"]], pa.list_(pa.float16())),
    })


def _merge(out: Path, n_chunks: int, load_rejected: list[Rejected]) -> None:
    """Concatenate the committed parts into the final tables (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = out / "parts"
    scores = pa.concat_tables([pq.read_table(parts / f"scores-{k:05d}.parquet") for k in range(n_chunks)]) \
        if n_chunks else _score_schema().empty_table()
    tokens = pa.concat_tables([pq.read_table(parts / f"tokens-{k:05d}.parquet") for k in range(n_chunks)]) \
        if n_chunks else _token_table({"example_id": [], "positions": [], "token_ids": [], "token_losses": []})
    write_parquet(out / "scores.parquet", scores)
    write_parquet(out / "token_losses.parquet", tokens)
    rejected = [asdict(r) for r in load_rejected]
    for k in range(n_chunks):
        rejected += json.loads((parts / f"rejected-{k:05d}.json").read_text())
    from curation.atomic import atomic_path

    with atomic_path(out / "rejected.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))

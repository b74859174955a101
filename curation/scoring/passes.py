"""Scoring passes: one model over many examples, committed chunk by chunk into the score cache.

This is the one commit-and-resume mechanism of every scoring pass (the ``score`` run, each
checkpoint and the IFD pass of a ``learn`` run).  A pass looks up which examples the cache already
holds under its key, scores the rest in chunks of ``chunk_examples`` with
:func:`curation.scoring.losses.score_examples`, and commits each chunk as one atomically written Parquet
part.  A killed pass loses at most the chunk in progress; re-running it scores only what is missing.
On Ray a chunk is also at most the pass's share of one worker, so a pass smaller than
``chunk_examples`` x workers still runs on every worker.

The cache key is everything that determines an example's losses except the example itself::

    weights fingerprint, variant (full | response_only), template fingerprint, max length, dtype, device

so a run on a pool that grew by a few rows scores only the new rows, and two runs over the same
examples with the same model share their work.  Parts are never modified after they are written,
so concurrent or interrupted passes cannot corrupt the cache.

A pass over preference pairs is the same pass with ``groups``: each response is a row under its
SFT example id (:meth:`curation.data.pairs.Pair.sft_id`), a pair's rows still to score form one
batch of the scorer (its prompt runs once), a chunk never splits a pair, and progress counts pairs.
So a resumed pair pass, Ray and an SFT run over the same conversations share rows.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from curation.atomic import write_json, write_parquet
from curation.progress import Progress

# A row of the cache: the example's summed loss, target count, per-token losses, and its three
# embeddings as float16 bytes (curation.scoring.losses): ``embedding``, the mean final hidden state
# over the targets (null without targets), ``rds``, the position-weighted mean over every token, and
# ``prompt_rds``, the same over the tokens before the final assistant turn (a pair's prompt);
# parts written before a column was kept lack it, and a pass that needs it scores those rows again.
CACHE_COLUMNS = ("example_id", "loss_sum", "n_tokens", "positions", "token_losses", "embedding", "rds", "prompt_rds")
EMBEDDINGS = ("embedding", "rds")  # what ``embed=True`` asks of every row (an SFT run's map and targets)


def default_cache_dir() -> Path:
    """``$CURATION_SCORE_CACHE``, else ``<model cache>/score-cache`` (``$CURATION_CACHE`` or the
    project's ``.cache``)."""
    import os

    from curation.scoring.models import cache_dir

    env = os.environ.get("CURATION_SCORE_CACHE")
    return Path(env) if env else cache_dir() / "score-cache"


def cache_schema():
    import pyarrow as pa

    return pa.schema([("example_id", pa.string()), ("loss_sum", pa.float64()), ("n_tokens", pa.int32()),
                      ("positions", pa.list_(pa.int32())), ("token_losses", pa.list_(pa.float32())),
                      ("embedding", pa.binary()), ("rds", pa.binary()), ("prompt_rds", pa.binary())])


class ScoreCache:
    """Per-example scoring results, one folder per key, each holding immutable Parquet parts."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    @staticmethod
    def key(**parts) -> str:
        """The folder name of a pass: a hash of its settings (see the module docstring)."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def load(self, key: str, wanted: set[str] | None = None, columns: Sequence[str] | None = None) -> dict[str, dict]:
        """``{example_id: row}`` of the cached rows of ``key`` (only ``wanted`` ids if given)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        folder = self.root / key
        out: dict[str, dict] = {}
        if not folder.is_dir():
            return out
        cols = None if columns is None else sorted(set(columns) | {"example_id"})
        for part in sorted(folder.glob("part-*.parquet")):
            t = pq.read_table(part, columns=cols)
            if wanted is not None:
                t = t.filter(pc.is_in(t["example_id"], value_set=_string_array(wanted)))
            for row in t.to_pylist():
                out[row["example_id"]] = row
        return out

    def put(self, key: str, rows: list[dict], meta: dict | None = None) -> None:
        """Commit ``rows`` as one new part (written atomically)."""
        import pyarrow as pa

        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        if meta is not None and not (folder / "key.json").is_file():
            write_json(folder / "key.json", meta)
        write_parquet(folder / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet",
                      pa.Table.from_pylist(rows, schema=cache_schema()))


@dataclass
class PassSettings:
    """What a pass needs besides the model: where and how to commit, and how to batch."""

    cache: ScoreCache
    template: str  # template fingerprint
    max_length: int
    dtype: str
    device: str  # "cpu" or "cuda" (the kind, not the index: results do not depend on it)
    batch_tokens: int  # padded tokens per forward pass
    chunk_examples: int  # examples per committed chunk
    compile: bool = False
    engine: object = None  # curation.scoring.engine's RayEngine: chunks go to its workers (None: this process)

    @classmethod
    def of(cls, cfg, lm, template, max_length: int, compile: bool = False) -> "PassSettings":
        """The settings of a run's passes: ``cfg`` (a :class:`curation.config.ComputeConfig`) for the
        cache and batching, the loaded model ``lm`` for the dtype and device, the run's template
        and max length."""
        return cls(ScoreCache(cfg.cache), template.fingerprint, max_length, lm.dtype, lm.device,
                   cfg.batch_tokens, cfg.chunk_examples, compile)

    def key(self, fingerprint: str, variant: str = "full") -> str:
        return self.cache.key(model=fingerprint, variant=variant, template=self.template,
                              max_length=self.max_length, dtype=self.dtype, device=self.device.split(":")[0])


def score_pass(model, fingerprint: str, ids: list[str], encoded: Sequence, settings: PassSettings,
               report: Progress, phase: str, variant: str = "full", embed: bool | tuple[str, ...] = False,
               groups: list[list[int]] | None = None, unit: str = "examples") -> dict[str, dict]:
    """Score ``encoded`` (ids in the same order) with ``model``, reusing and filling the cache.

    ``model`` is a :class:`curation.scoring.models.ModelSource`: it is loaded only if some example is not
    in the cache yet (a finished pass needs no model at all), here or, with a Ray engine, by each
    worker.  Returns ``{example_id: row}`` with ``loss_sum, n_tokens, positions, token_losses`` for
    every example.  ``report(**progress)`` gets ``phase, done, total, unit, tokens, tokens_per_s,
    eta_s, cached`` and, after each commit, ``committed`` (chunks committed in this pass) and, on Ray,
    ``workers`` (how many are alive).  Rows also carry their embeddings (:func:`embedding_of`); a
    cached row without one that ``embed`` names (True: :data:`EMBEDDINGS`), written before it was
    kept, is scored again to get it.

    ``groups`` (indices into ``ids``, e.g. a pair's two responses) are the units of the pass: the
    rows of a group still to score run as one batch of the scorer, a chunk never splits a group,
    and ``done``/``total`` count groups (named ``unit``).  An id in several groups is scored once.
    """
    key = settings.key(fingerprint, variant)
    kinds = EMBEDDINGS if embed is True else tuple(embed or ())
    have = settings.cache.load(key, set(ids))
    units = [[j] for j in range(len(ids))] if groups is None else groups
    todo, claimed = [], set()
    for g in units:  # per unit, its rows still to score (each id once)
        rest = [j for j in g if ids[j] not in claimed and (ids[j] not in have or needs_embedding(have[ids[j]], kinds))]
        claimed.update(ids[j] for j in rest)
        if rest:
            todo.append(rest)
    total, done = len(units), len(units) - len(todo)
    report(phase=phase, done=done, total=total, unit=unit, tokens=0, tokens_per_s=None, eta_s=None, cached=done)
    if not todo:
        return have
    meta = {"model": fingerprint, "variant": variant, "template": settings.template,
            "max_length": settings.max_length, "dtype": settings.dtype, "device": settings.device}
    workers = 1 if settings.engine is None else settings.engine.workers
    chunks = chunk_groups(todo, chunk_size(sum(map(len, todo)), settings.chunk_examples, workers, max(map(len, todo))))
    t0, tokens, n_todo_tokens = time.time(), 0, sum(len(encoded[j].input_ids) for g in todo for j in g)

    def tick(n_units: int, n_tok: int, **extra) -> None:
        nonlocal done, tokens
        done += n_units
        tokens += n_tok
        tps = tokens / max(time.time() - t0, 1e-9)
        report(done=done, tokens=tokens, tokens_per_s=tps, eta_s=(n_todo_tokens - tokens) / max(tps, 1e-9), **extra)

    def commit(rows: list[dict]) -> None:
        settings.cache.put(key, rows, meta)
        have.update({r["example_id"]: r for r in rows})

    # A chunk: its rows and, for groups, the scorer's plan (one batch per group, indices into the chunk).
    work = [([j for g in chunk for j in g], None if groups is None else local_plan(chunk)) for chunk in chunks]
    if settings.engine is not None:
        settings.engine.score_chunks(model, [(n, [ids[j] for j in rows], [encoded[j] for j in rows], plan)
                                             for n, (rows, plan) in enumerate(work, start=1)],
                                     settings.batch_tokens, commit, tick)
        return have
    from curation.scoring.losses import score_examples

    m = model.load()
    for n, (rows, plan) in enumerate(work, start=1):
        res = score_examples(m, [encoded[j] for j in rows], settings.batch_tokens, compile=settings.compile, plan=plan,
                             on_batch=tick if plan is None else lambda _, n_tok: tick(1, n_tok))
        commit(cache_rows([ids[j] for j in rows], res))
        # A commit is a milestone: the job store records it at once (not throttled), so the
        # status of a job killed right after it counts the chunk that resume will keep.
        report(done=done, committed=n)
    return have


def chunk_size(n_rows: int, chunk_examples: int, workers: int = 1, group: int = 1) -> int:
    """Rows per chunk: ``chunk_examples``, or less so that each of ``workers`` gets a chunk (a
    150-example eval pass on 2 Ray workers is 2 chunks of 75, not one chunk on one worker).
    ``group``: the largest group's rows (a chunk holds whole groups, so a share is rounded up to them)."""
    return max(1, min(chunk_examples, -(-n_rows // max(1, workers)) + group - 1))


def chunk_groups(groups: list[list[int]], size: int) -> list[list[list[int]]]:
    """Consecutive groups packed into chunks of at most ``size`` rows; a group is never split (one
    larger than ``size`` is a chunk of its own)."""
    chunks, cur, n = [], [], 0
    for g in groups:
        if cur and n + len(g) > size:
            chunks.append(cur)
            cur, n = [], 0
        cur.append(g)
        n += len(g)
    if cur:
        chunks.append(cur)
    return chunks


def local_plan(chunk: list[list[int]]) -> list[list[int]]:
    """A chunk's groups as a plan of the scorer: each group's positions in the chunk's rows."""
    out, k = [], 0
    for g in chunk:
        out.append(list(range(k, k + len(g))))
        k += len(g)
    return out


def cache_rows(ids: list[str], results) -> list[dict]:
    """Score-cache rows of ``results`` (:class:`curation.scoring.losses.ExampleLoss`, in the order of ``ids``)."""
    import numpy as np

    return [{"example_id": i, "loss_sum": r.loss_sum, "n_tokens": r.n_tokens,
             "positions": r.positions.tolist(), "token_losses": r.token_losses.tolist(),
             "embedding": None if r.embedding is None else np.asarray(r.embedding, dtype=np.float16).tobytes(),
             "rds": None if r.rds is None else np.asarray(r.rds, dtype=np.float16).tobytes(),
             "prompt_rds": None if r.prompt_rds is None else np.asarray(r.prompt_rds, dtype=np.float16).tobytes()}
            for i, r in zip(ids, results)]


def needs_embedding(row: dict, kinds: tuple[str, ...] = EMBEDDINGS) -> bool:
    """A cached row without one of the embeddings ``kinds`` (written before it was kept); a row
    without target tokens has no ``embedding`` and needs none."""
    return any(row.get(k) is None and (k != "embedding" or bool(row.get("n_tokens"))) for k in kinds)


def embedding_of(row: dict, kind: str = "embedding"):
    """A cache row's float16 embedding vector (``kind``: ``embedding``, ``rds`` or ``prompt_rds``),
    or None (no target token, or a row written before that embedding was kept)."""
    import numpy as np

    b = row.get(kind)
    return None if b is None else np.frombuffer(b, dtype=np.float16)


def _string_array(values):
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())

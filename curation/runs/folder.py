"""The run folder: what a ``score`` or ``learn`` run writes, and the one place that reads it.

Layout (``LAYOUT = 2``)::

    run.json              provenance: kind, config, model + weights fingerprint, template, max length,
                          sources (path, absolute path, format, fingerprint), timings; written at the
                          start with ``finished: false`` and the run key, rewritten when finished
    examples.parquet      the pool as tokenised (EXAMPLE_COLUMNS), written before scoring starts
    scores.parquet        one row per example: SCORE_COLUMNS (+ a learn run's score columns)
    token_losses.parquet  per example: positions, token ids and float16 losses of its assistant tokens
    rejected.jsonl        every record not scored, with source, index, line and reason
    stability.json        a learn run's rank agreement between reference runs (--stability-runs)
    embeddings.npy        float16 (examples x hidden): each example's mean final hidden state over its
                          assistant tokens (NaN row: none), row i <-> example_id i of the ids table
    rds_embeddings.npy    float16, the same rows: RDS+'s position-weighted mean over every token (unit norm)
    embeddings_ids.parquet  the example ids of both matrices' rows

A pair run (run.json ``"data": "pairs"``, :mod:`curation.runs.pair_tables`) holds one row per
preference pair in examples.parquet and scores.parquet, one per response in token_losses.parquet,
and one embedding per pair, its prompt's (RDS+ pooling: ``embeddings.npy``, which both kinds of
:meth:`Run.embeddings` read; no ``rds_embeddings.npy``), with the pair ids as ``embeddings_ids``.
    near_dups-t*.parquet  near-duplicate groups per threshold (curation.selection.neardup), on demand
    train/, folds/,       a learn run's reference trainings (curation.runs.training)
    stability/

Scoring passes commit into the score cache (curation.scoring.passes), not into the run folder; while a
run is scoring, :meth:`Run.scores` joins ``examples.parquet`` with the committed cache rows of
the run's base pass, so the dashboard shows scores as they arrive.  A folder written by an earlier
layout is refused with one line that says to score the data again into a new folder.

A pair run (run.json ``"data": "pairs"``) holds preference pairs instead: one row per pair in
examples.parquet, scores.parquet and the embeddings (keyed by ``pair_id``; the prompt's embedding),
one row per response in token_losses.parquet (keyed by the response's SFT id, with ``pair_id`` and
``side``).  :meth:`Run.scores` adds the generic ``example_id`` and ``n_response_tokens``
(:func:`curation.runs.pair_tables.with_generic_columns`), :meth:`Run.texts` gives prompts, :func:`read_pairs` re-reads pairs checked
against their ids.

A run folder belongs to one run: :meth:`Run.claim` refuses a folder whose run key (a hash of
everything that determines the results) differs, so two runs never mix.  :func:`claim_folder` is
that rule for any keyed folder (a validation's or a mix study's folder claims with it too).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from curation.atomic import atomic_path, write_json, write_parquet, write_text
from curation.runs.pair_tables import pair_score_table, with_generic_columns

LAYOUT = 2
EXAMPLE_COLUMNS = ["example_id", "source", "source_index", "domain", "n_prompt_tokens", "n_response_tokens",
                   "n_tokens_full", "truncated"]
SCORE_COLUMNS = EXAMPLE_COLUMNS + ["scored", "loss", "loss_sum"]
PAIRS = "pairs"  # run.json's ``data`` of a run over preference pairs


class RunError(ValueError):
    """A folder that is not a usable run (missing, unfinished, unreadable); the message says why."""


class RunMismatch(RunError):
    """The output folder holds a run with other settings; runs never mix silently."""


class SourceChanged(RunError):
    """A source record no longer matches the example the run scored."""


# ----------------------------------------------------------------------------------------------
# Schemas and table builders


def example_schema():
    import pyarrow as pa

    return pa.schema([
        ("example_id", pa.string()), ("source", pa.string()), ("source_index", pa.int64()),
        ("domain", pa.string()), ("n_prompt_tokens", pa.int32()), ("n_response_tokens", pa.int32()),
        ("n_tokens_full", pa.int32()), ("truncated", pa.bool_()),
    ])


def score_schema():
    import pyarrow as pa

    return pa.schema(list(example_schema()) + [("scored", pa.bool_()), ("loss", pa.float64()),
                                                ("loss_sum", pa.float64())])


def example_table(examples, encoded):
    """The pool as tokenised: one row per example (EXAMPLE_COLUMNS)."""
    import pyarrow as pa

    return pa.table({
        "example_id": [e.example_id for e in examples], "source": [e.source for e in examples],
        "source_index": [e.source_index for e in examples], "domain": [e.domain for e in examples],
        "n_prompt_tokens": [x.n_prompt_tokens for x in encoded],
        "n_response_tokens": [x.n_response_tokens for x in encoded],
        "n_tokens_full": [x.n_tokens_full for x in encoded], "truncated": [x.truncated for x in encoded],
    }, schema=example_schema())


def score_table(examples, rows: dict[str, dict]):
    """SCORE_COLUMNS for the examples that have a pass row (``loss`` = loss_sum / n_tokens; null
    when the example kept no assistant token), in the order of ``examples`` (an example table)."""
    import pyarrow as pa

    ids = examples.column("example_id").to_pylist()
    keep = [i for i, e in enumerate(ids) if e in rows]
    t = examples.take(pa.array(keep, pa.int64())) if len(keep) != len(ids) else examples
    n = np.array([rows[ids[i]]["n_tokens"] for i in keep], dtype=np.int64)
    s = np.array([rows[ids[i]]["loss_sum"] for i in keep], dtype=np.float64)
    scored = n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(scored, s / np.maximum(n, 1), np.nan)
    t = t.append_column("scored", pa.array(scored, pa.bool_()))
    t = t.append_column("loss", pa.array(loss, pa.float64(), mask=~scored))
    t = t.append_column("loss_sum", pa.array(s, pa.float64(), mask=~scored))
    return t


def token_table(examples, encoded, rows: dict[str, dict], ref_rows: dict[str, dict] | None = None):
    """Per example: positions, token ids and float16 losses of its assistant tokens (and the
    reference model's, ``token_losses_ref``, when ``ref_rows`` is given)."""
    import pyarrow as pa

    ids = examples.column("example_id").to_pylist()
    pos = [np.asarray(rows[e]["positions"], dtype=np.int32) for e in ids]
    cols = {
        "example_id": pa.array(ids, pa.string()),
        "positions": pa.array([p.tolist() for p in pos], pa.list_(pa.int32())),
        "token_ids": pa.array([encoded[i].input_ids[p].tolist() for i, p in enumerate(pos)], pa.list_(pa.int32())),
        "token_losses": pa.array([np.asarray(rows[e]["token_losses"], np.float16).tolist() for e in ids],
                                 pa.list_(pa.float16())),
    }
    if ref_rows is not None:
        cols["token_losses_ref"] = pa.array([np.asarray(ref_rows[e]["token_losses"], np.float16).tolist()
                                             for e in ids], pa.list_(pa.float16()))
    return pa.table(cols)


def run_key(kind: str, result_settings: dict, model: dict, template: dict, sources: list[dict],
            reference: dict | None = None) -> str:
    """Hash of everything that determines a run's results: its settings, the model's weights, the
    template, and the data (each source's name, file fingerprint and record count)."""
    ident = {
        "layout": LAYOUT, "kind": kind, "config": result_settings,
        "model": model["fingerprint"], "dtype": model["dtype"],
        "reference": reference["fingerprint"] if reference else None,
        "template": template["fingerprint"],
        "data": [(s["source"], s["fingerprint"], s["n_records"]) for s in sources],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_entries(reports) -> list[dict]:
    """run.json's ``sources``: each SourceReport plus the absolute path it was read from, so the
    run's records can be found again from any working folder."""
    out = []
    for r in reports:
        d = asdict(r)
        p = Path(r.path)
        d["abs_path"] = str(p.resolve()) if p.exists() else None
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------------
# Sources of a run, found again from its provenance


def source_specs(prov: dict, check_fingerprints: bool = False) -> dict:
    """``{source name: SourceSpec}`` the run read, rebuilt from its provenance (``run.json``, or
    the copy a selection carries).  The recorded path is tried first, then its absolute path (the
    run was started from another folder).  With ``check_fingerprints``, a file whose content
    changed since the run is refused."""
    from curation.data.load import SourceSpec
    from curation.data.readers import DEFAULT_MAX_RECORD_BYTES, file_fingerprint, is_hub_id

    cfg = prov.get("config", {})
    out = {}
    for entry in prov.get("sources", []):
        path = str(entry.get("path"))
        if not Path(path).exists() and entry.get("abs_path") and Path(entry["abs_path"]).exists():
            path = entry["abs_path"]
        if not Path(path).exists() and not is_hub_id(path):
            raise RunError(f"source {entry.get('source')}: {entry.get('path')} no longer exists"
                           + (f" (nor {entry['abs_path']})" if entry.get("abs_path") else "")
                           + "; the run's records are read from the files it scored")
        want = entry.get("fingerprint")
        if check_fingerprints and want and Path(path).is_file() and file_fingerprint(path) != want:
            raise SourceChanged(f"source {entry.get('source')}: {path} changed since the run scored it "
                                f"(fingerprint {file_fingerprint(path)} != {want}); re-run the scoring on the new file")
        out[entry["source"]] = SourceSpec(path=path, domain=entry.get("domain"), columns=cfg.get("columns") or {},
                                          format=entry.get("format"), split=cfg.get("split"),
                                          max_record_bytes=cfg.get("max_record_bytes") or DEFAULT_MAX_RECORD_BYTES)
    return out


def read_examples(prov: dict, rows, check_fingerprints: bool = True, progress=None) -> list[tuple[dict, list[dict]]]:
    """``[(original record, normalised messages)]`` of ``rows`` (objects or dicts with ``source,
    source_index, example_id``), in order, each checked against its example id.  In a pair run an
    ``example_id`` is a response's SFT id (its messages: prompt + that response) or a pair id (the
    prompt's messages).

    Raises :class:`SourceChanged` when a record no longer has the content the run scored (the
    source was edited after scoring), so nothing is ever shown or exported next to the wrong
    scores."""
    from curation.data.load import example_id, normalise
    from curation.data.readers import RecordError

    specs, items, records = source_records(prov, rows, check_fingerprints, progress)
    cfg = prov.get("config", {})
    out = []
    for r in items:
        rec = records[(r["source"], int(r["source_index"]))]
        fmt = specs[r["source"]].format
        if prov.get("data") == "pairs":
            pair = checked_pair(r, rec, specs[r["source"]], cfg, ids=False)
            views = {pair.pair_id: pair.prompt,
                     **{pair.sft_id(side): pair.sft_messages(side) for side in ("chosen", "rejected")}}
            if r["example_id"] not in views:
                raise SourceChanged(f"{r['source']} #{r['source_index']}: its content no longer matches example "
                                    f"{r['example_id']}; the source changed since the run, re-run the scoring")
            out.append((rec, views[r["example_id"]]))
            continue
        try:
            messages = normalise(rec, fmt, cfg.get("columns") or {}) if fmt else None
        except RecordError as e:
            raise SourceChanged(f"{r['source']} #{r['source_index']}: no longer a usable record ({e}); "
                                "the source changed since the run") from None
        if messages is None or example_id(messages) != r["example_id"]:
            raise SourceChanged(f"{r['source']} #{r['source_index']}: its content no longer matches example "
                                f"{r['example_id']}; the source changed since the run, re-run the scoring")
        out.append((rec, messages))
    return out


def read_pairs(prov: dict, rows, check_fingerprints: bool = True, progress=None) -> list[tuple[dict, object]]:
    """``[(original record, curation.data.pairs.Pair)]`` of a pair run's ``rows`` (with ``source,
    source_index`` and ``pair_id`` or ``example_id``), in order, each checked against its pair id
    (:class:`SourceChanged` when the source changed since the run)."""
    specs, items, records = source_records(prov, rows, check_fingerprints, progress)
    out = []
    for r in items:
        rec = records[(r["source"], int(r["source_index"]))]
        out.append((rec, checked_pair(r, rec, specs[r["source"]], prov.get("config", {}))))
    return out


def source_records(prov: dict, rows, check_fingerprints: bool, progress):
    """``(specs, rows as dicts, {(source, index): record})``: each source read once for ``rows``."""
    from curation.data.readers import RecordError, read_records

    specs = source_specs(prov, check_fingerprints)
    wanted: dict[str, list[int]] = {}
    items = [r if isinstance(r, dict) else r._asdict() if hasattr(r, "_asdict") else vars(r) for r in rows]
    for r in items:
        if r["source"] not in specs:
            raise RunError(f"source {r['source']!r} is not among the run's sources ({sorted(specs)})")
        wanted.setdefault(r["source"], []).append(int(r["source_index"]))
    records: dict[tuple[str, int], dict] = {}
    done = 0
    for source, indices in wanted.items():
        try:
            got = read_records(specs[source], indices)
        except RecordError as e:
            raise SourceChanged(str(e)) from None
        records.update({(source, i): rec for i, rec in got.items()})
        done += len(indices)
        if progress is not None:
            progress(done=done)
    return specs, items, records


def checked_pair(row: dict, record: dict, spec, cfg: dict, ids: bool = True):
    """The pair a pair run's ``record`` holds (``spec``: its source's SourceSpec; ``row``: its
    source, index and, with ``ids``, its ``pair_id`` or ``example_id`` to check it against);
    :class:`SourceChanged` when it holds no pair or another one."""
    from curation.data.pairs import pair_of_record
    from curation.data.readers import RecordError

    where = f"{row['source']} #{row['source_index']}"
    try:
        pair = pair_of_record(record, spec.format, cfg.get("columns") or {}, row["source"], int(row["source_index"]),
                              spec.domain)
    except (RecordError, RecursionError) as e:
        raise SourceChanged(f"{where}: no longer a usable pair ({e}); the source changed since the run") from None
    want = row.get("pair_id") or row.get("example_id")
    if ids and pair.pair_id != want:
        raise SourceChanged(f"{where}: its content no longer matches pair {want}; the source changed since the run, "
                            "re-run the scoring")
    return pair


# ----------------------------------------------------------------------------------------------
# The run folder


class Run:
    """A run folder: claimed and written by the score and learn runs, read by everything else."""

    META, EXAMPLES, SCORES, TOKENS, REJECTED, STABILITY = (
        "run.json", "examples.parquet", "scores.parquet", "token_losses.parquet", "rejected.jsonl", "stability.json")
    EMBEDDINGS, EMBEDDING_IDS, RDS = "embeddings.npy", "embeddings_ids.parquet", "rds_embeddings.npy"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # -- provenance ----------------------------------------------------------------------------

    def meta(self) -> dict:
        """``run.json`` ({} when absent); a broken file is refused with its name."""
        p = self.path / self.META
        return read_json_object(p, "run record") if p.is_file() else {}

    @property
    def finished(self) -> bool:
        return (self.path / self.SCORES).is_file() and self.meta().get("finished", True) is not False

    @property
    def kind(self) -> str:
        """``score`` or ``learn`` (from run.json), ``unknown`` for a folder without one."""
        return self.meta().get("kind") or "unknown"

    @property
    def holds_pairs(self) -> bool:
        """Whether the run scored preference pairs (run.json ``"data": "pairs"``), not SFT examples."""
        return self.meta().get("data") == PAIRS

    def check_layout(self) -> None:
        """Refuse a folder written by an earlier version of curation (another layout)."""
        meta = self.meta()
        if meta and meta.get("layout") != LAYOUT:
            raise RunError(f"{self.path} was written by an earlier version of curation (run folder layout "
                           f"{meta.get('layout', 1)}, this version reads {LAYOUT}); score the data again into a "
                           "new folder (python -m curation score ... --out NEW_DIR)")

    def require_finished(self) -> dict:
        """The run's provenance, or RunError saying what is missing."""
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run folder")
        self.check_layout()
        for name in (self.SCORES, self.META):
            if not (self.path / name).is_file():
                raise RunError(f"{self.path} is not a finished run folder: {name} is missing "
                               f"(a score or learn run writes it when it finishes)")
        meta = self.meta()
        if meta.get("finished") is False:
            raise RunError(f"{self.path}: the run has not finished; finish it (re-run the same command) first")
        return meta

    def provenance(self) -> dict:
        """What a selection and an export must know about the run: its folder, sources (with
        absolute paths), models, template, settings."""
        run = self.meta()
        keep = ("kind", "data", "run_key", "code_version", "model", "reference", "training", "checkpoint_fingerprints",
                "template", "max_length", "checkpoints", "seed", "n_clusters", "heldout_folds")
        prov = {k: run[k] for k in keep if k in run}
        cfg = run.get("config", {})
        prov["config"] = {k: cfg.get(k) for k in ("sources", "columns", "format", "limit", "model", "template",
                                                  "max_length", "checkpoints", "seed", "lora", "epochs",
                                                  "max_record_bytes") if k in cfg}
        prov["dir"] = str(self.path.resolve())
        sources = []
        for s in run.get("sources", []):
            s = dict(s)
            if not s.get("abs_path"):
                p = Path(s.get("path", ""))
                s["abs_path"] = str(p.resolve()) if p.exists() else None
            sources.append(s)
        prov["sources"] = sources
        return prov

    # -- writing (the score and learn runs) ----------------------------------------------------

    def claim(self, meta: dict) -> None:
        """Mark the folder as the run ``meta["run_key"]``'s, or refuse if it holds another run."""
        key = meta["run_key"]

        def other(existing: dict) -> str:
            if existing.get("layout") != LAYOUT:
                return (f"{self.path} holds a run written by an earlier version of curation; score the data again "
                        "into a new --out folder")
            return (f"{self.path} holds another run (key {existing.get('run_key')}, this one {key}): different data, "
                    "model or settings. Use a new --out folder or delete that one.")

        existing = claim_folder(self.path, self.META, "run", lambda m: m.get("run_key") == key, other,
                                {**meta, "layout": LAYOUT, "finished": False}, RunMismatch)
        if existing is not None and not existing.get("finished"):
            write_json(self.path / self.META, {**existing, **meta, "finished": False})

    def write_examples(self, table) -> None:
        write_parquet(self.path / self.EXAMPLES, table)

    def write_results(self, scores, tokens, rejected: list[dict]) -> None:
        """The final tables (each written atomically)."""
        write_parquet(self.path / self.SCORES, scores)
        write_parquet(self.path / self.TOKENS, tokens)
        write_text(self.path / self.REJECTED, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))

    def write_stability(self, summary: dict) -> None:
        """``stability.json``: how much the scores' rankings change between reference runs."""
        write_json(self.path / self.STABILITY, summary)

    def stability(self) -> dict | None:
        p = self.path / self.STABILITY
        return json.loads(p.read_text()) if p.is_file() else None

    def write_embeddings(self, ids: list[str], rows: dict[str, dict], files: dict[str, str] | None = None) -> None:
        """``embeddings.npy`` and ``rds_embeddings.npy`` (float16, one row per id; NaN without one)
        and their id index, from a pass's cache rows (:func:`curation.scoring.passes.embedding_of`);
        each file atomic.  ``files`` maps each file to the embedding of the rows it holds (a pair
        run: ``{EMBEDDINGS: "prompt_rds"}``, with each pair's row)."""
        import pandas as pd

        from curation.scoring.passes import embedding_of

        for name, kind in (files or {self.EMBEDDINGS: "embedding", self.RDS: "rds"}).items():
            vecs = [embedding_of(rows[i], kind) if i in rows else None for i in ids]
            width = next((len(v) for v in vecs if v is not None), 0)
            matrix = np.full((len(ids), width), np.nan, dtype=np.float16)
            for j, v in enumerate(vecs):
                if v is not None:
                    matrix[j] = v
            with atomic_path(self.path / name) as tmp, open(tmp, "wb") as f:
                np.save(f, matrix)
        write_parquet(self.path / self.EMBEDDING_IDS, pd.DataFrame({"example_id": list(ids)}))

    def embeddings(self, kind: str = "embedding"):
        """``(ids, float16 matrix)`` of the run's embeddings (``kind``: ``embedding``, the mean over
        the assistant tokens, or ``rds``, the position-weighted mean over every token; a pair run's
        one embedding, its prompts', serves both), or None when the run has none."""
        import pyarrow.parquet as pq

        name = {"embedding": self.EMBEDDINGS, "rds": self.EMBEDDINGS if self.holds_pairs else self.RDS}[kind]
        if not (self.path / name).is_file() or not (self.path / self.EMBEDDING_IDS).is_file():
            return None
        ids = pq.read_table(self.path / self.EMBEDDING_IDS).column("example_id").to_pylist()
        matrix = np.load(self.path / name)
        if len(ids) != len(matrix):
            raise RunError(f"{self.path}: {name} has {len(matrix)} rows for {len(ids)} ids; the run folder "
                           "is damaged: score the data again into a new folder")
        return ids, matrix

    def finish(self, meta: dict) -> None:
        write_json(self.path / self.META, {**meta, "layout": LAYOUT, "finished": True})

    # -- reading ---------------------------------------------------------------------------------

    def columns(self) -> list[str]:
        import pyarrow.parquet as pq

        files = self._score_files()
        names = pq.ParquetFile(files[0]).schema_arrow.names if files else []
        return names + ["example_id", "n_response_tokens"] if names and self.holds_pairs else names

    def n_rows(self) -> int | None:
        """Rows with scores so far (None: no scores yet); cheap (file metadata only)."""
        import pyarrow.parquet as pq

        if (self.path / self.SCORES).is_file():
            return pq.ParquetFile(self.path / self.SCORES).metadata.num_rows
        base = self.meta().get("base_pass")
        if not base or not (self.path / self.EXAMPLES).is_file():
            return None
        rows = self._partial_rows(base, ("n_tokens",))
        if self.holds_pairs:
            ex = pq.read_table(self.path / self.EXAMPLES, columns=["chosen_id", "rejected_id"]).to_pydict()
            n = sum(c in rows and r in rows for c, r in zip(ex["chosen_id"], ex["rejected_id"]))
        else:
            n = len(rows)
        return n or None

    def mtime(self) -> float:
        """When the run last changed (its files, or the cache rows of its base pass)."""
        times = [p.stat().st_mtime for p in (self.path / n for n in (self.META, self.SCORES, self.EXAMPLES))
                 if p.exists()]
        base = self.meta().get("base_pass") if not (self.path / self.SCORES).is_file() else None
        if base:
            folder = Path(base["cache"]) / base["key"]
            if folder.is_dir():
                times.append(folder.stat().st_mtime)
        times += [p.stat().st_mtime for p in self._score_files()]
        return max(times, default=0.0)

    def scores(self):
        """The score table as a pandas DataFrame: ``scores.parquet`` when finished, else the rows
        scored so far (the dashboard shows them filling in)."""
        import pandas as pd

        self.check_layout()
        pairs = self.holds_pairs
        if (self.path / self.SCORES).is_file():
            df = pd.read_parquet(self.path / self.SCORES)
            return with_generic_columns(df) if pairs else df
        base = self.meta().get("base_pass")
        if base and (self.path / self.EXAMPLES).is_file():
            import pyarrow.parquet as pq

            # A response's loss may be a part of its row (a multi-turn prompt): pairs read the token losses.
            rows = self._partial_rows(base, ("loss_sum", "n_tokens", *(("token_losses",) if pairs else ())))
            examples = pq.read_table(self.path / self.EXAMPLES)
            table = (pair_score_table if pairs else score_table)(examples, rows) if rows else None
            if table is not None and table.num_rows:
                return with_generic_columns(table.to_pandas()) if pairs else table.to_pandas()
        raise RunError(f"{self.path} has no scores yet")

    def committed_parts(self) -> list[Path]:
        """The score-cache parts committed so far by the run's base-model pass (oldest first)."""
        base = self.meta().get("base_pass")
        if not base:
            return []
        return sorted((Path(base["cache"]) / base["key"]).glob("part-*.parquet"))

    def rejected(self) -> list[dict]:
        p = self.path / self.REJECTED
        if not p.is_file():
            return []
        return [json.loads(x) for x in p.read_text(encoding="utf-8").split("\n") if x.strip()]

    def token_losses(self, example_id: str) -> dict | None:
        """One example's per-token record (``positions, token_ids, token_losses`` and any other
        list columns such as ``token_losses_ref``), or None when the run has none for it."""
        import pyarrow.dataset as ds

        path = self.path / self.TOKENS
        if not path.is_file():
            return None
        t = ds.dataset(path).to_table(filter=ds.field("example_id") == example_id)
        return t.slice(0, 1).to_pylist()[0] if t.num_rows else None

    def pair_token_losses(self, pair_id: str) -> dict[str, dict]:
        """A pair run's per-token records of one pair, ``{side: record}`` (a side without one is
        absent): token_losses.parquet holds one row per response, keyed by its SFT id, with
        ``pair_id`` and ``side``."""
        import pyarrow.dataset as ds

        path = self.path / self.TOKENS
        if not path.is_file():
            return {}
        t = ds.dataset(path).to_table(filter=ds.field("pair_id") == pair_id)
        return {r["side"]: r for r in t.to_pylist()}

    def pair(self, source: str, source_index: int, pair_id: str):
        """One pair of a pair run (:class:`curation.data.pairs.Pair`), re-read from its source and
        checked against its id (:class:`SourceChanged` when the source was edited since scoring)."""
        row = {"source": source, "source_index": int(source_index), "pair_id": pair_id}
        return read_pairs(self.meta(), [row], check_fingerprints=False)[0][1]

    def example(self, source: str, source_index: int, example_id: str) -> list[dict]:
        """One example's normalised messages, re-read from its source and checked against its id
        (:class:`SourceChanged` when the source was edited since scoring)."""
        row = {"source": source, "source_index": int(source_index), "example_id": example_id}
        return read_examples(self.meta(), [row], check_fingerprints=False)[0][1]

    def search(self, text: str, max_source_bytes: int = 200_000_000) -> set[str]:
        """Ids of the run's examples whose messages contain ``text`` (case-insensitive; in a pair
        run, the pairs whose prompt or either response does); one scan of the sources."""
        needle = text.lower()
        if self.holds_pairs:
            return {p.pair_id for p in self.load_pairs(max_source_bytes, "text search")
                    if any(needle in t.lower() for t in [*(m["content"] for m in p.prompt), p.chosen, p.rejected])}
        return {e.example_id for e in self.load_examples(max_source_bytes, "text search")
                if any(needle in m["content"].lower() for m in e.messages)}

    def texts(self) -> dict[str, str]:
        """``{example_id: the whole conversation as one string}`` for every example the run's
        sources hold (a pair run: ``{pair_id: its prompt}``, which near-duplicates and
        decontamination compare); one scan (:func:`curation.data.textnorm.conversation_text`)."""
        from curation.data.textnorm import conversation_text

        if self.holds_pairs:
            return {p.pair_id: conversation_text(p.prompt) for p in self.load_pairs()}
        return {e.example_id: conversation_text(e.messages) for e in self.load_examples()}

    def load_examples(self, max_source_bytes: int | None = None, what: str = "reading"):
        """The run's examples (``curation.data.load.Example``), loaded again from its sources as the run
        read them (same limit); sources larger than ``max_source_bytes`` are refused."""
        from curation.data.load import load_sources

        return load_sources(self.bounded_specs(max_source_bytes, what),
                            limit=self.meta().get("config", {}).get("limit")).examples

    def load_pairs(self, max_source_bytes: int | None = None, what: str = "reading"):
        """A pair run's pairs (``curation.data.pairs.Pair``), loaded again from its sources as the run
        read them (same limit); sources larger than ``max_source_bytes`` are refused."""
        from curation.data.pairs import load_pairs

        return load_pairs(self.bounded_specs(max_source_bytes, what),
                          limit=self.meta().get("config", {}).get("limit")).pairs

    def bounded_specs(self, max_source_bytes: int | None, what: str) -> list:
        """The run's source specs; a source file larger than ``max_source_bytes`` is refused (``what``
        names what is off for it)."""
        specs = list(source_specs(self.meta()).values())
        for s in specs:
            p = Path(s.path)
            if max_source_bytes is not None and p.is_file() and p.stat().st_size > max_source_bytes:
                raise RunError(f"{p} is larger than {max_source_bytes // 1_000_000} MB; {what} is off for it")
        return specs

    def tokenizer(self):
        """The tokenizer of the run's model (for showing tokens); no weights are loaded."""
        from curation.scoring.models import load_tokenizer

        path = self.meta().get("model", {}).get("path")
        if not path or not Path(path).exists():
            raise RunError(f"the run's model folder {path!r} is not available on this machine")
        return load_tokenizer(path)

    # ----------------------------------------------------------------------------------------

    def _score_files(self) -> list[Path]:
        if (self.path / self.SCORES).is_file():
            return [self.path / self.SCORES]
        if (self.path / self.EXAMPLES).is_file():
            return [self.path / self.EXAMPLES]
        return []

    def _partial_rows(self, base: dict, columns=("loss_sum", "n_tokens")) -> dict[str, dict]:
        from curation.scoring.passes import ScoreCache

        import pyarrow.parquet as pq

        if self.holds_pairs:  # the rows of the pairs' responses
            ex = pq.read_table(self.path / self.EXAMPLES, columns=["chosen_id", "rejected_id"]).to_pydict()
            ids = set(ex["chosen_id"]) | set(ex["rejected_id"])
        else:
            ids = set(pq.read_table(self.path / self.EXAMPLES, columns=["example_id"]).column(0).to_pylist())
        return ScoreCache(base["cache"]).load(base["key"], ids, columns=columns)


def read_json_object(path: Path, what: str, error=RunError, fix: str = "") -> dict:
    """The JSON object in ``path`` (a ``what``), or ``error`` with one line naming the file, what is
    wrong with it and ``fix`` (what to do)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not a readable {what} ({e}){fix}") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: not a readable {what} (expected a JSON object){fix}")
    return obj


def claim_folder(path: Path, marker: str, what: str, same, other, record: dict, error=RunError,
                 check_only: bool = False) -> dict | None:
    """Make ``path`` the folder of one owner (a run, a study), or refuse: the one rule for a keyed
    folder.  ``marker`` (a JSON file in it) names the owner; ``same(marker's content)`` says
    whether it is this one, and then the folder is this owner's (its content is returned: the
    caller resumes); else ``other(content)`` is the one-line refusal, raised as ``error``.  A file,
    an unreadable marker, or a folder with other entries and no marker are refused too; anything
    else (new or empty) is claimed by writing ``record`` as the marker (not with ``check_only``,
    which only says whether the claim would succeed).  ``what`` names the owner in messages."""
    if path.exists() and not path.is_dir():
        raise error(f"--out {path} is a file; give a folder (new, or holding this {what})")
    mark = path / marker
    if mark.is_file():
        have = read_json_object(mark, f"{what}'s record", error, "; use a new --out folder")
        if same(have):
            return have
        raise error(other(have))
    if path.is_dir() and any(path.iterdir()):
        raise error(f"{path} is not empty and holds no {what} ({marker} is missing); use a new --out folder or "
                    "empty that one")
    if not check_only:
        path.mkdir(parents=True, exist_ok=True)
        write_json(mark, record)
    return None


def is_run_folder(path: Path) -> bool:
    return (path / Run.META).is_file() or (path / Run.SCORES).is_file()

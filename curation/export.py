"""Export a selection as a training file, with a manifest that says exactly what it holds.

``EXPORT_DIR`` holds the data and ``manifest.json``::

    train.jsonl | train.parquet | train/ (datasets save_to_disk folder)
    manifest.json   recipe, example ids + content hashes in file order, score provenance,
                    counts and tokens per domain, code version, time

Styles: ``original`` writes each selected record exactly as its source holds it (the same JSON
object after re-parsing); ``messages`` writes ``{"messages": [{"role", "content"}, ...]}``, the
conversational format TRL's SFTTrainer and LLaMA-Factory (``formatting: sharegpt`` with OpenAI
tags) take as they are.  With ``original`` and sources of different shapes, the columnar formats
(and ``datasets``' JSON loader) give each row every column of the file; the ones a record does not
have load as null.

Every record is re-normalised and its content hash compared with the selected example id, so an
export can never silently ship rows of a source file that changed after scoring.  The folder is
written next to its destination and renamed into place: it is complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

EXPORT_FORMATS = ("jsonl", "parquet", "hf")
STYLES = ("original", "messages")
DATA_NAMES = {"jsonl": "train.jsonl", "parquet": "train.parquet", "hf": "train"}


class ExportError(ValueError):
    """A selection cannot be exported (the message says why and what to do)."""


@dataclass
class ExportConfig:
    """Settings of an export (the CLI, the jobs and the dashboard all build this)."""

    selection: str  # selection folder written by `select` (recipe.yaml, selected.parquet, summary.json)
    out: str  # export folder (replaced atomically if it holds a previous export)
    format: str = "jsonl"  # jsonl | parquet | hf (datasets save_to_disk folder)
    style: str = "messages"  # original (records as in their sources) | messages ({"messages": [...]})

    def __post_init__(self):
        if self.format not in EXPORT_FORMATS:
            raise ExportError(f"format {self.format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
        if self.style not in STYLES:
            raise ExportError(f"style {self.style!r}: expected one of {', '.join(STYLES)}")


@contextmanager
def atomic_dir(out: str | os.PathLike, marker: str, what: str):
    """Yield a temporary folder next to ``out``; on success it replaces ``out``.

    ``out`` may be absent, empty, or a previous ``what`` (recognised by its ``marker`` file);
    anything else is refused so a typo cannot wipe an unrelated folder.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is a file; choose another --out")
        if any(out.iterdir()) and not (out / marker).is_file():
            raise ExportError(f"{out} exists and does not hold a previous {what} (no {marker}); "
                              "choose a new --out or empty that folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should be like any folder
    try:
        yield tmp
        if out.exists():
            # Swap: between the two renames `out` is absent, never half written.
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_selection(cfg: ExportConfig, progress: Callable[[dict], None] | None = None) -> Path:
    """Write the selected examples of ``cfg.selection`` to ``cfg.out`` (see the module doc)."""
    from curation import __version__

    report = progress or (lambda p: None)
    sel_dir = Path(cfg.selection)
    selected, summary = _read_selection(sel_dir)
    run = summary.get("run", {})
    report({"phase": "reading sources", "done": 0, "total": len(selected)})
    rows = _build_rows(selected, run, cfg.style, report)

    report({"phase": "writing", "done": len(selected), "total": len(selected)})
    out = Path(cfg.out)
    with atomic_dir(out, marker="manifest.json", what="export") as tmp:
        data_name = DATA_NAMES[cfg.format]
        table = _arrow_table(rows, cfg.style)  # also proves the rows form one loadable table
        if cfg.format == "jsonl":
            _write_jsonl(tmp / data_name, rows)
        elif cfg.format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp / data_name)
        else:
            import datasets

            datasets.Dataset(table).save_to_disk(str(tmp / data_name))
        manifest = _manifest(cfg, sel_dir, selected, summary, rows, data_name, __version__)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    report({"phase": "done", "done": len(selected), "total": len(selected)})
    return out


def load_export(export_dir: str | os.PathLike):
    """Load an export with ``datasets`` the way a trainer would (a ``datasets.Dataset``)."""
    import datasets

    d = Path(export_dir)
    manifest = json.loads((d / "manifest.json").read_text())
    path = d / manifest["files"]["data"]
    if manifest["format"] == "hf":
        return datasets.load_from_disk(str(path))
    builder = "json" if manifest["format"] == "jsonl" else "parquet"
    return datasets.load_dataset(builder, data_files=str(path), split="train")


# ----------------------------------------------------------------------------------------------


def _read_selection(sel_dir: Path):
    import pandas as pd

    for name in ("selected.parquet", "summary.json", "recipe.yaml"):
        if not (sel_dir / name).is_file():
            raise ExportError(f"{sel_dir} is not a selection folder: {name} is missing "
                              "(python -m curation select RUN_DIR ... --out SEL_DIR writes it)")
    selected = pd.read_parquet(sel_dir / "selected.parquet")
    summary = json.loads((sel_dir / "summary.json").read_text())
    if len(selected) == 0:
        raise ExportError(f"{sel_dir}: the selection is empty")
    return selected, summary


def _source_spec(entry: dict, run: dict):
    """The SourceSpec a run read this source with, checked against the file's fingerprint now."""
    from curation.load import SourceSpec, _fingerprint

    cfg = run.get("config", {})
    path = str(entry.get("path"))
    if not Path(path).exists() and entry.get("abs_path") and Path(entry["abs_path"]).exists():
        path = entry["abs_path"]  # the run was started from another working folder
    is_hub_id = re.match(r"^[\w.\-]+/[\w.\-]+$", path) and not path.startswith(".")
    if not Path(path).exists() and not is_hub_id:
        raise ExportError(f"source {entry.get('source')}: {entry.get('path')} no longer exists"
                          + (f" (nor {entry['abs_path']})" if entry.get("abs_path") else "")
                          + "; the export needs the files the run scored")
    want = entry.get("fingerprint")
    if want and Path(path).is_file() and _fingerprint(path) != want:
        raise ExportError(f"source {entry.get('source')}: {path} changed since the run scored it "
                          f"(fingerprint {_fingerprint(path)} != {want}); re-run the scoring on the new file")
    return SourceSpec(path=str(path), domain=entry.get("domain"), columns=cfg.get("columns") or {},
                      format=entry.get("format"), split=cfg.get("split"))


def _build_rows(selected, run: dict, style: str, report) -> list[dict]:
    """The exported rows, in selected order, each checked against its example id."""
    from curation.load import RecordError, example_id, normalise, read_records

    entries = {s["source"]: s for s in run.get("sources", [])}
    records: dict[tuple[str, int], dict] = {}
    fmts: dict[str, str] = {}
    done = 0
    for source, group in selected.groupby("source", sort=False):
        if source not in entries:
            raise ExportError(f"the selection names source {source!r}, which the run's provenance does not "
                              f"list (sources: {sorted(entries)})")
        spec = _source_spec(entries[source], run)
        fmts[source] = spec.format
        try:
            got = read_records(spec, group["source_index"].tolist())
        except RecordError as e:
            raise ExportError(str(e)) from None
        for i, rec in got.items():
            records[(source, i)] = rec
        done += len(group)
        report({"phase": "reading sources", "done": done, "total": len(selected)})

    rows = []
    cfg = run.get("config", {})
    for r in selected.itertuples(index=False):
        rec = records[(r.source, int(r.source_index))]
        try:
            messages = normalise(rec, fmts[r.source], cfg.get("columns") or {})
        except RecordError as e:
            raise ExportError(f"{r.source} #{r.source_index}: no longer a usable record ({e}); "
                              "the source changed since the run") from None
        if example_id(messages) != r.example_id:
            raise ExportError(f"{r.source} #{r.source_index}: its content no longer matches example "
                              f"{r.example_id}; the source changed since the run, re-run the scoring")
        rows.append(rec if style == "original" else {"messages": messages})
    return rows


def _arrow_table(rows: list[dict], style: str):
    """One Arrow table over every key of every row (keys a row lacks are null)."""
    import pyarrow as pa

    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    try:
        return pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ExportError(
            f"the selected records do not fit one table ({e}): a column holds different types in "
            "different sources; export with --style messages, which has one shape for every source"
        ) from None


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            try:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            except TypeError as e:
                raise ExportError(f"row {i} has a value JSON cannot hold ({e}); use --format parquet or hf") from None


def _content_hash(row: dict) -> str:
    canon = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


def _code_fingerprint() -> str:
    """Hash of the library's source files: pins the exact code, not just the version number."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def _manifest(cfg: ExportConfig, sel_dir: Path, selected, summary: dict, rows: list[dict],
              data_name: str, version: str) -> dict:
    by_domain = {}
    for d, g in selected.groupby("domain", sort=True):
        by_domain[str(d)] = {"examples": int(len(g)), "tokens": int(g["n_tokens"].sum()) if "n_tokens" in g else None}
    run = summary.get("run", {})
    return {
        "kind": "export",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": {"curation": version, "source_fingerprint": _code_fingerprint()},
        "format": cfg.format,
        "style": cfg.style,
        "files": {"data": data_name},
        "load_with": (f"datasets.load_from_disk('{data_name}')" if cfg.format == "hf" else
                      f"datasets.load_dataset('{'json' if cfg.format == 'jsonl' else 'parquet'}', "
                      f"data_files='{data_name}', split='train')"),
        "recipe": summary.get("recipe"),
        "score": summary.get("score"),
        "selection": {"dir": str(sel_dir.resolve()), "budget": summary.get("budget"),
                      "warnings": summary.get("warnings", [])},
        "provenance": {k: v for k, v in run.items()},
        "counts": {"examples": len(rows), "tokens": int(selected["n_tokens"].sum()) if "n_tokens" in selected else None,
                   "by_domain": by_domain},
        "examples": [
            {"example_id": r.example_id, "domain": r.domain, "source": r.source,
             "source_index": int(r.source_index), "rank": int(r.rank), "content_sha256": _content_hash(row)}
            for r, row in zip(selected.itertuples(index=False), rows)
        ],
    }

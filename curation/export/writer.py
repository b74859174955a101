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
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from curation.atomic import AtomicError, atomic_dir
from curation.config import option
from curation.progress import Progress, Reporter
from curation.runs.folder import Run, RunError, read_examples
from curation.selection.folder import Selection
from curation.selection.recipe import SelectionError
from curation.system import PROJECT_ROOT

EXPORT_FORMATS = ("jsonl", "parquet", "hf")
STYLES = ("original", "messages")
DATA_NAMES = {"jsonl": "train.jsonl", "parquet": "train.parquet", "hf": "train"}
MANIFEST = "manifest.json"
EXPORT_FILES = (MANIFEST, *DATA_NAMES.values())  # what an export folder holds: all of it is replaced


class ExportError(ValueError):
    """A selection cannot be exported (the message says why and what to do)."""


@dataclass
class ExportConfig:
    """Settings of an export (the CLI, the jobs and the dashboard all build this)."""

    selection: str = option(help="folder written by `select` (recipe.yaml, selected.parquet, summary.json)",
                            positional=True, metavar="SEL_DIR")
    out: str = option(help="export folder (data file + manifest.json; a previous export there is replaced)")
    format: str = option("jsonl", "jsonl | parquet | hf (a datasets save_to_disk folder)", choices=EXPORT_FORMATS)
    style: str = option("messages", "original: records as in their sources; messages: {'messages': [...]} "
                                    "for TRL / LLaMA-Factory", choices=STYLES)

    def __post_init__(self):
        if self.format not in EXPORT_FORMATS:
            raise ExportError(f"format {self.format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
        if self.style not in STYLES:
            raise ExportError(f"style {self.style!r}: expected one of {', '.join(STYLES)}")


def export_selection(cfg: ExportConfig, progress: Progress | None = None, notes: list[str] | None = None) -> Path:
    """Write the selected examples of ``cfg.selection`` to ``cfg.out`` (see the module doc).
    ``notes`` (a list) receives what the user should hear of, e.g. leftovers of a killed export
    that were removed."""
    from curation import __version__

    report = Reporter(progress)
    sel_dir = Path(cfg.selection)
    try:
        sel = Selection(sel_dir)
        selected, summary = sel.rows(), sel.summary()
        run = summary.get("run", {})
        if run.get("dir") and (Path(run["dir"]) / Run.SCORES).is_file():  # the run is here: check against it
            selected = sel.rows_in(Run(run["dir"]).scores())
    except (SelectionError, RunError) as e:
        raise ExportError(str(e)) from None
    if len(selected) == 0:
        raise ExportError(f"{sel_dir}: the selection is empty")
    report(phase="reading sources", done=0, total=len(selected))
    try:
        records = read_examples(run, selected.itertuples(index=False), check_fingerprints=True,
                                progress=report)
    except RunError as e:
        raise ExportError(str(e)) from None
    rows = [rec if cfg.style == "original" else {"messages": messages} for rec, messages in records]

    report(phase="writing", done=len(selected), total=len(selected))
    out = Path(cfg.out)
    cleaned: list = []
    with _export_dir(out, cleaned) as tmp:
        data_name = DATA_NAMES[cfg.format]
        table = _arrow_table(rows, cfg.style)  # also proves the rows form one loadable table
        non_finite = 0
        if cfg.format == "jsonl":
            non_finite = write_jsonl(tmp / data_name, rows)
        elif cfg.format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp / data_name)
        else:
            import datasets

            datasets.Dataset(table).save_to_disk(str(tmp / data_name))
        manifest = _manifest(cfg, sel_dir, selected, summary, rows, data_name, __version__)
        if non_finite:
            manifest["non_finite_values"] = {
                "count": non_finite, "written_as": None,
                "note": "NaN and infinite numbers of the source records are written as null: strict JSON has no "
                        "NaN or Infinity (content_sha256 is of the records as read)"}
            if notes is not None:
                notes.append(f"{non_finite} NaN or infinite number(s) in the records were written as null "
                             "(strict JSON has none); the manifest says so")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if notes is not None:
        notes += [f"removed {p.name} ({size / 1e6:.1f} MB), a temporary folder left next to {out} by an export "
                  "that was killed" for p, size in cleaned]
    report(phase="done", done=len(selected), total=len(selected))
    return out


def load_export(export_dir: str | os.PathLike):
    """Load an export with ``datasets`` the way a trainer would (a ``datasets.Dataset``)."""
    import datasets

    d = Path(export_dir)
    manifest = read_manifest(d)
    path = data_path(d, manifest)
    if manifest["format"] == "hf":
        return datasets.load_from_disk(str(path))
    builder = "json" if manifest["format"] == "jsonl" else "parquet"
    return datasets.load_dataset(builder, data_files=str(path), split="train")


# ----------------------------------------------------------------------------------------------


@contextmanager
def _export_dir(out: Path, cleaned: list):
    try:
        with atomic_dir(out, marker=MANIFEST, what="export", cleaned=cleaned, known=EXPORT_FILES) as tmp:
            yield tmp
    except AtomicError as e:
        raise ExportError(str(e)) from None


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


def write_jsonl(path: Path, rows: list[dict]) -> int:
    """Write strict JSON lines (NaN and infinities become null, which every JSON parser reads);
    returns how many such numbers there were."""
    replaced = 0

    def finite(v):
        nonlocal replaced
        if isinstance(v, float) and not math.isfinite(v):
            replaced += 1
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list):
            return [finite(x) for x in v]
        return v

    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            try:
                f.write(json.dumps(finite(r), ensure_ascii=False, allow_nan=False) + "\n")
            except (TypeError, ValueError) as e:
                raise ExportError(f"row {i} has a value JSON cannot hold ({e}); use --format parquet or hf") from None
    return replaced


def _content_hash(row: dict) -> str:
    canon = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


def _code_fingerprint() -> str:
    """Hash of the library's source files: pins the exact code, not just the version number."""
    h = hashlib.sha256()
    root = PROJECT_ROOT / "curation"
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
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


def read_manifest(export_dir: str | os.PathLike) -> dict:
    """An export's ``manifest.json``; :class:`ExportError` naming the file when it is unreadable."""
    p = Path(export_dir) / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{p}: not a readable manifest ({type(e).__name__}: {e}); export again into a new folder") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or not isinstance(m["files"].get("data"), str) \
            or m.get("format") not in EXPORT_FORMATS:
        raise ExportError(f"{p}: not an export manifest (it needs format and files.data); export again into a new folder")
    return m


def data_path(export_dir: str | os.PathLike, manifest: dict) -> Path:
    """The export's data file or folder: one of the names an export writes, inside the export folder
    (resolved, links followed); anything else a manifest names is refused, never read or served."""
    d = Path(export_dir).resolve()
    name = manifest["files"]["data"]
    path = (d / name).resolve()
    if name not in DATA_NAMES.values() or path.parent != d or not path.exists():
        raise ExportError(f"{d / MANIFEST}: files.data names {name!r}, which is not a data file of this export "
                          f"({', '.join(DATA_NAMES.values())} inside {d}); it is not read")
    return path


def download_payload(export_dir: str | os.PathLike) -> tuple[bytes, str, str]:
    """``(bytes, file name, mime type)`` for downloading an export: its data file as is, or a zip
    of the whole folder (data + manifest) when the data is a folder (``hf``).  Only files inside
    the export folder are served (:func:`data_path`; links inside it are skipped)."""
    import io
    import zipfile

    d = Path(export_dir)
    data = data_path(d, read_manifest(d))
    root = d.resolve()
    if data.is_file():
        mime = "application/jsonl" if data.suffix == ".jsonl" else "application/octet-stream"
        return data.read_bytes(), f"{d.name}-{data.name}", mime
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.resolve().is_relative_to(root):
                z.write(p, p.relative_to(root.parent))
    return buf.getvalue(), f"{d.name}.zip", "application/zip"

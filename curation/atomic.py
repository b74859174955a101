"""Atomic writes: a file or folder is complete or absent, never half written.

Every file the project writes goes through here: :func:`atomic_path` (one file: a temporary name
next to it, renamed onto it), :func:`write_json` / :func:`write_parquet` / :func:`write_text`
built on it, and :func:`atomic_dir` (a whole folder built under a temporary name and swapped
into place: run checkpoints, converted models, selections, exports).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from curation.system import pid_running


class AtomicError(ValueError):
    """A destination that must not be replaced (a file, or a folder holding something else)."""


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; the result is like any new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_parquet(path: str | os.PathLike, table) -> None:
    """Write a pyarrow Table (or pandas DataFrame) to Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@contextmanager
def atomic_dir(out: str | os.PathLike, marker: str | None = None, what: str = "folder", replace: bool = True,
               cleaned: list | None = None, known: tuple[str, ...] | None = None):
    """Yield a temporary folder next to ``out``; when the block succeeds it becomes ``out``.

    ``out`` may be absent, or (with ``replace``) a previous ``what``, recognised by its ``marker``
    file, or an empty folder; anything else is refused so a typo cannot wipe an unrelated folder.
    With ``known`` (file name patterns), a previous ``what`` is replaced only if every entry in it
    is one of those: a folder that also holds the user's files is refused, never deleted.  A
    symbolic link is refused (replacing it would leave its target stale).  Between the two renames
    of a swap ``out`` is absent, never half written.  Temporary folders left next to ``out`` by a
    killed writer (its pid is in their name and no longer runs) are removed first; ``cleaned``
    (a list) receives ``(path, bytes)`` of each.
    """
    out = Path(out)
    if out.is_symlink():
        raise AtomicError(f"{out} is a symbolic link (to {os.readlink(out)}); give the folder itself, or a new name")
    for stale, size in remove_stale(out):
        if cleaned is not None:
            cleaned.append((stale, size))
    if out.exists():
        if not out.is_dir():
            raise AtomicError(f"{out} exists and is a file; choose another --out")
        if not replace:
            raise AtomicError(f"{out} exists already")
        entries = list(out.iterdir())
        if marker is not None and entries and not (out / marker).is_file():
            raise AtomicError(f"{out} exists and does not hold a previous {what} (no {marker}); "
                              "choose a new --out or empty that folder")
        foreign = sorted(e.name for e in entries if known is not None and not any(fnmatch(e.name, k) for k in known))
        if foreign:
            a = "an" if what[:1].lower() in "aeiou" else "a"  # an export, a selection
            raise AtomicError(f"{out} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} {a} {what} does not "
                              f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}), which replacing it "
                              "would delete; choose a new --out or move them away")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the result should be like any folder
    try:
        yield tmp
        if out.exists() and not replace:
            raise AtomicError(f"{out} appeared while it was being written (another process?)")
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale(out: Path) -> list[tuple[Path, int]]:
    """Remove the temporary folders of :func:`atomic_dir` next to ``out`` whose writer is gone
    (``.NAME.PID-XXXX.tmp`` / ``.old`` with a PID that no longer runs); ``[(path, bytes)]`` removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)-[^/]*\.(tmp|old)$")
    for p in out.parent.iterdir():
        m = pattern.match(p.name)
        if not m or int(m.group(1)) == os.getpid() or pid_running(int(m.group(1))):
            continue
        if p.is_symlink():  # an earlier version renamed a linked --out aside: drop the link, never its target
            p.unlink()
            removed.append((p, 0))
            continue
        if not p.is_dir():
            continue
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():  # report only what is gone
            removed.append((p, size))
    return removed

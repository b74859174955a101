"""Facts about this installation and its processes: where the project and the workspace live,
whether a pid runs, and when a process started.

The one place that reads ``/proc/PID/stat``: the job store keeps a worker's start time beside its
pid (so a recycled pid is never mistaken for the worker), the atomic writer asks whether the
writer of a leftover temporary folder still runs, and the Ray watchdog polls its driver.
"""

from __future__ import annotations

import os
from pathlib import Path

# The folder that holds the ``curation`` package (the checkout): the default caches live under it
# (``.cache``), and processes started by the library (job workers, Ray workers, the watchdog) get
# it on their Python path.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def workspace_root(workspace: str | Path | None = None) -> Path:
    """THE workspace folder the dashboard, the jobs and the curator's decisions share: the argument,
    else ``$CURATION_WORKSPACE``, else ``./workspace``; absolute (workers run in other folders than
    their submitter).  A file there is refused (one line naming it)."""
    root = Path(workspace if workspace is not None else os.environ.get("CURATION_WORKSPACE") or "workspace")
    root = root.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--workspace {root} is a file; give the workspace folder (it holds the data, the runs, "
                         "jobs.sqlite and decisions.sqlite)")
    return root


# The workspace's folders (curation.jobs.workspace describes what each holds).
SUBDIRS = ("data", "eval", "dev", "runs", "selections", "exports", "validations", "mixes")


def data_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "data"


def eval_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "eval"


def validations_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "validations"


def runs_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "runs"


def mixes_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "mixes"


def selections_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "selections"


def exports_dir(workspace=None) -> Path:
    return workspace_root(workspace) / "exports"


def pid_running(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None when no such process
    runs (a zombie has finished) or the system has no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and ')'
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def has_proc() -> bool:
    """Whether start times can be read (Linux); elsewhere only a pid's existence is known."""
    return Path("/proc/self/stat").is_file()


def process_alive(pid: int | None, start: int | None) -> bool:
    """Whether ``pid`` runs and is the process that had ``start`` as its start time (any process
    with that pid when ``start`` is None, or where start times cannot be read)."""
    if not pid:
        return False
    if has_proc():
        now = process_start_time(pid)
        return now is not None and (start is None or now == start)
    return pid_running(pid)


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])

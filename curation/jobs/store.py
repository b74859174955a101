"""Background jobs: a job store in SQLite and detached worker processes that run score/learn.

The dashboard and the CLI call :func:`submit`, :func:`status`, :func:`list_jobs`, :func:`cancel`,
:func:`resume` and :func:`logs`; a job runs in its own process (``python -m curation.jobs.worker``,
started in a new session) so it outlives the Streamlit server and the CLI that started it.

Workspace layout (see :mod:`curation.jobs.workspace`)::

    WORKSPACE/jobs.sqlite        the store (WAL mode: readers never wait for the writing worker)
    WORKSPACE/jobs/ID/job.log    the worker's log (every attempt appends to it)
    WORKSPACE/jobs/ID/job.json   the submitted config, for humans
    WORKSPACE/runs/ID/           the job's output folder unless the config names one

States::

    queued -> running -> succeeded | failed | cancelled
                     \\-> interrupted (the worker died: pid gone, or no heartbeat for STALE_S)
    interrupted | failed | cancelled --resume--> queued

There is no scheduler daemon.  Whoever touches the store (a submit, a status poll, a worker that
just finished) first marks dead workers' jobs ``interrupted`` and then starts the oldest queued
job of every device that has a free slot (one running job per device by default,
``$CURATION_JOBS_PER_DEVICE``).  Every state change is a single transaction guarded by the
worker's pid, so a worker that was given up for dead can never overwrite its job's new state.

Resuming runs the same config again in the same output folder; the runs commit their work in
chunks (score) or checkpoints (learn) and skip what is committed, so a kill loses at most the
chunk or checkpoint interval in progress.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

from curation.atomic import write_json
from curation.system import PROJECT_ROOT, process_alive, process_start_time, workspace_root

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINAL_STATES = ("succeeded", "failed", "cancelled")
RESUMABLE_STATES = ("interrupted", "failed", "cancelled")

# The job kinds: kind -> (module, config dataclass, run function `run(cfg, progress) -> folder`,
# one-line help).  This is the one registry: the CLI builds a command per kind from it, the store
# checks configs with it and the worker runs it.  Modules import torch only inside their run
# functions, so the store, the CLI and the dashboard stay light.
KINDS = {
    "score": ("curation.runs.score", "ScoreConfig", "run_score", "assistant-token losses of a model over SFT data or preference pairs"),
    "learn": ("curation.runs.learn", "LearnConfig", "run_learn",
              "train a reference model on the pool; DavIR, RHO, IFD, S2L scores (on preference pairs: a DPO "
              "reference; reward and davir margins)"),
    "validate": ("curation.validation.validate", "ValidateConfig", "run_validate",
                 "fine-tune a proxy on each selection and on random baselines; compare held-out NLL"),
    "mix": ("curation.validation.mix", "MixConfig", "run_mix",
            "train at several domain mixes, fit the mixing law per eval set, recommend a mix"),
}

DB_NAME = "jobs.sqlite"
HEARTBEAT_S = 2.0  # how often a worker touches its row
DEFAULT_STALE_S = 120.0  # a running job whose heartbeat is older than this is presumed hung
HOST = socket.gethostname()

# Progress keys that have their own column; other scalar keys go to the `extra` JSON column.
PROGRESS_COLUMNS = ("phase", "done", "total", "tokens", "tokens_per_s", "eta_s")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- submission order; queues start in this order
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,                    -- JSON of the config dataclass (asdict)
    device TEXT NOT NULL,                    -- resolved device ("cpu", "cuda:0"): the queue key
    cwd TEXT NOT NULL,                       -- the submitter's folder: relative sources resolve here
    out TEXT NOT NULL,
    log TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT, done INTEGER, total INTEGER, tokens INTEGER, tokens_per_s REAL, eta_s REAL,
    extra TEXT,                              -- other progress keys (JSON), e.g. a training loss
    pid INTEGER, pid_start INTEGER, host TEXT, heartbeat REAL,
    suspect REAL,                            -- when a reader first found the heartbeat stale
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created REAL NOT NULL, started REAL, finished REAL, updated REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, device, seq);
"""


_ADDED_COLUMNS = {"suspect": "REAL"}
_REQUIRED_COLUMNS = {"seq", "id", "kind", "config", "device", "cwd", "out", "log", "state", "pid", "heartbeat",
                     "cancel_requested", "created"}


class JobError(ValueError):
    """A job request that cannot be honoured (unknown id, wrong state, unknown kind)."""


class JobCancelled(BaseException):
    """Raised inside a worker by SIGTERM.  A BaseException so library ``except Exception``
    blocks cannot swallow it."""


# ---------------------------------------------------------------------------------------------
# public API


def submit(kind: str, config, workspace: str | os.PathLike | None = None) -> str:
    """Queue a ``kind`` job with ``config`` and return its id (see :meth:`JobStore.submit`)."""
    return JobStore(workspace).submit(kind, config)


def status(job_id: str, workspace: str | os.PathLike | None = None) -> dict:
    """One job as a dict (see :meth:`JobStore.status`)."""
    return JobStore(workspace).status(job_id)


def list_jobs(workspace: str | os.PathLike | None = None) -> list[dict]:
    """All jobs, newest first, as :func:`status` dicts."""
    return JobStore(workspace).list()


def cancel(job_id: str, workspace: str | os.PathLike | None = None, wait: float = 30.0) -> dict:
    """Cancel a queued or running job and return its status (see :meth:`JobStore.cancel`)."""
    return JobStore(workspace).cancel(job_id, wait)


def resume(job_id: str, workspace: str | os.PathLike | None = None) -> dict:
    """Queue a stopped job again (see :meth:`JobStore.resume`)."""
    return JobStore(workspace).resume(job_id)


def logs(job_id: str, workspace: str | os.PathLike | None = None, tail: int | None = None) -> str:
    """The job's log text (the last ``tail`` lines if given)."""
    return JobStore(workspace).logs(job_id, tail)


def kind_entry(kind: str):
    """``(config class, run function)`` of a job kind, imported now."""
    import importlib

    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")
    module, cfg_name, run_name, _ = KINDS[kind]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise JobError(f"job kind {kind!r} is not available: module {module} is missing") from None
    return getattr(mod, cfg_name), getattr(mod, run_name)


# ---------------------------------------------------------------------------------------------
# the store


class JobStore:
    """The job store of one workspace: ``WORKSPACE/jobs.sqlite``.

    The dashboard and the CLI use :meth:`submit`, :meth:`status`, :meth:`list`, :meth:`cancel`,
    :meth:`resume`, :meth:`logs`; a worker uses :meth:`register`, :meth:`progress`,
    :meth:`heartbeat` and :meth:`finish`.  Only this class knows the schema.
    """

    def __init__(self, workspace: str | os.PathLike | None = None, keep_open: bool = False):
        self.ws = workspace_root(workspace)
        self.path = self.ws / DB_NAME
        self._conn = None if not keep_open else connect(self.ws)  # a worker writes often: one connection

    @contextmanager
    def connect(self):
        if self._conn is not None:
            yield self._conn
            return
        conn = connect(self.ws)
        try:
            yield conn
        finally:
            conn.close()

    def submit(self, kind: str, config) -> str:
        """Queue a ``kind`` job (see :data:`KINDS`) with ``config`` and return its id.

        ``config`` is the kind's config dataclass or a dict of its fields.  An empty ``out`` becomes
        ``WORKSPACE/runs/JOB_ID``.  The job starts at once in a detached worker if its device is free,
        else it waits for the jobs queued before it.
        """
        cls, _ = kind_entry(kind)
        if is_dataclass(config):
            fields = asdict(config)
        elif isinstance(config, dict):
            fields = dict(config)
        else:
            raise JobError(f"config: expected a {cls.__name__} or a dict, got {type(config).__name__}")
        ws = self.ws
        job_id = _new_id(kind)
        fields["out"] = str(Path(fields["out"]).expanduser().resolve()) if fields.get("out") \
            else str(ws / "runs" / job_id)
        cfg = cls(**fields)  # validates (__post_init__) before anything is stored
        fields = asdict(cfg)
        device = _device_key(getattr(cfg, "device", None))
        log = ws / "jobs" / job_id / "job.log"
        now = time.time()
        with self.connect() as conn:
            with _write(conn):
                busy = conn.execute("SELECT id FROM jobs WHERE out = ? AND state IN ('queued', 'running')",
                                    (fields["out"],)).fetchone()
                if busy:
                    raise JobError(f"out {fields['out']}: job {busy['id']} is already writing there; "
                                   "wait for it, cancel it, or choose another output folder")
                conn.execute(
                    "INSERT INTO jobs (id, kind, config, device, cwd, out, log, state, phase, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 'queued', ?, ?)",
                    (job_id, kind, json.dumps(fields), device, os.getcwd(), fields["out"], str(log), now, now),
                )
                _dispatch(conn, ws)
        write_json(log.parent / "job.json", {"id": job_id, "kind": kind, "config": fields, "created": now})
        return job_id

    def status(self, job_id: str) -> dict:
        """One job as a dict: ``id, kind, state, phase, done, total, fraction, tokens, tokens_per_s,
        eta_s, pid, device, out, log, error, created, started, finished`` (epoch seconds), ``config``,
        ``extra`` (other progress values), ``attempts``, ``heartbeat_age_s``, ``queue_position``.

        ``tokens`` and ``tokens_per_s`` count the current attempt; ``done`` counts committed and
        skipped work too.  Calling it also marks dead workers' jobs ``interrupted`` and starts queued
        jobs whose device is free (there is no scheduler daemon)."""
        ws = self.ws
        with self.connect() as conn:
            _refresh(conn, ws)
            row = _get(conn, job_id, ws)
            return _as_dict(row, _queue_positions(conn))

    def list(self) -> list[dict]:
        """All jobs, newest first, as :func:`status` dicts."""
        ws = self.ws
        if not self.path.is_file():
            return []
        with self.connect() as conn:
            _refresh(conn, ws)
            rows = conn.execute("SELECT * FROM jobs ORDER BY seq DESC").fetchall()
            positions = _queue_positions(conn)
        return [_as_dict(r, positions) for r in rows]

    def cancel(self, job_id: str, wait: float = 30.0) -> dict:
        """Cancel a queued or running job and return its status.

        A running worker gets SIGTERM, stops at its next Python instruction (committed chunks stay)
        and marks the job ``cancelled``; if it has not stopped after ``wait`` seconds it is killed.
        With ``wait=0`` it returns at once (state still ``running``, phase ``cancelling``).
        """
        ws = self.ws
        with self.connect() as conn:
            with _write(conn):
                _reap(conn)
                row = _get(conn, job_id, ws)
                if row["state"] == "queued":
                    _set_final(conn, row, "cancelled", "cancelled before it started")
                    _dispatch(conn, ws)
                    return _as_dict(_get(conn, job_id, ws), {})
                if row["state"] != "running":
                    raise JobError(f"job {job_id} is {row['state']}; only queued or running jobs can be cancelled")
                conn.execute("UPDATE jobs SET cancel_requested = 1, phase = 'cancelling', updated = ? WHERE id = ?",
                             (time.time(), job_id))
            # The heartbeat thread also notices cancel_requested (workers on other hosts); the
            # signal just makes it immediate here.
            _signal(row, signal.SIGTERM)
            if wait <= 0:  # the dashboard: don't block; the worker records `cancelled` itself
                return _as_dict(_get(conn, job_id, ws), _queue_positions(conn))
            deadline = time.time() + wait
            while time.time() < deadline:
                _refresh(conn, ws)
                row = _get(conn, job_id, ws)
                if row["state"] != "running":
                    return _as_dict(row, _queue_positions(conn))
                time.sleep(0.1)
            _signal(row, signal.SIGKILL)
            with _write(conn):
                row = _get(conn, job_id, ws)
                if row["state"] == "running":
                    _set_final(conn, row, "cancelled", f"cancelled; the worker did not stop within {wait:g}s and was killed")
                _dispatch(conn, ws)
            return _as_dict(_get(conn, job_id, ws), _queue_positions(conn))

    def resume(self, job_id: str) -> dict:
        """Queue an interrupted, failed or cancelled job again with the same config and output folder.

        The run skips the work it committed before (score chunks, learn checkpoints).  The job keeps
        its place in the submission order, so it starts as soon as its device is free.
        """
        ws = self.ws
        with self.connect() as conn:
            with _write(conn):
                _reap(conn)
                row = _get(conn, job_id, ws)
                if row["state"] not in RESUMABLE_STATES:
                    why = "it finished" if row["state"] == "succeeded" else "it is still " + row["state"]
                    raise JobError(f"job {job_id} cannot be resumed: {why}")
                busy = conn.execute("SELECT id FROM jobs WHERE out = ? AND state IN ('queued', 'running') AND id != ?",
                                    (row["out"], job_id)).fetchone()
                if busy:
                    raise JobError(f"job {job_id} cannot be resumed now: job {busy['id']} is writing to {row['out']}")
                conn.execute(
                    "UPDATE jobs SET state = 'queued', phase = 'queued (resume)', error = NULL, finished = NULL,"
                    " eta_s = NULL, tokens_per_s = NULL, cancel_requested = 0, updated = ? WHERE id = ?",
                    (time.time(), job_id))
                _dispatch(conn, ws)
            return _as_dict(_get(conn, job_id, ws), _queue_positions(conn))

    def logs(self, job_id: str, tail: int | None = None) -> str:
        """The job's log text (the last ``tail`` lines if given)."""
        ws = self.ws
        with self.connect() as conn:
            row = _get(conn, job_id, ws)
        path = Path(row["log"])
        text = path.read_text(errors="replace") if path.is_file() else ""
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        return text

    # -- the worker's side ---------------------------------------------------------------------

    def register(self, job_id: str, pid: int) -> dict | None:
        """The job's row if it is running and assigned to ``pid`` (the launcher wrote the pid in the
        same transaction that started the worker), else None; stamps the first heartbeat."""
        with self.connect() as conn, _write(conn):
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "running" or row["pid"] != pid:
                return None
            now = time.time()
            conn.execute("UPDATE jobs SET heartbeat = ?, phase = 'starting', updated = ? WHERE id = ?",
                         (now, now, job_id))
            return dict(row)

    def progress(self, job_id: str, pid: int, p: dict, eta: float | None) -> None:
        """Record a progress dict in the job's row, as one transaction (readers always see one
        consistent set of values); keys without a column go to ``extra``."""
        now = time.time()
        extra = {k: v for k, v in p.items()
                 if k not in PROGRESS_COLUMNS and isinstance(v, (int, float, str, bool, type(None)))}
        with self.connect() as conn:
            conn.execute(
                "UPDATE jobs SET phase = ?, done = ?, total = ?, tokens = ?, tokens_per_s = ?, eta_s = ?,"
                " extra = ?, heartbeat = ?, updated = ? WHERE id = ? AND pid = ? AND state = 'running'",
                (p.get("phase"), p.get("done"), p.get("total"), p.get("tokens"), p.get("tokens_per_s"), eta,
                 json.dumps(extra), now, now, job_id, pid))

    def heartbeat(self, job_id: str, pid: int) -> bool:
        """Touch the row; False when the job is no longer this worker's or was cancelled."""
        with self.connect() as conn:
            n = conn.execute("UPDATE jobs SET heartbeat = ? WHERE id = ? AND pid = ? AND state = 'running'",
                             (time.time(), job_id, pid)).rowcount
            cancel = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        return n == 1 and not cancel

    def finish(self, job_id: str, pid: int, state: str, error: str | None) -> bool:
        """Record the outcome (if the job is still this worker's) and start the next queued job of
        the device.  Returns False when the job had been taken over (given up for dead)."""
        with self.connect() as conn, _write(conn):
            cur = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            ours = cur is not None and cur["state"] == "running" and cur["pid"] == pid
            if ours:
                _set_final(conn, cur, state, error)
                if state == "succeeded":
                    conn.execute("UPDATE jobs SET phase = 'done' WHERE id = ?", (job_id,))
            _dispatch(conn, self.ws)
        return ours


def connect(ws: Path) -> sqlite3.Connection:
    """Open (and create) the store of workspace ``ws`` in WAL mode, autocommit.

    A file that is not a job store (not SQLite, truncated, another schema) is refused with a
    :class:`JobError` that names it and says how to move it aside."""
    ws.mkdir(parents=True, exist_ok=True)
    path = ws / DB_NAME
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so each transaction takes the
        # write lock up front and two dispatchers can never both see a device as free.
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe against corruption
        conn.executescript(_SCHEMA)
        have = {r["name"] for r in conn.execute("PRAGMA table_info(jobs)")}
        for name, decl in _ADDED_COLUMNS.items():  # stores made by earlier versions
            if name not in have:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        missing = _REQUIRED_COLUMNS - {r["name"] for r in conn.execute("PRAGMA table_info(jobs)")}
        if missing:
            raise sqlite3.DatabaseError(f"its jobs table lacks the columns {sorted(missing)}")
        conn.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.DatabaseError as e:
        raise JobError(f"{path}: the job store is unreadable ({e}); move it aside "
                       f"(mv {path} {path}.broken) and the next command starts an empty store "
                       "(the run folders under runs/ are not affected)") from None
    return conn


@contextmanager
def _write(conn: sqlite3.Connection):
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _get(conn, job_id: str, ws: Path) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobError(f"no job {job_id!r} in {ws} (see `python -m curation jobs list`)")
    return row


def _as_dict(row: sqlite3.Row, positions: dict) -> dict:
    d = dict(row)
    d["config"] = json.loads(d["config"])
    d["extra"] = json.loads(d["extra"]) if d["extra"] else {}
    now = time.time()
    d["fraction"] = d["done"] / d["total"] if d["total"] and d["done"] is not None else None
    d["heartbeat_age_s"] = now - d["heartbeat"] if d["state"] == "running" and d["heartbeat"] else None
    d["elapsed_s"] = (d["finished"] or now) - d["started"] if d["started"] else None
    d["queue_position"] = positions.get(d["id"])
    return d


def _queue_positions(conn) -> dict[str, int]:
    """1 for the next queued job of its device, 2 for the one after, ..."""
    seen: Counter = Counter()
    out = {}
    for r in conn.execute("SELECT id, device FROM jobs WHERE state = 'queued' ORDER BY seq"):
        seen[r["device"]] += 1
        out[r["id"]] = seen[r["device"]]
    return out


def _new_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _device_key(device: str | None) -> str:
    """The device a job will run on, resolved now, so that "auto" and "cpu" share one queue."""
    from curation.scoring.models import pick_device

    dev, _ = pick_device(device, None)
    return "cuda:0" if dev == "cuda" else dev


def jobs_per_device() -> int:
    return max(1, int(os.environ.get("CURATION_JOBS_PER_DEVICE", "1")))


def stale_after_s() -> float:
    return float(os.environ.get("CURATION_JOB_STALE_S", DEFAULT_STALE_S))


# ---------------------------------------------------------------------------------------------
# liveness, reaping, dispatching


def _pid_alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    try:  # a worker we started ourselves stays a zombie until reaped; reap it
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass
    return process_alive(pid, start)


SUSPECT = "suspect"


def _death(row, now: float) -> str | None:
    """Why a ``running`` row's worker is dead, :data:`SUSPECT`, or None if it is alive.

    A dead pid is final.  A stale heartbeat is only a suspicion at first: after a laptop sleeps,
    every heartbeat looks old until the worker's thread wakes up.  The job is given up only if
    the heartbeat is still older than the first suspicion ``2 * HEARTBEAT_S + 1`` s later.
    """
    age = now - (row["heartbeat"] or row["started"] or now)
    if row["host"] == HOST and not _pid_alive(row["pid"], row["pid_start"]):
        return f"the worker (pid {row['pid']}) died without finishing (last heartbeat {age:.0f}s ago)"
    if age <= stale_after_s():
        return None
    if row["suspect"] is None or row["heartbeat"] > row["suspect"]:
        return SUSPECT
    if now - row["suspect"] > 2 * HEARTBEAT_S + 1:
        return f"the worker (pid {row['pid']} on {row['host']}) sent no heartbeat for {age:.0f}s"
    return None


def _reap(conn) -> None:
    """Inside a write transaction: mark running jobs whose worker is gone as interrupted."""
    now = time.time()
    for row in conn.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
        why = _death(row, now)
        if why is None:
            continue
        if why == SUSPECT:
            conn.execute("UPDATE jobs SET suspect = ? WHERE id = ?", (now, row["id"]))
            continue
        if row["host"] == HOST and _pid_alive(row["pid"], row["pid_start"]):
            _signal(row, signal.SIGKILL)  # alive but hung: make sure it cannot write any more
        if row["cancel_requested"]:
            _set_final(conn, row, "cancelled", "cancelled")
        else:
            conn.execute(
                "UPDATE jobs SET state = 'interrupted', error = ?, eta_s = NULL, tokens_per_s = NULL,"
                " finished = ?, updated = ? WHERE id = ? AND state = 'running'",
                (why, now, now, row["id"]))


def _needs_dispatch(conn) -> bool:
    """Read-only check: is a running job dead, or can a queued job start?"""
    now = time.time()
    running = conn.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
    if any(_death(r, now) for r in running):
        return True
    busy = Counter(r["device"] for r in running)
    limit = jobs_per_device()
    return any(busy[r["device"]] < limit
               for r in conn.execute("SELECT DISTINCT device FROM jobs WHERE state = 'queued'"))


def _refresh(conn, ws: Path) -> None:
    """Reap dead workers and start queued jobs, taking the write lock only when needed."""
    if _needs_dispatch(conn):
        with _write(conn):
            _dispatch(conn, ws)


def _dispatch(conn, ws: Path) -> None:
    """Inside a write transaction: reap, then start the oldest queued job of each free device."""
    _reap(conn)
    busy = Counter(r["device"] for r in conn.execute("SELECT device FROM jobs WHERE state = 'running'"))
    limit = jobs_per_device()
    for row in conn.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall():
        if busy[row["device"]] >= limit:
            continue
        _launch(conn, ws, row)
        busy[row["device"]] += 1


def _launch(conn, ws: Path, row) -> None:
    """Start a detached worker for a queued job and mark the job running (same transaction, so
    the worker, which registers with BEGIN IMMEDIATE, always finds its pid in the row)."""
    log = Path(row["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    package_root = str(PROJECT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["CURATION_WORKSPACE"] = str(ws)  # the job's workspace: its curator decisions, its dev sets
    cwd = row["cwd"] if Path(row["cwd"]).is_dir() else str(ws)
    now = time.time()
    try:
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "curation.jobs.worker", row["id"], "--workspace", str(ws)],
                cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,  # own session: survives the server/CLI and their Ctrl-C
            )
    except OSError as e:
        _set_final(conn, row, "failed", f"could not start the worker: {e}", check_pid=False)
        return
    # Reap the worker when it exits if we live longer than it (the Streamlit server does).
    threading.Thread(target=proc.wait, daemon=True).start()
    conn.execute(
        "UPDATE jobs SET state = 'running', pid = ?, pid_start = ?, host = ?, heartbeat = ?, started = ?,"
        " finished = NULL, error = NULL, suspect = NULL, attempts = attempts + 1, phase = 'starting', updated = ?"
        " WHERE id = ?",
        (proc.pid, process_start_time(proc.pid), HOST, now, now, now, row["id"]))


def _set_final(conn, row, state: str, error: str | None, check_pid: bool = True) -> bool:
    now = time.time()
    sql = ("UPDATE jobs SET state = ?, error = ?, finished = ?, updated = ?, eta_s = NULL, tokens_per_s = NULL"
           " WHERE id = ? AND state = ?")
    args = [state, error, now, now, row["id"], row["state"]]
    if check_pid and row["state"] == "running":
        sql += " AND pid = ?"
        args.append(row["pid"])
    return conn.execute(sql, args).rowcount == 1


def _signal(row, sig) -> None:
    """Send ``sig`` to the job's worker if it is ours and still the same process."""
    if row["host"] == HOST and _pid_alive(row["pid"], row["pid_start"]):
        try:
            os.kill(row["pid"], sig)
        except ProcessLookupError:
            pass

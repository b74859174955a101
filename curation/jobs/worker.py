"""The job worker: ``python -m curation.jobs.worker JOB_ID --workspace WS`` runs one job of the store.

Started detached by :mod:`curation.jobs.store` (never by hand).  It registers in the job's row (the
launcher already wrote its pid there), heartbeats every ``HEARTBEAT_S`` from a thread, writes
the run's progress into the row, logs to ``WORKSPACE/jobs/ID/job.log`` (its stdout/stderr), and
finishes the row as succeeded, failed (one-line reason, details in the log) or cancelled (on
SIGTERM).  Then it starts the next queued job of its device and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import traceback

from curation.jobs import store as jobs

log = logging.getLogger("curation.jobs.worker")

# Write progress at most this often (tiny models report hundreds of batches a second), but
# always on a phase change and at the end.
PROGRESS_EVERY_S = 0.25
LOG_PROGRESS_EVERY_S = 15.0


def _on_sigterm(signum, frame):
    # Raised in the main thread at its next bytecode; committed chunks stay on disk, the
    # chunk in progress is dropped (its temp files are removed by curation.atomic).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise jobs.JobCancelled(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)  # first thing: a cancel may come at once
    signal.signal(signal.SIGINT, _on_sigterm)
    p = argparse.ArgumentParser(prog="python -m curation.jobs.worker")
    p.add_argument("job_id")
    p.add_argument("--workspace", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    store = jobs.JobStore(args.workspace, keep_open=True)
    pid = os.getpid()
    row = store.register(args.job_id, pid)  # waits for the launcher's transaction
    if row is None:
        log.warning("job %s is not assigned to this worker (pid %d); exiting", args.job_id, pid)
        return 0
    log.info("==== job %s (%s), attempt %d, pid %d on %s, python %s, cwd %s",
             row["id"], row["kind"], row["attempts"], pid, jobs.HOST, sys.executable, os.getcwd())
    log.info("config %s", row["config"])

    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(args.workspace, row["id"], pid, stop), daemon=True)
    beat.start()
    state, error = "failed", None
    try:
        cfg_cls, run = jobs.kind_entry(row["kind"])
        cfg = cfg_cls(**json.loads(row["config"]))
        out = run(cfg, ProgressWriter(store, row["id"], pid))
        state = "succeeded"
        log.info("succeeded; output in %s", out)
    except jobs.JobCancelled:
        state, error = "cancelled", "cancelled by request"
        log.info("cancelled; committed work stays in %s and a resume continues from it", row["out"])
    except BaseException as e:  # noqa: BLE001 - every failure must end up in the row and the log
        error = f"{one_line_reason(e)} (log: {row['log']})"
        log.error("failed: %s\n%s", error, traceback.format_exc())
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the outcome is decided; record it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not store.finish(row["id"], pid, state, error):  # also starts the next queued job
        log.warning("job %s was taken over; not recording %s", row["id"], state)
    return {"succeeded": 0, "cancelled": 0}.get(state, 1)


def one_line_reason(e: BaseException) -> str:
    """A failure as one line: the message for errors the user can fix, else type and message."""
    from curation.data.load import SourceError
    from curation.scoring.models import ModelError

    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    elif not isinstance(e, (SourceError, ModelError, ValueError)):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= 400 else text[:397] + "..."


class ProgressWriter:
    """The run's ``progress`` callback: writes the dict into the job's row and adds an ETA when
    the run gives none.  Throttled to one write per PROGRESS_EVERY_S, except on a phase change, a
    committed chunk and the end of a phase, which are written at once."""

    def __init__(self, store: jobs.JobStore, job_id: str, pid: int):
        self.store, self.job_id, self.pid = store, job_id, pid
        self.phase = None
        self.last_write = self.last_log = 0.0
        self.t0 = self.done0 = self.committed = None

    def __call__(self, **p) -> None:
        now = time.time()
        phase, done, total = p.get("phase"), p.get("done"), p.get("total")
        changed = phase != self.phase
        if changed:
            self.phase, self.t0, self.done0, self.committed = phase, now, done, None
        # A chunk was just committed (reports without the key are ordinary progress).
        milestone = p.get("committed") is not None and p["committed"] != self.committed
        if milestone:
            self.committed = p["committed"]
        eta = p.get("eta_s")
        if eta is None and done is not None and total and self.done0 is not None and done > self.done0:
            rate = (done - self.done0) / max(now - self.t0, 1e-9)  # examples/s in this phase
            eta = (total - done) / rate
        finished = done is not None and total is not None and done >= total
        if not (changed or milestone or finished or now - self.last_write >= PROGRESS_EVERY_S):
            return
        self.last_write = now
        try:
            self.store.progress(self.job_id, self.pid, p, eta)
        except (sqlite3.Error, jobs.JobError) as e:  # a store locked for a minute must not fail the run
            log.warning("could not record progress: %s", e)
        if changed or now - self.last_log >= LOG_PROGRESS_EVERY_S:
            self.last_log = now
            tps = p.get("tokens_per_s")
            log.info("%s%s%s%s", phase, f" {done}/{total}" if total is not None else "",
                     f", {tps:.0f} tok/s" if tps else "", f", ETA {eta:.0f}s" if eta is not None else "")


def _heartbeat(workspace: str, job_id: str, pid: int, stop: threading.Event) -> None:
    """Touch the row every HEARTBEAT_S; stop the job if it was cancelled or taken away."""
    store = jobs.JobStore(workspace, keep_open=True)  # its own connection: this is another thread
    while not stop.wait(jobs.HEARTBEAT_S):
        try:
            ours = store.heartbeat(job_id, pid)
        except Exception as e:  # noqa: BLE001 - a busy store must not kill the job
            log.warning("heartbeat failed: %s", e)
            continue
        if not ours and not stop.is_set():
            # Given up for dead (no longer ours) or cancelled from another host: stop.
            os.kill(pid, signal.SIGTERM)
            return


if __name__ == "__main__":
    raise SystemExit(main())

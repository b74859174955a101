"""The Ray watchdog: ``python -m curation.scoring.watchdog DRIVER_PID DRIVER_START TEMP_DIR``.

Started by :func:`curation.scoring.engine.ray_instance` in its own session before ``ray.init``.  It
polls the driver; when the driver is gone (even killed with SIGKILL), or has closed the watchdog's
stdin (after its own ``ray.shutdown()``), it SIGKILLs every process that holds a file open under the
instance's private temp folder (gcs_server, raylet, agents and workers all keep their logs there),
whose arguments name that folder (a worker still starting has opened nothing yet), or that
descends from one of those, sweeping until three sweeps in a row find nothing (at most 30 s).  By
files and arguments, not by name: setproctitle rewrites a process's name, and another Ray instance
on the machine has another folder.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from curation.system import parent_pid, process_start_time


def instance_processes(prefix: str, driver: int) -> set[int]:
    """Pids of the processes that belong to the instance whose temp folder is ``prefix``."""
    out, parent = set(), {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in (os.getpid(), driver):
            continue
        pid = int(d)
        pp = parent_pid(pid)
        if pp is None:
            continue
        parent[pid] = pp
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if prefix.encode() in f.read():  # a worker still starting: its arguments name the folder
                    out.add(pid)
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                        out.add(pid)
                        break
                except OSError:
                    pass
        except OSError:
            continue
    grown = True
    while grown:  # and every descendant (forked, not yet exec'd or renamed)
        more = {p for p, pp in parent.items() if pp in out} - out
        grown = bool(more)
        out |= more
    return out


def main(argv: list[str]) -> None:
    driver, start, prefix = int(argv[0]), int(argv[1]), argv[2].rstrip("/") + "/"
    while process_start_time(driver) == start:
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready and not sys.stdin.buffer.read1(1):  # the driver closed our stdin: a clean end
            break
    quiet, t0 = 0, time.time()
    while quiet < 3 and time.time() - t0 < 30:  # until three sweeps in a row find nothing
        found = instance_processes(prefix, driver)
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        quiet = 0 if found else quiet + 1
        time.sleep(0.3)


if __name__ == "__main__":
    main(sys.argv[1:])

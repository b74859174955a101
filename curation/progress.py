"""Progress reports: one shape for every long piece of work.

A run function takes ``progress``, a callable called with keyword fields::

    progress(phase="scoring", done=120, total=520, unit="examples", tokens=31_000, tokens_per_s=612.0, eta_s=650.0)

``phase`` names the step; ``done``/``total`` count its units, which ``unit`` names where the work
is reported (``examples`` for a scoring pass, ``steps`` (optimizer steps) for a training,
``trainings``, ...; the CLI's bars show it); the other fields are optional (``tokens``, ``tokens_per_s``, ``eta_s``, ``train_loss``, ``lr``,
``committed``, ``workers``, ...).  The CLI draws them as tqdm bars, the job worker writes them into
the job store, the dashboard shows the store.  :class:`Reporter` keeps the current state, so a
consumer always receives the whole picture (the phase with its latest numbers), not a fragment.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

Progress = Callable[..., None]

# Fields that belong to one phase and are dropped when the next phase starts.
PHASE_FIELDS = ("committed", "eta_s", "cached", "unit", "running")


def format_duration(seconds, missing: str = "-") -> str:
    """An ETA or an elapsed time for people: ``1h 02m``, ``3m 05s``, ``42s`` (``missing`` when
    unknown: None or NaN).  The CLI's job tables and the dashboard's job panel both show it."""
    if seconds is None or seconds != seconds:  # None or NaN
        return missing
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def count_text(n: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``: a count and its noun for people (reports, pages)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def silent(**fields) -> None:
    """A progress callback that discards every report."""


class Reporter:
    """Collects a run's progress fields and calls ``progress(**state)`` with the whole state on
    every update.  A Reporter is itself a :data:`Progress`, so stages pass it down unchanged."""

    def __init__(self, progress: Progress | None):
        self.progress = progress if not isinstance(progress, Reporter) else progress.progress
        self.state: dict = {}

    def __call__(self, **fields) -> None:
        if "phase" in fields and fields["phase"] != self.state.get("phase"):
            self.state = {k: v for k, v in self.state.items() if k not in PHASE_FIELDS}
        self.state.update(fields)
        if self.progress is not None:
            self.progress(**self.state)


class Timings:
    """Wall time per stage of this session (``with timings("train"): ...``)."""

    def __init__(self):
        self.t0, self.s = time.time(), {}

    @contextmanager
    def __call__(self, name: str):
        t = time.time()
        try:
            yield
        finally:
            self.s[name] = self.s.get(name, 0.0) + time.time() - t

    def total(self) -> dict[str, float]:
        return {**{k: round(v, 2) for k, v in self.s.items()}, "total_session": round(time.time() - self.t0, 2)}

"""Seeds until decided: look after every seed, stop when every comparison is decided, and keep the
error rates of a single look.

``validate --seeds auto --max-seeds N`` trains seed after seed of every arm and looks at the
comparisons after each (from ``first`` seeds on).  Looking again and again at a growing sample and
stopping at the first interval that excludes 0 would, with a fixed 95% interval, call "better" or
"worse" far more often than 5% of the time when there is no difference.  Alpha spending (Lan &
DeMets 1983) fixes it: the error budget ``alpha`` is spent over the looks by a spending function
``f(t)`` of the information fraction ``t = n / N`` (``n`` seeds of ``N``), and look ``k`` gets the
increment ``f(t_k) - f(t_{k-1})`` as its own two-sided error rate: its interval's level is one minus
that (with its own Student's t degrees of freedom).  The chance of any false call is then at most
the sum of the increments, ``f(1) = alpha``, whatever the correlation between the looks (the union
bound), as long as each look's interval holds its level.

Why not the exact group-sequential boundaries (which spend the budget on the looks' joint normal
law, ``corr(Z_i, Z_j) = sqrt(t_i / t_j)``, and give each look a wider level)?  They assume normal
statistics; our looks have 2-7 degrees of freedom, and in a simulation where training luck
dominates (``bench/verdicts_sim.py --sd-seed 0.02 --sd-ex 0.02``) they called a difference 6.0% of
the time when there was none, against 4.1% with the union bound.  Where the eval examples dominate
(the default regime here) the union bound costs about 0.2 seeds per comparison on average; the
README gives both tables.

Spending functions:

``obrien-fleming`` (the default) ``f(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt t)``: almost nothing is
    spent on the first looks, whose intervals (2-3 seeds, 1-2 degrees of freedom) are too wide to
    decide anything anyway, so the last look keeps nearly the whole 95%;
``pocock`` ``f(t) = alpha ln(1 + (e - 1) t)``: spends evenly, stops earlier on large effects and
    pays with wider intervals at the end.

Equivalence is the same boundary on each side (two one-sided tests), so a true difference of the
margin is called equivalent at most ``alpha / 2`` of the time.  A comparison's verdict is the one
of the first look that decided it (better, worse or equivalent) and does not change after (later
seeds are trained for the comparisons not decided yet); an undecided comparison keeps its last
look's interval.  ``bench/verdicts_sim.py`` checks the error rates and the seeds used by
simulation; the README gives them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pandas as pd
import scipy.stats

from curation.validation.verdicts import DECIDED, LEVEL, build_report

SPENDING = ("obrien-fleming", "pocock")
FIRST_LOOK = 3  # seeds per arm at the first look: with 2 the seed part has 1 degree of freedom
MAX_SEEDS_AUTO = 20


@dataclass(frozen=True)
class SeedPlan:
    """How a study spends seeds: a fixed number (one look at 95%), or seeds until decided."""

    max_seeds: int
    auto: bool = False
    first: int = FIRST_LOOK
    alpha: float = 1 - LEVEL
    spending: str = "obrien-fleming"

    def __post_init__(self):
        if self.spending not in SPENDING:
            raise ValueError(f"spending {self.spending!r}: expected one of {', '.join(SPENDING)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha {self.alpha!r}: an error rate between 0 and 1 (0.05 is the usual)")
        if self.auto and not 2 <= self.first <= self.max_seeds <= MAX_SEEDS_AUTO:
            raise ValueError(f"max-seeds {self.max_seeds}: seeds until decided look from {self.first} seeds on and "
                             f"stop at most at {MAX_SEEDS_AUTO}; give --max-seeds between {self.first} and "
                             f"{MAX_SEEDS_AUTO}")

    @property
    def looks(self) -> list[int]:
        """The seed counts at which the comparisons are looked at."""
        return list(range(self.first, self.max_seeds + 1)) if self.auto else [self.max_seeds]

    def level(self, n: int) -> float:
        """The confidence level of the intervals at the look after ``n`` seeds."""
        if not self.auto:
            return 1 - self.alpha
        return 1 - nominal_alphas(tuple(self.looks), self.max_seeds, self.alpha, self.spending)[n]


def spent(t: float, alpha: float, kind: str) -> float:
    """The error budget spent by information fraction ``t`` (0 < t <= 1)."""
    if kind == "obrien-fleming":
        return float(2 - 2 * scipy.stats.norm.cdf(scipy.stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"spending {kind!r}: expected one of {', '.join(SPENDING)}")


@functools.lru_cache(maxsize=64)
def nominal_alphas(looks: tuple[int, ...], max_seeds: int, alpha: float, kind: str) -> dict[int, float]:
    """``{n: two-sided nominal error rate of the look after n seeds}``: the budget the spending
    function spends at that look, ``f(t_k) - f(t_{k-1})`` (their sum, the chance of any false call,
    is at most ``f(t_last) <= alpha``; see the module docstring)."""
    out, prev = {}, 0.0
    for n in looks:
        now = spent(n / max_seeds, alpha, kind)
        out[int(n)] = now - prev
        prev = now
    return out


def seeds_upto(results: pd.DataFrame, n: int) -> pd.DataFrame:
    """The rows of each candidate's first ``n`` seeds (in seed order)."""
    rank = results.groupby("candidate")["seed"].rank(method="dense")
    return results[rank <= n]


def sequential_report(results: pd.DataFrame, plan: SeedPlan, **report_args) -> dict:
    """:func:`curation.validation.verdicts.build_report` at every look the results reach; each
    comparison keeps the verdict of the first look that decided it (``decided_at``: seeds per arm),
    else its last look's.  ``looks``: the seed counts looked at, and each look's level."""
    seeds = results.groupby("candidate")["seed"].nunique()
    reached = [n for n in plan.looks if n <= int(seeds.max())]
    if not reached:  # fewer seeds than the first look: report what there is, at the first look's level
        reached = [int(seeds.max())]
    final, frozen = None, {}
    for n in reached:
        level = plan.level(n) if n in plan.looks else plan.level(plan.looks[0])
        rep = build_report(seeds_upto(results, n), level=level, **report_args)
        for c in rep["comparisons"]:
            key = (c["candidate"], c["baseline"], c["domain"])
            grows = c["n_seeds_candidate"] == n and c["n_seeds_baseline"] == n
            c["sequential"] = grows
            if key not in frozen and (c["verdict"] in DECIDED or not grows):
                frozen[key] = {**c, "decided_at": n if c["verdict"] in DECIDED else None}
        final = rep
    comparisons = []
    for c in final["comparisons"]:
        key = (c["candidate"], c["baseline"], c["domain"])
        keep = frozen.get(key)
        comparisons.append(keep if keep is not None and keep["decided_at"] is not None else {**c, "decided_at": None})
    final["comparisons"] = comparisons
    final["looks"] = [{"seeds": n, "level": plan.level(n)} for n in reached if n in plan.looks]
    final["seed_plan"] = {"auto": plan.auto, "max_seeds": plan.max_seeds, "first": plan.first, "alpha": plan.alpha,
                          "spending": plan.spending}
    return final


def undecided(report: dict) -> list[dict]:
    """The comparisons of a sequential report that more seeds could still decide."""
    return [c for c in report["comparisons"] if c.get("sequential", True) and c["verdict"] not in DECIDED]

"""Seeds until decided: look after every seed, stop when every comparison is decided, and keep the
error rates of a single look.

``validate --seeds auto --max-seeds N`` trains seed after seed of every arm and looks at the
comparisons after each (from ``first`` seeds on).  Looking again and again at a growing sample and
stopping at the first interval that excludes 0 would, with a fixed 95% interval, call "better" or
"worse" far more often than 5% of the time when there is no difference.  Group-sequential alpha
spending (Lan & DeMets 1983) fixes it: the error budget ``alpha`` is spent over the looks by a
spending function ``f(t)`` of the information fraction ``t = n / N`` (``n`` seeds of ``N``), and
look ``k`` calls a difference only when the standardised difference crosses a boundary ``c_k``
chosen so that the chance of crossing at look ``k`` for the first time is ``f(t_k) - f(t_{k-1})``
when there is no difference.  The boundaries come from the joint normal law of the looks'
statistics (``corr(Z_i, Z_j) = sqrt(t_i / t_j)``), integrated with scipy's multivariate normal
CDF; each look's interval then uses the two-sided level ``1 - 2 (1 - Phi(c_k))`` with its own
Student's t degrees of freedom (the "nominal level" way of carrying a boundary to small samples).

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

import numpy as np
import pandas as pd
import scipy.optimize
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
    """``{n: two-sided nominal error rate of the look after n seeds}`` from the spending function
    and the exact boundaries of the looks' joint normal law (see the module docstring).

    The boundaries come from the recursive numerical integration of Armitage, McPherson & Rowe
    (1969; Jennison & Turnbull 2000, ch. 19): the score ``S_k = Z_k sqrt(t_k)`` has independent
    normal increments of variance ``t_k - t_{k-1}``; the density of the paths that have not crossed
    yet is carried from look to look on a grid (Simpson's rule), and each boundary is solved so that
    the chance of crossing there first is the budget's increment."""
    t = np.array(looks, dtype=np.float64) / max_seeds
    out, grid, dens, weights, prev_t, prev_spent = {}, None, None, None, 0.0, 0.0
    for k, tk in enumerate(t):
        step = tk - prev_t  # variance of the increment S_k - S_{k-1}
        increment = spent(tk, alpha, kind) - prev_spent

        def crossing(b: float) -> float:  # P(first crossing at look k) for a boundary b on the S scale
            if grid is None:
                return float(2 * scipy.stats.norm.sf(b / math.sqrt(step)))
            sd = math.sqrt(step)
            p = scipy.stats.norm.cdf((-b - grid) / sd) + scipy.stats.norm.sf((b - grid) / sd)
            return float(np.sum(weights * dens * p))

        b = scipy.optimize.brentq(lambda b: crossing(b) - increment, 1e-6, 40.0, xtol=1e-10)
        out[int(looks[k])] = float(2 * scipy.stats.norm.sf(b / math.sqrt(tk)))
        # the density of S_k on (-b, b) of the paths that never crossed: the next look's start
        new = np.linspace(-b, b, 801)
        sd = math.sqrt(step)
        if grid is None:
            dens = scipy.stats.norm.pdf(new / sd) / sd
        else:
            kernel = scipy.stats.norm.pdf((new[:, None] - grid[None, :]) / sd) / sd  # (new, old)
            dens = kernel @ (weights * dens)
        grid = new
        weights = np.full(len(grid), 2.0)  # Simpson's rule on an odd number of points
        weights[1:-1:2] = 4.0
        weights[0] = weights[-1] = 1.0
        weights *= (grid[1] - grid[0]) / 3
        prev_t, prev_spent = tk, spent(tk, alpha, kind)
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

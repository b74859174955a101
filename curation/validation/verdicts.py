"""Statistics for ``validate``: is a curated selection better than its baselines on held-out NLL?

Input: a long table with one row per (candidate, seed, domain, eval example)::

    candidate  seed  domain  example_id  nll    n_tokens
    s2l        0     math    3f2a...     1.234  187

``nll`` is the mean assistant-token NLL of that eval example under the model trained on
``candidate``'s data with ``seed``; ``n_tokens`` its assistant-token count.  The base (untrained)
model is the candidate ``"base"`` with a single seed.

**Other measures.**  ``nll`` and ``n_tokens`` are the default :class:`Measure`: a value column, the
weight column of its weighted mean (None: every eval example weighs 1), its direction and its
unit.  A pair validation judges reward accuracy, margins and NLLs the same way with its own
measures (:mod:`curation.validation.pair_eval`): "better" is then the direction that measure
prefers, and the difference is still candidate - baseline.

A domain's **metric** for one trained model is the token-weighted mean NLL
(``sum(nll * n_tokens) / sum(n_tokens)``, the default) or the example-averaged mean.  A candidate's
value is the mean of that metric over its seeds.

Two sources of chance make a difference between two candidates:

- **seeds**: every seed is an independent training run (a random baseline draws a new sample per
  seed; a selection only changes its training order), so the per-seed values scatter;
- **eval examples**: the eval set is a sample; the comparison is *paired* over it (both arms are
  scored on the same examples), which removes the examples' shared difficulty.

:func:`paired_difference` gives the difference candidate - baseline with a 95% interval.  Two
methods:

``"hybrid-t"`` (the default)
    standard error = sqrt(example part + seed part): the example part is the variance of the
    difference over a paired bootstrap of the eval examples (the same resample for both arms,
    re-weighted by the resampled examples' token counts, seeds held fixed); the seed part is
    Welch's ``sd_c^2/n_c + sd_b^2/n_b`` from the per-seed values.  The interval is
    ``diff +- t(0.975, df) * se``; the seed part has ``min(n_c, n_b) - 1`` degrees of freedom
    (Hsu's conservative rule, not Welch-Satterthwaite: a selection that only reorders its data
    has a smaller seed spread than a random baseline that redraws it, and with 3 seeds and such
    unequal spreads Welch's df gave 7-9.5% false positives), the example part counts as known
    (Satterthwaite combination).  With 3 seeds per arm df is ~2 and t ~4.3: wide, and honest --
    3 seeds say little about training noise.  More seeds buy power; ``bench/verdicts_sim.py``
    simulates the detection and false-positive rates (the README gives them).
``"bootstrap"``
    the percentile bootstrap that resamples eval examples (paired) and each arm's seeds
    (independently, with replacement).  Anti-conservative with few seeds when the seed spread
    matters: a bootstrap of 3 values underestimates their mean's variance by a third and has only
    10 distinct resample means.  Kept for comparison and for runs with many seeds.

When an arm has one seed its seed variance cannot be estimated: ``hybrid-t`` borrows the other
arm's (and says so in ``seed_variance``); when neither can, only the example part is used and
``seed_variance`` is ``"not estimated"`` -- the interval then ignores training noise.

**Pairing over seeds.**  When both arms were trained with the same seeds (every validation and mix
study trains each arm with seeds ``seed .. seed + K - 1``), seed ``s`` of the candidate is paired with
seed ``s`` of the baseline and the seed part is the variance of the per-seed differences
``d_s = c_s - b_s`` over ``K`` with ``K - 1`` degrees of freedom (Bouthillier et al. 2021: pair
every source of variation).  Valid whether or not the arms share anything at a seed; when they do
(coupled draws: one data order, one per-domain permutation whose prefixes both arms take), the
shared part cancels and the interval narrows.

**Verdicts** (:func:`verdict`), with a margin ``M`` of practical equivalence in nats:

==============  ==============================================================================
``better``      the interval lies below 0 (the candidate's held-out NLL is lower)
``worse``       the interval lies above 0
``equivalent``  the interval lies inside ``[-M, +M]``: two one-sided tests at the interval's level
                (each side at half its error rate), so a difference of ``M`` or more is called
                equivalent at most that often
``undecided``   none of these: the data cannot tell, at this many seeds
==============  ==============================================================================

Each comparison also reports ``detectable``: the smallest true difference it would call better or
worse four times out of five at its seeds (``(t(1 - a/2, df) + t(0.8, df)) x se``), which says
what "undecided" means.  A comparison's interval level is 95% for a fixed number of seeds; with
seeds until decided (:mod:`curation.validation.sequential`) each look uses the level its share of
the error budget gives.

:func:`verdict` turns an interval into words; :func:`build_report` makes the whole report dict.
numpy/pandas, Student's t from scipy.stats; the resampling is vectorised.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.stats

COLUMNS = ("candidate", "seed", "domain", "example_id", "nll", "n_tokens")
KEYS = COLUMNS[:4]
METRICS = ("token", "example")
METHODS = ("hybrid-t", "bootstrap")
BASE = "base"
RANDOM_BASELINES = ("random", "random-tokens", "natural")  # the baselines a selection is compared with
VERDICTS = ("better", "worse", "equivalent", "undecided")
DECIDED = ("better", "worse", "equivalent")
DEFAULT_MARGIN = 0.02  # nats of held-out NLL (the README's "Decisive verdicts" justifies it)
POWER = 0.8  # of the detectable difference
OBJECTIVE = "objective"  # the pseudo-domain of the comparisons on the objective over the eval domains
LEVEL = 0.95


@dataclass(frozen=True)
class Measure:
    """What a comparison judges: the per-example ``value`` column, the ``weight`` column of its
    weighted mean (None: the plain mean over examples), its direction and unit, and its name in words."""

    value: str = "nll"
    weight: str | None = "n_tokens"
    higher_is_better: bool = False
    unit: str = "nats"
    text: str = "token-weighted mean assistant-token NLL"

    def weighted(self, metric: str) -> str | None:
        """The weight column for ``metric`` (``example``: none)."""
        return self.weight if metric == "token" else None


NLL = Measure()


class VerdictsError(ValueError):
    """The results table cannot answer the question asked (the message names what is missing)."""


class Verdict(NamedTuple):
    key: str  # one of VERDICTS
    text: str  # "better than random", ...


@dataclass
class PairedDiff:
    candidate: str
    baseline: str
    domain: str
    metric: str
    method: str
    diff: float  # candidate - baseline of the mean over seeds; < 0: the candidate's NLL is lower
    lo: float
    hi: float
    candidate_value: float
    baseline_value: float
    n_examples: int
    n_seeds_candidate: int
    n_seeds_baseline: int
    se_examples: float  # sd of the difference over the paired example bootstrap (seeds fixed)
    se_seeds: float  # standard error from the per-seed values: paired over seeds, else Welch's (0: not estimated)
    df: float | None  # t degrees of freedom (hybrid-t); None for the percentile bootstrap
    seed_variance: str  # "paired over seeds" | "estimated" | "borrowed from <arm>" | "not estimated"
    n_boot: int
    seed: int
    level: float = LEVEL  # the interval's confidence level
    detectable: float | None = None  # the smallest true difference detected with probability POWER

    def as_dict(self) -> dict:
        return {k: _py(v) for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------------------------
# Checks and per-seed values


def _check_table(results: pd.DataFrame, metric: str, measure: Measure = NLL) -> None:
    if metric not in METRICS:
        raise VerdictsError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    weight = measure.weighted(metric)
    need = [*KEYS, measure.value, *([weight] if weight else [])]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise VerdictsError(f"the results table lacks the column(s) {', '.join(missing)}; "
                            f"expected {', '.join(need)}")
    if len(results) == 0:
        raise VerdictsError("the results table is empty")
    nll = results[measure.value].to_numpy(dtype=float)
    if not np.isfinite(nll).all():
        bad = results.loc[~np.isfinite(nll), ["candidate", "seed", "domain", "example_id"]].head(3)
        raise VerdictsError(f"non-finite {measure.value} in {len(nll) - np.isfinite(nll).sum()} row(s), e.g. "
                            f"{bad.to_dict('records')}")
    if weight:
        n = results[weight].to_numpy(dtype=float)
        if not (np.isfinite(n).all() and (n > 0).all()):
            raise VerdictsError(f"{weight} must be a positive count in every row for the token-weighted metric")
    dup = results.duplicated(["candidate", "seed", "domain", "example_id"])
    if dup.any():
        first = results.loc[dup, ["candidate", "seed", "domain", "example_id"]].iloc[0].to_dict()
        raise VerdictsError(f"{int(dup.sum())} duplicate row(s) for the same model and eval example, e.g. {first}")


def seed_values(results: pd.DataFrame, metric: str = "token", measure: Measure = NLL) -> pd.DataFrame:
    """The domain metric of every trained model: columns candidate, domain, seed, value, n_examples."""
    _check_table(results, metric, measure)
    weight = measure.weighted(metric)
    df = results[[*KEYS, measure.value, *([weight] if weight else [])]].copy()
    keys = ["candidate", "domain", "seed"]
    if weight:
        df["_w"] = df[weight].astype(float)
        df["_wx"] = df["_w"] * df[measure.value].astype(float)
        g = df.groupby(keys, sort=True).agg(_wx=("_wx", "sum"), _w=("_w", "sum"), n_examples=("example_id", "size"))
        g["value"] = g["_wx"] / g["_w"]
    else:
        g = df.groupby(keys, sort=True).agg(value=(measure.value, "mean"), n_examples=("example_id", "size"))
    return g[["value", "n_examples"]].reset_index()


def summarize(results: pd.DataFrame, metric: str = "token", measure: Measure = NLL) -> pd.DataFrame:
    """Per (candidate, domain): mean, sd (ddof=1; NaN with one seed), min and max over seeds of the
    domain metric, n_seeds, and n_examples (distinct eval examples)."""
    per_seed = seed_values(results, metric, measure)
    g = per_seed.groupby(["candidate", "domain"], sort=True)["value"]
    out = pd.DataFrame({
        "mean": g.mean(),
        "sd": g.std(ddof=1),  # NaN for one seed
        "min": g.min(),
        "max": g.max(),
        "n_seeds": g.size(),
    })
    out["n_examples"] = results.groupby(["candidate", "domain"], sort=True)["example_id"].nunique()
    return out.reset_index()


@dataclass
class _Arm:
    candidate: str
    domain: str
    ids: np.ndarray  # eval example ids, in column order
    seeds: np.ndarray
    nll: np.ndarray  # [seeds, examples]
    w: np.ndarray  # [seeds, examples]: token counts (token metric) or ones


def _arm(results: pd.DataFrame, candidate: str, domain: str, metric: str,
         rows: pd.DataFrame | None = None, measure: Measure = NLL) -> _Arm:
    """One candidate's results in one domain as seed x example matrices (checked complete);
    ``rows``: those rows when the caller has already split the table."""
    if rows is None:
        rows = results[(results["candidate"] == candidate) & (results["domain"] == domain)]
    if len(rows) == 0:
        have = sorted(results.loc[results["candidate"] == candidate, "domain"].unique().tolist())
        if not have:
            raise VerdictsError(f"candidate {candidate!r} has no results "
                                f"(candidates: {', '.join(map(str, sorted(results['candidate'].unique())))})")
        raise VerdictsError(f"candidate {candidate!r} has no results in domain {domain!r} "
                            f"(it has: {', '.join(map(str, have))})")
    seed_codes, seeds = pd.factorize(rows["seed"], sort=True)
    ex_codes, ids = pd.factorize(rows["example_id"], sort=True)
    nll = np.full((len(seeds), len(ids)), np.nan)
    nll[seed_codes, ex_codes] = rows[measure.value].to_numpy(dtype=float)  # duplicates were refused before
    have = (~np.isnan(nll)).sum(axis=1)
    if (have < len(ids)).any():
        worst = int(np.argmin(have))
        raise VerdictsError(
            f"candidate {candidate!r}, domain {domain!r}: seed {seeds[worst]} has {int(have[worst])} of the "
            f"{len(ids)} eval examples its other seeds have; every seed must be scored on the same examples"
        )
    if measure.weighted(metric):
        w = np.empty(nll.shape)
        w[seed_codes, ex_codes] = rows[measure.weighted(metric)].to_numpy(dtype=float)
    else:
        w = np.ones(nll.shape)
    return _Arm(candidate, domain, np.asarray(ids), np.asarray(seeds), nll, w)


def _align(c: _Arm, b: _Arm) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's (nll, w) with columns in the candidate's example order; raises when the two
    arms were not scored on the same eval examples."""
    set_c, set_b = set(c.ids.tolist()), set(b.ids.tolist())
    if set_c != set_b:
        only_c, only_b = sorted(set_c - set_b), sorted(set_b - set_c)
        parts = []
        if only_b:
            parts.append(f"candidate {c.candidate!r} lacks {len(only_b)} eval example(s) that "
                         f"{b.candidate!r} has (e.g. {only_b[:3]})")
        if only_c:
            parts.append(f"baseline {b.candidate!r} lacks {len(only_c)} eval example(s) that "
                         f"{c.candidate!r} has (e.g. {only_c[:3]})")
        raise VerdictsError(f"domain {c.domain!r}: {'; '.join(parts)}; the comparison is paired, so "
                            "both must be scored on the same eval examples")
    if np.array_equal(c.ids, b.ids):
        return b.nll, b.w
    pos = {e: i for i, e in enumerate(b.ids.tolist())}
    order = np.array([pos[e] for e in c.ids.tolist()])
    return b.nll[:, order], b.w[:, order]


# ----------------------------------------------------------------------------------------------
# The paired comparison


@functools.lru_cache(maxsize=16)
def _example_counts(seed: int, n_boot: int, n: int, stream: int = 0) -> np.ndarray:
    """``C[b, e]``: how often example ``e`` is drawn in resample ``b`` (from an n_boot x n index
    matrix drawn with replacement).  Its own random stream, so every comparison of ``n``
    examples uses the same resamples (cached; read-only); ``stream`` gives the eval domains of an
    objective independent resamples."""
    rng = np.random.default_rng([seed, 0] if stream == 0 else [seed, 0, stream])
    idx = rng.integers(0, n, size=(n_boot, n), dtype=np.int64)
    flat = (idx + (np.arange(n_boot) * n)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)
    counts.flags.writeable = False
    return counts


def _boot_seed_values(counts: np.ndarray, nll: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``V[b, s]``: the domain metric of seed ``s`` on example resample ``b`` (re-weighted by the
    resampled examples' weights: token counts for the token metric)."""
    # einsum, not ``@``: a threaded BLAS call this small is 5-20x slower on a busy 2-core machine
    s = nll.shape[0]
    sums = np.einsum("be,ke->bk", counts, np.vstack([w * nll, w]))
    return sums[:, :s] / sums[:, s:]


def paired_difference(results: pd.DataFrame, candidate: str, baseline: str, domain: str,
                      n_boot: int = 2000, seed: int = 0, metric: str = "token",
                      method: str = "hybrid-t") -> PairedDiff:
    """Difference ``candidate - baseline`` of the domain metric (mean over seeds), paired over the
    domain's eval examples, with a 95% interval (see the module docstring for ``method``).

    Raises :class:`VerdictsError` (a ValueError) naming the candidate and domain when an arm is
    missing, a seed lacks examples, or the two arms were not scored on the same eval examples.
    Deterministic for a given ``seed``.
    """
    _check_args(metric, method, n_boot)
    _check_table(results, metric)
    arm_c = _arm(results, candidate, domain, metric)
    arm_b = _arm(results, baseline, domain, metric)
    return _compare(arm_c, arm_b, metric, method, n_boot, seed)


def _check_args(metric: str, method: str, n_boot: int) -> None:
    if metric not in METRICS:
        raise VerdictsError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if method not in METHODS:
        raise VerdictsError(f"unknown interval method {method!r}; expected one of {', '.join(METHODS)}")
    if n_boot < 100:
        raise VerdictsError(f"n_boot={n_boot} is too few resamples for a 95% interval (use >= 100)")


def _compare(arm_c: _Arm, arm_b: _Arm, metric: str, method: str, n_boot: int, seed: int,
             level: float = LEVEL) -> PairedDiff:
    nll_c, w_c = arm_c.nll, arm_c.w
    nll_b, w_b = _align(arm_c, arm_b)
    full_c = (w_c * nll_c).sum(1) / w_c.sum(1)  # per-seed values on the whole eval set
    full_b = (w_b * nll_b).sum(1) / w_b.sum(1)
    counts = _example_counts(seed, n_boot, nll_c.shape[1])  # the same example resample for both arms
    boot_c = _boot_seed_values(counts, nll_c, w_c)  # [n_boot, n_c]
    boot_b = _boot_seed_values(counts, nll_b, w_b)
    return _interval(arm_c.candidate, arm_b.candidate, arm_c.domain, full_c, full_b, boot_c, boot_b,
                     nll_c.shape[1], metric, method, n_boot, seed, level, _same_seeds(arm_c, arm_b))


def _same_seeds(c: _Arm, b: _Arm) -> bool:
    """Whether the arms were trained with the same seeds (at least two): seed s of one pairs with
    seed s of the other (both seed arrays are sorted)."""
    return len(c.seeds) >= 2 and np.array_equal(c.seeds, b.seeds)


def _compare_objective(arms_c: list[_Arm], arms_b: list[_Arm], objective: dict, metric: str, method: str,
                       n_boot: int, seed: int, level: float = LEVEL) -> PairedDiff:
    """The paired difference of the objective over eval domains (``mean``/weighted: a weighted mean
    of the domain metrics; ``worst``: their largest), each domain resampled independently."""
    full_c, full_b, boot_c, boot_b = [], [], [], []
    for i, (c, b) in enumerate(zip(arms_c, arms_b), start=1):
        if not np.array_equal(c.seeds, arms_c[0].seeds) or not np.array_equal(b.seeds, arms_b[0].seeds):
            raise VerdictsError(f"{c.candidate!r} or {b.candidate!r} has other seeds in domain {c.domain!r} than in "
                                f"{arms_c[0].domain!r}; the objective combines the domains seed by seed")
        nll_b, w_b = _align(c, b)
        full_c.append((c.w * c.nll).sum(1) / c.w.sum(1))
        full_b.append((w_b * nll_b).sum(1) / w_b.sum(1))
        counts = _example_counts(seed, n_boot, c.nll.shape[1], stream=i)
        boot_c.append(_boot_seed_values(counts, c.nll, c.w))
        boot_b.append(_boot_seed_values(counts, nll_b, w_b))

    def combine(values: list[np.ndarray]) -> np.ndarray:
        stack = np.stack(values, axis=-1)  # [..., domains]
        if objective["kind"] == "worst":
            return stack.max(axis=-1)
        return stack @ np.array([objective["weights"][a.domain] for a in arms_c])

    n_ex = sum(a.nll.shape[1] for a in arms_c)
    return _interval(arms_c[0].candidate, arms_b[0].candidate, OBJECTIVE, combine(full_c), combine(full_b),
                     combine(boot_c), combine(boot_b), n_ex, metric, method, n_boot, seed, level,
                     _same_seeds(arms_c[0], arms_b[0]))


def _seed_part(candidate: str, baseline: str, full_c: np.ndarray, full_b: np.ndarray,
               paired: bool) -> tuple[float, float | None, str]:
    """The seed part of the difference's variance, its degrees of freedom (None: infinite) and how
    it was estimated (see the module docstring)."""
    n_c, n_b = len(full_c), len(full_b)
    if paired:  # d_s = c_s - b_s: whatever the arms share at a seed cancels
        return float((full_c - full_b).var(ddof=1)) / n_c, float(n_c - 1), "paired over seeds"
    var_c = float(full_c.var(ddof=1)) if n_c >= 2 else None
    var_b = float(full_b.var(ddof=1)) if n_b >= 2 else None
    if var_c is None and var_b is None:
        return 0.0, None, "not estimated"
    if var_c is not None and var_b is not None:
        # The smaller arm's n - 1 (Hsu's conservative choice; Welch-Satterthwaite measured 7-9.5%
        # false positives with 3 seeds and unequal seed spreads).
        return var_c / n_c + var_b / n_b, float(min(n_c, n_b) - 1), "estimated"
    if var_c is None:  # one arm has one seed: it borrows the other's variance (and its df)
        return var_b / n_c + var_b / n_b, float(n_b - 1), f"borrowed from {baseline}"
    return var_c / n_c + var_c / n_b, float(n_c - 1), f"borrowed from {candidate}"


def _interval(candidate: str, baseline: str, domain: str, full_c: np.ndarray, full_b: np.ndarray,
              boot_c: np.ndarray, boot_b: np.ndarray, n_ex: int, metric: str, method: str, n_boot: int,
              seed: int, level: float = LEVEL, paired: bool = False) -> PairedDiff:
    """The difference of the per-seed values' means with its ``level`` interval (see the module
    docstring): ``full_*`` per seed on the whole eval set, ``boot_*`` per (example resample, seed);
    ``paired``: seed s of one arm pairs with seed s of the other."""
    value_c, value_b = float(full_c.mean()), float(full_b.mean())
    diff = value_c - value_b
    n_c, n_b = len(full_c), len(full_b)
    se_ex = float((boot_c.mean(1) - boot_b.mean(1)).std(ddof=1))
    var_seeds, df_seed, seed_note = _seed_part(candidate, baseline, full_c, full_b, paired)
    se_seeds = math.sqrt(var_seeds)

    if method == "hybrid-t":
        se = math.sqrt(se_ex ** 2 + var_seeds)
        # The example part counts as known (infinite df), so it raises the combined df (Satterthwaite).
        df = math.inf if df_seed is None or var_seeds == 0 else (se_ex ** 2 + var_seeds) ** 2 / (var_seeds ** 2 / df_seed)
        q = float(scipy.stats.t.ppf(0.5 + level / 2, df))
        lo, hi = diff - q * se, diff + q * se
        detectable = (q + float(scipy.stats.t.ppf(POWER, df))) * se
        df_out = df if math.isfinite(df) else None
    else:
        # resample the seeds with replacement (jointly when paired, else each arm's independently),
        # on the same example resample
        rng = np.random.default_rng([seed, 1])
        pick_c = rng.integers(0, n_c, size=(n_boot, n_c))
        pick_b = pick_c if paired else rng.integers(0, n_b, size=(n_boot, n_b))
        d = (np.take_along_axis(boot_c, pick_c, axis=1).mean(1)
             - np.take_along_axis(boot_b, pick_b, axis=1).mean(1))
        lo, hi = (float(x) for x in np.percentile(d, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))
        z = float(scipy.stats.norm.ppf(0.5 + level / 2))
        detectable = (hi - lo) / 2 * (z + float(scipy.stats.norm.ppf(POWER))) / z
        df_out = None
    return PairedDiff(
        candidate=candidate, baseline=baseline, domain=domain, metric=metric,
        method=method, diff=diff, lo=float(lo), hi=float(hi), candidate_value=value_c,
        baseline_value=value_b, n_examples=n_ex, n_seeds_candidate=n_c, n_seeds_baseline=n_b,
        se_examples=se_ex, se_seeds=se_seeds, df=df_out, seed_variance=seed_note, n_boot=n_boot,
        seed=seed, level=level, detectable=float(detectable),
    )


def verdict(diff: float, lo: float, hi: float, baseline: str = "the baseline",
            margin: float | None = DEFAULT_MARGIN, higher_is_better: bool = False, unit: str = "nats") -> Verdict:
    """Words for an interval ``[lo, hi]`` of ``candidate - baseline`` (lower is better, as NLL, unless
    ``higher_is_better``) with a margin of practical equivalence ``margin`` in ``unit`` (None: no
    equivalence is claimed)."""
    below, above = hi < 0, lo > 0
    if below or above:
        key = "better" if below != higher_is_better else "worse"
        small = margin is not None and (lo > -margin if below else hi < margin)
        return Verdict(key, f"{key} than {baseline}" + (f" (by less than {margin:g} {unit})" if small else ""))
    if margin is not None and -margin < lo and hi < margin:
        return Verdict("equivalent", f"equivalent to {baseline} (within ±{margin:g} {unit})")
    return Verdict("undecided", "undecided at this size" if margin is None else
                   f"undecided: neither a difference nor within ±{margin:g} {unit}")


# ----------------------------------------------------------------------------------------------
# The whole report


def build_report(results: pd.DataFrame, metric: str = "token", baselines: tuple[str, ...] = RANDOM_BASELINES,
                 base: str = BASE, n_boot: int = 2000, seed: int = 0, method: str = "hybrid-t",
                 pairs: list[tuple[str, str]] | None = None, objective: dict | None = None,
                 margin: float | None = DEFAULT_MARGIN, objective_margin: float | None = None,
                 level: float = LEVEL, measure: Measure = NLL) -> dict:
    """The validate report as a JSON-ready dict.

    ``rows``: one per (candidate, domain), the base model included (``is_base``): mean, sd, min,
    max over seeds, n_seeds, n_examples, and ``vs_base`` (mean - the base model's mean).
    ``comparisons``: one per (candidate, baseline present in the table, domain), every candidate but
    the base model and the baseline itself (or only the ``(candidate, baseline)`` ``pairs`` given):
    both means and sds, the paired difference, its interval, the verdict key and text.
    With ``objective`` (``{"kind": "mean" | "weighted" | "worst", "weights": {domain: w}}``), each
    pair also gets a comparison on it, with the domain :data:`OBJECTIVE`, when both were scored in
    every eval domain.  ``margin`` (nats) is the equivalence margin of the domains' comparisons,
    ``objective_margin`` the objective's (default: ``margin``); ``level`` the intervals' confidence level;
    ``measure`` what is compared (the eval examples' NLL by default).
    """
    _check_args(metric, method, n_boot)
    _check_margin(margin, "margin")
    objective_margin = margin if objective_margin is None else objective_margin
    _check_margin(objective_margin, "objective margin")
    if not 0 < level < 1:
        raise VerdictsError(f"level {level!r}: a confidence level is between 0 and 1 (0.95 is the usual)")
    summary = summarize(results, metric, measure)
    groups = dict(iter(results.groupby(["candidate", "domain"], sort=False)))
    arms: dict[tuple[str, str], _Arm] = {}

    def arm(cand: str, dom: str) -> _Arm:
        if (cand, dom) not in arms:
            arms[(cand, dom)] = _arm(results, cand, dom, metric, groups[(cand, dom)], measure)
        return arms[(cand, dom)]

    candidates = sorted(summary["candidate"].unique().tolist())
    domains = sorted(summary["domain"].unique().tolist())
    if pairs is not None:
        baselines = tuple(dict.fromkeys(b for _, b in pairs))
    present = [b for b in baselines if b in candidates]
    base_mean = {r.domain: r.mean for r in summary[summary["candidate"] == base].itertuples()}
    stats = {(r.candidate, r.domain): r for r in summary.itertuples()}

    rows = []
    for r in summary.itertuples():
        rows.append({
            "candidate": r.candidate, "domain": r.domain, "is_base": r.candidate == base,
            "mean": _py(r.mean), "sd": _py(r.sd), "min": _py(r.min), "max": _py(r.max),
            "n_seeds": int(r.n_seeds), "n_examples": int(r.n_examples),
            "vs_base": _py(r.mean - base_mean[r.domain]) if r.domain in base_mean else None,
        })

    comparisons = []
    for bl in present:
        for cand in candidates:
            if cand in (base, bl) or (pairs is not None and (cand, bl) not in pairs):
                continue
            for dom in domains:
                if (cand, dom) not in stats or (bl, dom) not in stats:
                    continue
                p = _compare(arm(cand, dom), arm(bl, dom), metric, method, n_boot, seed, level)
                comparisons.append(_comparison(p, stats[(cand, dom)].sd, stats[(bl, dom)].sd, margin, measure))
            if objective is not None and len(domains) > 1 and all(
                    (cand, d) in stats and (bl, d) in stats for d in domains):
                p = _compare_objective([arm(cand, d) for d in domains], [arm(bl, d) for d in domains], objective,
                                       metric, method, n_boot, seed, level)
                comparisons.append(_comparison(p, None, None, objective_margin, measure))
    return {
        "metric": metric,
        "metric_text": (measure.text if measure != NLL or metric == "token"
                        else "mean over eval examples of their mean assistant-token NLL"),
        "lower_is_better": not measure.higher_is_better,
        "measure": asdict(measure),
        "interval": {"method": method, "level": level, "n_boot": n_boot, "seed": seed},
        "margin": {"domains": margin, "objective": objective_margin},
        "base": base if base in candidates else None,
        "baselines": present,
        "domains": domains,
        "objective": objective,
        "rows": rows,
        "comparisons": comparisons,
    }


def comparison_line(c: dict) -> str:
    """A comparison of a report in words, the same on the CLI, in report.md and on the pages:
    ``candidate vs baseline, domain: verdict (difference [interval] at level; what it could detect;
    the seeds and trainings the verdict took)``."""
    from curation.progress import format_duration

    level = c.get("level", LEVEL)
    unit = c.get("unit", "nats")
    parts = [f"{c['diff']:+.4f} {unit} [{c['lo']:+.4f}, {c['hi']:+.4f}] at {level:.1%}".replace(".0%", "%")]
    if c.get("detectable") is not None:
        parts.append(f"could detect ±{c['detectable']:.4f}")
    seeds = f"{c.get('n_seeds_candidate')} vs {c.get('n_seeds_baseline')} seeds"
    if c.get("decided_at"):
        seeds = f"decided at {c['decided_at']} seeds"
    cost = c.get("cost")
    if cost:
        seeds += f", {cost['trainings']} trainings" + (f" ({format_duration(cost['seconds'])})" if cost["seconds"] else "")
    parts.append(seeds)
    return f"{c['candidate']} vs {c['baseline']}, {c['domain']}: {c['verdict_text']} ({'; '.join(parts)})"


def _check_margin(margin, what: str) -> None:
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin) or margin <= 0):
        raise VerdictsError(f"{what} {margin!r}: a margin of equivalence is a positive number of nats, e.g. "
                            f"{DEFAULT_MARGIN}")


def _comparison(p: PairedDiff, sd_c, sd_b, margin: float | None = DEFAULT_MARGIN, measure: Measure = NLL) -> dict:
    """A report's comparison row: both means and seed sds, the difference, its interval, the verdict,
    the margin it was judged with and the difference it could have detected."""
    v = verdict(p.diff, p.lo, p.hi, p.baseline, margin, measure.higher_is_better, measure.unit)
    return {"candidate": p.candidate, "baseline": p.baseline, "domain": p.domain,
            "candidate_mean": _py(p.candidate_value), "candidate_sd": _py(sd_c),
            "baseline_mean": _py(p.baseline_value), "baseline_sd": _py(sd_b),
            "diff": p.diff, "lo": p.lo, "hi": p.hi, "verdict": v.key, "verdict_text": v.text,
            "n_examples": p.n_examples, "n_seeds_candidate": p.n_seeds_candidate,
            "n_seeds_baseline": p.n_seeds_baseline, "se_examples": p.se_examples,
            "se_seeds": p.se_seeds, "df": p.df, "seed_variance": p.seed_variance, "level": p.level,
            "margin": margin, "detectable": p.detectable, "unit": measure.unit}


def _py(v):
    """A JSON-ready scalar: numpy numbers to Python, NaN to None."""
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v

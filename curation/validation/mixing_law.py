"""The math of domain mixes: designs, the mixing law, its fit, checks, and the recommended mix.

A mix ``r`` gives each pool domain its share of a training set (shares >= 0, summing to 1).  Data
Mixing Laws (Ye et al., arXiv 2403.16952) model the held-out loss of each eval set ``e`` as

    L_e(r) = c_e + k_e * exp(sum_j t_ej * r_j)

Because the shares sum to 1, one exponent is redundant (``exp(t_eN) `` folds into ``k_e``); the fit
fixes the last domain's ``t_eN = 0``, so two domains give three parameters per eval set
(``c, k, t``).  Everything here is a pure function of arrays:

* :func:`two_domain_design`, :func:`simplex_design`, :func:`dirichlet_design`: the mixes a study trains;
* :func:`fit_law`: least squares by variable projection (for fixed exponents ``t`` the law is linear in
  ``c`` and ``k``, solved exactly; ``t`` is searched from a grid of starts with scipy's
  ``least_squares``), so a fit never depends on one lucky starting point;
* :func:`leave_one_out`: each measured mix predicted by a law fitted to the others, beside the same
  check for linear interpolation between the measured mixes (the yardstick a law must beat);
* :func:`grid`, :func:`recommend`, :func:`pareto_front`: the mix that minimises an objective over the
  eval sets' predicted losses, and the mixes no other mix beats on every eval set.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

T_BOUND = 20.0  # |t| beyond this is an exponential the design cannot tell from a step


class MixError(ValueError):
    """A design or a fit that cannot be made (the message says what to change)."""


# ----------------------------------------------------------------------------------------------
# Designs: the mixes a study trains (rows of an (n_points, n_domains) matrix summing to 1)


def two_domain_design(n: int) -> np.ndarray:
    """``n`` evenly spaced shares of the first domain over [0, 1], ends included: ``(n, 2)``."""
    if n < 2:
        raise MixError(f"a two-domain design needs at least 2 points (the two ends), got {n}")
    r = np.linspace(0.0, 1.0, n)
    return np.column_stack([r, 1.0 - r])


def simplex_design(n_domains: int, natural: np.ndarray) -> np.ndarray:
    """The vertices (one domain alone), the edge midpoints (two domains half and half), the centroid
    and the natural mix (unless it is one of those): ``(points, n_domains)``."""
    eye = np.eye(n_domains)
    points = [eye[i] for i in range(n_domains)]
    points += [(eye[i] + eye[j]) / 2 for i, j in itertools.combinations(range(n_domains), 2)]
    points.append(np.full(n_domains, 1.0 / n_domains))  # (two domains: the edge midpoint again, dropped)
    return _with_natural(np.array(points), natural)


def dirichlet_design(n_domains: int, n: int, seed: int, natural: np.ndarray) -> np.ndarray:
    """The vertices, ``n`` seeded draws from the flat Dirichlet distribution, and the natural mix."""
    rng = np.random.default_rng([seed, 20_240_325])
    points = np.vstack([np.eye(n_domains), rng.dirichlet(np.ones(n_domains), size=n)])
    return _with_natural(points, natural)


def _with_natural(points: np.ndarray, natural: np.ndarray) -> np.ndarray:
    return distinct_mixes(np.vstack([points, np.asarray(natural, dtype=np.float64)]))


def distinct_mixes(points: np.ndarray) -> np.ndarray:
    """The rows of ``points`` without repeats (equal within 1e-9), in their first order: a mix
    trained twice under two names would count as two measurements of the law."""
    keep: list[int] = []
    for i in range(len(points)):
        if not any(np.allclose(points[i], points[j], atol=1e-9, rtol=0) for j in keep):
            keep.append(i)
    return points[keep]


# ----------------------------------------------------------------------------------------------
# The law


@dataclass
class Law:
    """One eval set's fitted law: ``L(r) = c + k * exp(r[:, :-1] @ t)``."""

    c: float
    k: float
    t: np.ndarray  # (n_domains - 1,): exponents of every domain but the last (whose t is 0)
    rss: float  # residual sum of squares over the fitted points

    def predict(self, mixes: np.ndarray) -> np.ndarray:
        mixes = np.atleast_2d(np.asarray(mixes, dtype=np.float64))
        return self.c + self.k * np.exp(mixes[:, :-1] @ self.t)

    def as_dict(self, domains: list[str]) -> dict:
        return {"c": self.c, "k": self.k, "t": {d: float(v) for d, v in zip(domains[:-1], self.t)},
                "t_fixed": {domains[-1]: 0.0}, "rss": self.rss}


def _linear_part(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> tuple[float, float, np.ndarray]:
    """For fixed exponents: the exact least-squares ``(c, k)`` and the residuals."""
    basis = np.column_stack([np.ones(len(x)), np.exp(x[:, :-1] @ t)])  # (n, 2)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(coef[0]), float(coef[1]), basis @ coef - y


def _starts(n_t: int) -> list[np.ndarray]:
    values = np.linspace(-6.0, 6.0, 13 if n_t == 1 else 7 if n_t == 2 else 4)
    return [np.array(p) for p in itertools.product(values, repeat=n_t)]


def fit_law(mixes: np.ndarray, losses: np.ndarray, start: np.ndarray | None = None) -> Law:
    """Fit one eval set's law to measured ``losses`` (n,) at ``mixes`` (n, d) by least squares
    (variable projection; ``start``: a warm start for ``t``, else a grid of starts)."""
    from scipy.optimize import least_squares

    x = np.asarray(mixes, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    n, d = x.shape
    if d < 2:
        raise MixError("a mixing law needs at least two domains")
    if n < 3:
        raise MixError(f"fitting c, k and t needs at least 3 measured mixes, got {n}")
    if not np.isfinite(y).all():
        raise MixError("every measured mix needs a finite loss")
    if np.ptp(x[:, :-1], axis=0).max() == 0:
        raise MixError("the measured mixes do not vary; a law cannot be fitted")

    def resid(t):
        return _linear_part(x, y, t)[2]

    best = None
    for t0 in ([start] if start is not None else _starts(d - 1)):
        sol = least_squares(resid, np.clip(t0, -T_BOUND, T_BOUND), bounds=(-T_BOUND, T_BOUND), xtol=1e-12,
                            ftol=1e-12, gtol=1e-12, max_nfev=200)
        rss = float(np.sum(sol.fun ** 2))
        if best is None or rss < best[1] - 1e-15:
            best = (sol.x, rss)
    c, k, r = _linear_part(x, y, best[0])
    return Law(c, k, np.asarray(best[0], dtype=np.float64), float(np.sum(r ** 2)))


def leave_one_out(mixes: np.ndarray, losses: np.ndarray) -> dict:
    """Each measured mix predicted by the law fitted to the other mixes, and by linear
    interpolation between them: per point the two predictions, and the mean absolute errors."""
    x = np.asarray(mixes, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    law_pred, lin_pred = np.full(len(y), np.nan), np.full(len(y), np.nan)
    for m in range(len(y)):
        keep = np.arange(len(y)) != m
        try:
            law_pred[m] = fit_law(x[keep], y[keep]).predict(x[m])[0]
        except MixError:
            pass
        lin_pred[m] = linear_interpolation(x[keep], y[keep], x[m])
    law_err, lin_err = law_pred - y, lin_pred - y
    return {"law_prediction": law_pred.tolist(), "linear_prediction": lin_pred.tolist(),
            "law_error": law_err.tolist(), "linear_error": lin_err.tolist(),
            "law_mae": _nanmean_abs(law_err), "linear_mae": _nanmean_abs(lin_err),
            "law_max_error": _nanmax_abs(law_err), "linear_max_error": _nanmax_abs(lin_err)}


def linear_interpolation(mixes: np.ndarray, losses: np.ndarray, at: np.ndarray) -> float:
    """The loss at mix ``at`` read off a straight line (two domains: between the nearest measured
    shares, extended past the ends) or plane (more domains: least squares over the mixes)."""
    x, y, at = np.asarray(mixes, float), np.asarray(losses, float), np.asarray(at, float)
    if x.shape[1] == 2:
        order = np.argsort(x[:, 0])
        xs, ys = x[order, 0], y[order]
        if len(xs) == 1:
            return float(ys[0])
        i = int(np.clip(np.searchsorted(xs, at[0]), 1, len(xs) - 1))
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return float(y0 + (y1 - y0) * (at[0] - x0) / (x1 - x0)) if x1 != x0 else float((y0 + y1) / 2)
    design = np.column_stack([np.ones(len(x)), x[:, :-1]])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.concatenate([[1.0], at[:-1]]) @ coef)


def _nanmean_abs(v) -> float | None:
    v = np.abs(np.asarray(v, float))
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def _nanmax_abs(v) -> float | None:
    v = np.abs(np.asarray(v, float))
    v = v[np.isfinite(v)]
    return float(v.max()) if len(v) else None


# ----------------------------------------------------------------------------------------------
# Recommendation


def grid(n_domains: int, step: float = 0.001, samples: int = 20_000, seed: int = 0) -> np.ndarray:
    """Candidate mixes covering the simplex: a fine line for two domains, a lattice of step 0.01
    for three, seeded Dirichlet samples (with the vertices) beyond."""
    if n_domains == 2:
        r = np.linspace(0.0, 1.0, int(round(1 / step)) + 1)
        return np.column_stack([r, 1.0 - r])
    if n_domains == 3:
        n = 100
        pts = [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]
        return np.array(pts)
    rng = np.random.default_rng([seed, 7])
    return np.vstack([np.eye(n_domains), rng.dirichlet(np.ones(n_domains), size=samples)])


OBJECTIVES = ("mean", "worst")


def parse_objective(text: str, evals: list[str]) -> dict:
    """``mean`` (equal weights), ``worst`` (the largest loss) or ``EVAL=W,...`` (a weight for every
    eval set, normalised to sum to 1)."""
    text = str(text).strip()
    if text in OBJECTIVES:
        return {"kind": text, "weights": {e: 1.0 / len(evals) for e in evals}}
    weights = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = pair.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not eq or not math.isfinite(w) or w < 0:
            raise MixError(f"objective {text!r}: expected mean, worst, or EVAL=WEIGHT pairs (e.g. chat=1,math=2) "
                           "with non-negative weights")
        if name.strip() in weights:
            raise MixError(f"objective {text!r}: {name.strip()} is given twice")
        weights[name.strip()] = w
    unknown = sorted(set(weights) - set(evals))
    if unknown:
        raise MixError(f"objective {text!r}: {unknown} are not eval sets of the study ({', '.join(evals)})")
    missing = [e for e in evals if e not in weights]
    if missing:
        raise MixError(f"objective {text!r}: give every eval set a weight ({', '.join(missing)} has none; "
                       f"{missing[0]}=0 leaves it out)")
    top = max(weights.values())
    if top <= 0:
        raise MixError(f"objective {text!r}: the weights sum to 0")
    if not math.isfinite(sum(weights.values())):  # huge weights: scaled into [0, 1] first, so the sum is finite
        weights = {e: w / top for e, w in weights.items()}
    total = sum(weights.values())
    return {"kind": "weighted", "weights": {e: weights[e] / total for e in evals}}


def objective_values(predictions: np.ndarray, objective: dict, evals: list[str]) -> np.ndarray:
    """The objective of each row of ``predictions`` (n, n_evals; columns in ``evals`` order)."""
    if objective["kind"] == "worst":
        return predictions.max(axis=1)
    w = np.array([objective["weights"][e] for e in evals])
    return predictions @ w


def recommend(laws: list[Law], objective: dict, evals: list[str], candidates: np.ndarray) -> tuple[int, np.ndarray]:
    """``(index into candidates, predictions there)`` of the mix minimising the objective."""
    pred = np.column_stack([law.predict(candidates) for law in laws])  # (n, n_evals)
    best = int(np.argmin(objective_values(pred, objective, evals)))
    return best, pred[best]


def pareto_front(predictions: np.ndarray) -> np.ndarray:
    """Indices of the rows no other row beats on every column (lower is better), sorted by the
    first column."""
    p = np.asarray(predictions, float)
    order = np.lexsort(p.T[::-1])  # by the first column, then the next ...
    keep = []
    for i in order:
        if not any(np.all(p[j] <= p[i]) and np.any(p[j] < p[i]) for j in keep):
            keep = [j for j in keep if not (np.all(p[i] <= p[j]) and np.any(p[i] < p[j]))]
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: tuple(p[i])), dtype=np.int64)

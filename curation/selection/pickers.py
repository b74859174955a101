"""Pickers: which of one domain's eligible rows a recipe takes, and in what order.

Every picker has one signature, ``picker(rows, k, rng) -> positions``: ``rows`` is one domain's
eligible rows (:class:`DomainRows`, in canonical order: sorted by example id, so the result does not
depend on the table's row order), ``k`` how many examples to take (``len(rows)`` to order them
all, for token budgets and length strata), ``rng`` the domain's seeded generator
(:func:`domain_rng`); the result is positions into ``rows``, the preferred first.

Here: the ranking order every picker and filter shares (:func:`rank_order`), top-k, a seeded random
sample, S2L's balanced sampling, Gumbel top-k (``--temperature``), and length strata.  The
embedding pickers (k-center, cluster-balanced) are in :mod:`curation.selection.diversity`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from curation.selection.allocation import largest_remainder


@dataclass
class DomainRows:
    """One domain's eligible rows, in canonical order (by example id)."""

    domain: str
    ids: np.ndarray  # (n,) example ids
    scores: np.ndarray | None  # (n,) the ranking score (None for samplers)
    tokens: np.ndarray  # (n,) prompt + response tokens
    lengths: np.ndarray  # (n,) what length strata follow: response tokens (a pair's len_diff)
    labels: np.ndarray | None = None  # (n,) S2L cluster labels
    embeddings: np.ndarray | None = None  # (n, d) float32, for the diversity pickers
    target_sims: np.ndarray | None = None  # (n, m) float32: cosine to each target example (--method target)

    def __len__(self) -> int:
        return len(self.ids)


Picker = Callable[[DomainRows, int, np.random.Generator], np.ndarray]


def domain_rng(seed: int, domain: str, salt: str = "") -> np.random.Generator:
    """The seeded generator of one domain: one stream per domain, so adding a domain to the mix
    does not change another domain's sample (``salt`` gives another independent stream)."""
    key = int.from_bytes(hashlib.sha256(f"{salt}{domain}".encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key]))


def top_k(order: str) -> Picker:
    """The ``k`` best-scored rows (``order``: high or low), ties by example id."""
    return lambda rows, k, rng: rank_order(rows.scores, rows.ids, order)[:k]


def random_k(rows: DomainRows, k: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded uniform sample of ``k`` rows, in the order drawn (the one random baseline)."""
    return rng.permutation(len(rows))[:k]


def s2l_k(rows: DomainRows, k: int, rng: np.random.Generator) -> np.ndarray:
    """S2L's balanced sampling over the rows' cluster labels (:func:`s2l_sample`)."""
    return s2l_sample(rows.labels, k, rng)


def gumbel_k(order: str, temperature: float) -> Picker:
    """A seeded soft top-k: sampling without replacement with P ~ exp(z / T) (:func:`gumbel_order`)."""
    return lambda rows, k, rng: gumbel_order(rows.scores, rows.ids, order, temperature, rng)[:k]


def rank_order(scores: np.ndarray, ids: np.ndarray, order: str) -> np.ndarray:
    """Positions sorted best first (``high``: largest score first), ties by example id."""
    key = -scores if order == "high" else scores
    return np.lexsort((ids, key))


def s2l_sample(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """S2L balanced sampling of ``k`` positions from cluster ``labels``, as the official code does.

    Clusters with more than 2 members are visited from the smallest to the largest; each gets
    (budget left) // (clusters left), the whole cluster when it is not larger than that, else a
    seeded random sample.  Clusters of at most 2 members sit out this pass and only fill what
    budget remains, at random.  Returns positions in the order they were taken.
    """
    labels = np.asarray(labels)
    k = min(int(k), len(labels))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    clusters, counts = np.unique(labels, return_counts=True)
    by_size = np.lexsort((clusters, counts))  # smallest first, ties by cluster label
    big = by_size[counts[by_size] > 2]
    picked: list[np.ndarray] = []
    n = k
    for i, c in enumerate(big):
        per_cluster = n // (len(big) - i)
        members = np.flatnonzero(labels == clusters[c])
        if len(members) > per_cluster:
            picked.append(rng.choice(members, per_cluster, replace=False))
            n -= per_cluster
        else:
            picked.append(members)
            n -= len(members)
    if n > 0:
        small = np.flatnonzero(np.isin(labels, clusters[counts <= 2]))
        take = min(n, len(small))
        picked.append(rng.choice(small, take, replace=False))
        n -= take
    # Water-filling over ascending sizes places the whole budget whenever k <= len(labels)
    # (the property tests check it), so nothing is left here.
    assert n == 0, "s2l_sample: budget left after every cluster was visited"
    return np.concatenate(picked).astype(np.int64)


def length_strata(lengths: np.ndarray, ids: np.ndarray, q: int) -> np.ndarray:
    """Stratum (0 = shortest) of each row: ``q`` response-length quantile strata by rank.

    Rows are ordered by (length, example id) and cut into ``q`` strata whose sizes differ by at
    most one, so a run of equal lengths at a quantile edge is split by id instead of one stratum
    swallowing it (fewer rows than ``q``: one stratum per row)."""
    n = len(lengths)
    q = max(1, min(int(q), n))
    by_length = np.lexsort((ids, lengths))  # shortest first, ties by id
    strata = np.empty(n, dtype=np.int64)
    strata[by_length] = (np.arange(n) * q) // max(n, 1)  # rank r -> floor(r * q / n)
    return strata


def take_stratified(order: np.ndarray, strata: np.ndarray, budget: int,
                    tokens: np.ndarray | None = None) -> np.ndarray:
    """The first rows of ``order`` (positions, preferred first) inside each stratum, with
    ``budget`` split over the strata in proportion to their sizes (or, when ``tokens`` is given,
    their tokens; the longest prefix of each stratum's order that fits its part) by the largest
    remainder method.  Returns the picked positions in ``order``'s order."""
    q = int(strata.max()) + 1 if len(strata) else 0
    weight = (np.bincount(strata, minlength=q) if tokens is None
              else np.bincount(strata, weights=tokens, minlength=q).astype(np.int64))
    parts = largest_remainder(int(budget), {s: Fraction(int(w)) for s, w in enumerate(weight)})
    keep = np.zeros(len(order), dtype=bool)  # over positions of ``order``
    ranked_strata = strata[order]
    for s, part in parts.items():
        pos = np.flatnonzero(ranked_strata == s)  # this stratum's rows, preferred first
        if tokens is None:
            pos = pos[:part]
        else:
            cum = np.cumsum(tokens[order[pos]])
            pos = pos[: int(np.searchsorted(cum, part, side="right"))]
        keep[pos] = True
    return order[keep]


def gumbel_order(scores: np.ndarray, ids: np.ndarray, order: str, temperature: float,
                 rng: np.random.Generator) -> np.ndarray:
    """All positions in the order of a seeded sample without replacement with P ~ exp(z / T)
    (Gumbel top-k: sort by z / T + Gumbel noise), z the score standardised over the given rows
    and negated for ``order="low"``, so T is in standard deviations for every score.  The noise
    is drawn in the rows' order (callers pass them sorted by id); keys that overflow at a tiny T
    fall back to z, then id, so T -> 0 is exactly top-k."""
    sd = float(scores.std()) if len(scores) else 0.0
    z = (scores - scores.mean()) / sd if sd > 0 else np.zeros(len(scores))
    if order == "low":
        z = -z
    with np.errstate(over="ignore", invalid="ignore"):
        keys = z / temperature + rng.gumbel(size=len(scores))
    return np.lexsort((ids, -z, -keys))

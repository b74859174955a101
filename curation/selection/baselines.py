"""The baselines a selection is compared with: one home for each, the random one above all.

``random`` is the recipe applied with ``--method random``: per domain a seeded uniform sample
(:func:`curation.selection.pickers.random_k`, the domain's generator
:func:`~curation.selection.pickers.domain_rng`) from the recipe's eligible rows.  The Select page's
baseline, a selection's summary and ``validate``'s ``random`` candidate are all this one sample:
validate asks for as many examples per domain as the selection has (:func:`baseline_ids`).

The other baselines ``validate`` trains, per domain of the selection, from the same eligible rows:

==================  ===============================================================================
``random``          as many examples as the selection, a seeded uniform sample
``random-tokens``   a seeded random order, cut where its assistant tokens come closest to the
                    selection's: the fair comparison when a score prefers short or long answers
``longest``         the examples with the longest responses, as many as the selection
``full``            every eligible example: the ceiling
``natural``         as many examples as the selection in all, a seeded uniform sample at the pool's
                    natural domain proportions (whatever the selection's mix): what a mix is judged
                    against; the same sample as the random baseline of a ``natural`` recipe of that size
==================  ===============================================================================

Every baseline honours the curator's decisions as the selection did: excluded rows are not in the
eligible mask, and kept rows (``kept``) are taken first in their domain, counted against its part.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from curation.selection.allocation import allocate, with_floors
from curation.selection.apply import SelectionResult, apply_recipe
from curation.selection.pickers import DomainRows, domain_rng, random_k
from curation.selection.recipe import Recipe, SelectionError

BASELINES = ("random", "random-tokens", "longest", "full", "natural")


def random_baseline(table, recipe: Recipe, run_kind: str | None = None) -> SelectionResult:
    """The seeded random selection at the same budget, mix, thresholds, filters and fill as ``recipe``."""
    d = recipe.to_dict()
    d.update(method="random", order=None, s2l_clusters=None, aggregate=None, stratify=None, temperature=None,
             diversity=None)
    return apply_recipe(table, Recipe.from_dict(d), run_kind)


def baseline_ids(kind: str, table, eligible: np.ndarray, wanted: dict[str, tuple[int, int]], seed: int,
                 kept: np.ndarray | None = None) -> list[str]:
    """The example ids baseline ``kind`` trains on with ``seed``: per domain of ``wanted``
    (``{domain: (examples, assistant tokens)}`` of the selection it is compared with), drawn from
    the ``eligible`` rows of ``table`` (a score table; the mask is over its rows).  ``kept`` (a mask
    over the same rows, inside ``eligible``) are the curator's keep decisions: taken first, their
    examples and tokens counted against the domain's part."""
    if kind not in BASELINES:
        raise SelectionError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    df = table.reset_index(drop=True)
    ids = df["example_id"].astype(str).to_numpy()
    domain = df["domain"].astype(str).to_numpy()
    resp = df["n_response_tokens"].fillna(0).astype(np.int64).to_numpy()
    kept = np.zeros(len(df), dtype=bool) if kept is None else np.asarray(kept, dtype=bool) & eligible
    if kind == "natural":
        wanted = natural_quota(domain, eligible, sum(n for n, _ in wanted.values()), kept)
        kind = "random"
    out: list[str] = []
    for d in sorted(set(wanted) | set(domain[kept].tolist())):
        first = np.flatnonzero(kept & (domain == d))
        first = first[np.argsort(ids[first], kind="stable")]
        where = np.flatnonzero(eligible & ~kept & (domain == d))
        where = where[np.argsort(ids[where], kind="stable")]  # canonical order, as apply_recipe's
        n, tokens = wanted.get(d, (0, 0))
        n, tokens = max(n - len(first), 0), max(tokens - int(resp[first].sum()), 0)
        out += ids[first].tolist()
        if kind == "full" or (tokens > 0 if kind == "random-tokens" else n > 0):
            out += ids[where[baseline_positions(kind, ids[where], resp[where], n, tokens, seed, d)]].tolist()
    return out


def natural_quota(domain: np.ndarray, eligible: np.ndarray, n: int,
                  kept: np.ndarray | None = None) -> dict[str, tuple[int, int]]:
    """``n`` examples split over every pool domain by its share of the pool (largest remainder),
    a domain short of eligible rows giving its rest to the others (as ``--fill`` does), and a
    domain with more ``kept`` rows than its part given them, inside the ``n`` (the others give the
    difference in proportion to their parts): as many examples as the selection, never more."""
    pool = sorted(set(domain.tolist()))
    shares = {d: Fraction(int((domain == d).sum()), len(domain)) for d in pool}
    capacity = {d: int((eligible & (domain == d)).sum()) for d in pool}
    alloc, _, _ = allocate(n, shares, capacity, fill=True)
    if kept is not None and kept.any():
        floors = {d: int((kept & (domain == d)).sum()) for d in pool}
        alloc = with_floors(n, {d: Fraction(alloc[d]) for d in pool}, floors) or alloc  # more kept than n: all taken
    return {d: (alloc[d], 0) for d in pool if alloc[d] > 0}


def baseline_positions(kind: str, ids: np.ndarray, resp: np.ndarray, n: int, tokens: int, seed: int,
                       domain: str) -> np.ndarray:
    """Positions (into one domain's eligible rows, canonical order) that baseline ``kind`` takes."""
    if kind == "full":
        return np.arange(len(ids))
    if kind == "random":  # the same sample as random_baseline's for this domain and seed
        rows = DomainRows(domain, ids, None, resp, resp)
        return random_k(rows, n, domain_rng(seed, domain))
    if kind == "random-tokens":
        # An independent random order; the prefix whose assistant tokens come closest to the
        # selection's (at most one example past it), so the sample is not biased towards short answers.
        order = domain_rng(seed, domain, salt="random-tokens:").permutation(len(ids))
        cum = np.cumsum(resp[order])
        k = int(np.searchsorted(cum, tokens, side="left"))  # the first prefix reaching the target
        if k < len(order) and (k == 0 or abs(cum[k] - tokens) < abs(tokens - cum[k - 1])):
            k += 1
        return order[:k]
    return np.lexsort((ids, -resp))[:n]  # longest: ties by example id

"""Allocation: largest remainder and capped allocation are exact and fair."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from curation.selection.allocation import allocate, largest_remainder


def test_largest_remainder_examples():
    assert largest_remainder(10, {"a": Fraction(1, 3), "b": Fraction(1, 3), "c": Fraction(1, 3)}) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder(7, {"chat": Fraction(1, 2), "math": Fraction(1, 2)}) == {"chat": 4, "math": 3}
    assert largest_remainder(100, {"a": Fraction(1, 10), "b": Fraction(9, 10)}) == {"a": 10, "b": 90}
    assert largest_remainder(5, {"a": Fraction(0), "b": Fraction(1)}) == {"a": 0, "b": 5}


shares_st = st.lists(st.integers(0, 50), min_size=1, max_size=6).filter(lambda w: sum(w) > 0)


@settings(deadline=None)
@given(total=st.integers(0, 10_000), weights=shares_st)
def test_largest_remainder_is_exact_and_fair(total, weights):
    shares = {f"d{i}": Fraction(w, sum(weights)) for i, w in enumerate(weights)}
    parts = largest_remainder(total, shares)
    assert sum(parts.values()) == total
    for d, s in shares.items():
        assert math.floor(total * s) <= parts[d] <= math.ceil(total * s)


@settings(deadline=None)
@given(total=st.integers(0, 500), weights=shares_st, caps=st.lists(st.integers(0, 200), min_size=6, max_size=6),
       fill=st.booleans())
def test_allocate_caps_and_fill(total, weights, caps, fill):
    shares = {f"d{i}": Fraction(w, sum(weights)) for i, w in enumerate(weights)}
    capacity = {d: caps[i] for i, d in enumerate(shares)}
    alloc, short, unfilled = allocate(total, shares, capacity, fill)
    quota = largest_remainder(total, shares)
    assert all(alloc[d] <= capacity[d] for d in shares)
    assert all(short[d] == max(0, quota[d] - capacity[d]) for d in shares)
    if not fill:
        assert alloc == {d: min(quota[d], capacity[d]) for d in shares}
    else:
        assert sum(alloc.values()) + unfilled == total
        room = sum(capacity[d] - alloc[d] for d in shares if shares[d] > 0)
        assert unfilled == 0 or room == 0  # only what no domain can take stays unfilled
        assert all(alloc[d] >= min(quota[d], capacity[d]) for d in shares)

"""Splitting a budget over domains (or strata): exact whole parts that sum to the total.

:func:`largest_remainder` splits a whole number of units in proportion to shares (Hamilton's
method); :func:`allocate` does it under each domain's capacity (what is eligible), spreading a
shortfall over the other domains when asked.
"""

from __future__ import annotations

import math
from fractions import Fraction


def largest_remainder(total: int, shares: dict[str, Fraction]) -> dict[str, int]:
    """Split ``total`` units in proportion to ``shares`` so that the parts sum to ``total`` exactly.

    Hamilton's method: each part is the floor or the ceiling of its exact quota; the units left
    after flooring go to the largest fractional remainders (ties: larger share, then name).
    Shares are normalised by their sum; all-zero shares get nothing.
    """
    s = sum(shares.values(), Fraction(0))
    if s == 0 or total <= 0:
        return {d: 0 for d in shares}
    quotas = {d: Fraction(total) * Fraction(v) / s for d, v in shares.items()}
    parts = {d: math.floor(q) for d, q in quotas.items()}
    left = total - sum(parts.values())
    for d in sorted(shares, key=lambda d: (-(quotas[d] - parts[d]), -Fraction(shares[d]), d))[:left]:
        parts[d] += 1
    return parts


def allocate(total: int, shares: dict[str, Fraction], capacity: dict[str, int], fill: bool):
    """Allocate ``total`` units over domains by share, capped by each domain's capacity.

    Returns ``(allocation, shortfall, unfilled)``: ``shortfall[d]`` is how much of its share domain
    ``d`` could not take; with ``fill`` that amount is spread over the domains with room left (by
    their shares, repeatedly, largest remainder) and ``unfilled`` is what nobody could take.
    """
    alloc = largest_remainder(total, shares)
    shortfall = {d: max(0, alloc[d] - capacity[d]) for d in shares}
    alloc = {d: min(alloc[d], capacity[d]) for d in shares}
    left = sum(shortfall.values())
    while fill and left > 0:
        room = {d: shares[d] for d in shares if shares[d] > 0 and alloc[d] < capacity[d]}
        if not room:
            break
        extra = largest_remainder(left, room)
        for d, add in extra.items():
            add = min(add, capacity[d] - alloc[d])
            alloc[d] += add
            left -= add
    return alloc, shortfall, left


def with_floors(total: int, shares: dict[str, Fraction], floors: dict[str, int]) -> dict[str, int] | None:
    """Split ``total`` units in proportion to ``shares`` (:func:`largest_remainder`) with each part
    at least its floor (units that must be in it, such as the curator's kept examples): a part
    that would fall below its floor gets the floor, and the other parts split what is left by their
    shares, again, until every part holds.  The parts sum to ``total``; None when the floors alone
    exceed it."""
    if sum(floors.values()) > total:
        return None
    fixed: dict[str, int] = {}
    while True:
        free = {d: v for d, v in shares.items() if d not in fixed}
        parts = largest_remainder(total - sum(fixed.values()), free) if free else {}
        low = [d for d, n in parts.items() if n < floors.get(d, 0)]
        if not low:
            return {d: fixed.get(d, parts.get(d)) for d in shares}
        fixed.update({d: floors[d] for d in low})

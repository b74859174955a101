"""Pickers: S2L balanced sampling, exact and balanced."""

from __future__ import annotations


import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.selection.pickers import s2l_sample


def test_s2l_sampling_smallest_first_balanced_exact():
    # clusters: 0 x3, 1 x10, 2 x20, 3 x2 (sits out), 4 x1 (sits out)
    labels = np.array([0] * 3 + [1] * 10 + [2] * 20 + [3] * 2 + [4])
    rng = np.random.default_rng(0)
    got = s2l_sample(labels, 15, rng)
    counts = np.bincount(labels[got], minlength=5)
    # 15 // 3 = 5 -> cluster 0 whole (3); 12 // 2 = 6 from cluster 1; 6 // 1 = 6 from cluster 2
    assert counts.tolist() == [3, 6, 6, 0, 0] and len(set(got)) == 15
    # a budget larger than the big clusters spills into the clusters of <= 2
    got = s2l_sample(labels, 35, np.random.default_rng(0))
    counts = np.bincount(labels[got], minlength=5)
    assert counts[:3].tolist() == [3, 10, 20] and counts[3:].sum() == 2 and len(set(got)) == 35
    # deterministic for a seed
    assert s2l_sample(labels, 15, np.random.default_rng(7)).tolist() == s2l_sample(labels, 15, np.random.default_rng(7)).tolist()


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=12), frac=st.floats(0, 1), seed=st.integers(0, 99))
def test_s2l_sampling_exact_and_balanced(sizes, frac, seed):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    k = int(round(frac * len(labels)))
    got = s2l_sample(labels, k, np.random.default_rng(seed))
    assert len(got) == k and len(set(got.tolist())) == k
    counts = np.bincount(labels[got], minlength=len(sizes))
    big = [c for c in range(len(sizes)) if sizes[c] > 2]
    # balanced: a big cluster that was not taken whole got at least as much as any other big cluster
    for c in big:
        if counts[c] < sizes[c]:
            assert all(counts[c] >= counts[o] - 1 for o in big)
    # small clusters are used only once the big ones are exhausted
    if any(counts[c] for c in range(len(sizes)) if sizes[c] <= 2):
        assert all(counts[c] == sizes[c] for c in big)

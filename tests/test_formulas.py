"""Derived scores and S2L clustering on hand-computed toy trajectories."""

import math

import numpy as np
import pytest

from curation.runs.formulas import (DERIVED_COLUMNS, derived_columns, heldout_columns, ifd_score, n_clusters_for,
                                    s2l_clusters)
from curation.scores import trajectory_columns


def test_derived_columns_hand_computed():
    L = np.array([
        [2.0, 1.5, 1.0],    # halves: davir 0.5, rho 1.0
        [4.0, 4.0, 4.0],    # flat: 0, 0
        [1.0, 0.5, 0.25],   # davir 0.75, rho 0.75
        [1.0, 1.2, 1.5],    # got worse: negative learnability
    ])
    d = derived_columns(L)
    assert list(d) == DERIVED_COLUMNS
    assert d["loss_base"].tolist() == [2.0, 4.0, 1.0, 1.0]
    assert d["loss_ref"].tolist() == [1.0, 4.0, 0.25, 1.5]
    assert d["davir"].tolist() == pytest.approx([0.5, 0.0, 0.75, -0.5])
    assert d["rho"].tolist() == pytest.approx([1.0, 0.0, 0.75, -0.5])
    assert d["ppl_base"].tolist() == pytest.approx([math.exp(2), math.exp(4), math.e, math.e])


def test_derived_columns_two_points_and_missing():
    d = derived_columns([[3.0, 1.0], [np.nan, np.nan]])
    assert d["davir"][0] == pytest.approx(2 / 3) and d["rho"][0] == 2.0
    assert all(np.isnan(d[c][1]) for c in DERIVED_COLUMNS)


def test_derived_columns_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K\\+1"):
        derived_columns([1.0, 2.0])
    with pytest.raises(ValueError, match="K\\+1"):
        derived_columns([[1.0], [2.0]])


def test_cluster_count_is_capped_on_small_pools():
    assert n_clusters_for(1_000_000, 100) == 100
    assert n_clusters_for(200, 100) == 20
    assert n_clusters_for(5, 100) == 1
    assert n_clusters_for(1000, requested=7) == 7
    with pytest.raises(ValueError):
        n_clusters_for(10, requested=0)


def _three_groups(seed=0, n=(60, 30, 10)):
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [5.0, 4.5, 4.4, 4.3]])
    X = np.concatenate([c + rng.normal(0, 0.01, (k, 4)) for c, k in zip(centres, n)])
    truth = np.repeat([0, 1, 2], n)
    return X, truth


def test_s2l_recovers_separated_groups_numbered_by_size():
    X, truth = _three_groups()
    labels = s2l_clusters(X, n_clusters=3, seed=0)
    # Cluster 0 is the largest group, 2 the smallest: labels equal the truth exactly.
    assert labels.tolist() == truth.tolist()


def test_s2l_is_deterministic_and_marks_missing_rows():
    X, _ = _three_groups(n=(200, 150, 100))
    X[5] = np.nan
    a = s2l_clusters(X, n_clusters=10, seed=3)
    b = s2l_clusters(X, n_clusters=10, seed=3)
    assert a.tolist() == b.tolist()
    assert a[5] == -1 and (np.delete(a, 5) >= 0).all()
    counts = np.bincount(a[a >= 0])
    assert len(counts) == 10 and (np.diff(counts) <= 0).all()  # renumbered by size


def test_s2l_cap_and_degenerate_inputs():
    X, _ = _three_groups(n=(20, 20, 10))  # 50 rows -> at most 5 clusters
    assert s2l_clusters(X, n_clusters=100, seed=0).max() == 4
    assert s2l_clusters(X, n_clusters=100, seed=0, cap=False).max() == 49
    same = np.ones((30, 3))
    assert set(s2l_clusters(same, n_clusters=3, seed=0).tolist()) == {0}
    assert s2l_clusters(np.full((4, 3), np.nan), n_clusters=100, seed=0).tolist() == [-1] * 4


def test_ifd_score_uses_the_same_tokens():
    ids = np.array([5, 6, 7])
    val, ok = ifd_score(ids, np.array([1.0, 2.0, 3.0]), np.array([5, 6, 7, 8]), np.array([2.0, 2.0, 2.0, 100.0]))
    assert ok and val == pytest.approx(1.0)
    val, ok = ifd_score(ids, np.array([1.0, 2.0, 3.0]), np.array([9, 9]), np.array([4.0, 4.0]))
    assert not ok and val == pytest.approx(0.5)
    assert np.isnan(ifd_score(ids[:0], np.array([]), ids, np.ones(3))[0])


def test_heldout_columns_and_trajectory_columns():
    d = heldout_columns([2.0, 4.0], [1.0, 5.0])
    assert d["davir_heldout"].tolist() == [0.5, -0.25] and d["rho_heldout"].tolist() == [1.0, -1.0]
    assert trajectory_columns(["loss_ckpt_10", "loss", "loss_ckpt_2", "loss_ckpt_0"]) == \
        ["loss_ckpt_0", "loss_ckpt_2", "loss_ckpt_10"]

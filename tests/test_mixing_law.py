"""The mixing law's math: designs, a planted law recovered, leave-one-out on the points given,
the recommendation on the fitted Pareto front, objectives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.validation.mixing_law import (Law, MixError, dirichlet_design, fit_law, grid, leave_one_out,
                                            linear_interpolation, objective_values, pareto_front, parse_objective,
                                            recommend, simplex_design, two_domain_design)


def planted(x, c, k, t):
    return Law(c, k, np.asarray(t, float), 0.0).predict(x)


def test_two_domain_design_is_evenly_spaced_with_both_ends():
    d = two_domain_design(5)
    assert d[:, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.allclose(d.sum(axis=1), 1)
    with pytest.raises(MixError, match="at least 2"):
        two_domain_design(1)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 6), seed=st.integers(0, 1000), raw=st.lists(st.floats(0.01, 1), min_size=6, max_size=6))
def test_n_domain_designs_sum_to_one_and_contain_the_natural_mix(n, seed, raw):
    natural = np.array(raw[:n]) / sum(raw[:n])
    for design in (simplex_design(n, natural), dirichlet_design(n, 7, seed, natural)):
        assert np.allclose(design.sum(axis=1), 1) and (design >= 0).all()
        assert np.any(np.all(np.isclose(design, natural), axis=1))
        assert all(np.any(np.all(np.isclose(design, np.eye(n)[i]), axis=1)) for i in range(n))  # the vertices
        assert len(np.unique(design.round(9), axis=0)) == len(design)  # distinct mixes only
    # Vertices, edge midpoints, centroid, and the natural mix unless it is one of them already.
    assert len(simplex_design(3, np.array([0.5, 0.3, 0.2]))) == 3 + 3 + 1 + 1
    assert len(simplex_design(3, np.full(3, 1 / 3))) == 7


def test_the_two_domain_simplex_trains_each_mix_once():
    """Issue 30, item 7: with two domains the edge midpoint is the centroid; it was trained twice,
    and the twins' leave-one-out errors were 0."""
    for natural, n in ((np.array([0.6, 0.4]), 4), (np.array([0.5, 0.5]), 3)):
        design = simplex_design(2, natural)
        assert len(design) == n and len(np.unique(design.round(9), axis=0)) == n


def test_a_planted_law_is_recovered():
    x = two_domain_design(5)
    y = planted(x, 1.05, 0.42, [-1.7])
    law = fit_law(x, y)
    assert law.c == pytest.approx(1.05, abs=1e-6) and law.k == pytest.approx(0.42, abs=1e-6)
    assert law.t[0] == pytest.approx(-1.7, abs=1e-5) and law.rss < 1e-16
    # With measurement noise of 0.002 nats, the law is still close and predicts within the noise.
    rng = np.random.default_rng(0)
    noisy = fit_law(x, y + rng.normal(0, 0.002, len(y)))
    dense = grid(2, step=0.01)
    assert np.abs(noisy.predict(dense) - planted(dense, 1.05, 0.42, [-1.7])).max() < 0.01
    # Three domains: c, k and two exponents from the simplex design.
    x3 = simplex_design(3, np.array([0.5, 0.3, 0.2]))
    y3 = planted(x3, 0.9, 0.6, [-2.0, 0.5])
    law3 = fit_law(x3, y3)
    assert np.allclose([law3.c, law3.k, *law3.t], [0.9, 0.6, -2.0, 0.5], atol=1e-5)


def test_fit_refuses_what_cannot_be_fitted():
    x = two_domain_design(5)
    with pytest.raises(MixError, match="at least 3"):
        fit_law(x[:2], np.array([1.0, 2.0]))
    with pytest.raises(MixError, match="do not vary"):
        fit_law(np.tile([[0.5, 0.5]], (4, 1)), np.ones(4))
    with pytest.raises(MixError, match="finite"):
        fit_law(x, np.array([1, 2, np.nan, 3, 4.0]))


def test_leave_one_out_is_computed_on_the_points_given():
    x = two_domain_design(6)
    y = planted(x, 1.0, 0.5, [-2.0]) + np.array([0.01, -0.02, 0.0, 0.015, -0.01, 0.005])
    loo = leave_one_out(x, y)
    for m in range(len(y)):
        keep = np.arange(len(y)) != m
        want = fit_law(x[keep], y[keep]).predict(x[m])[0]
        assert loo["law_prediction"][m] == pytest.approx(want, abs=1e-9)
        assert loo["linear_prediction"][m] == pytest.approx(linear_interpolation(x[keep], y[keep], x[m]))
    assert loo["law_mae"] == pytest.approx(np.mean(np.abs(np.array(loo["law_prediction"]) - y)))
    # Linear interpolation: halfway between the neighbours inside, extended past the ends.
    assert linear_interpolation(x[[0, 2]], np.array([1.0, 3.0]), np.array([0.1, 0.9])) == pytest.approx(1.5)
    assert linear_interpolation(x[[1, 2]], np.array([2.0, 3.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_a_curved_law_beats_linear_interpolation_and_a_straight_line_does_not():
    x = two_domain_design(5)
    curved = leave_one_out(x, planted(x, 1.0, 1.0, [-4.0]))
    assert curved["law_mae"] < 1e-6 < curved["linear_mae"]
    straight = leave_one_out(x, 2.0 - 0.5 * x[:, 0])
    assert straight["linear_mae"] < 1e-9


def test_the_recommended_mix_lies_on_the_fitted_front():
    x = two_domain_design(5)
    chat = fit_law(x, planted(x, 1.5, 0.3, [-3.0]))  # chat loss falls with the chat share
    math = fit_law(x, planted(x, 1.0, 0.4 * np.exp(-2.5), [2.5]))  # math loss rises with it
    cand = grid(2)
    pred = np.column_stack([chat.predict(cand), math.predict(cand)])
    front = set(pareto_front(pred).tolist())
    for objective in (parse_objective("mean", ["chat", "math"]), parse_objective("chat=3,math=1", ["chat", "math"])):
        best, at = recommend([chat, math], objective, ["chat", "math"], cand)
        assert best in front and np.allclose(at, pred[best])
        values = objective_values(pred, objective, ["chat", "math"])
        assert values[best] == values.min()
    # Worst: for mirrored curves the largest loss is smallest where they cross, at half and half.
    a = fit_law(x, planted(x, 1.0, 0.5, [-3.0]))
    b = fit_law(x, planted(x, 1.0, 0.5 * np.exp(-3.0), [3.0]))
    worst, at = recommend([a, b], parse_objective("worst", ["a", "b"]), ["a", "b"], cand)
    assert cand[worst, 0] == pytest.approx(0.5, abs=1e-3) and at[0] == pytest.approx(at[1], abs=1e-3)
    # Both losses fall together nowhere here, so every mix between the two minima is on the front.
    assert len(front) > 100


def test_pareto_front_keeps_only_the_undominated():
    p = np.array([[1, 5], [2, 4], [2, 6], [3, 3], [4, 4], [5, 1], [5, 1]])
    assert pareto_front(p).tolist() == [0, 1, 3, 5, 6]  # equal rows do not dominate each other


def test_objectives_parse_and_say_what_is_wrong():
    evals = ["chat", "math"]
    assert parse_objective("mean", evals)["weights"] == {"chat": 0.5, "math": 0.5}
    assert parse_objective("chat=3,math=1", evals)["weights"] == {"chat": 0.75, "math": 0.25}
    for bad, msg in [("code=1", "not eval sets"), ("chat=-1", "non-negative"), ("chat=x", "EVAL=WEIGHT"),
                     ("chat=0,math=0", "sum to 0"), ("chat=1,chat=2", "twice")]:
        with pytest.raises(MixError, match=msg):
            parse_objective(bad, evals)


def test_objective_weights_are_normalised_without_overflow_and_every_eval_set_needs_one():
    """Issue 30, item 8: chat=1e308,math=1e308 summed to inf (weights 0/0, an objective always 0),
    and --objective chat=0.3 silently gave math the weight 0."""
    assert parse_objective("chat=1e308,math=1e308", ["chat", "math"])["weights"] == {"chat": 0.5, "math": 0.5}
    small = parse_objective("chat=5e-324,math=1e-323", ["chat", "math"])["weights"]
    assert small == pytest.approx({"chat": 1 / 3, "math": 2 / 3})
    assert parse_objective("chat=1,math=0", ["chat", "math"])["weights"] == {"chat": 1.0, "math": 0.0}
    with pytest.raises(MixError, match=r"give every eval set a weight \(math has none; math=0 leaves it out\)"):
        parse_objective("chat=0.3", ["chat", "math"])
    with pytest.raises(MixError, match="sum to 0"):
        parse_objective("chat=0,math=0", ["chat", "math"])

"""curation.validation.pair_eval: the pair measures from eval log-probs, and the length correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.validation.pair_eval import (length_bias_comparisons, length_bias_line, length_correlation,
                                          pair_metric_rows)


def results(rng, n=30, seeds=(0, 1, 2), bias=0.0):
    """Eval rows of the base model and of one candidate whose reward margin follows the length
    difference by ``bias`` per token, plus noise."""
    nc, nr = rng.integers(5, 60, n), rng.integers(5, 60, n)
    base_c, base_r = -rng.uniform(10, 90, n), -rng.uniform(10, 90, n)
    rows = [pd.DataFrame({"candidate": "base", "seed": -1, "domain": "math", "example_id": [f"p{i}" for i in range(n)],
                          "logp_chosen": base_c, "logp_rejected": base_r, "n_chosen_tokens": nc,
                          "n_rejected_tokens": nr})]
    for s in seeds:
        up = bias * (nc - nr) + rng.normal(0, 1, n)
        rows.append(rows[0].assign(candidate="sel", seed=s, logp_chosen=base_c + up / 2, logp_rejected=base_r - up / 2))
    return pd.concat(rows, ignore_index=True)


def test_the_pair_measures_follow_their_formulas():
    rng = np.random.default_rng(0)
    df = pair_metric_rows(results(rng), beta=0.5)
    base = df[df["candidate"] == "base"]
    assert (base["reward_margin"] == 0).all() and (base["reward_correct"] == 0).all()
    r = df[(df["candidate"] == "sel") & (df["seed"] == 1)].iloc[3]
    b = base.iloc[3]
    lr_c, lr_r = r["logp_chosen"] - b["logp_chosen"], r["logp_rejected"] - b["logp_rejected"]
    assert r["reward_margin"] == pytest.approx(0.5 * (lr_c - lr_r))
    assert r["reward_correct"] == float(lr_c > lr_r)
    assert r["davir_margin"] == pytest.approx(lr_c / -b["logp_chosen"] - lr_r / -b["logp_rejected"])
    assert r["nll_chosen"] == pytest.approx(-r["logp_chosen"] / r["n_chosen_tokens"])
    assert r["len_diff"] == r["n_chosen_tokens"] - r["n_rejected_tokens"]


def test_the_length_correlation_is_the_mean_pearson_over_seeds_with_a_bootstrap_interval():
    """The point is each seed's Pearson r over the eval pairs (numpy's corrcoef), averaged; the
    interval covers it; a margin that follows the length shows a high r, one that does not ~0."""
    rng = np.random.default_rng(1)
    for bias, lo_bound in ((0.3, 0.8), (0.0, -1.0)):
        df = pair_metric_rows(results(rng, bias=bias), beta=0.1)
        (got,) = length_correlation(df, n_boot=400)
        sel = df[df["candidate"] == "sel"]
        want = np.mean([np.corrcoef(g["reward_margin"], g["len_diff"])[0, 1] for _, g in sel.groupby("seed")])
        assert got["pearson"] == pytest.approx(want, abs=1e-12) and got["pearson"] > lo_bound
        assert got["lo"] <= got["pearson"] <= got["hi"] and got["n_pairs"] == 30 and got["n_seeds"] == 3
        if bias == 0.0:
            assert got["lo"] < 0 < got["hi"]


def two_objectives(bias_a: float, bias_b: float, seeds_b=(0, 1, 2)) -> pd.DataFrame:
    """Eval rows of the base model and of two candidates on the same eval pairs: ``a`` (seeds 0-2)
    and ``b`` (``seeds_b``), whose margins follow the length difference by ``bias_a`` and ``bias_b``."""
    rng = np.random.default_rng(2)
    a = results(rng, bias=bias_a)
    b = results(np.random.default_rng(2), bias=bias_b, seeds=seeds_b)  # the same base rows and lengths
    b = b[b["candidate"] == "sel"].assign(candidate="b")
    return pair_metric_rows(pd.concat([a.replace({"candidate": {"sel": "a"}}), b], ignore_index=True), beta=0.1)


def test_an_objective_less_bound_to_length_is_told_apart_by_a_paired_interval():
    """|r a| - |r b|, each the mean over seeds of numpy's Pearson r, with an interval from resampling
    both arms' seeds and pairs together: 'less' when a's margin ignores length and b's follows it,
    'more' the other way round, 'undecided' (an interval of 0) for two identical arms."""
    df = two_objectives(0.0, 0.3)
    (got,) = length_bias_comparisons(df, [("a", "b")], n_boot=400)
    r = {c: np.mean([np.corrcoef(g["reward_margin"], g["len_diff"])[0, 1] for _, g in df[df["candidate"] == c]
                     .groupby("seed")]) for c in ("a", "b")}
    assert got["abs_r_diff"] == pytest.approx(abs(r["a"]) - abs(r["b"]), abs=1e-12)
    assert got["lo"] <= got["abs_r_diff"] <= got["hi"] < 0 and got["verdict"] == "less"
    assert (got["n_pairs"], got["n_seeds"]) == (30, 3) and "follows the length difference less" in length_bias_line(got)
    (back,) = length_bias_comparisons(df, [("b", "a")], n_boot=400)
    assert back["verdict"] == "more" and back["abs_r_diff"] == pytest.approx(-got["abs_r_diff"], abs=1e-12)
    same = two_objectives(0.3, 0.3)
    (tie,) = length_bias_comparisons(same, [("a", "b")], n_boot=200)
    assert tie["abs_r_diff"] == pytest.approx(0, abs=1e-12) and tie["verdict"] == "undecided"


def test_length_bias_is_compared_on_the_seeds_both_objectives_have_and_never_unpaired():
    """b trained on seeds 1-3, a on 0-2: compared on seeds 1 and 2; no common seed: left out."""
    (got,) = length_bias_comparisons(two_objectives(0.0, 0.3, seeds_b=(1, 2, 3)), [("a", "b")], n_boot=100)
    assert got["n_seeds"] == 2
    assert length_bias_comparisons(two_objectives(0.0, 0.3, seeds_b=(5, 6)), [("a", "b")], n_boot=100) == []

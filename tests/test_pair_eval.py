"""curation.validation.pair_eval: the pair measures from eval log-probs, and the length correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.validation.pair_eval import length_correlation, pair_metric_rows


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

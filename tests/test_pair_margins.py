"""What the pages draw for a pair run: margins' length bias, who prefers the chosen response, means
beside the random baseline, on small tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.views.pair_margins import length_bias, margin_columns, means_beside, prefers_chosen


@pytest.fixture
def table():
    return pd.DataFrame({
        "example_id": list("abcdef"), "domain": ["chat", "chat", "chat", "math", "math", "math"],
        "len_diff": [-4, 0, 4, 1, 2, 3],
        "margin_sum": [-8.0, 1.0, 8.0, -1.0, 0.5, 2.0],  # exactly linear in len_diff on chat
        "reward_margin": [0.3, -0.2, 0.1, 0.4, 0.5, -0.6],
    })


def test_length_bias_is_each_margins_correlation_with_len_diff_per_domain(table):
    bias = length_bias(table).set_index(["margin", "group"])
    assert margin_columns(table) == ["margin_sum", "reward_margin"]
    assert list(bias.index.get_level_values("margin").unique()) == ["margin_sum", "reward_margin"]
    assert bias.loc[("margin_sum", "chat"), "spearman"] == pytest.approx(1.0)
    assert bias.loc[("margin_sum", "all"), "n"] == 6
    want = np.corrcoef(table["len_diff"], table["reward_margin"])[0, 1]
    assert bias.loc[("reward_margin", "all"), "pearson"] == pytest.approx(want)


def test_prefers_chosen_counts_positive_margins(table):
    got = prefers_chosen(table).set_index("group")
    assert got.loc["all", "pairs"] == 6 and got.loc["all", "base prefers chosen"] == pytest.approx(4 / 6)
    assert got.loc["chat", "base prefers chosen"] == pytest.approx(2 / 3)
    assert got.loc["math", "reward prefers chosen"] == pytest.approx(2 / 3)


def test_means_beside_gives_each_groups_means(table):
    got = means_beside(table, {"selection": ["a", "b"], "random": ["e", "f"]}, ["len_diff", "margin_sum", "nope"])
    assert list(got.columns) == ["rows", "pairs", "len_diff", "margin_sum"]
    assert got.set_index("rows").loc["selection", "margin_sum"] == pytest.approx(-3.5)
    assert got.set_index("rows").loc["random", "len_diff"] == pytest.approx(2.5)


def test_a_learn_run_with_folds_shows_its_heldout_margins_against_len_diff(table):
    table["reward_margin_heldout"] = table["reward_margin"] * 0.5
    assert margin_columns(table) == ["margin_sum", "reward_margin", "reward_margin_heldout"]
    assert "reward_margin_heldout" in set(length_bias(table)["margin"])

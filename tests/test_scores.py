"""The score registry: methods, columns, directions, and every list that derives from it."""

from __future__ import annotations

import numpy as np

from curation.runs.folder import SCORE_COLUMNS
from curation.scores import (LEARN_COLUMNS, METHODS, SCORES, available_methods, keeps_high, run_kind,
                             score_columns, stability_columns)
from tests.synthetic import SYNTHETIC_LEARN_COLUMNS


def test_available_methods_follow_the_columns():
    plain = available_methods(SCORE_COLUMNS)
    assert [m for m, why in plain.items() if why is None] == ["ppl", "loss", "longest", "target", "random"]
    assert "learnability run" in plain["davir"]
    learn = available_methods(SCORE_COLUMNS + SYNTHETIC_LEARN_COLUMNS)
    assert all(learn[m] is None for m in ("davir", "rho", "ifd", "ppl", "loss", "s2l", "random"))
    assert learn["davir_heldout"] and "--heldout-folds" in learn["davir_heldout"]


def test_scores_registry_names_columns_directions_and_biases():
    for name, info in SCORES.items():
        assert info.name == name and info.explanation and info.formula and info.written_by
        assert info.ranks == (info.order is not None)
    assert SCORES["davir"].column == "davir" and SCORES["ppl"].column == "ppl_base"
    assert "length" in SCORES["rho"].explanation and "short answers" in SCORES["loss"].explanation
    assert "ifd > 1" in SCORES["ifd"].explanation
    assert METHODS == tuple(SCORES)


def test_every_list_of_scores_derives_from_the_registry():
    from curation.runs.formulas import DERIVED_COLUMNS, derived_columns
    from curation.runs.learn import arrow_columns
    from curation.selection.summary import stat_columns

    # The formulas compute exactly the registry's learn columns (ifd has its own pass).
    assert list(derived_columns(np.array([[2.0, 1.0]]))) == DERIVED_COLUMNS == [c for c in LEARN_COLUMNS if c != "ifd"]
    # A learn run's table order: trajectory, learn columns, cluster, held-out, stability.
    cols = {f"loss_ckpt_{k}": np.ones(2) for k in range(3)} | {c: np.ones(2) for c in LEARN_COLUMNS}
    cols |= {"davir_r1": np.ones(2), "davir_r2": np.ones(2), "loss_ref_r1": np.ones(2), "davir_sd": np.ones(2)}
    got = list(arrow_columns(cols, np.zeros(2, dtype=np.int64)))
    assert got == ["loss_ckpt_0", "loss_ckpt_1", "loss_ckpt_2", *LEARN_COLUMNS, "s2l_cluster", "loss_ref_r1",
                   "davir_r1", "davir_r2", "davir_sd"]
    assert stability_columns(got) == ["loss_ref_r1", "davir_r1", "davir_r2", "davir_sd"]
    # What the dashboard offers and the summary describes follow the ranking scores.
    table = SCORE_COLUMNS + got
    offered = score_columns(table)
    assert offered[:5] == ["davir", "rho", "ifd", "ppl_base", "loss_base"] and "loss_ckpt_2" in offered
    assert stat_columns(table) == ["davir", "rho", "ifd", "ppl_base", "loss_base", "loss", "n_response_tokens",
                                   "n_prompt_tokens"]
    assert run_kind(table) == "learn" and run_kind(SCORE_COLUMNS) == "score"


def test_directions_come_from_the_registry():
    for name, info in SCORES.items():
        if info.ranks:
            assert keeps_high(name) == (info.order == "high"), name
            assert keeps_high(info.column) == (info.order == "high"), info.column
    assert keeps_high("loss") and keeps_high("ifd") and not keeps_high("ppl_base") and not keeps_high("ppl")


def test_a_score_value_comes_from_its_column_or_is_derived_from_its_fallback():
    import math

    import pandas as pd

    score_run = pd.DataFrame({"loss": [0.0, 1.0], "n_response_tokens": [3, 4]})
    learn_run = score_run.assign(ppl_base=[5.0, 6.0], loss_base=[0.5, 0.25])
    assert SCORES["ppl"].value_column(score_run.columns) == "ppl" and SCORES["ppl"].source_column(score_run.columns) == "loss"
    assert list(SCORES["ppl"].values(score_run)) == [1.0, math.exp(1.0)]  # ppl = exp(loss) in a score run
    assert list(SCORES["ppl"].values(learn_run)) == [5.0, 6.0] and SCORES["ppl"].value_column(learn_run.columns) == "ppl_base"
    assert list(SCORES["loss"].values(score_run)) == [0.0, 1.0] and SCORES["loss"].value_column(score_run.columns) == "loss"
    assert list(SCORES["loss"].values(learn_run)) == [0.5, 0.25]
    assert SCORES["davir"].values(score_run) is None and SCORES["davir"].value_column(score_run.columns) is None


def test_pair_scores_have_their_directions_and_serve_pair_runs_only():
    from curation.scores import data_of, default_method, length_column, methods_for
    from tests.synthetic import PAIR_LEARN_COLUMNS, PAIR_SCORE_COLUMNS

    pair_score = PAIR_SCORE_COLUMNS + ["example_id", "n_response_tokens"]
    pair_learn = pair_score + PAIR_LEARN_COLUMNS
    assert keeps_high("reward_margin") and keeps_high("davir_margin") and keeps_high("rating_margin")
    assert not keeps_high("margin_sum") and not keeps_high("margin_mean") and not keeps_high("loss_rejected")  # the base model's most wrong first
    assert data_of(pair_score) == "pairs" and data_of(SCORE_COLUMNS) == "sft"
    assert length_column(pair_score) == "len_diff" and length_column(SCORE_COLUMNS) == "n_response_tokens"
    assert methods_for(pair_score) == ["longest", "random", "margin_sum", "margin_mean", "loss_chosen", "loss_rejected",
                                       "len_diff", "rating_margin", "reward_chosen", "reward_rejected", "reward_margin",
                                       "davir_chosen", "davir_rejected", "davir_margin", "reward_margin_heldout",
                                       "davir_margin_heldout"]
    assert "margin_sum" not in methods_for(SCORE_COLUMNS) and "davir" in methods_for(SCORE_COLUMNS)
    assert default_method(pair_learn) == "davir_margin" and default_method(pair_score) == "margin_sum"
    assert default_method(SCORE_COLUMNS) == "loss" and default_method(SCORE_COLUMNS + SYNTHETIC_LEARN_COLUMNS) == "davir"
    assert run_kind(pair_learn) == "learn" and run_kind(pair_score) == "score"
    assert available_methods(pair_score)["reward_margin"].endswith("on preference pairs (`python -m curation "
                                                                   "learn PAIRS ...`)")
    assert score_columns(pair_learn)[:4] == ["margin_sum", "margin_mean", "loss_chosen", "loss_rejected"]


def test_pair_runs_are_offered_pair_scores_and_sft_runs_sft_scores():
    from curation.runs.pair_tables import PAIR_SCORE_COLUMNS, RATING_COLUMNS
    from curation.scores import PAIR_COLUMNS, PAIR_LEARN_COLUMNS, data_of

    pair_run = PAIR_SCORE_COLUMNS + ["example_id", "n_response_tokens"]
    assert data_of(pair_run) == "pairs" and data_of(SCORE_COLUMNS) == "sft"
    offered = available_methods(pair_run)
    assert [m for m, why in offered.items() if why is None] == ["longest", "random", *PAIR_COLUMNS]
    assert "this run holds preference pairs" in offered["loss"] and "this run holds SFT examples" in \
        available_methods(SCORE_COLUMNS)["loss_chosen"]
    assert "rates them" in offered["rating_margin"] and available_methods(pair_run + RATING_COLUMNS)["rating_margin"] is None
    assert "learnability run on preference pairs" in offered["reward_margin"]
    learn = available_methods(pair_run + list(PAIR_LEARN_COLUMNS))
    assert all(learn[m] is None for m in PAIR_LEARN_COLUMNS)
    assert run_kind(pair_run) == "score" and run_kind(pair_run + list(PAIR_LEARN_COLUMNS)) == "learn"
    assert score_columns(pair_run) == [c for c in PAIR_COLUMNS if c != "len_diff"]  # a length, plotted as one


def test_every_pair_score_has_its_producer_direction_and_length_caveat():
    from curation.scores import PAIR_COLUMNS, PAIR_LEARN_COLUMNS, PAIRS

    pair_scores = [s for s in SCORES.values() if s.data == PAIRS]
    assert [s.name for s in pair_scores] == ["margin_sum", "margin_mean", "loss_chosen", "loss_rejected", "len_diff",
                                             "rating_margin", "reward_chosen", "reward_rejected", "reward_margin",
                                             "davir_chosen", "davir_rejected", "davir_margin", "reward_margin_heldout",
                                             "davir_margin_heldout"]
    assert all(s.column == s.name and s.order and "long" in s.explanation for s in pair_scores)
    assert SCORES["reward_margin"].order == SCORES["davir_margin"].order == "high"
    assert list(PAIR_COLUMNS) == ["margin_sum", "margin_mean", "loss_chosen", "loss_rejected", "len_diff"]
    assert list(PAIR_LEARN_COLUMNS) == ["reward_chosen", "reward_rejected", "reward_margin", "davir_chosen",
                                        "davir_rejected", "davir_margin"]
    assert SCORES["random"].data == "both"

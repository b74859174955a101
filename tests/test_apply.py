"""Applying a recipe: exact budgets and mixes, the top-k law, thresholds, S2L, strata, temperature."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.selection.allocation import largest_remainder
from curation.selection.apply import apply_recipe, select
from curation.selection.recipe import Recipe, SelectionError
from tests.synthetic import make_run, table_of


def random_table(n_math: int, n_chat: int, seed: int, ties: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_math + n_chat
    t = pd.DataFrame({
        "example_id": [f"{i:016x}" for i in rng.permutation(10 * n + 1)[:n]],
        "source": ["m.jsonl"] * n_math + ["c.json"] * n_chat,
        "source_index": np.r_[np.arange(n_math), np.arange(n_chat)].astype(np.int64),
        "domain": ["math"] * n_math + ["chat"] * n_chat,
        "n_prompt_tokens": rng.integers(1, 30, n), "n_response_tokens": rng.integers(1, 80, n),
        "scored": True,
        "davir": rng.integers(0, 5, n) / 4 if ties else rng.normal(size=n),
        "ifd": rng.uniform(0, 2, n),
        "s2l_cluster": rng.integers(0, 7, n),
    })
    t["loss"] = rng.uniform(0.1, 3, n)
    return t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_math=st.integers(1, 60), n_chat=st.integers(1, 60), seed=st.integers(0, 10_000),
       budget=st.integers(1, 130), share=st.integers(0, 10), order=st.sampled_from(["high", "low"]),
       ties=st.booleans(), ifd_max=st.sampled_from([None, 1.0, 1.5]), fill=st.booleans())
def test_top_k_law_and_exact_budget(n_math, n_chat, seed, budget, share, order, ties, ifd_max, fill):
    t = random_table(n_math, n_chat, seed, ties)
    recipe = Recipe("davir", budget=str(budget), order=order, mix={"chat": share / 10, "math": 1 - share / 10},
                    max={"ifd": ifd_max} if ifd_max else {}, fill=fill)
    eligible = t if ifd_max is None else t[t["ifd"] <= ifd_max]
    try:
        sel = apply_recipe(t, recipe)
    except SelectionError as e:
        assert "empty selection" in str(e)
        return
    rows = sel.rows
    assert rows["example_id"].is_unique and set(rows["example_id"]) <= set(eligible["example_id"])
    quota = largest_remainder(budget, {"chat": Fraction(share, 10), "math": 1 - Fraction(share, 10)})
    for d in ("chat", "math"):
        got = rows[rows["domain"] == d]
        cap = int((eligible["domain"] == d).sum())
        if not fill:
            assert len(got) == min(quota[d], cap)  # exact per-domain budget
        assert list(got["rank"]) == list(range(1, len(got) + 1))
        left = eligible[(eligible["domain"] == d) & ~eligible["example_id"].isin(got["example_id"])]
        if len(got) and len(left):  # the top-k law
            if order == "high":
                assert got["davir"].min() >= left["davir"].max()
            else:
                assert got["davir"].max() <= left["davir"].min()
    if fill:  # fill spreads over the domains of the mix with a positive share only
        open_ = [d for d, s in (("chat", share), ("math", 10 - share)) if s > 0]
        assert len(rows) == min(budget, int(eligible["domain"].isin(open_).sum()))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), tok=st.integers(1, 6000), share=st.integers(1, 9))
def test_token_budget_is_a_ranked_prefix_within_budget(seed, tok, share):
    t = random_table(40, 30, seed)
    recipe = Recipe("davir", budget=f"{tok}tok", mix={"chat": share / 10, "math": 1 - share / 10})
    try:
        sel = apply_recipe(t, recipe)
    except SelectionError as e:
        assert "empty selection" in str(e)
        return
    quota = largest_remainder(tok, {"chat": Fraction(share, 10), "math": 1 - Fraction(share, 10)})
    t = t.assign(n_tokens=t["n_prompt_tokens"] + t["n_response_tokens"])
    for d in ("chat", "math"):
        ranked = t[t["domain"] == d].sort_values(["davir", "example_id"], ascending=[False, True])
        got = sel.rows[sel.rows["domain"] == d]
        assert got["n_tokens"].sum() <= quota[d]
        k = len(got)
        assert list(got["example_id"]) == list(ranked["example_id"][:k])
        if k < len(ranked):  # the next example would not have fitted
            assert got["n_tokens"].sum() + ranked["n_tokens"].iloc[k] > quota[d]
    assert sel.rows["n_tokens"].sum() <= tok


def test_thresholds_filter_before_ranking(run_dir):
    t = table_of(run_dir)
    sel = select(t, Recipe("davir", budget="20", mix="natural", max={"ifd": 1}, min={"n_response_tokens": 50}))
    kept = t[(t["ifd"] <= 1) & (t["n_response_tokens"] >= 50)]
    assert set(sel["example_id"]) <= set(kept["example_id"])
    assert len(sel) == 20  # thresholds do not eat the budget
    # a NaN score is never eligible
    t2 = t.copy()
    top = t2.sort_values("davir").iloc[-1]["example_id"]
    t2.loc[t2["example_id"] == top, "davir"] = np.nan
    assert top not in set(select(t2, Recipe("davir", budget="70"))["example_id"])


def test_natural_mix_and_percent_budget(run_dir):
    t = table_of(run_dir)  # 40 math, 30 chat
    sel = apply_recipe(t, Recipe("davir", budget="10%", mix="natural"))
    assert sel.budget_units == 7
    assert sel.rows["domain"].value_counts().to_dict() == {"math": 4, "chat": 3}


def test_shortfall_is_reported_and_filled_only_with_fill(run_dir):
    t = table_of(run_dir)
    sel = apply_recipe(t, Recipe("davir", budget="60", mix="chat=0.9,math=0.1"))
    assert sel.rows["domain"].value_counts().to_dict() == {"chat": 30, "math": 6}
    assert sel.domains["chat"].shortfall == 24 and "use --fill" in sel.warnings[0]
    filled = apply_recipe(t, Recipe("davir", budget="60", mix="chat=0.9,math=0.1", fill=True))
    assert filled.rows["domain"].value_counts().to_dict() == {"chat": 30, "math": 30}
    # the filled math rows are still math's top 30
    m = t[t["domain"] == "math"].nlargest(30, "davir")
    assert set(filled.rows.loc[filled.rows["domain"] == "math", "example_id"]) == set(m["example_id"])


def test_selection_is_pure_and_independent_of_row_order(run_dir):
    t = table_of(run_dir)
    shuffled = t.sample(frac=1, random_state=1)
    for method in ("davir", "random", "s2l", "ppl"):
        r = Recipe(method, budget="25", mix="chat=0.4,math=0.6", seed=5)
        a, b = select(t, r), select(shuffled, r)
        assert a["example_id"].tolist() == b["example_id"].tolist()
    assert select(t, Recipe("random", budget="25", seed=1))["example_id"].tolist() != \
        select(t, Recipe("random", budget="25", seed=2))["example_id"].tolist()


def test_plain_score_run_supports_loss_and_ppl(tmp_path, pool_files):
    run = make_run(tmp_path / "scorerun", pool_files, learn=False)
    t = table_of(run)
    low = select(t, Recipe("ppl", budget="10", mix="natural"))
    assert "ppl" in low.columns and np.allclose(low["ppl"], np.exp(t.set_index("example_id").loc[low["example_id"], "loss"]))
    high = select(t, Recipe("loss", budget="10", mix="natural"))
    for d in ("chat", "math"):
        dom = t[t["domain"] == d]
        assert set(high.loc[high["domain"] == d, "example_id"]) == set(dom.nlargest(len(high[high["domain"] == d]), "loss")["example_id"])
    with pytest.raises(SelectionError, match=r"'davir', which this score run's scores.parquet does not have; 'davir' is written by a learnability run"):
        select(t, Recipe("davir"))
    with pytest.raises(SelectionError, match=r"'s2l_cluster'.*learnability run"):
        select(t, Recipe("s2l", budget="10"))
    with pytest.raises(SelectionError, match=r"'ifd'.*learnability run"):
        select(t, Recipe("loss", max={"ifd": 1}))


def test_clear_errors(run_dir):
    t = table_of(run_dir)
    with pytest.raises(SelectionError, match=r"impossible mix: domain\(s\) \['code'\] have no examples"):
        select(t, Recipe("davir", mix="chat=0.5,code=0.5"))
    with pytest.raises(SelectionError, match="empty selection: no example is eligible"):
        select(t, Recipe("davir", min={"davir": 5}))
    with pytest.raises(SelectionError, match="unknown score or column 'bogus'"):
        select(t, Recipe("davir", max={"bogus": 1}))
    with pytest.raises(SelectionError, match="rounds to 0"):
        select(t, Recipe("davir", budget="0.1%"))


def test_s2l_per_domain_on_run(run_dir):
    t = table_of(run_dir)
    sel = select(t, Recipe("s2l", budget="20", mix="chat=0.5,math=0.5", seed=3))
    assert sel["domain"].value_counts().to_dict() == {"chat": 10, "math": 10}
    assert "s2l_cluster" in sel.columns
    re_clustered = select(t, Recipe("s2l", budget="20", mix="chat=0.5,math=0.5", seed=3, s2l_clusters=4))
    assert len(re_clustered) == 20


def length_biased_table(n_math: int = 120, n_chat: int = 90, seed: int = 0) -> pd.DataFrame:
    """A table whose davir grows with response length (a length-biased score)."""
    t = random_table(n_math, n_chat, seed)
    rng = np.random.default_rng(seed + 1)
    t["n_response_tokens"] = rng.integers(1, 400, len(t))
    t["davir"] = t["n_response_tokens"] / 400 + rng.normal(0, 0.05, len(t))
    return t


def test_longest_ranks_by_response_length_on_a_plain_score_run(tmp_path, pool_files):
    run = make_run(tmp_path / "plain", pool_files, learn=False)
    t = table_of(run)
    sel = select(t, Recipe("longest", budget="6", mix="chat=0.5,math=0.5"))
    for d, g in sel.groupby("domain"):
        rest = t[(t["domain"] == d) & ~t["example_id"].isin(g["example_id"])]
        assert len(g) == 3 and g["n_response_tokens"].min() >= rest["n_response_tokens"].max()
    assert Recipe("longest").order == "high"
    shortest = select(t, Recipe("longest", budget="4", order="low"))
    assert shortest["n_response_tokens"].max() <= t["n_response_tokens"].quantile(0.25)


@pytest.mark.parametrize("q,budget,th", [(5, "60", None), (4, "37", {"ifd": 1.5}), (7, "25%", None)])
def test_stratify_matches_the_eligible_length_histogram(q, budget, th):
    from curation.selection.pickers import length_strata

    t = length_biased_table()
    plain = apply_recipe(t, Recipe("davir", budget=budget, max=th or {}))
    strat = apply_recipe(t, Recipe("davir", budget=budget, max=th or {}, stratify=f"length:{q}"))
    assert len(strat.rows) == len(plain.rows)  # the same budget and mix
    mismatch_plain = 0
    for d in ("chat", "math"):
        rows = t[strat.eligible_mask & (t["domain"] == d).to_numpy()].sort_values("example_id")
        strata = length_strata(rows["n_response_tokens"].to_numpy(), rows["example_id"].to_numpy(), q)
        for sel, is_strat in ((strat, True), (plain, False)):
            chosen = rows["example_id"].isin(set(sel.rows["example_id"])).to_numpy()
            k = int(chosen.sum())
            for s in range(q):
                want = k * (strata == s).sum() / len(rows)  # the pool's share of this stratum
                got = int((chosen & (strata == s)).sum())
                if is_strat:
                    assert abs(got - want) < 1, (d, s, got, want)
                else:
                    mismatch_plain += abs(got - want) >= 1
        # Within a stratum it is still top-k.
        got = strat.rows[strat.rows["domain"] == d]
        assert strat.details["strata"][d]["selected"] == np.bincount(
            strata[rows["example_id"].isin(set(got["example_id"])).to_numpy()], minlength=q).tolist()
    assert mismatch_plain > 0  # plain top-k on a length-biased score does not match (the test can fail)
    # The summary's length quantiles: the stratified selection sits near the eligible rows.
    from curation.selection.summary import length_profile

    lp_s, lp_p = length_profile(t, strat), length_profile(t, plain)
    med = lambda lp, g: lp[g]["all"][2]  # noqa: E731
    assert abs(med(lp_s, "selection") - med(lp_s, "eligible")) < abs(med(lp_p, "selection") - med(lp_p, "eligible"))


def test_stratify_with_a_token_budget_stays_within_budget():
    t = length_biased_table()
    sel = apply_recipe(t, Recipe("davir", budget="5000tok", stratify="length:4"))
    assert 0 < sel.rows["n_tokens"].sum() <= 5000
    for d in ("chat", "math"):
        assert sum(sel.details["strata"][d]["selected"]) == (sel.rows["domain"] == d).sum()
        assert min(sel.details["strata"][d]["selected"]) > 0  # short and long strata both picked


def test_temperature_is_seeded_reproducible_and_tends_to_top_k():
    t = length_biased_table()
    top = set(select(t, Recipe("davir", budget="40"))["example_id"])
    a = select(t, Recipe("davir", budget="40", temperature=0.5, seed=1))
    b = select(t.sample(frac=1, random_state=3), Recipe("davir", budget="40", temperature=0.5, seed=1))
    assert a["example_id"].tolist() == b["example_id"].tolist()  # seeded, independent of row order
    c = select(t, Recipe("davir", budget="40", temperature=0.5, seed=2))
    assert set(c["example_id"]) != set(a["example_id"])
    assert set(a["example_id"]) != top  # soft: not top-k ...
    rnd = select(t, Recipe("random", budget="40", seed=1))
    davir = t.set_index("example_id")["davir"]
    assert davir[a["example_id"]].mean() > davir[rnd["example_id"]].mean()  # ... but biased towards it
    tiny = select(t, Recipe("davir", budget="40", temperature=1e-9, seed=5))
    assert set(tiny["example_id"]) == top
    assert set(select(t, Recipe("davir", budget="40", temperature=1e-300, seed=5))["example_id"]) == top
    low_top = set(select(t, Recipe("davir", budget="40", order="low"))["example_id"])
    assert set(select(t, Recipe("davir", budget="40", order="low", temperature=1e-9))["example_id"]) == low_top


# ----------------------------------------------------------------------------------------------
# Preference pairs: the same pipeline over a pair run's generic columns


@pytest.fixture
def pair_table(tmp_path):
    from curation.runs.folder import Run
    from tests.synthetic import make_pair_run, write_pair_sources

    return Run(make_pair_run(tmp_path / "pairs", write_pair_sources(tmp_path / "src"))).scores()


def test_a_pair_score_keeps_its_registry_end_and_order_takes_the_other(pair_table):
    math = pair_table[pair_table["domain"] == "math"]
    for method, order, want in (("margin_sum", None, math.nsmallest(5, "margin_sum")),  # the registry's low
                                ("margin_sum", "high", math.nlargest(5, "margin_sum")),
                                ("reward_margin", None, math.nlargest(5, "reward_margin")),  # highest first
                                ("davir_margin", "low", math.nsmallest(5, "davir_margin"))):
        got = select(pair_table, Recipe(method, budget="5", order=order, mix="math=1,chat=0", decisions="none"))
        assert list(got["example_id"]) == list(want["pair_id"]), (method, order)


def test_a_pair_token_budget_counts_the_prompt_and_both_responses(pair_table):
    result = apply_recipe(pair_table, Recipe("random", budget="400tok", decisions="none"))
    rows = pair_table.set_index("pair_id").loc[result.rows["example_id"]]
    both = rows["n_prompt_tokens"] + rows["n_chosen_tokens"] + rows["n_rejected_tokens"]
    assert list(result.rows["n_tokens"]) == list(both) and 0 < both.sum() <= 400


def test_length_strata_of_a_pair_run_follow_len_diff(pair_table):
    from curation.selection.pickers import length_strata

    result = apply_recipe(pair_table, Recipe("margin_sum", budget="9", stratify="length:3", mix="math=1,chat=0",
                                             decisions="none"))
    math = pair_table[pair_table["domain"] == "math"].sort_values("pair_id")
    strata = length_strata(math["len_diff"].to_numpy(), math["pair_id"].to_numpy(), 3)
    report = result.details["strata"]["math"]
    assert report["edges"] == [float(math["len_diff"].to_numpy()[strata == s].max()) for s in range(3)]
    assert report["selected"] == [3, 3, 3]
    by_stratum = dict(zip(math["pair_id"], strata))
    assert sorted(by_stratum[i] for i in result.rows["example_id"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_a_method_for_the_other_kind_of_data_is_refused_in_one_line(pair_table, run_dir):
    with pytest.raises(SelectionError, match="--method davir scores SFT examples; this run holds preference pairs: "
                                             "use one of longest, random, margin_sum"):
        select(pair_table, Recipe("davir", budget="5", decisions="none"))
    with pytest.raises(SelectionError, match="--method reward_margin scores preference pairs; this run holds SFT "
                                             "examples: use one of davir"):
        select(table_of(run_dir), Recipe("reward_margin", budget="5", decisions="none"))


def test_a_selection_that_decontamination_empties_names_that_step(tmp_path):
    """Decontamination that flags everything is named, not the score or the thresholds."""
    from curation.runs.folder import Run
    from curation.selection.annotate import annotate
    from tests.conftest import write_jsonl
    from tests.synthetic import make_selection

    run, _ = make_selection(tmp_path)
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 1 + 1? Say 1.", "answer": "2"}])
    recipe = Recipe("loss", budget="5", decontaminate=[str(ev)], ngram=1)
    with pytest.raises(SelectionError, match="the step that left none is decontamination \\(1-word n-grams\\)"):
        apply_recipe(annotate(Run(run), Run(run).scores(), recipe), recipe)

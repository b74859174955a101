"""Selection: recipes, exact budgets and mixes, the top-k law, thresholds, S2L sampling, the CLI."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.selection import (
    SCORES, Budget, Recipe, SelectionError, allocate, apply_recipe, largest_remainder, read_recipe,
    recipe_yaml, s2l_sample, select, select_run,
)
from tests.conftest import write_jsonl

LEARN_COLUMNS = ["loss_ckpt_0", "loss_ckpt_1", "loss_ckpt_2", "loss_base", "loss_ref", "davir", "rho",
                 "ifd", "ppl_base", "s2l_cluster"]


# ----------------------------------------------------------------------------------------------
# Synthetic run folders: real source files, real example ids, synthetic scores.


def synthetic_scores(examples, seed: int = 0, learn: bool = True) -> pd.DataFrame:
    """A score table over loaded ``examples`` with the learn run's columns, scores drawn from a
    seeded RNG but consistent with their formulas (davir = (L0 - LK) / L0, ...)."""
    rng = np.random.default_rng(seed)
    n = len(examples)
    rows = pd.DataFrame({
        "example_id": [e.example_id for e in examples],
        "source": [e.source for e in examples],
        "source_index": np.array([e.source_index for e in examples], dtype=np.int64),
        "domain": [e.domain for e in examples],
        "n_prompt_tokens": rng.integers(5, 60, n).astype(np.int32),
        "n_response_tokens": rng.integers(1, 200, n).astype(np.int32),
    })
    rows["n_tokens_full"] = rows["n_prompt_tokens"] + rows["n_response_tokens"]
    rows["truncated"] = False
    rows["scored"] = True
    l0 = rng.uniform(0.5, 3.0, n)
    rows["loss"] = l0
    rows["loss_sum"] = l0 * rows["n_response_tokens"]
    if learn:
        lk = l0 * rng.uniform(0.2, 1.0, n)
        rows["loss_ckpt_0"], rows["loss_ckpt_1"], rows["loss_ckpt_2"] = l0, (l0 + lk) / 2, lk
        rows["loss_base"], rows["loss_ref"] = l0, lk
        rows["davir"] = (l0 - lk) / l0
        rows["rho"] = l0 - lk
        rows["ifd"] = rng.uniform(0.3, 1.3, n)
        rows["ppl_base"] = np.exp(l0)
        rows["s2l_cluster"] = rng.integers(0, 6, n)
    return rows


def make_run(folder: Path, sources: list[str], seed: int = 0, learn: bool = True, table_fn=None,
             limit: int | None = None) -> Path:
    """Write ``folder/scores.parquet`` + ``run.json`` for ``sources`` ("DOMAIN=PATH")."""
    from dataclasses import asdict

    from curation.load import load_sources, parse_source_arg

    data = load_sources([parse_source_arg(s) for s in sources], limit=limit)
    table = synthetic_scores(data.examples, seed, learn)
    if table_fn is not None:
        table = table_fn(table)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "scores.parquet", index=False)
    run = {
        "kind": "learn" if learn else "score", "code_version": "test", "finished": True,
        "config": {"sources": sources, "columns": {}, "format": None, "limit": limit},
        "sources": [asdict(s) for s in data.sources],
        "model": {"path": "synthetic", "fingerprint": "sha256:synthetic"},
        "template": {"name": "chat", "fingerprint": "sha256:t"}, "max_length": 2048, "run_key": "synthetic",
    }
    (folder / "run.json").write_text(json.dumps(run))
    return folder


@pytest.fixture
def pool_files(tmp_path):
    math_rows = [{"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(40)]
    chat_rows = [{"instruction": f"Say something about fox {k}.", "input": "", "output": "The quick fox " * (k + 1)}
                 for k in range(30)]
    math = write_jsonl(tmp_path / "gsm.jsonl", math_rows)
    chat = tmp_path / "alpaca.json"
    chat.write_text(json.dumps(chat_rows))
    return [f"math={math}", f"chat={chat}"]


@pytest.fixture
def run_dir(tmp_path, pool_files):
    return make_run(tmp_path / "run", pool_files)


def table_of(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "scores.parquet")


# ----------------------------------------------------------------------------------------------
# Recipe and budget parsing


def test_budget_parsing_and_rounding():
    assert Budget.parse("200").units(1000) == 200
    assert Budget.parse("10%").units(1000) == 100
    assert Budget.parse("2.5%").units(30) == 1  # 0.75 rounds half up to 1
    assert Budget.parse("5%").units(30) == 2  # 1.5 -> 2 (half up, exact arithmetic)
    assert Budget.parse("25000tok") == Budget("tokens", Fraction(25000))
    assert str(Budget.parse("2.5%")) == "2.5%" and str(Budget.parse("25_000tok")) == "25000tok"
    for bad in ("0", "-3", "150%", "1.5", "ten", "10 apples"):
        with pytest.raises(SelectionError, match="budget"):
            Budget.parse(bad)


def test_recipe_defaults_and_validation():
    assert Recipe("davir").order == "high" and Recipe("rho").order == "high"
    assert Recipe("ifd").order == "high" and Recipe("ppl").order == "low" and Recipe("loss").order == "high"
    assert Recipe("random").order is None
    r = Recipe("davir", budget="10%", mix="math=0.5, chat=0.5", max=["ifd=1"], min={"n_response_tokens": 5})
    assert r.mix == {"chat": 0.5, "math": 0.5} and r.max == {"ifd": 1.0} and r.min == {"n_response_tokens": 5.0}
    with pytest.raises(SelectionError, match="unknown method/score 'bogus'"):
        Recipe("bogus")
    with pytest.raises(SelectionError, match="impossible mix: shares sum to 0.9"):
        Recipe("davir", mix="chat=0.5,math=0.4")
    with pytest.raises(SelectionError, match="impossible mix"):
        Recipe("davir", mix="chat=-0.5,math=1.5")
    with pytest.raises(SelectionError, match="order does not apply"):
        Recipe("random", order="high")
    with pytest.raises(SelectionError, match="min 2.0 is above max 1.0"):
        Recipe("davir", min={"ifd": 2}, max={"ifd": 1})
    with pytest.raises(SelectionError, match="not tokens"):
        Recipe("s2l", budget="1000tok")
    with pytest.raises(SelectionError, match=r"unknown recipe field\(s\) \['budgte'\]"):
        Recipe.from_dict({"method": "davir", "budgte": "10%"})


def test_recipe_yaml_round_trip(tmp_path):
    r = Recipe("davir", budget="7%", mix={"math": 0.25, "chat": 0.75}, max={"ifd": 1}, fill=True, seed=3)
    p = tmp_path / "recipe.yaml"
    p.write_text(recipe_yaml(r))
    assert read_recipe(p) == r
    p.write_text("method: davir\nbudget: [oops\n")
    with pytest.raises(SelectionError, match="not valid YAML"):
        read_recipe(p)


def test_available_methods_follow_the_columns():
    from curation.runs import SCORE_COLUMNS
    from curation.selection import available_methods

    plain = available_methods(SCORE_COLUMNS)
    assert [m for m, why in plain.items() if why is None] == ["ppl", "loss", "longest", "random"]
    assert "learnability run" in plain["davir"]
    learn = available_methods(SCORE_COLUMNS + LEARN_COLUMNS)
    assert all(learn[m] is None for m in ("davir", "rho", "ifd", "ppl", "loss", "s2l", "random"))
    assert learn["davir_heldout"] and "--heldout-folds" in learn["davir_heldout"]


def test_scores_registry_names_columns_directions_and_biases():
    for name, info in SCORES.items():
        assert info.name == name and info.explanation and info.produced_by
    assert SCORES["davir"].column == "davir" and SCORES["ppl"].column == "ppl_base"
    assert "length" in SCORES["rho"].explanation and "short answers" in SCORES["loss"].explanation
    assert "ifd > 1" in SCORES["ifd"].explanation


# ----------------------------------------------------------------------------------------------
# Allocation laws


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


# ----------------------------------------------------------------------------------------------
# select on tables


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


# ----------------------------------------------------------------------------------------------
# S2L balanced sampling


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


def test_s2l_per_domain_on_run(run_dir):
    t = table_of(run_dir)
    sel = select(t, Recipe("s2l", budget="20", mix="chat=0.5,math=0.5", seed=3))
    assert sel["domain"].value_counts().to_dict() == {"chat": 10, "math": 10}
    assert "s2l_cluster" in sel.columns
    re_clustered = select(t, Recipe("s2l", budget="20", mix="chat=0.5,math=0.5", seed=3, s2l_clusters=4))
    assert len(re_clustered) == 20


# ----------------------------------------------------------------------------------------------
# The select command


def test_select_run_writes_outputs_and_reapplies(run_dir, tmp_path):
    out = select_run(run_dir, Recipe("davir", budget="10", mix="chat=0.5,math=0.5", max={"ifd": 1.2}), tmp_path / "sel")
    sel = pd.read_parquet(out / "selected.parquet")
    assert list(sel.columns)[:5] == ["example_id", "source", "source_index", "domain", "rank"] and "davir" in sel
    summary = json.loads((out / "summary.json").read_text())
    assert summary["domains"]["chat"]["selected"] == 5 and summary["domains"]["math"]["selected"] == 5
    assert summary["totals"]["tokens"] == int(sel["n_tokens"].sum())
    s = summary["stats"]
    assert s["selection"]["davir"]["all"]["mean"] > s["random"]["davir"]["all"]["mean"]
    assert s["pool"]["davir"]["all"]["count"] == 70
    assert summary["random_baseline"]["counts"]["chat"]["examples"] == 5
    assert summary["run"]["sources"][0]["abs_path"]
    # the written recipe, re-applied, gives the same ids
    again = select_run(run_dir, read_recipe(out / "recipe.yaml"), tmp_path / "sel2")
    assert pd.read_parquet(again / "selected.parquet")["example_id"].tolist() == sel["example_id"].tolist()


def test_select_refuses_a_foreign_out_folder(run_dir, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="does not hold a previous selection"):
        select_run(run_dir, Recipe("davir", budget="5"), tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "x"


def test_cli_select_and_errors(run_dir, tmp_path, capsys):
    from curation.cli import main

    out = tmp_path / "sel"
    assert main(["select", str(run_dir), "--method", "davir", "--budget", "20%", "--mix", "chat=0.5,math=0.5",
                 "--max", "ifd=1.2", "--out", str(out)]) == 0
    assert "selected 14 of 70" in capsys.readouterr().out
    # --recipe with a flag on top
    assert main(["select", str(run_dir), "--recipe", str(out / "recipe.yaml"), "--budget", "4", "--out", str(tmp_path / "s2")]) == 0
    r = read_recipe(tmp_path / "s2" / "recipe.yaml")
    assert r.budget == "4" and r.max == {"ifd": 1.2} and r.mix == {"chat": 0.5, "math": 0.5}
    cases = [
        (["--method", "nope"], "unknown method/score 'nope'"),
        (["--method", "davir", "--mix", "chat=0.7,math=0.7"], "impossible mix"),
        (["--method", "davir", "--min", "davir=9"], "empty selection"),
    ]
    for extra, msg in cases:
        assert main(["select", str(run_dir), *extra, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert main(["select", str(tmp_path / "nowhere"), "--method", "davir", "--out", str(tmp_path / "bad")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------------------
# Controls for what top-k gets wrong: longest, length strata, soft selection


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
    from curation.selection import length_strata

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
    from curation.selection import length_profile

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


def test_new_recipe_fields_validate_and_round_trip(tmp_path):
    r = Recipe("loss", budget="10%", stratify=" length : 4 ", temperature=0.3, seed=2)
    assert r.stratify == "length:4" and r.strata == 4
    p = tmp_path / "recipe.yaml"
    p.write_text(recipe_yaml(r))
    assert read_recipe(p) == r and read_recipe(p).strata == 4
    for kw, msg in [({"stratify": "length:1"}, "Q >= 2"), ({"stratify": "tokens:3"}, "length:Q"),
                    ({"temperature": 0}, "positive number"), ({"temperature": float("nan")}, "positive number")]:
        with pytest.raises(SelectionError, match=msg):
            Recipe("davir", **kw)
    with pytest.raises(SelectionError, match="ranking method"):
        Recipe("random", stratify="length:3")
    with pytest.raises(SelectionError, match="ranking method"):
        Recipe("s2l", temperature=1.0)


def test_cli_select_with_stratify_and_temperature(run_dir, tmp_path, capsys):
    from curation.cli import main

    out = tmp_path / "sel"
    assert main(["select", str(run_dir), "--method", "longest", "--budget", "20", "--stratify", "length:3",
                 "--temperature", "0.7", "--seed", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "response length p10/p25/p50/p75/p90: eligible" in printed
    r = read_recipe(out / "recipe.yaml")
    assert r.stratify == "length:3" and r.temperature == 0.7 and r.method == "longest"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["length"]) >= {"pool", "eligible", "selection", "random"}
    assert len(summary["length"]["selection"]["all"]) == 5 and summary["strata"]["chat"]["selected"]

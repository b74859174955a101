"""The canary measurement: each score's AUROC against planted defects, and the defects a selection holds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from curation.data.canary import CanaryConfig, plant, read_truth, truth_for
from curation.selection.canaries import auroc, canary_report
from tests.test_canary import pool  # noqa: F401 - the canary pool fixture


def test_auroc_is_one_for_a_perfect_score_and_about_a_half_for_a_random_one():
    rng = np.random.default_rng(0)
    n = 600
    kind = np.where(rng.random(n) < 0.2, rng.choice(["swap", "refusal"], n), "clean")
    ids = [f"{i:016x}" for i in range(n)]
    clean = kind == "clean"
    table = pd.DataFrame({"example_id": ids, "domain": np.where(np.arange(n) % 2, "chat", "math"),
                          "davir": np.where(clean, rng.uniform(0.5, 1, n), rng.uniform(0, 0.49, n)),  # keeps high
                          "loss": np.where(clean, rng.uniform(0, 1, n), rng.uniform(1.01, 2, n)),  # high = corrupted
                          "n_response_tokens": rng.integers(1, 100, n)})
    rep = canary_report(table, pd.Series(kind, index=ids))
    assert rep["auroc"]["davir"]["all"] == 1.0 and set(rep["auroc"]["davir"]["by_kind"].values()) == {1.0}
    assert rep["auroc"]["loss"]["all"] == 0.0  # loss keeps the highest: it picks every defect first
    assert rep["auroc"]["ppl"]["all"] == 1.0  # ppl = exp(loss), kept low: the defects last
    assert abs(rep["auroc"]["longest"]["all"] - 0.5) < 0.1  # length is unrelated here
    assert rep["corrupted"] == int((~clean).sum()) and rep["by_kind"] == {k: int((kind == k).sum()) for k in ("refusal", "swap")}
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert auroc(np.array([]), np.array([1.0])) is None


def test_a_selection_over_a_canary_pool_counts_its_defects_against_random(tmp_path, pool):
    from curation.selection.folder import Selection, select_run
    from curation.selection.recipe import Recipe
    from tests.synthetic import make_run

    out = plant(CanaryConfig(sources=pool[:2], out=str(tmp_path / "c"), rate=0.3, seed=1))
    truth = read_truth(out)
    bad = set(truth.loc[truth["kind"] != "clean", "example_id"])
    good_davir = lambda t: t.assign(davir=np.where(t["example_id"].isin(bad), 0.01, 0.9))  # noqa: E731 - a perfect filter
    run = make_run(tmp_path / "run", [f"math={out / 'math.jsonl'}", f"chat={out / 'chat.jsonl'}"], table_fn=good_davir)
    assert truth_for(json.loads((run / "run.json").read_text()) | {"sources": [
        {"path": str(out / "math.jsonl")}]}) is not None
    s = Selection(select_run(run, Recipe(method="davir", budget="20", decisions="none"), tmp_path / "sel")).summary()
    c = s["canaries"]
    assert c["auroc"]["davir"]["all"] == 1.0 and c["selection"]["corrupted"] == 0
    assert c["selection"]["random_corrupted"] is not None and c["selection"]["random_expected"] == pytest.approx(20 * 0.3, abs=1)
    assert sum(c["selection"]["by_kind"].values()) == 0
    r = Selection(select_run(run, Recipe(method="random", budget="40", decisions="none"), tmp_path / "r")).summary()
    assert r["canaries"]["selection"]["corrupted"] == r["canaries"]["selection"]["random_corrupted"]


def test_a_truth_that_does_not_cover_the_run_is_said_never_used_silently(tmp_path, pool):
    """Issue 30 #6: a truth covering part of the run (or none of it) gave '0 planted selected' and blank
    AUROCs without a word: the summary says how much it covers, and counts the covered examples only."""
    from curation.selection.folder import Selection, select_run
    from curation.selection.recipe import Recipe
    from tests.synthetic import make_run

    out = plant(CanaryConfig(sources=pool[:2], out=str(tmp_path / "c"), rate=0.3, seed=1))
    run = make_run(tmp_path / "run", [f"math={out / 'math.jsonl'}", f"chat={out / 'chat.jsonl'}"])
    lines = (out / "canary_truth.jsonl").read_text().splitlines()
    n = len(lines)
    part = [x for x in lines if json.loads(x)["domain"] == "math"]
    (out / "canary_truth.jsonl").write_text("\n".join(part) + "\n")  # the truth of the math source only
    s = Selection(select_run(run, Recipe(method="random", budget=str(n), decisions="none"), tmp_path / "s1")).summary()
    assert s["canaries"]["covered"] == len(part) and s["canaries"]["run_examples"] == n
    assert any(f"covers {len(part)} of its {n} examples" in w for w in s["warnings"])
    planted = sum(json.loads(x)["kind"] != "clean" for x in part)
    assert s["canaries"]["selection"]["corrupted"] == planted and s["canaries"]["selection"]["not_covered"] == n - len(part)
    stale = [json.dumps({**json.loads(x), "example_id": f"{i:016x}"}) for i, x in enumerate(lines)]
    (out / "canary_truth.jsonl").write_text("\n".join(stale) + "\n")  # another pool's truth: covers none
    s = Selection(select_run(run, Recipe(method="random", budget="10", decisions="none"), tmp_path / "s2")).summary()
    assert "canaries" not in s and any(f"covers none of its {n} examples" in w for w in s["warnings"])
    assert canary_report(pd.DataFrame({"example_id": ["a"], "domain": ["x"]}), pd.Series({"b": "clean"}))["warning"]


def test_each_pair_score_has_its_auroc_at_finding_swapped_pairs_in_the_selection_summary(tmp_path, tiny_model_dir):
    """A pair score run over a canary pool of swapped pairs: the truth beside its sources maps its
    pair ids, every ranking pair score of the registry gets its AUROC (overall, per domain), and a
    pair selection's summary counts the swapped pairs it holds, as for SFT canaries."""
    from curation.runs.folder import Run
    from curation.runs.score import ScoreConfig, run_score
    from curation.selection.folder import Selection, select_run
    from curation.selection.recipe import Recipe
    from tests.synthetic import write_pair_sources

    src = write_pair_sources(tmp_path / "pool", n_chat=20, n_math=20)
    out = plant(CanaryConfig(sources=src, out=str(tmp_path / "c"), rate=0.2))
    pool_src = json.loads((out / "canary.json").read_text())["learn_with"].split()[4:]
    run = run_score(ScoreConfig(sources=pool_src, out=str(tmp_path / "run"), model=str(tiny_model_dir),
                                max_length=128, cache=str(tmp_path / "cache")))
    truth = truth_for(Run(run).provenance())
    table = Run(run).scores()
    assert set(truth.index) == set(table["example_id"]) and (truth == "swapped").sum() == 8
    rep = canary_report(table, truth)
    assert rep["by_kind"] == {"swapped": 8} and rep["covered"] == 40
    for name in ("margin_sum", "margin_mean", "loss_chosen", "loss_rejected", "len_diff"):
        a = rep["auroc"][name]
        assert 0.0 <= a["all"] <= 1.0 and set(a["by_domain"]) == {"chat", "math"}, name
    # by hand for one score: P(a clean pair is kept before a swapped one), margin_mean kept low
    bad = table["example_id"].map(truth).eq("swapped").to_numpy()
    v = -table["margin_mean"].to_numpy()
    want = np.mean([(c > b) + 0.5 * (c == b) for c in v[~bad] for b in v[bad]])
    assert rep["auroc"]["margin_mean"]["all"] == pytest.approx(want)
    summary = Selection(select_run(run, Recipe("margin_sum", budget="10"), tmp_path / "sel")).summary()
    c = summary["canaries"]
    assert c["selection"]["selected"] == 10 and "margin_sum" in c["auroc"]

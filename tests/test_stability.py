"""Score stability (learn --stability-runs): extra references, rank agreement, pick stability,
ensemble ranking; on the tiny model."""

import json

import numpy as np
import pandas as pd
import pytest

from curation.runs.formulas import rank_agreement
from curation.runs.learn import LearnConfig, run_learn
from curation.scores import run_columns
from curation.selection.apply import apply_recipe
from curation.selection.folder import select_run
from curation.selection.recipe import Recipe
from curation.selection.summary import pick_stability
from tests.conftest import write_jsonl

# The planted subset: four examples with one and the same response, so every epoch trains on it four
# times; the other chat examples each have a response of their own (words drawn with a seed).
PLANTED = "def f(x):\n    return x * 2\n" * 2
WORDS = "the quick brown fox jumps over lazy dog eat a balanced diet exercise sleep well natalia sold clips".split()


def pool(tmp_path):
    rng = np.random.default_rng(0)
    math = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(14)])
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"instruction": f"Say something about the fox number {k}.", "input": "",
         "output": " ".join(rng.choice(WORDS, 8))} for k in range(12)]
        + [{"instruction": f"Write the doubling function, take {k}.", "input": "", "output": PLANTED} for k in range(4)])
    return [f"math={math}", f"chat={chat}"]


def cfg(tmp_path, out, **kw):
    from tests.conftest import ROOT  # noqa: F401  (the tiny model fixture path comes from kw)

    args = {"checkpoints": 1, "lr": 1e-2, "epochs": 2, "train_batch_tokens": 256, "max_length": 64,
            "batch_tokens": 512, "cache": str(tmp_path / "cache"), "ifd": False, "stability_runs": 2}
    args.update(kw)
    return LearnConfig(out=str(out), **args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("stability")
    sources = pool(d)
    same = run_learn(cfg(d, d / "same", sources=sources, model=str(tiny_model_dir), stability_vary="seed=0"))
    other = run_learn(cfg(d, d / "other", sources=sources, model=str(tiny_model_dir), stability_runs=3))
    return {"same": same, "other": other, "dir": d}


def test_same_seed_gives_identical_rankings_and_full_pick_stability(runs):
    df = pd.read_parquet(runs["same"] / "scores.parquet")
    assert run_columns(df.columns, "davir") == ["davir_r1", "davir_r2"]
    np.testing.assert_array_equal(df["davir_r1"], df["davir"])  # run 1 is the main reference
    np.testing.assert_array_equal(df["davir_r1"], df["davir_r2"])  # same seed, same data: same weights
    assert (df["davir_sd"] == 0).all()
    st = json.loads((runs["same"] / "stability.json").read_text())
    for d in ("chat", "math"):
        for s in ("davir", "rho"):
            assert st["domains"][d][s]["spearman_mean"] == pytest.approx(1.0)
            assert st["domains"][d][s]["kendall_mean"] == pytest.approx(1.0)
    sel = apply_recipe(df, Recipe("davir", budget="30%"))
    ps = pick_stability(df, sel)
    assert ps["runs"] == 2 and all(v["share"] == 1.0 and v["jaccard_mean"] == 1.0 for v in ps["by_domain"].values())


def test_different_seeds_report_agreement_in_range(runs):
    df = pd.read_parquet(runs["other"] / "scores.parquet")
    assert run_columns(df.columns, "rho") == ["rho_r1", "rho_r2", "rho_r3"]
    assert not np.array_equal(df["davir_r1"], df["davir_r2"])  # another seed: another model
    np.testing.assert_allclose(df["davir_sd"], df[["davir_r1", "davir_r2", "davir_r3"]].std(axis=1, ddof=1))
    st = json.loads((runs["other"] / "stability.json").read_text())
    assert st["runs"] == 3 and [s["seed"] for s in st["settings"]] == [0, 1, 2]
    for d in ("chat", "math"):
        pairs = st["domains"][d]["davir"]["pairs"]
        assert [p["runs"] for p in pairs] == [[1, 2], [1, 3], [2, 3]]
        assert all(-1 <= p["spearman"] <= 1 and -1 <= p["kendall"] <= 1 for p in pairs)
        assert pairs[0]["spearman"] == pytest.approx(
            rank_agreement(df.loc[df.domain == d, "davir_r1"], df.loc[df.domain == d, "davir_r2"])["spearman"])
    run = json.loads((runs["other"] / "run.json").read_text())
    assert run["stability"] == st and "stability" in run["timings_s"]


def test_ensemble_ranking_is_the_mean_of_the_runs(runs):
    df = pd.read_parquet(runs["other"] / "scores.parquet")
    ens = apply_recipe(df, Recipe("davir", budget="10", aggregate="mean")).rows
    by_hand = apply_recipe(df.assign(davir=df[["davir_r1", "davir_r2", "davir_r3"]].mean(axis=1)), Recipe("davir", budget="10")).rows
    assert ens["example_id"].tolist() == by_hand["example_id"].tolist()
    np.testing.assert_allclose(ens["davir_mean"], by_hand["davir"])
    with pytest.raises(ValueError, match="stability-runs"):
        apply_recipe(df.drop(columns=["davir_r2", "davir_r3"]), Recipe("davir", aggregate="mean"))


def test_a_planted_learnable_subset_is_picked_by_every_run(runs):
    df = pd.read_parquet(runs["other"] / "scores.parquet")
    planted = set(df.loc[(df.domain == "chat") & (df.source_index >= 12), "example_id"])
    assert len(planted) == 4
    for c in ("davir_r1", "davir_r2", "davir_r3"):
        top = df[df.domain == "chat"].nlargest(4, c)["example_id"]
        assert set(top) == planted, c
    sel = apply_recipe(df, Recipe("davir", budget="8", mix="chat=0.5,math=0.5"))
    assert pick_stability(df, sel)["by_domain"]["chat"]["share"] == 1.0


def test_select_cli_reports_pick_stability(runs, tmp_path, capsys):
    from curation.cli import main

    assert main(["select", str(runs["other"]), "--method", "davir", "--budget", "30%", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "pick stability over 3 reference runs" in out
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(summary["pick_stability"]["by_domain"]) == {"chat", "math"}
    assert select_run(runs["other"], Recipe("davir", aggregate="median"), tmp_path / "m").is_dir()


def test_stability_settings_and_validation():
    c = LearnConfig(sources=["x"], out="o", stability_runs=3, stability_vary="lr=2e-5,5e-5", seed=4)
    assert [(t.seed, t.lr) for t in c.stability_settings()] == [(5, 2e-5), (6, 5e-5)]
    with pytest.raises(ValueError, match="stability-vary"):
        LearnConfig(sources=["x"], out="o", stability_runs=2, stability_vary="nonsense=1")
    with pytest.raises(ValueError, match="needs --stability-runs"):
        LearnConfig(sources=["x"], out="o", stability_vary="lr=1e-4")
    with pytest.raises(ValueError, match="attached --reference"):
        LearnConfig(sources=["x"], out="o", stability_runs=2, reference="r")


def test_pick_stability_compares_with_the_other_runs_only(runs):
    """Run 1 is the main reference: a selection ranked by davir is compared with runs 2..N (comparing
    with run 1 too would add a Jaccard of 1 and inflate the mean); an ensemble with every run."""
    df = pd.read_parquet(runs["other"] / "scores.parquet")
    sel = apply_recipe(df, Recipe("davir", budget="30%"))
    ps = pick_stability(df, sel)
    assert ps["compared_with"] == ["davir_r2", "davir_r3"]
    for d, v in ps["by_domain"].items():
        mine = set(sel.rows.loc[sel.rows.domain == d, "example_id"])
        picks = [apply_recipe(df.assign(davir=df[c]), Recipe("davir", budget="30%")).rows for c in ("davir_r2", "davir_r3")]
        other = [set(r.loc[r.domain == d, "example_id"]) for r in picks]
        assert v["jaccard_mean"] == pytest.approx(np.mean([len(mine & o) / len(mine | o) for o in other]))
        assert v["kept_by_every_run"] == len(mine & other[0] & other[1])
    ens = apply_recipe(df, Recipe("davir", budget="30%", aggregate="mean"))
    assert pick_stability(df, ens)["compared_with"] == ["davir_r1", "davir_r2", "davir_r3"]

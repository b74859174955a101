"""The selection folder: select_run writes it, re-applies, refuses foreign folders; the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from curation.selection.folder import Selection, select_run
from curation.selection.recipe import Recipe


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
    again = select_run(run_dir, Selection(out).recipe(), tmp_path / "sel2")
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
    r = Selection(tmp_path / "s2").recipe()
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


def test_cli_select_with_stratify_and_temperature(run_dir, tmp_path, capsys):
    from curation.cli import main

    out = tmp_path / "sel"
    assert main(["select", str(run_dir), "--method", "longest", "--budget", "20", "--stratify", "length:3",
                 "--temperature", "0.7", "--seed", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "response length p10/p25/p50/p75/p90: eligible" in printed
    r = Selection(out).recipe()
    assert r.stratify == "length:3" and r.temperature == 0.7 and r.method == "longest"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["length"]) >= {"pool", "eligible", "selection", "random"}
    assert len(summary["length"]["selection"]["all"]) == 5 and summary["strata"]["chat"]["selected"]


def test_the_cli_and_the_page_say_a_selections_filters_in_the_same_words(run_dir, tmp_path):
    from curation.selection.summary import detail_lines, summary_lines

    out = select_run(run_dir, Recipe(method="davir", budget="10", decisions="none"), tmp_path / "sel")
    summary = Selection(out).summary()
    lines = summary_lines(summary, out)
    assert lines[0] == (f"selected 10 of {summary['budget']['pool_examples']} examples ({summary['totals']['tokens']} "
                        f"tokens; {summary['totals']['eligible']} eligible) -> {out}/selected.parquet")
    details = {"dedup": {"threshold": 0.8, "groups_with_duplicates": 2, "rows_in_such_groups": 5, "dropped": 3},
               "contamination": {"ngram": 13, "eval_sets": ["e"], "flagged": 1, "excluded": True,
                                 "first": [{"example_id": "ab", "eval_example": "<b>"}]}}
    plain, md = detail_lines(details), detail_lines(details, markup=True)
    assert plain["dedup"] == md["dedup"] == ("Near-duplicates (threshold 0.8): 2 group(s) holding 5 examples; 3 "
                                             "eligible near-duplicates left out (the best-ranked of each group stays).")
    assert plain["contamination"].startswith("Decontamination (13-word n-grams): 1 flagged (pool examples that share "
                                             "an n-gram with the 1 eval set(s)), excluded.")
    assert plain["contamination"].endswith("First: ab (<b>)") and md["contamination"].endswith("First: `ab` (&lt;b&gt;)")


# ----------------------------------------------------------------------------------------------
# A pair run


@pytest.fixture
def pair_run(tmp_path):
    from tests.synthetic import make_pair_run, write_pair_sources

    return make_pair_run(tmp_path / "pairs", write_pair_sources(tmp_path / "src"))


def test_a_pair_selection_says_pairs_tokens_the_end_kept_and_its_means_beside_randoms(pair_run, tmp_path):
    from curation.selection.summary import summary_lines

    out = select_run(pair_run, Recipe("reward_margin", budget="10", order="low", decisions="none"), tmp_path / "sel")
    summary = Selection(out).summary()
    assert summary["data"] == "pairs" and summary["length"]["column"] == "len_diff"
    lines = summary_lines(summary, out)
    t = summary["totals"]
    assert lines[0] == (f"selected 10 of 54 pairs ({t['tokens']} prompt + chosen + rejected tokens; 54 eligible) "
                        f"-> {out}/selected.parquet")
    assert lines[1] == "kept the lowest reward_margin first (the other end: the score's default is highest)"
    assert all(f"  {d}: {p['selected']} pairs, {p['tokens']} tokens" in "\n".join(lines)
               for d, p in summary["domains"].items())
    sel, rnd = summary["stats"]["selection"], summary["stats"]["random"]
    means = next(x for x in lines if x.startswith("mean per pair: "))
    for c in ("len_diff", "margin_sum", "reward_margin", "davir_margin", "rating_margin"):
        assert f"{c} {sel[c]['all']['mean']:.4g} (random {rnd[c]['all']['mean']:.4g})" in means
    assert any(x.startswith("len_diff (chosen - rejected tokens) p10/p25/p50/p75/p90: eligible ") for x in lines)


def test_near_duplicates_and_decontamination_of_a_pair_run_compare_prompts(pair_run, tmp_path):
    from curation.runs.folder import Run

    run = Run(pair_run)
    pairs = {(p.source, p.source_index): p for p in run.load_pairs()}
    chat0, chat1, chat4, chat5 = (pairs[("chat_pairs.jsonl", k)] for k in (0, 1, 4, 5))
    evals = tmp_path / "eval.jsonl"  # chat prompt 5, and pair 4's chosen response (not a prompt: not compared)
    evals.write_text(json.dumps({"prompt": chat5.prompt[0]["content"], "response": "whatever"}) + "\n"
                     + json.dumps({"prompt": "Solve it.", "response": chat4.chosen}) + "\n")
    recipe = Recipe("margin_sum", budget="100%", dedup="near", decontaminate=[str(evals)], decisions="none")
    out = select_run(pair_run, recipe, tmp_path / "sel")
    summary = Selection(out).summary()
    assert summary["contamination"]["flagged"] == 1 and summary["contamination"]["first"][0]["example_id"] == chat5.pair_id
    assert summary["dedup"]["groups_with_duplicates"] == 1 and summary["dedup"]["dropped"] == 1  # prompts 0 and 1
    ids = set(Selection(out).rows()["example_id"])
    assert chat5.pair_id not in ids and chat4.pair_id in ids and len(ids & {chat0.pair_id, chat1.pair_id}) == 1


@pytest.mark.parametrize("edit,message", [
    (lambda df: pd.concat([df, df.iloc[:1]]), "is listed 2 times"),
    (lambda df: df.assign(example_id=["nope"] + df["example_id"].tolist()[1:]), "are not in the run's score table"),
    (lambda df: df.drop(columns=["source"]), "missing column\\(s\\) \\['source'\\]"),
    (lambda df: df.iloc[:0], "the selection is empty"),
], ids=["duplicated row", "unknown id", "missing column", "no row"])
def test_a_hand_edited_selection_is_refused_by_export_and_validate(tmp_path, run_cli, edit, message):
    """A duplicated row, an unknown id, missing columns, no row: one line, never a KeyError (nor a
    row exported twice)."""
    import re

    from tests.conftest import write_jsonl
    from tests.synthetic import make_selection

    run, sel = make_selection(tmp_path)
    p = sel / "selected.parquet"
    edit(pd.read_parquet(p)).to_parquet(p, index=False)
    r = run_cli("export", str(sel), "--out", str(tmp_path / "exp"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "KeyError" not in r.stderr, r.stderr
    assert re.search(message, r.stderr), r.stderr
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 99 + 99?", "answer": "198"}])
    r = run_cli("validate", str(sel), "--eval", f"math={ev}", "--out", str(tmp_path / "val"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr

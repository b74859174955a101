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

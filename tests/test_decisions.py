"""Curator decisions: the store (SQLite, undo, import/export), and every selection, baseline, mix and
export honouring them."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest

from curation.selection.apply import apply_recipe
from curation.selection.baselines import BASELINES, baseline_ids, random_baseline
from curation.selection.decisions import DecisionError, DecisionStore, Decisions, load_decisions, read_jsonl
from curation.selection.folder import Selection, select_run
from curation.selection.recipe import Recipe
from tests.synthetic import make_run, table_of


def _ids(run):
    return table_of(run)["example_id"].tolist()


def _decided(table, snap: Decisions):
    """The table as annotate gives it: the snapshot's decisions in the ``decision`` column."""
    return table.assign(decision=table["example_id"].map(lambda i: snap.rows.get(i, {}).get("decision")))


def _snap(exclude=(), keep=()):
    rows = {i: {"decision": "exclude", "tags": [], "note": ""} for i in exclude}
    rows.update({i: {"decision": "keep", "tags": [], "note": ""} for i in keep})
    return Decisions(rows, "test")


# ----------------------------------------------------------------------------------------------
# The store


def test_the_store_records_updates_tags_and_undoes(tmp_path):
    store = DecisionStore(tmp_path / "ws")
    a, b, c = "0123456789abcdef", "fedcba9876543210", "00000000000000aa"
    assert store.snapshot().rows == {} and store.can_undo() is None
    assert store.set([a, b], "exclude", page="inspect") == 2
    assert store.set([b], add_tags=["wrong answer", "math"], note="the sum is off", page="explore") == 1
    snap = store.snapshot()
    assert snap.rows[a] == {"decision": "exclude", "tags": [], "note": ""}
    assert snap.rows[b] == {"decision": "exclude", "tags": ["math", "wrong answer"], "note": "the sum is off"}
    table = store.table()
    assert set(table["page"]) == {"inspect", "explore"} and (table["updated"] >= table["created"]).all()
    store.set([c], "keep")
    assert store.snapshot().kept() == {c}
    assert store.undo() == "keep on 1 example(s)" and c not in store.snapshot().rows
    assert store.undo() == "tag wrong answer, math, note on 1 example(s)" and store.snapshot().rows[b]["tags"] == []
    store.set([a], decision=None)  # clearing the decision of an untagged example forgets it
    assert a not in store.snapshot().rows
    assert store.remove([b, c]) == 1 and store.snapshot().rows == {}
    assert store.undo().startswith("remove") and store.snapshot().excluded() == {b}


def test_bad_ids_and_decisions_get_one_clear_line(tmp_path):
    store = DecisionStore(tmp_path)
    with pytest.raises(DecisionError, match=r"'not-an-id' is not an example id \(16 hex characters"):
        store.set(["not-an-id"], "exclude")
    with pytest.raises(DecisionError, match="decision 'drop': expected exclude or keep"):
        store.set(["0123456789abcdef"], "drop")
    with pytest.raises(DecisionError, match="tags must be a list of at most 50"):
        store.set(["0123456789abcdef"], add_tags=["x" * 81])


def _writer(ws: str, k: int, n: int) -> None:
    store = DecisionStore(ws)
    for j in range(n):
        store.set([f"{k:08x}{j:08x}"], "exclude" if j % 2 else "keep", add_tags=[f"w{k}"], page="test")
        store.set(["ffffffffffffffff"], add_tags=[f"w{k}-{j}"], page="test")  # the same row from both writers


@pytest.mark.integration  # two writer processes
def test_two_writers_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), k, 20)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = DecisionStore(tmp_path).snapshot().rows
    assert len(rows) == 2 * 20 + 1
    assert sorted(rows["ffffffffffffffff"]["tags"]) == sorted(f"w{k}-{j}" for k in range(2) for j in range(20))
    assert all(rows[f"{k:08x}{j:08x}"]["decision"] == ("exclude" if j % 2 else "keep") for k in range(2) for j in range(20))


def test_export_then_import_round_trips_and_a_malformed_line_is_named(tmp_path):
    src, dst = DecisionStore(tmp_path / "a"), DecisionStore(tmp_path / "b")
    src.set(["0123456789abcdef"], "exclude", add_tags=["refusal"], note="says it cannot help")
    src.set(["fedcba9876543210"], "keep")
    f = tmp_path / "team.jsonl"
    assert src.export_jsonl(f) == 2
    lines = [json.loads(x) for x in f.read_text().splitlines()]
    assert lines[0] == {"example_id": "0123456789abcdef", "decision": "exclude", "tags": ["refusal"],
                        "note": "says it cannot help"}
    assert dst.import_jsonl(f) == 2 and dst.snapshot().rows == src.snapshot().rows
    # A later line for the same example replaces an earlier one; a null line clears it.
    f.write_text(f.read_text() + json.dumps({"example_id": "fedcba9876543210", "decision": None}) + "\n")
    dst.import_jsonl(f)
    assert "fedcba9876543210" not in dst.snapshot().rows
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f.read_text() + '{"example_id": "0123456789abcdef", "decision": "delete"}\n{oops\n')
    with pytest.raises(DecisionError, match=r"bad.jsonl line 4: decision 'delete': expected exclude, keep or null"):
        dst.import_jsonl(bad)
    bad.write_text('{"example_id": "0123456789abcdef"}\n{oops\n')
    with pytest.raises(DecisionError, match=r"bad.jsonl line 2: not JSON"):
        read_jsonl(bad)
    # Export never overwrites a file that is not a decisions file.
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    with pytest.raises(DecisionError, match="exists and is not a decisions file"):
        src.export_jsonl(precious)
    assert precious.read_text() == "mine"


def test_cli_add_list_export_import_and_unknown_ids(tmp_path, run_dir, capsys):
    from curation.cli import main

    ws = tmp_path / "ws"
    (ws / "runs").mkdir(parents=True)
    import shutil

    shutil.copytree(run_dir, ws / "runs" / "r1")
    ids = _ids(run_dir)
    assert main(["decisions", "add", ids[0], ids[1], "--exclude", "--tag", "dup", "--workspace", str(ws)]) == 0
    assert "recorded for 2 example(s)" in capsys.readouterr().out
    assert main(["decisions", "add", "0123456789abcdef", "--keep", "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: example 0123456789abcdef is in no run of") and "--allow-unknown" in err
    assert len(err.splitlines()) == 1
    assert main(["decisions", "add", "0123456789abcdef", "--keep", "--allow-unknown", "--workspace", str(ws)]) == 0
    capsys.readouterr()
    assert main(["decisions", "list", "--kind", "exclude", "--run", str(run_dir), "--json", "--workspace", str(ws)]) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {x["example_id"] for x in listed} == {ids[0], ids[1]} and all(x["in_run"] for x in listed)
    assert main(["decisions", "list", "--kind", "keep", "--run", str(run_dir), "--workspace", str(ws)]) == 0
    assert "not in this run" in capsys.readouterr().out  # kept, and shown as such
    out = tmp_path / "d.jsonl"
    assert main(["decisions", "export", str(out), "--workspace", str(ws)]) == 0
    out.write_text(out.read_text() + "not json\n")
    assert main(["decisions", "import", str(out), "--workspace", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "d.jsonl line 4: not JSON" in err
    assert main(["decisions", "undo", "--workspace", str(ws)]) == 0
    assert "undid: keep on 1 example(s)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Selections honour them


@pytest.mark.parametrize("method,budget", [(m, b) for m in ("random", "davir", "loss", "longest", "s2l")
                                           for b in ("10", "25%", "3000tok") if not (m == "s2l" and b.endswith("tok"))])
def test_excluded_never_selected_kept_always_and_counted_against_the_budget(run_dir, method, budget):
    table = table_of(run_dir)
    ids = np.array(sorted(table["example_id"]))
    rng = np.random.default_rng(len(method) * 7 + len(budget))
    pick = rng.permutation(len(ids))
    exclude, keep = set(ids[pick[:20]]), set(ids[pick[20:23]])
    recipe = Recipe(method=method, budget=budget, max={"ifd": 0.9} if method == "davir" else {})
    plain = apply_recipe(table, recipe)
    res = apply_recipe(_decided(table, _snap(exclude, keep)), recipe)
    got = set(res.rows["example_id"])
    assert not got & exclude
    assert keep <= got and set(res.rows.loc[res.rows["kept"], "example_id"]) == keep
    # Kept rows come first in their domain and count against its part: the total is the plain one's.
    if budget.endswith("tok"):
        assert res.rows["n_tokens"].sum() <= recipe.budget_spec.units(len(table)) + max(
            table.set_index("example_id").loc[list(keep), ["n_prompt_tokens", "n_response_tokens"]].sum(axis=1))
    else:
        assert len(res.rows) == len(plain.rows)
    for d, g in res.rows.groupby("domain"):
        assert g.sort_values("rank")["kept"].tolist() == sorted(g["kept"], reverse=True)
    assert res.details["decisions"]["excluded"] == len(exclude) and res.details["decisions"]["kept_selected"] == 3
    # Baselines: the random one through apply_recipe, the others through baseline_ids.
    base = random_baseline(_decided(table, _snap(exclude, keep)), recipe)
    assert not set(base.rows["example_id"]) & exclude and keep <= set(base.rows["example_id"])
    wanted = {str(d): (len(g), int(g["n_tokens"].sum())) for d, g in res.rows.groupby("domain")}
    for kind in BASELINES:
        for seed in (0, 1):
            b = set(baseline_ids(kind, table, base.eligible_mask, wanted, seed, base.kept_mask))
            assert not b & exclude, kind
            assert keep <= b, kind


def test_kept_rows_override_thresholds_but_not_decontamination(run_dir):
    table = table_of(run_dir)
    low = table.sort_values("davir")["example_id"].iloc[0]
    res = apply_recipe(_decided(table, _snap(keep=[low])), Recipe(method="davir", budget="5", min={"davir": 0.5}))
    assert low in set(res.rows["example_id"])
    flagged = table.assign(contaminated=table["example_id"] == low, contaminated_by=None)
    res = apply_recipe(_decided(flagged, _snap(keep=[low])), Recipe(method="davir", budget="5", decontaminate=["x"]))
    assert low not in set(res.rows["example_id"])
    assert any("kept example(s) cannot be selected" in w and "eval sets" in w for w in res.warnings)


def test_a_kept_domain_outside_the_mix_and_too_many_kept_are_reported(run_dir):
    table = table_of(run_dir)
    math = sorted(table.loc[table["domain"] == "math", "example_id"])[:4]
    res = apply_recipe(_decided(table, _snap(keep=math)), Recipe(method="random", budget="6", mix={"chat": 1.0}))
    assert set(math) <= set(res.rows["example_id"]) and res.domains["math"].kept == 4
    assert any("math: 4 kept example(s) take 4 examples, more than its part of the budget (0)" in w for w in res.warnings)


def test_a_selection_records_its_decisions_and_reapplying_its_recipe_reproduces_it(tmp_path, run_dir, monkeypatch):
    ws = tmp_path / "ws"
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    store = DecisionStore()
    ids = sorted(_ids(run_dir))
    store.set(ids[:5], "exclude", page="test")
    store.set(ids[5:7], "keep", add_tags=["gold"], page="test")
    sel = Selection(select_run(run_dir, Recipe(method="davir", budget="12"), tmp_path / "sel"))
    s = sel.summary()
    assert s["recipe"]["decisions"] == "decisions.jsonl" and sel.recipe().decisions == str(sel.path / "decisions.jsonl")
    assert s["decisions"]["excluded"] == 5 and s["decisions"]["kept_selected"] == 2
    assert s["decisions"]["snapshot"] == {"decisions": 7, "exclude": 5, "keep": 2, "tagged": 2, "tags": {"gold": 2}}
    assert sel.decisions().rows == store.snapshot().rows
    first = set(sel.rows()["example_id"])
    # The decisions change; the selection's own recipe still gives the same ids, a new one does not.
    later = sorted(first - set(ids[5:7]))[:3]
    store.set(later, "exclude", page="test")
    again = select_run(run_dir, sel.recipe(), tmp_path / "again")
    assert set(Selection(again).rows()["example_id"]) == first
    fresh = set(Selection(select_run(run_dir, Recipe(method="davir", budget="12"), tmp_path / "fresh")).rows()["example_id"])
    assert not fresh & set(ids[:5] + later) and set(ids[5:7]) <= fresh and len(fresh) == len(first)
    none = Selection(select_run(run_dir, Recipe(method="davir", budget="12", decisions="none"), tmp_path / "none"))
    assert "decisions" not in none.summary() and not (none.path / "decisions.jsonl").exists()
    # The CLI re-applies a folder's recipe.yaml the same way (its decisions file found beside it).
    from curation.cli import main

    assert main(["select", str(run_dir), "--recipe", str(sel.path / "recipe.yaml"), "--out", str(tmp_path / "cli")]) == 0
    assert set(Selection(tmp_path / "cli").rows()["example_id"]) == first


def test_a_decision_survives_rescoring_and_a_grown_pool(tmp_path, tiny_model_dir, monkeypatch):
    from curation.runs.score import ScoreConfig, run_score
    from tests.conftest import write_jsonl

    monkeypatch.setenv("CURATION_WORKSPACE", str(tmp_path / "ws"))
    rows = [{"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(12)]
    f = write_jsonl(tmp_path / "math.jsonl", rows)
    first = run_score(ScoreConfig(sources=[f"math={f}"], out=str(tmp_path / "r1"), model=str(tiny_model_dir)))
    ids = sorted(pd.read_parquet(first / "scores.parquet")["example_id"])
    DecisionStore().set(ids[:3], "exclude", page="test")
    # The pool grows (and is re-ordered): a new run over it has the same ids for the same examples.
    write_jsonl(f, rows[::-1] + [{"question": "What is 100 + 1?", "answer": "101\n#### 101"}])
    second = run_score(ScoreConfig(sources=[f"math={f}"], out=str(tmp_path / "r2"), model=str(tiny_model_dir)))
    sel = Selection(select_run(second, Recipe(method="loss", budget="100%"), tmp_path / "sel"))
    assert len(sel.rows()) == 10 and not set(sel.rows()["example_id"]) & set(ids[:3])


def test_load_decisions_names_a_missing_file():
    with pytest.raises(DecisionError, match="decisions nope.jsonl: no such decisions file"):
        load_decisions("nope.jsonl")
    with pytest.raises(ValueError, match="decisions: expected none, current or a decisions JSONL file"):
        Recipe(method="random", decisions=" ")


# ----------------------------------------------------------------------------------------------
# Export: manifest, dataset card, prompt-completion for TRL


def test_export_reports_decisions_and_warns_when_they_changed_since(tmp_path, run_dir, monkeypatch):
    from curation.export.writer import ExportConfig, export_selection

    monkeypatch.setenv("CURATION_WORKSPACE", str(tmp_path / "ws"))
    store = DecisionStore()
    ids = sorted(_ids(run_dir))
    store.set(ids[:2], "exclude")
    store.set(ids[2:4], "keep", add_tags=["gold"])
    sel = select_run(run_dir, Recipe(method="davir", budget="10"), tmp_path / "sel")
    chosen = Selection(sel).rows()
    later = chosen.loc[~chosen["kept"], "example_id"].iloc[0]
    store.set([later], "exclude")
    notes: list[str] = []
    out = export_selection(ExportConfig(str(sel), str(tmp_path / "exp"), "jsonl", "messages"), notes=notes)
    m = json.loads((out / "manifest.json").read_text())
    assert m["decisions"]["applied"]["kept_selected"] == 2 and m["decisions"]["excluded_since"] == [later]
    assert any("excluded by the workspace's current decisions" in n for n in notes)
    assert {e["example_id"] for e in m["examples"] if e.get("kept")} == set(ids[2:4])
    assert {e["example_id"] for e in m["examples"] if e.get("tags") == ["gold"]} == set(ids[2:4])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "## Curator decisions" in card and "2 kept example(s)" in card
    assert "| math |" in card and "## Provenance" in card


@pytest.mark.integration  # trains in TRL's SFTTrainer
def test_prompt_completion_export_loads_and_trains_in_trl_on_the_completion_only(tmp_path, tiny_model_dir):
    pytest.importorskip("trl", reason="TRL is a test dependency (requirements.txt); make setup installs it")
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from curation.export.writer import ExportConfig, export_selection, load_export
    from tests.conftest import write_jsonl

    convs = [{"messages": [{"role": "user", "content": f"What is {k} plus {k}?"},
                           {"role": "assistant", "content": f"It is {2 * k}."},
                           {"role": "user", "content": "And twice that?"},
                           {"role": "assistant", "content": f"That is {4 * k}."}]} for k in range(1, 9)]
    src = write_jsonl(tmp_path / "chat.jsonl", convs)
    run = make_run(tmp_path / "run", [f"chat={src}"], learn=False)
    sel = select_run(run, Recipe(method="random", budget="100%", decisions="none"), tmp_path / "sel")
    out = export_selection(ExportConfig(str(sel), str(tmp_path / "exp"), "jsonl", "prompt-completion"))
    ds = load_export(out)
    assert isinstance(ds, datasets.Dataset) and set(ds.column_names) == {"prompt", "completion"}
    row = ds[0]
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]
    assert row["completion"][0]["content"].startswith("That is")

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     logging_steps=1, save_strategy="no", use_cpu=True, learning_rate=1e-3, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    for ex, orig in zip(trainer.train_dataset, ds):
        labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
        text = tok.decode(labelled)
        assert text.startswith(orig["completion"][0]["content"])  # the last answer (and its end-of-turn) only
        assert orig["prompt"][1]["content"] not in text and orig["prompt"][0]["content"] not in text
        assert ex["labels"][: len(ex["labels"]) - len(labelled)] == [-100] * (len(ex["labels"]) - len(labelled))
    result = trainer.train()
    assert np.isfinite(result.training_loss)


def test_decision_filters_by_kind_tag_domain_and_run(tmp_path):
    from curation.selection.decisions import filter_decisions

    store = DecisionStore(tmp_path)
    a, b, c = "a" * 16, "b" * 16, "c" * 16
    store.set([a], decision="exclude", add_tags=["typo"])
    store.set([b], decision="keep")
    store.set([c], add_tags=["long"])
    table = store.table()
    ids = lambda t: sorted(t["example_id"])  # noqa: E731
    assert ids(filter_decisions(table)) == [a, b, c]
    assert ids(filter_decisions(table, kinds=["tag only"])) == [c]
    assert ids(filter_decisions(table, kinds=["exclude", "keep"])) == [a, b]
    assert ids(filter_decisions(table, tagged=True)) == [a, c]
    assert ids(filter_decisions(table, tags=["long", "other"])) == [c]
    found = {a: [("run1", "math")], b: [("run2", "chat")], c: []}
    assert ids(filter_decisions(table, found=found, domains=["chat"])) == [b]
    assert ids(filter_decisions(table, found=found, run="in no run")) == [c]
    assert ids(filter_decisions(table, found=found, run="run1", tagged=True)) == [a]


def test_decisions_and_id_files_are_read_bounded_on_every_path(tmp_path, monkeypatch, capsys):
    """Issue 30 #2: a decisions or id file is read like the loader reads records (regular files only,
    a size limit, bounded lines), by import, --ids-from and a recipe's --decisions FILE alike."""
    from curation.cli import main
    from curation.selection import decisions as dec

    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"example_id": "a" * 16, "decision": "exclude", "note": "x" * 100}) + "\n")
    monkeypatch.setattr(dec, "MAX_LINE_BYTES", 50)
    with pytest.raises(DecisionError, match=r"long.jsonl line 1: \d+ bytes, longer than a line"):
        DecisionStore(tmp_path / "ws").import_jsonl(long_line)
    with pytest.raises(DecisionError, match="line 1: .* longer than a line of a decisions file"):
        load_decisions(str(long_line))  # a recipe's decisions: FILE
    monkeypatch.setattr(dec, "MAX_LINE_BYTES", 64_000)
    monkeypatch.setattr(dec, "MAX_FILE_BYTES", 100)
    big = tmp_path / "ids.txt"
    big.write_text(("a" * 16 + "\n") * 10)
    assert main(["decisions", "add", "--ids-from", str(big), "--exclude", "--allow-unknown",
                 "--workspace", str(tmp_path / "ws")]) == 2
    assert "--ids-from " + str(big) + ": 170 bytes, more than a file of ids may have (100); split it" in capsys.readouterr().err
    for special in ("/dev/zero", str(tmp_path)):  # a device, a folder: refused unread
        assert main(["decisions", "import", special, "--workspace", str(tmp_path / "ws")]) == 2
        assert f"{special}: not a regular file" in capsys.readouterr().err
        assert main(["decisions", "add", "--ids-from", special, "--exclude", "--workspace", str(tmp_path / "ws")]) == 2
        assert "not a regular file" in capsys.readouterr().err
    monkeypatch.setattr(dec, "MAX_FILE_BYTES", 1000)
    assert dec.read_ids(big) == ["a" * 16] * 10


def test_a_tag_only_decision_is_listed_as_valid_json_with_no_decision(tmp_path, capsys):
    """Issue 30 #5: decisions list --json wrote NaN (invalid JSON) for a tag-only decision; the text said nan."""
    from curation.cli import main

    ws = str(tmp_path / "ws")
    assert main(["decisions", "add", "a" * 16, "--tag", "typo", "--allow-unknown", "--workspace", ws]) == 0
    assert main(["decisions", "add", "b" * 16, "--exclude", "--allow-unknown", "--workspace", ws]) == 0
    capsys.readouterr()
    assert main(["decisions", "list", "--json", "--workspace", ws]) == 0

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    rows = [json.loads(x, parse_constant=refuse) for x in capsys.readouterr().out.splitlines()]
    assert {r["example_id"][0]: r["decision"] for r in rows} == {"a": None, "b": "exclude"}
    assert DecisionStore(ws).table()["decision"].tolist().count(None) == 1
    assert main(["decisions", "list", "--workspace", ws]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and f"{'a' * 16}  -        typo" in out


def test_decisions_list_refuses_a_run_folder_that_is_not_a_run(tmp_path, run_dir, capsys):
    """Issue 30 #13: decisions list --run NOT_A_RUN marked every decision 'not in this run'."""
    from curation.cli import main

    ws = str(tmp_path / "ws")
    eid = str(pd.read_parquet(run_dir / "scores.parquet")["example_id"].iloc[0])
    assert main(["decisions", "add", eid, "--exclude", "--allow-unknown", "--workspace", ws]) == 0
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        capsys.readouterr()
        assert main(["decisions", "list", "--run", str(folder), "--workspace", ws]) == 2
        out, err = capsys.readouterr()
        assert "not in this run" not in out and str(folder) in err and ("not a finished run" in err or "no such run" in err)
    assert main(["decisions", "list", "--run", str(run_dir), "--workspace", ws]) == 0
    assert "in run (" in capsys.readouterr().out


def test_decisions_on_pair_ids_are_found_in_the_workspaces_pair_runs_and_selections_honour_them(tmp_path, capsys):
    from curation.cli import main
    from tests.synthetic import make_pair_run, write_pair_sources

    ws = tmp_path / "ws"
    run = make_pair_run(ws / "runs" / "pairs", write_pair_sources(tmp_path / "src"))
    pair_ids = sorted(table_of(run)["pair_id"])
    out, kept = pair_ids[0], pair_ids[1]
    assert main(["decisions", "add", out, "--exclude", "--workspace", str(ws)]) == 0
    assert main(["decisions", "add", kept, "--keep", "--tag", "gold", "--workspace", str(ws)]) == 0
    capsys.readouterr()
    assert main(["decisions", "list", "--run", str(run), "--json", "--workspace", str(ws)]) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(d["example_id"], d["in_run"]) for d in listed} == {(out, True), (kept, True)}
    store = DecisionStore(ws)
    sel = select_run(run, Recipe("margin_sum", budget="100%", decisions=str(_write(tmp_path, store))), tmp_path / "sel")
    rows = Selection(sel).rows()
    assert out not in set(rows["example_id"]) and len(rows) == len(pair_ids) - 1
    assert rows.set_index("example_id").loc[kept, "kept"] and rows.set_index("example_id").loc[kept, "rank"] == 1


def _write(tmp_path, store) -> object:
    path = tmp_path / "decisions.jsonl"
    store.export_jsonl(path)
    return path

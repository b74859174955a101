"""Target-aware selection (RDS+) on the tiny model: the round-robin order, near-copies of the targets
planted in a pool selected first, target_sim as a threshold and in the summary, targets inside the
pool refused, and validate refusing targets that overlap its eval sets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from curation.runs.folder import Run
from curation.runs.score import ScoreConfig, run_score
from curation.selection.annotate import annotate
from curation.selection.apply import apply_recipe
from curation.selection.folder import select_run
from curation.selection.pickers import DomainRows
from curation.selection.recipe import Recipe, SelectionError
from curation.selection.target import target_k
from tests.conftest import write_jsonl

TOPICS = ["apples", "trains", "rivers", "violins", "glaciers", "tigers", "copper", "tulips", "comets", "bridges"]


def chat_row(k: int) -> dict:
    topic = TOPICS[k % len(TOPICS)]
    return {"instruction": f"Tell me a fact about {topic} number {k}.", "input": "",
            "output": f"Here is a fact: {topic} number {k} is interesting because of its history."}


TARGETS = [  # what the curator wants more of: arithmetic word problems in a particular shape
    {"question": "A farmer has 17 sheep and buys 25 more. How many sheep does the farmer have now?",
     "answer": "17 + 25 = 42. The farmer has 42 sheep.\n#### 42"},
    {"question": "A library had 120 books and lent out 45 of them. How many books are left on the shelves?",
     "answer": "120 - 45 = 75. There are 75 books left.\n#### 75"},
    {"question": "Each box holds 6 eggs. How many eggs are there in 9 boxes altogether?",
     "answer": "6 * 9 = 54. There are 54 eggs.\n#### 54"},
]


def near_copy(r: dict) -> dict:  # the same problem, its answer's last line marked: another example (id)
    return {"question": r["question"], "answer": r["answer"] + " (checked)"}


def math_row(k: int) -> dict:
    return {"question": f"Compute {k} squared.", "answer": f"{k} * {k} = {k * k}\n#### {k * k}"}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("target")
    math = write_jsonl(d / "math.jsonl", [math_row(k) for k in range(30)] + [near_copy(r) for r in TARGETS])
    chat = write_jsonl(d / "chat.jsonl", [chat_row(k) for k in range(30)])
    targets = write_jsonl(d / "dev-math.jsonl", TARGETS)
    run = run_score(ScoreConfig(sources=[f"math={math}", f"chat={chat}"], out=str(d / "run"), model=str(tiny_model_dir),
                                max_length=256, cache=str(d / "cache")))
    return {"dir": d, "run": run, "targets": str(targets), "planted": {json.dumps(near_copy(r)) for r in TARGETS}}


def test_round_robin_takes_each_targets_most_similar_row_in_turn():
    sims = np.array([[0.9, 0.8, 0.1],   # row 0: target 0's best, target 1's second
                     [0.7, 0.95, 0.2],  # row 1: target 1's best
                     [0.1, 0.9, 0.3],   # row 2: target 1's second choice once row 1 is taken? no: 0.9 < 0.95
                     [0.2, 0.1, 0.99],  # row 3: target 2's best
                     [0.85, 0.2, 0.98]])  # row 4: target 0's second, target 2's second
    rows = DomainRows("d", np.array(["a", "b", "c", "d", "e"]), None, np.ones(5), np.ones(5), target_sims=sims)
    # Round 1: t0 -> row 0, t1 -> row 1, t2 -> row 3; round 2: t0 -> row 4 (0.85), t1 -> row 2 (0.9).
    assert target_k(rows, 5, np.random.default_rng(0)).tolist() == [0, 1, 3, 4, 2]
    assert target_k(rows, 2, np.random.default_rng(0)).tolist() == [0, 1]
    # Ties go to the smaller example id (rows come in id order).
    tied = DomainRows("d", np.array(["a", "b"]), None, np.ones(2), np.ones(2), target_sims=np.array([[0.5], [0.5]]))
    assert target_k(tied, 1, np.random.default_rng(0)).tolist() == [0]


def test_rds_embeddings_are_written_by_the_score_run(scored):
    ids, matrix = Run(scored["run"]).embeddings("rds")
    assert matrix.shape == (63, Run(scored["run"]).embeddings()[1].shape[1])
    assert np.allclose(np.linalg.norm(matrix.astype(np.float32), axis=1), 1, atol=2e-3)


def test_near_copies_of_the_targets_are_selected_first(scored, tmp_path):
    run = Run(scored["run"])
    recipe = Recipe("target", budget="3", mix="math=1,chat=0", target={"math": [scored["targets"]]})
    table = annotate(run, run.scores(), recipe)
    sel = apply_recipe(table, recipe)
    texts = run.texts()
    picked = sel.rows["example_id"].tolist()
    examples = {e.example_id: e for e in run.load_examples()}
    got = {json.dumps({"question": examples[i].messages[0]["content"], "answer": examples[i].messages[1]["content"]})
           for i in picked}
    assert got == scored["planted"], [texts[i][:60] for i in picked]
    # target_sim is a score: the planted rows have the highest, and it thresholds any method.
    math = table[table["domain"] == "math"].sort_values("target_sim", ascending=False)
    assert set(math["example_id"][:3]) == set(picked)
    cut = float(math["target_sim"].iloc[3])
    thr = Recipe("random", budget="3", mix="math=1,chat=0", target={"math": [scored["targets"]]},
                 min={"target_sim": cut + 1e-9})
    assert set(apply_recipe(annotate(run, run.scores(), thr), thr).rows["example_id"]) == set(picked)
    # The summary reports the selection's mean similarity beside the random baseline's.
    out = select_run(scored["run"], recipe, tmp_path / "sel")
    s = json.loads((out / "summary.json").read_text())["stats"]
    assert s["selection"]["target_sim"]["by_domain"]["math"]["mean"] > s["random"]["target_sim"]["by_domain"]["math"]["mean"]


def test_targets_inside_the_pool_or_missing_for_a_domain_are_refused(scored):
    run = Run(scored["run"])
    with pytest.raises(SelectionError, match="are pool examples too"):
        annotate(run, run.scores(), Recipe("target", budget="3", target={"math": [str(scored["dir"] / "math.jsonl")]}))
    recipe = Recipe("target", budget="6", target={"math": [scored["targets"]]})  # natural mix: chat too
    with pytest.raises(SelectionError, match="no target examples for domain chat.*--target chat=PATH"):
        apply_recipe(annotate(run, run.scores(), recipe), recipe)
    with pytest.raises(SelectionError, match="needs the examples to select toward"):
        Recipe("target", budget="3")
    with pytest.raises(SelectionError, match="leave out --stratify"):
        Recipe("target", budget="3", target={"math": ["x"]}, stratify="length:3")


def test_the_cli_selects_toward_targets_and_prints_the_similarity(scored, tmp_path, capsys):
    from curation.cli import main

    out = tmp_path / "cli-sel"
    assert main(["select", str(scored["run"]), "--method", "target", "--budget", "3", "--mix", "math=1,chat=0",
                 "--target", f"math={scored['targets']}", "--target", f"math={scored['targets']}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target similarity (RDS+ cosine" in printed and "math " in printed and "(random " in printed
    rows = pd.read_parquet(out / "selected.parquet")
    assert len(rows) == 3 and "target_sim" in rows.columns


def test_validate_refuses_targets_that_overlap_its_eval_sets(scored, tmp_path):
    from curation.validation.proxy import ValidationError
    from curation.validation.validate import ValidateConfig, run_validate

    sel = select_run(scored["run"], Recipe("target", budget="3", mix="math=1,chat=0",
                                           target={"math": [scored["targets"]]}), tmp_path / "sel")
    same = ValidateConfig(selections=[str(sel)], out=str(tmp_path / "v1"), eval={"math": scored["targets"]},
                          cache=str(scored["dir"] / "cache"))
    with pytest.raises(ValidationError, match="also an eval set here; targets must never be the evaluation"):
        run_validate(same)
    reworded = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Q: " + TARGETS[1]["question"],
                                                      "answer": TARGETS[1]["answer"]}])
    with pytest.raises(ValidationError, match="shares 13 consecutive words with eval example"):
        run_validate(ValidateConfig(selections=[str(sel)], out=str(tmp_path / "v2"), eval={"math": str(reworded)},
                                    cache=str(scored["dir"] / "cache")))


def test_a_target_for_a_domain_the_run_lacks_is_refused_not_ignored(scored, tmp_path, capsys):
    """Issue 30 #12: --target code=PATH on a chat+math run was ignored, yet written into recipe.yaml."""
    from curation.cli import main

    run = Run(scored["run"])
    for method in ("davir", "target"):  # a target as a side annotation, or the method itself
        recipe = Recipe(method, budget="3", mix="math=1,chat=0", target={"math": [scored["targets"]],
                                                                         "code": [scored["targets"]]})
        with pytest.raises(SelectionError, match=r"--target code: the run has no domain 'code' \(its domains: chat, math\)"):
            annotate(run, run.scores(), recipe)
    table = annotate(run, run.scores(), Recipe("target", budget="3", mix="math=1,chat=0",
                                               target={"math": [scored["targets"]]}))
    with pytest.raises(SelectionError, match="--target code: the run has no domain"):  # the pure step too
        apply_recipe(table, Recipe("target", budget="3", mix="math=1,chat=0",
                                   target={"math": [scored["targets"]], "code": [scored["targets"]]}))
    assert main(["select", str(scored["run"]), "--method", "target", "--budget", "3", "--mix", "math=1,chat=0",
                 "--target", f"math={scored['targets']}", "--target", f"code={scored['targets']}",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--target code: the run has no domain" in capsys.readouterr().err and not (tmp_path / "s").exists()

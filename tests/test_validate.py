"""validate on the tiny model: a planted selection beats random, random does not beat random,
eval/pool overlap is refused, baselines match the selection, a killed job resumes to the same report."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

from curation.runs.folder import Run
from curation.runs.score import ScoreConfig, run_score
from curation.selection.apply import apply_recipe
from curation.selection.folder import Selection, select_run
from curation.selection.recipe import Recipe
from curation.validation.validate import (Candidate, ValidateConfig, ValidationError, build_candidates, comparison_pairs,
                                         read_selections, run_validate)
from tests.conftest import write_jsonl

FRUITS = ["apples", "pears", "plums", "figs", "dates", "limes", "kiwis", "grapes", "melons", "berries"]


def math_row(k: int) -> dict:  # the ordinary pool
    return {"question": f"Natalia has {k} clips and sells half. How many are left?",
            "answer": f"She sells {k} / 2 = {k // 2} clips.\nShe keeps {k} - {k // 2} = {k - k // 2}.\n#### {k - k // 2}"}


def chat_row(k: int) -> dict:
    fruit = FRUITS[k % len(FRUITS)]
    return {"instruction": f"Tell me about {fruit} number {k}.", "input": "",
            "output": f"The {fruit} number {k} is sweet. Eat a balanced diet, exercise, sleep well."}


# The eval sets are of another kind than the ordinary pool; the pool also holds near-copies of them
# (another prompt prefix, so another content hash: not refused), which the planted selection trains on.
def eval_math(k: int, prefix: str = "") -> dict:
    return {"question": f"{prefix}What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"}


def eval_chat(k: int, prefix: str = "") -> dict:
    return {"instruction": f"{prefix}Write the function number {k}.", "input": "",
            "output": f"def f(x):\n    return x * {k}\n" * 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("validate")
    math = write_jsonl(d / "math.jsonl", [math_row(k) for k in range(40)] + [eval_math(k, "Q: ") for k in range(2, 14)])
    chat = write_jsonl(d / "chat.jsonl", [chat_row(k) for k in range(40)] + [eval_chat(k, "Q: ") for k in range(2, 14)])
    ev = {"math": str(write_jsonl(d / "eval-math.jsonl", [eval_math(k) for k in range(2, 14)])),
          "chat": str(write_jsonl(d / "eval-chat.jsonl", [eval_chat(k) for k in range(2, 14)]))}
    run = run_score(ScoreConfig(sources=[f"math={math}", f"chat={chat}"], out=str(d / "run"), model=str(tiny_model_dir),
                                max_length=96, cache=str(d / "cache")))
    table = Run(run).scores()
    planted = table["source_index"] >= 40
    sel = apply_recipe(table.assign(loss=planted.astype(float)), Recipe("loss", budget="24", mix="chat=0.5,math=0.5"))
    assert set(sel.rows["example_id"]) == set(table.loc[planted, "example_id"])
    Selection.write(d / "planted", table, sel, None, Run(run).provenance())
    return {"dir": d, "run": run, "eval": ev, "model": str(tiny_model_dir), "table": table}


def vcfg(setup, sels, out, **kw):
    args = {"eval": setup["eval"], "out": str(out), "seeds": 4, "lr": 5e-3, "epochs": 6, "train_batch_tokens": 512,
            "cache": str(setup["dir"] / "cache"), "baselines": "random,random-tokens",
            "allow_contaminated": True}  # the fixture's pool holds near-copies of the eval sets on purpose
    args.update(kw)
    return ValidateConfig(selections=[str(s) for s in sels], **args)


def test_training_on_the_eval_examples_beats_random(setup):
    out = run_validate(vcfg(setup, [setup["dir"] / "planted"], setup["dir"] / "val-planted"))
    rep = json.loads((out / "report.json").read_text())
    comps = {(c["baseline"], c["domain"]): c for c in rep["statistics"]["token"]["comparisons"]}
    for dom in ("chat", "math"):
        c = comps[("random", dom)]
        assert c["candidate"] == "planted" and c["diff"] < 0 and c["hi"] < 0 and c["verdict"] == "better", c
        assert comps[("random-tokens", dom)]["verdict"] == "better"
    res = pd.read_parquet(out / "results.parquet")
    assert set(res["candidate"]) == {"base", "planted", "random", "random-tokens"}
    assert (res.groupby(["candidate", "seed"]).size() == 24).all()  # every eval example, every model
    assert res[res.candidate == "base"]["seed"].unique().tolist() == [-1]
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["candidate"]) == {"planted", "random", "random-tokens"} and (curves["loss"] > 0).all()
    md = (out / "report.md").read_text()
    assert "planted** vs random, math: better than random" in md and "Response length" in md
    # The random baseline has the selection's examples per domain; random-tokens about its tokens.
    cands = {c["name"]: c for c in rep["candidates"]}
    sel_dom = cands["planted"]["per_seed"][0]["by_domain"]
    for s in cands["random"]["per_seed"]:
        assert {d: v["examples"] for d, v in s["by_domain"].items()} == {d: v["examples"] for d, v in sel_dom.items()}
    for s in cands["random-tokens"]["per_seed"]:
        for d, v in s["by_domain"].items():
            assert abs(v["response_tokens"] - sel_dom[d]["response_tokens"]) <= 40  # within one example's length
    # Random baselines draw a new sample per seed; the selection trains on the same examples.
    r = [set(p["by_domain"]) for p in cands["random"]["per_seed"]]
    assert len(r) == 4 and rep["lengths"]["planted"]["by_domain"]["math"]["pool_mean_response_tokens"] > 0


def test_random_is_not_declared_different_from_random(setup):
    """Selections that are themselves random samples: the verdict against the random baseline
    should be "no detectable difference" in most trials (a 95% interval: ~5% false positives)."""
    run = setup["run"]
    verdicts, objective = [], []
    for trial in range(8):  # independent trials: another random selection and other baseline seeds
        sel_dir = setup["dir"] / f"random-sel-{trial}"
        select_run(run, Recipe("random", budget="20", mix="chat=0.5,math=0.5", seed=100 + trial), sel_dir)
        out = run_validate(vcfg(setup, [sel_dir], setup["dir"] / f"val-random-{trial}", baselines="random", seeds=3,
                                epochs=4, seed=10 * trial))
        rep = json.loads((out / "report.json").read_text())
        comparisons = rep["statistics"]["token"]["comparisons"]
        verdicts += [c["verdict"] for c in comparisons if c["domain"] != "objective"]
        objective += [c["verdict"] for c in comparisons if c["domain"] == "objective"]
    # 16 comparisons at a 95% level: about one false call is expected; "most" means at least 13.
    assert len(verdicts) == 16 and verdicts.count("none") >= 13, verdicts
    assert len(objective) == 8 and objective.count("none") >= 6, objective  # the mean of both domains


def test_eval_examples_in_the_pool_are_refused(setup):
    pool_file = setup["dir"] / "math.jsonl"
    with pytest.raises(ValidationError, match="also in the pool.*memorisation"):
        run_validate(vcfg(setup, [setup["dir"] / "planted"], setup["dir"] / "val-bad", eval={"math": str(pool_file)}))


def test_config_is_validated():
    with pytest.raises(ValueError, match="--eval"):
        ValidateConfig(selections=["s"], out="o")
    with pytest.raises(ValueError, match="baselines"):
        ValidateConfig(selections=["s"], out="o", eval={"m": "x"}, baselines="random,bogus")
    with pytest.raises(ValueError, match="no --eval set"):
        ValidateConfig(selections=["s"], out="o", eval={"m": "x"}, generate={"chat": "3"})


def test_selections_and_the_longest_and_full_baselines_are_compared_with_their_own_random_baselines():
    cands = [Candidate("a", "selection", "a", [0]), Candidate("b", "selection", "b", [0])]
    cands += [Candidate(f"{k}@{s}", k, s, [0]) for s in "ab" for k in ("random", "random-tokens", "longest", "full")]
    got = set(comparison_pairs(cands))
    want = {(c, f"random@{s}") for s in "ab" for c in (s, f"longest@{s}", f"full@{s}")}
    want |= {(s, f"random-tokens@{s}") for s in "ab"}  # random-tokens has the selection's tokens, not longest's
    assert got == want  # never a random baseline as the candidate, never another selection's baseline


@pytest.mark.integration  # job workers killed and resumed
def test_a_killed_validation_resumes_to_the_same_report(setup, tmp_path, monkeypatch):
    from curation.jobs import store as jobs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws = tmp_path / "ws"
    # Both in job workers (one thread each), so that their training arithmetic is the same.
    ref = jobs.submit("validate", vcfg(setup, [setup["dir"] / "planted"], tmp_path / "uninterrupted", seeds=2,
                                       cache=str(tmp_path / "cache-a")), workspace=ws)
    t0 = time.time()
    while jobs.status(ref, ws)["state"] in ("queued", "running"):
        assert time.time() - t0 < 300
        time.sleep(0.2)
    first = tmp_path / "uninterrupted"
    assert jobs.status(ref, ws)["state"] == "succeeded", jobs.logs(ref, ws)[-2000:]
    job = jobs.submit("validate", vcfg(setup, [setup["dir"] / "planted"], tmp_path / "killed", seeds=2,
                                       cache=str(tmp_path / "cache-b")), workspace=ws)
    parts = tmp_path / "killed" / "parts"
    t0 = time.time()
    while len(list(parts.glob("*.parquet"))) < 2:
        assert time.time() - t0 < 120, jobs.status(job, ws)
        time.sleep(0.05)
    os.kill(jobs.status(job, ws)["pid"], signal.SIGKILL)
    kept = {p: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert len(kept) < 6, "the validation finished before the kill"
    t1 = time.time()  # SIGKILL is delivered asynchronously: on a busy machine the worker dies a moment later
    while jobs.status(job, ws)["state"] != "interrupted":
        assert time.time() - t1 < 10, jobs.status(job, ws)
        time.sleep(0.1)
    jobs.resume(job, ws)
    while jobs.status(job, ws)["state"] in ("queued", "running"):
        assert time.time() - t0 < 300
        time.sleep(0.2)
    st = jobs.status(job, ws)
    assert st["state"] == "succeeded", jobs.logs(job, ws)[-2000:]
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())  # finished (candidate, seed) kept
    a = json.loads((first / "report.json").read_text())["statistics"]
    b = json.loads((tmp_path / "killed" / "report.json").read_text())["statistics"]
    assert a == b
    pd.testing.assert_frame_equal(pd.read_parquet(first / "results.parquet"),
                                  pd.read_parquet(tmp_path / "killed" / "results.parquet"))


def test_training_examples_that_share_words_with_the_eval_sets_are_refused(setup):
    """The planted near-copies ("Q: " + an eval example: another content hash) share 13 consecutive
    words with the chat eval set: refused by default, with what to do."""
    with pytest.raises(ValidationError, match=r"share 13 consecutive words with the eval sets .*"
                                              r"select again with --decontaminate .*--allow-contaminated"):
        run_validate(vcfg(setup, [setup["dir"] / "planted"], setup["dir"] / "val-refused", allow_contaminated=False))


def test_a_validation_folder_reused_with_other_settings_is_refused_not_mixed(setup):
    """Issue 20, item 1: the second run with other epochs or another eval set used to report the first
    run's NLLs under the new settings; now the folder's key refuses it."""
    out = setup["dir"] / "val-reuse"
    run_validate(vcfg(setup, [setup["dir"] / "planted"], out, seeds=1, epochs=1, baselines="random"))
    first = (out / "report.json").read_text()
    with pytest.raises(ValidationError, match="epochs: 1 there, 3 now"):
        run_validate(vcfg(setup, [setup["dir"] / "planted"], out, seeds=1, epochs=3, baselines="random"))
    with pytest.raises(ValidationError, match="holds a validation with other settings"):
        run_validate(vcfg(setup, [setup["dir"] / "planted"], out, seeds=1, epochs=1, baselines="random",
                          eval={"math": setup["eval"]["math"]}))
    assert (out / "report.json").read_text() == first
    # The same settings again: resumed, nothing retrained, the same report numbers.
    run_validate(vcfg(setup, [setup["dir"] / "planted"], out, seeds=1, epochs=1, baselines="random"))
    assert json.loads((out / "report.json").read_text())["statistics"] == json.loads(first)["statistics"]


def test_two_selections_share_one_training_of_their_common_random_baseline(setup, tmp_path):
    """Two selections of one run with the same examples per domain get the same ``random`` baseline
    (same eligible rows, counts and seeds): it is trained once and the twin committed from the
    training cache, with the same eval results."""
    other = tmp_path / "other"
    select_run(setup["run"], Recipe("random", budget="24", mix="chat=0.5,math=0.5", seed=7), other)
    cfg = vcfg(setup, [setup["dir"] / "planted", other], tmp_path / "val", seeds=1, epochs=1, baselines="random",
               cache=str(tmp_path / "cache"))
    run, sels = read_selections(cfg.selections)
    ids = {c.name: c.ids for c in build_candidates(cfg, sels, run.scores(), "score", run)}
    assert ids["random@planted"] == ids["random@other"] != ids["other"]  # the premise: one training set
    out = run_validate(cfg)
    rep = json.loads((out / "report.json").read_text())
    assert rep["trainings"]["timed"] == 3 and rep["trainings"]["reused"] == 1, rep["trainings"]
    res = pd.read_parquet(out / "results.parquet").set_index(["candidate", "example_id"])["nll"]
    pd.testing.assert_series_equal(res["random@planted"], res["random@other"])


def test_one_eval_file_under_two_names_is_refused():
    with pytest.raises(ValueError, match="--eval a=x.jsonl and --eval b=x.jsonl name the same file"):
        ValidateConfig(selections=["s"], out="o", eval={"a": "x.jsonl", "b": "x.jsonl"})


def test_validate_never_writes_into_a_folder_holding_the_users_files(tmp_path, run_cli):
    from tests.synthetic import make_selection

    run, sel = make_selection(tmp_path)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 99 + 99?", "answer": "198"}])
    r = run_cli("validate", str(sel), "--eval", f"math={ev}", "--out", str(out))
    assert r.returncode == 2 and "is not empty and holds no validation" in r.stderr, r.stderr
    assert (out / "report.md").read_text() == "my own report" and sorted(os.listdir(out)) == ["report.md"]

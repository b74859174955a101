"""validate on the tiny model: a planted selection beats random, random does not beat random,
eval/pool overlap is refused, baselines match the selection, a killed job resumes to the same report."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from curation.runs.folder import Run
from curation.runs.score import ScoreConfig, run_score
from curation.selection.apply import apply_recipe
from curation.selection.folder import Selection, select_run
from curation.selection.recipe import Recipe
from curation.validation.candidates import Candidate, build_candidates, comparison_pairs
from curation.validation.validate import ValidateConfig, ValidationError, read_selections, run_validate
from tests.conftest import write_jsonl

def drawn(candidates, n, start=0):
    """The candidates with their first ``n`` seeds drawn (as a validation draws them)."""
    for c in candidates:
        c.grow(n, start)
    return candidates


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
    assert "- planted vs random, math: better than random" in md and "Response length" in md
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
    """Random selections drawn again at every seed, apart from their random baseline's draws (the same
    recipe from another stream): the verdict against the random baseline should be neither better
    nor worse in most trials (a 95% interval: ~5% false positives).  (A fixed sample is not such a
    null: one sample of a recipe can train better or worse than the recipe's average.)"""
    run = setup["run"]
    verdicts, objective = [], []
    for trial in range(8):  # independent trials: another random selection and other baseline seeds
        sel_dir = setup["dir"] / f"random-sel-{trial}"
        select_run(run, Recipe("random", budget="20", mix="chat=0.5,math=0.5", seed=100 + trial), sel_dir)
        out = run_validate(vcfg(setup, [sel_dir], setup["dir"] / f"val-random-{trial}", baselines="random", seeds=3,
                                epochs=4, seed=10 * trial, draws="independent"))
        rep = json.loads((out / "report.json").read_text())
        comparisons = rep["statistics"]["token"]["comparisons"]
        verdicts += [c["verdict"] for c in comparisons if c["domain"] != "objective"]
        objective += [c["verdict"] for c in comparisons if c["domain"] == "objective"]
    # 16 comparisons at a 95% level: about one false call is expected; "most" means at least 13.
    differ = ("better", "worse")
    assert len(verdicts) == 16 and sum(v not in differ for v in verdicts) >= 13, verdicts
    assert len(objective) == 8 and sum(v not in differ for v in objective) >= 6, objective  # the mean of both domains


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


def kill_after_parts(job: str, ws, parts, n: int, total: int) -> dict:
    """SIGKILL the worker of ``job`` once ``n`` of its ``total`` parts are committed; wait until the
    store calls it interrupted.  Returns the committed parts' modification times."""
    from curation.jobs import store as jobs

    t0 = time.time()
    while len(list(parts.glob("*.parquet"))) < n:
        assert time.time() - t0 < 120, jobs.status(job, ws)
        time.sleep(0.05)
    os.kill(jobs.status(job, ws)["pid"], signal.SIGKILL)
    kept = {p: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert len(kept) < total, "the validation finished before the kill"
    t1 = time.time()  # SIGKILL is delivered asynchronously: on a busy machine the worker dies a moment later
    while jobs.status(job, ws)["state"] != "interrupted":
        assert time.time() - t1 < 10, jobs.status(job, ws)
        time.sleep(0.1)
    return kept


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
    t0 = time.time()
    kept = kill_after_parts(job, ws, tmp_path / "killed" / "parts", 2, 6)
    jobs.resume(job, ws)
    while jobs.status(job, ws)["state"] in ("queued", "running"):
        assert time.time() - t0 < 300
        time.sleep(0.2)
    st = jobs.status(job, ws)
    assert st["state"] == "succeeded", jobs.logs(job, ws)[-2000:]
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())  # finished (candidate, seed) kept
    a = json.loads((first / "report.json").read_text())["statistics"]
    b = json.loads((tmp_path / "killed" / "report.json").read_text())["statistics"]
    for st in (*a.values(), *b.values()):  # what the trainings cost is wall time, not a result
        for c in st["comparisons"]:
            assert c.pop("cost")["trainings"] == 4
    assert a == b
    pd.testing.assert_frame_equal(pd.read_parquet(first / "results.parquet"),
                                  pd.read_parquet(tmp_path / "killed" / "results.parquet"))


def test_training_examples_that_share_words_with_the_eval_sets_are_refused(setup):
    """The planted near-copies ("Q: " + an eval example: another content hash) share 13 consecutive
    words with the chat eval set: refused by default, with what to do."""
    with pytest.raises(ValidationError, match=r"share 13 consecutive words with the eval sets .*"
                                              r"select again with --decontaminate .*--allow-contaminated"):
        run_validate(vcfg(setup, [setup["dir"] / "planted"], setup["dir"] / "val-refused", allow_contaminated=False))


def test_a_validation_folder_reused_with_other_settings_is_refused_not_mixed(setup, monkeypatch):
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
    # The same eval files named relatively, from their folder, are the same study: resumed, not refused.
    monkeypatch.chdir(setup["dir"])
    relative = {d: Path(p).name for d, p in setup["eval"].items()}
    assert all(Path(p).is_file() for p in relative.values()) and relative != setup["eval"]
    run_validate(vcfg(setup, [setup["dir"] / "planted"], out, seeds=1, epochs=1, baselines="random", eval=relative))
    assert json.loads((out / "report.json").read_text())["statistics"] == json.loads(first)["statistics"]


def test_two_selections_share_one_training_of_their_common_random_baseline(setup, tmp_path):
    """Two selections of one run with the same examples per domain get the same ``random`` baseline
    (same eligible rows, counts and seeds): it is trained once and the twin committed from the
    training cache, with the same eval results."""
    other = tmp_path / "other"
    select_run(setup["run"], Recipe("random", budget="24", mix="chat=0.5,math=0.5", seed=7), other)
    cfg = vcfg(setup, [setup["dir"] / "planted", other], tmp_path / "val", seeds=1, epochs=1, baselines="random",
               cache=str(tmp_path / "cache"), draws="fixed")
    run, sels = read_selections(cfg.selections)
    ids = {c.name: c.ids for c in drawn(build_candidates(cfg, sels, run.scores(), "score", run), 1)}
    assert ids["random@planted"] == ids["random@other"] != ids["other"]  # the premise: one training set
    out = run_validate(cfg)
    rep = json.loads((out / "report.json").read_text())
    assert rep["trainings"]["timed"] == 3 and rep["trainings"]["reused"] == 1, rep["trainings"]
    res = pd.read_parquet(out / "results.parquet").set_index(["candidate", "example_id"])["nll"]
    pd.testing.assert_series_equal(res["random@planted"], res["random@other"])


def test_a_refused_validation_claims_nothing_so_the_corrected_command_can_use_its_folder(setup, tmp_path):
    """Issue 30, item 9: a validation refused by a check (contamination, an eval example in the pool)
    claimed its folder first, so the corrected command was refused as "other settings"."""
    out = tmp_path / "val"
    quick = {"seeds": 1, "epochs": 1, "baselines": "random"}
    with pytest.raises(ValidationError, match="share 13 consecutive words with the eval sets"):
        run_validate(vcfg(setup, [setup["dir"] / "planted"], out, allow_contaminated=False, **quick))
    with pytest.raises(ValidationError, match="also in the pool"):
        run_validate(vcfg(setup, [setup["dir"] / "planted"], out, eval={"math": str(setup["dir"] / "math.jsonl")},
                          **quick))
    assert not (out / "study.json").exists()
    run_validate(vcfg(setup, [setup["dir"] / "planted"], out, **quick))  # the corrected command
    assert (out / "report.json").is_file()


def a_report(**change) -> dict:
    """The smallest validation report of the shape the Validate page and the CLI read."""
    rep = {"kind": "validate", "config": {"epochs": 1, "seeds": 1}, "model": {"spec": "m"}, "seconds": 1.0,
           "selections": [{"name": "sel"}],
           "statistics": {"token": {"metric_text": "t", "rows": [{"candidate": "sel", "domain": "math", "mean": 1.0,
                                                                   "sd": None}],
                                    "comparisons": [{"candidate": "sel", "baseline": "random", "domain": "math",
                                                     "verdict_text": "v", "diff": 0.1, "lo": -0.1, "hi": 0.3,
                                                     "candidate_mean": 1.0, "baseline_mean": 0.9}]}},
           "lengths": {"sel": {"score": None, "by_domain": {"math": {"selection_mean_response_tokens": None,
                                                                      "pool_mean_response_tokens": 9.0}}}},
           "candidates": [{"name": "sel", "seeds": [0], "per_seed": [{"examples": 3, "response_tokens": 30}]}]}
    rep.update(change)
    return rep


def test_a_validation_report_of_the_wrong_shape_is_refused_with_one_line(tmp_path):
    """Issue 30, item 3 (the validation's share): valid JSON of the wrong shape gave the Validate page
    a KeyError; the reader names what is wrong."""
    from curation.validation.validate import Validation

    (tmp_path / "report.json").write_text(json.dumps(a_report()))
    assert Validation(tmp_path).report()["kind"] == "validate"
    for change, where in [({"statistics": {}}, "statistics: 'token' is a required property"),
                          ({"statistics": {"token": {"metric_text": "t", "rows": [], "comparisons": [{}]}}},
                           "statistics.token.comparisons.0: 'candidate' is a required property"),
                          ({"selections": "sel"}, "selections: 'sel' is not of type 'array'"),
                          ({"candidates": [{"name": "sel", "seeds": [0, 1], "per_seed": []}]},
                           "candidate sel has 0 training sets for 2 seeds")]:
        (tmp_path / "report.json").write_text(json.dumps(a_report(**change)))
        with pytest.raises(ValidationError) as e:
            Validation(tmp_path).report()
        assert str(e.value) == (f"{tmp_path / 'report.json'}: not a readable validation report ({where}); run the "
                                "validation again into a new folder"), str(e.value)


def test_a_baseline_draw_that_is_the_selection_itself_is_drawn_again_or_said_to_be_empty(setup, tmp_path):
    """Issue 30, item 4: a random selection at the natural mix with seed 0, validated against natural
    or random with seeds from 0, was compared with itself ("no detectable difference (+0.0000
    [+0.0000, +0.0000])")."""
    sel = select_run(setup["run"], Recipe("random", budget="20", mix="natural", seed=0), tmp_path / "rnd")
    cfg = vcfg(setup, [sel], tmp_path / "v", seeds=3, baselines="random,natural,random-tokens", seed=0, draws="fixed")
    run, sels = read_selections(cfg.selections)
    cands = {c.name: c for c in drawn(build_candidates(cfg, sels, run.scores(), "score", run), 3)}
    own = set(cands["rnd"].ids[0])
    for b in ("random", "natural"):
        assert cands[b].seeds == [1, 2, 3] and all(set(ids) != own for ids in cands[b].ids.values()), b
        assert cands[b].notes()[0].startswith(f"{b}: the draw of seed(s) 0 is rnd's own examples"), cands[b].notes()
    assert cands["random-tokens"].seeds == [0, 1, 2] and cands["random-tokens"].notes() == []
    # A selection of every eligible example: every random draw is the selection; nothing to compare.
    everything = select_run(setup["run"], Recipe("random", budget="100%"), tmp_path / "all")
    out = run_validate(vcfg(setup, [everything], tmp_path / "v-all", seeds=1, epochs=1, baselines="random",
                            draws="fixed"))
    rep = json.loads((out / "report.json").read_text())
    assert rep["statistics"]["token"]["comparisons"] == [] and [c["name"] for c in rep["candidates"]] == ["all", "random"]
    assert rep["notes"] == ["random: every draw (21 seeds) is all's own examples (its eligible rows hold no other sample "
                            "of its size), so all cannot be compared with it; no comparison is made"]
    md = (out / "report.md").read_text()
    assert "- none: no baseline could be compared (see the notes)" in md and "## Notes" in md


def test_a_natural_baseline_off_the_natural_mix_says_why(setup, tmp_path):
    """Issue 30, items 1 and 15 (validate's share): a natural baseline that a domain's decontamination
    (or the curator's kept examples) keeps off the pool's natural mix said nothing about it."""
    sel = select_run(setup["run"], Recipe("random", budget="20", mix="natural", ngram=4, seed=5,
                                          decontaminate=[str(setup["dir"] / "math.jsonl")]), tmp_path / "chat-only")
    cfg = vcfg(setup, [sel], tmp_path / "v", seeds=1, baselines="natural")
    run, sels = read_selections(cfg.selections)
    natural = next(c for c in drawn(build_candidates(cfg, sels, run.scores(), "score", run), 1) if c.kind == "natural")
    assert natural.note == ("natural is not at the pool's natural mix (chat 10, math 0 examples instead of chat 5, math "
                            "5): domain math has 0 eligible examples (of its 52 examples, decontamination (4-word "
                            "n-grams) left 0) for its 5"), natural.note


# Decisive verdicts (issue 33): seeds until decided, coupled draws, margins, costs ---------------------


def test_seeds_auto_stops_once_every_comparison_is_decided(setup, tmp_path):
    """The planted selection trains on near-copies of the eval sets: against random every comparison
    is decided (better) before the 6 seeds allowed, and the study stops at the look that decided the
    last one (measured: 4 seeds for chat and the objective, 5 for math: the early looks' levels are
    strict, 99.4% at 3 seeds); each comparison says when it was decided, what it could detect and
    what it cost."""
    out = run_validate(vcfg(setup, [setup["dir"] / "planted"], tmp_path / "auto", seeds="auto", max_seeds=6,
                            baselines="random"))
    rep = json.loads((out / "report.json").read_text())
    st = rep["statistics"]["token"]
    last = max(c["decided_at"] or 99 for c in st["comparisons"])
    assert st["seed_plan"]["auto"] is True and last < 6
    assert [x["seeds"] for x in st["looks"]] == list(range(3, last + 1))
    for c in st["comparisons"]:
        assert c["verdict"] == "better" and c["n_seeds_candidate"] == c["decided_at"], c
        assert c["cost"]["trainings"] == 2 * c["decided_at"] and c["detectable"] > 0 and c["level"] > 0.95  # stricter
    assert sorted(p.name for p in (out / "parts").glob("*.parquet")) == [
        f"{n}-seed{s}.parquet" for n in ("planted", "random") for s in range(last)]
    md = (out / "report.md").read_text()
    assert f"seeds until decided (at most 6, looks at {', '.join(map(str, range(3, last + 1)))})" in md
    assert f"decided at {last} seeds, {2 * last} trainings" in md


def test_seeds_auto_runs_to_the_most_seeds_when_undecided_and_resumes_there(setup, tmp_path):
    """A random selection at the natural mix, drawn again per seed apart from its natural baseline,
    is the baseline's own recipe: never better or worse, and 4 seeds of this tiny model cannot show
    them equivalent within a hair's margin, so the study adds seeds up to --max-seeds and says
    undecided; run again into its folder, it trains nothing more and says the same."""
    sel = select_run(setup["run"], Recipe("random", budget="24", seed=3), tmp_path / "rnd")
    cfg = vcfg(setup, [sel], tmp_path / "auto", seeds="auto", max_seeds=4, baselines="natural", draws="independent",
               margin=1e-6, epochs=2)
    out = run_validate(cfg)
    rep = json.loads((out / "report.json").read_text())
    st = rep["statistics"]["token"]
    assert [x["seeds"] for x in st["looks"]] == [3, 4]
    assert all(c["verdict"] == "undecided" and c["decided_at"] is None and c["n_seeds_candidate"] == 4
               for c in st["comparisons"]), st["comparisons"]
    assert len(list((out / "parts").glob("*.parquet"))) == 8
    parts = {p: p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet")}
    again = json.loads((run_validate(cfg) / "report.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet")} == parts  # nothing trained again
    strip = lambda s: [{k: v for k, v in c.items() if k != "cost"} for c in s["comparisons"]]  # noqa: E731
    assert strip(again["statistics"]["token"]) == strip(st)


def test_a_random_selection_is_drawn_again_per_seed_nested_with_its_natural_baseline(setup, tmp_path):
    """Coupled draws: a random selection at a mix and its natural baseline draw every seed from one
    per-domain stream, so in each domain the smaller sample is part of the larger; drawn
    independently they are not; fixed keeps the file's examples."""
    sel = select_run(setup["run"], Recipe("random", budget="20", mix="chat=0.2,math=0.8", seed=0), tmp_path / "mix")
    table = setup["table"].set_index("example_id")["domain"]

    def arms(draws):
        cfg = vcfg(setup, [sel], tmp_path / draws, seeds=3, baselines="natural,random", draws=draws)
        run, sels = read_selections(cfg.selections)
        cands = {c.name: c for c in drawn(build_candidates(cfg, sels, run.scores(), "score", run), 3)}
        return cands, comparison_pairs(list(cands.values()))

    def nested(a, b):
        for d in ("chat", "math"):
            x, y = ({i for i in ids if table[i] == d} for ids in (a, b))
            if not (x <= y or y <= x):
                return False
        return True

    coupled, pairs = arms("coupled")
    assert pairs == [("mix", "natural")]  # random at its own mix is its own recipe: not compared
    assert all(nested(coupled["mix"].ids[s], coupled["natural"].ids[s]) for s in (0, 1, 2))
    assert len({frozenset(v) for v in coupled["mix"].ids.values()}) == 3  # a new sample per seed
    assert any("drawn again at every seed (coupled" in n for n in coupled["mix"].notes())
    independent, _ = arms("independent")
    assert not all(nested(independent["mix"].ids[s], independent["natural"].ids[s]) for s in (0, 1, 2))
    fixed, pairs = arms("fixed")
    own = set(Selection(sel).rows()["example_id"])
    assert all(set(v) == own for v in fixed["mix"].ids.values()) and ("mix", "random") in pairs


def test_seed_and_margin_settings_are_checked():
    base = {"selections": ["s"], "out": "o", "eval": {"m": "x"}}
    assert ValidateConfig(**base, seeds="auto").seed_plan().looks == [3, 4, 5, 6, 7, 8]
    assert ValidateConfig(**base, seeds="5").seeds == 5
    with pytest.raises(ValueError, match="seeds 'some': give a number of seeds"):
        ValidateConfig(**base, seeds="some")
    with pytest.raises(ValueError, match="max-seeds 2: seeds until decided look from 3 seeds on"):
        ValidateConfig(**base, seeds="auto", max_seeds=2)
    with pytest.raises(ValueError, match="margin -0.1: a margin is a positive number of nats"):
        ValidateConfig(**base, margin=-0.1)
    with pytest.raises(ValueError, match="draws"):
        ValidateConfig(**base, draws="sometimes")


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


# ----------------------------------------------------------------------------------------------
# A pair selection: DPO proxies, held-out pairs, reward accuracy, margins and NLLs


def eval_pair(k: int) -> dict:
    return {"instruction": f"What is {k} + {k + 3}? Explain.",
            "chosen": f"{k} + {k + 3} = {2 * k + 3}. #### {2 * k + 3}",
            "rejected": f"{k} + {k + 3} = {2 * k}. " + "Hmm. " * (k % 3) + f"#### {2 * k}"}


@pytest.fixture(scope="module")
def pair_setup(tmp_path_factory, tiny_model_dir):
    from tests.synthetic import write_pair_sources

    d = tmp_path_factory.mktemp("validate-pairs")
    sources = write_pair_sources(d / "pool", n_chat=20, n_math=20)
    ev = {"math": str(write_jsonl(d / "eval-pairs.jsonl", [eval_pair(k) for k in range(100, 112)]))}
    run = run_score(ScoreConfig(sources=sources, out=str(d / "run"), model=str(tiny_model_dir), max_length=128,
                                cache=str(d / "cache")))
    sel = select_run(run, Recipe("margin_mean", budget="10"), d / "sel")
    return {"dir": d, "run": run, "sel": sel, "eval": ev, "sources": sources, "model": str(tiny_model_dir)}


def pcfg(s, out, **kw):
    args = {"eval": s["eval"], "out": str(out), "seeds": 2, "lr": 1e-3, "epochs": 2, "train_batch_tokens": 512,
            "cache": str(s["dir"] / "cache")}
    args.update(kw)
    return ValidateConfig(selections=[str(s["sel"])], **args)


@pytest.fixture(scope="module")
def pair_validation(pair_setup):
    return run_validate(pcfg(pair_setup, pair_setup["dir"] / "val"))


def test_a_pair_selection_is_validated_with_dpo_on_every_pair_measure(pair_setup, pair_validation):
    """Each (candidate, seed) is a DPO training from the base model; every judged measure has its
    per-seed values, means with sds, intervals and one of the four verdict words in its own direction;
    the rejected responses' NLL is reported, not judged; the primary measure is reward accuracy."""
    from curation.validation.pair_eval import JUDGED, MEASURES, PRIMARY
    from curation.validation.verdicts import VERDICTS

    rep = json.loads((pair_validation / "report.json").read_text())
    by = rep["statistics"]["pairs"]
    assert PRIMARY == "reward_accuracy" and rep["statistics"]["token"] == by[PRIMARY]
    assert set(by) == set(MEASURES) and rep["pairs"]["dpo_losses"] == ["davir"]
    for name in JUDGED:
        comps = by[name]["comparisons"]
        assert sorted((c["candidate"], c["baseline"]) for c in comps) == [("sel", "random"), ("sel", "random-tokens")]
        for c in comps:
            assert c["verdict"] in VERDICTS and c["lo"] <= c["diff"] <= c["hi"] and c["measure"] == name
        assert by[name]["lower_is_better"] == (name == "chosen_nll")
        base = {("base", -1)} if name == "chosen_nll" else set()  # the base model is its own reference: no reward
        assert {(r["candidate"], r["seed"]) for r in by[name]["per_seed"]} == base | {
            (c, s) for c in ("sel", "random", "random-tokens") for s in (0, 1)}
    assert by["rejected_nll"]["comparisons"] == []
    assert {r["candidate"] for r in by["rejected_nll"]["rows"]} == {"base", "sel", "random", "random-tokens"}
    assert "base" not in {r["candidate"] for r in by["reward_accuracy"]["rows"]}  # its own reference: no reward
    parts = sorted(p.name for p in (pair_validation / "parts").glob("*.parquet"))
    assert parts == [f"{c}-seed{s}.parquet" for c in ("random", "random-tokens", "sel") for s in (0, 1)]
    curve = json.loads((pair_validation / "parts" / "sel-seed0.curve.json").read_text())
    assert "reward_accuracy" in curve[0]  # a DPO training's curve
    md = (pair_validation / "report.md").read_text()
    assert "## reward_accuracy (higher is better)" in md and "## chosen_nll (lower is better)" in md


def test_each_pair_measure_is_recomputed_by_hand_from_the_eval_log_probs(pair_setup, pair_validation):
    """For one trained model: reward accuracy, reward and davir margins and the token-weighted chosen /
    rejected NLL from its eval log-probs and the base model's; and the base model's log-probs are
    each response's own summed NLL scored alone (no shared prompt) by the exact scorer."""
    import numpy as np

    from curation.data.load import SourceSpec
    from curation.data.pairs import load_pairs
    from curation.data.templates import resolve_template
    from curation.runs.pair_score import encode_pairs
    from curation.scoring.losses import score_examples
    from curation.scoring.models import load_model

    rep = json.loads((pair_validation / "report.json").read_text())
    res = pd.read_parquet(pair_validation / "results.parquet")
    base = res[res["candidate"] == "base"].set_index("example_id")
    one = res[(res["candidate"] == "sel") & (res["seed"] == 1)].set_index("example_id").loc[base.index]
    lr_c, lr_r = one["logp_chosen"] - base["logp_chosen"], one["logp_rejected"] - base["logp_rejected"]
    want = {"reward_accuracy": float((lr_c > lr_r).mean()), "reward_margin": float((0.1 * (lr_c - lr_r)).mean()),
            "davir_margin": float((lr_c / base["logp_chosen"].abs() - lr_r / base["logp_rejected"].abs()).mean()),
            "chosen_nll": float(-one["logp_chosen"].sum() / one["n_chosen_tokens"].sum()),
            "rejected_nll": float(-one["logp_rejected"].sum() / one["n_rejected_tokens"].sum())}
    for name, v in want.items():
        got = next(r["value"] for r in rep["statistics"]["pairs"][name]["per_seed"]
                   if r["candidate"] == "sel" and r["seed"] == 1)
        assert got == pytest.approx(v, abs=1e-12), name
    lm = load_model(pair_setup["model"])
    data = load_pairs([SourceSpec(path=pair_setup["eval"]["math"], domain="math")])
    pairs, enc, _, _ = encode_pairs(data, lm.tokenizer, resolve_template(lm.tokenizer), 128)
    alone = score_examples(lm.model, [enc[p.sft_id(s)] for p in pairs for s in ("chosen", "rejected")], 1024,
                           share_prefix=False)
    logp = np.array([-r.loss_sum for r in alone]).reshape(-1, 2)
    np.testing.assert_allclose(base.loc[[p.pair_id for p in pairs], ["logp_chosen", "logp_rejected"]].to_numpy(),
                               logp, atol=1e-4)


def test_eval_pairs_overlapping_the_pool_are_refused(pair_setup, tmp_path):
    """An eval pair that is a pool pair, or another answer pair to a pool prompt, would measure
    memorisation: refused with the file's row, before anything is trained or claimed."""
    pool_math = next(s.split("=", 1)[1] for s in pair_setup["sources"] if s.startswith("math="))
    first = json.loads(open(pool_math).readline())
    for row, what in ((first, "its pair is also in the pool"),
                      ({**first, "chosen": "Another answer. #### 1", "rejected": "No. #### 2"},
                       "its prompt (of pool pair")):
        ev = write_jsonl(tmp_path / "ev.jsonl", [eval_pair(200), row])
        with pytest.raises(ValidationError, match=r"eval pair .*ev\.jsonl #1: " + what.replace("(", r"\(")):
            run_validate(pcfg(pair_setup, tmp_path / "v", eval={"math": str(ev)}))
        assert not (tmp_path / "v" / "study.json").exists()


def test_two_dpo_objectives_train_the_same_data_on_the_same_seeds_and_are_compared(pair_setup, tmp_path):
    """--dpo-loss sigmoid,davir: every candidate trained with each objective on the same training
    sets and seeds, davir compared with sigmoid on the selection and on each baseline (every judged
    measure), and per trained candidate the Pearson correlation of its reward margin with the eval
    pairs' length difference, recomputed here from the eval log-probs."""
    import numpy as np

    out = run_validate(pcfg(pair_setup, tmp_path / "objectives", dpo_loss="sigmoid,davir", baselines="random"))
    rep = json.loads((out / "report.json").read_text())
    names = {c["name"]: c for c in rep["candidates"]}
    assert set(names) == {"sel [sigmoid]", "sel [davir]", "random [sigmoid]", "random [davir]"}
    for c in ("sel", "random"):
        assert names[f"{c} [sigmoid]"]["per_seed"] == names[f"{c} [davir]"]["per_seed"]  # the same data per seed
    comps = {(c["candidate"], c["baseline"]) for c in rep["statistics"]["pairs"]["chosen_nll"]["comparisons"]}
    assert comps == {("sel [davir]", "random [davir]"), ("sel [sigmoid]", "random [sigmoid]"),
                     ("sel [davir]", "sel [sigmoid]"), ("random [davir]", "random [sigmoid]")}
    res = pd.read_parquet(out / "results.parquet")
    base = res[res["candidate"] == "base"].set_index("example_id")
    corr = {r["candidate"]: r for r in rep["pairs"]["length_correlation"]}
    assert set(corr) == set(names)
    rs = []
    for seed, g in res[res["candidate"] == "sel [sigmoid]"].groupby("seed"):
        g = g.set_index("example_id").loc[base.index]
        margin = (g["logp_chosen"] - base["logp_chosen"]) - (g["logp_rejected"] - base["logp_rejected"])
        rs.append(np.corrcoef(margin, g["n_chosen_tokens"] - g["n_rejected_tokens"])[0, 1])
    c = corr["sel [sigmoid]"]
    assert c["pearson"] == pytest.approx(np.mean(rs), abs=1e-9) and c["lo"] <= c["pearson"] <= c["hi"]
    bias = {(c["candidate"], c["baseline"]) for c in rep["pairs"]["length_bias_comparisons"]}
    assert bias == {("sel [davir]", "sel [sigmoid]"), ("random [davir]", "random [sigmoid]")}  # objectives only
    md = (out / "report.md").read_text()
    assert "sel [davir] vs sel [sigmoid]" in md and "Pearson(reward margin" in md and "Objectives compared" in md


def test_seeds_auto_on_pairs_stops_on_reward_accuracy(pair_setup, tmp_path):
    """--seeds auto on a pair selection: the looks are taken on the primary measure (reward
    accuracy); every one of its comparisons is decided at its look or ran to --max-seeds, and the
    seeds trained are exactly what those looks asked for."""
    out = run_validate(pcfg(pair_setup, tmp_path / "auto", seeds="auto", max_seeds=4, baselines="random"))
    rep = json.loads((out / "report.json").read_text())
    st = rep["statistics"]["pairs"]["reward_accuracy"]
    assert rep["statistics"]["token"] == st and st["seed_plan"]["auto"] is True
    (c,) = st["comparisons"]
    n = c["decided_at"] or 4
    assert c["verdict"] != "undecided" or c["n_seeds_candidate"] == 4
    assert [x["seeds"] for x in st["looks"]] == list(range(3, n + 1))
    assert sorted(p.name for p in (out / "parts").glob("*.parquet")) == [
        f"{x}-seed{s}.parquet" for x in ("random", "sel") for s in range(n)]


@pytest.mark.integration  # job workers killed and resumed
def test_a_killed_pair_validation_resumes_to_the_same_report(pair_setup, tmp_path, monkeypatch):
    from curation.jobs import store as jobs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws = tmp_path / "ws"

    def wait(job, limit=300):
        t0 = time.time()
        while jobs.status(job, ws)["state"] in ("queued", "running"):
            assert time.time() - t0 < limit
            time.sleep(0.2)
        assert jobs.status(job, ws)["state"] == "succeeded", jobs.logs(job, ws)[-2000:]

    ref = jobs.submit("validate", pcfg(pair_setup, tmp_path / "uninterrupted", cache=str(tmp_path / "cache-a")),
                      workspace=ws)
    wait(ref)
    job = jobs.submit("validate", pcfg(pair_setup, tmp_path / "killed", cache=str(tmp_path / "cache-b")), workspace=ws)
    kept = kill_after_parts(job, ws, tmp_path / "killed" / "parts", 2, 6)
    jobs.resume(job, ws)
    wait(job)
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())  # finished (candidate, seed) kept
    a = json.loads((tmp_path / "uninterrupted" / "report.json").read_text())
    b = json.loads((tmp_path / "killed" / "report.json").read_text())
    for rep in (a, b):
        for st in rep["statistics"]["pairs"].values():  # what the trainings cost is wall time, not a result
            for c in st["comparisons"]:
                assert c.pop("cost")["trainings"] == 4
    assert a["statistics"]["pairs"] == b["statistics"]["pairs"] and a["pairs"] == b["pairs"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "uninterrupted" / "results.parquet"),
                                  pd.read_parquet(tmp_path / "killed" / "results.parquet"))


@pytest.mark.integration  # a real Ray instance
def test_a_pair_validation_on_ray_equals_the_local_one(pair_setup, tmp_path):
    """Each DPO training is a Ray task (the same train_and_evaluate, trainer dpo, eval pairs): on 2
    workers the eval log-probs equal a local validation at one torch thread (each task's share)."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_validate(pcfg(pair_setup, tmp_path / "local", cache=str(tmp_path / "c1")))
    finally:
        torch.set_num_threads(threads)
    on_ray = run_validate(pcfg(pair_setup, tmp_path / "ray", cache=str(tmp_path / "c2"), engine="ray", workers=2))
    keys = ["candidate", "seed", "example_id"]
    a = pd.read_parquet(local / "results.parquet").sort_values(keys).reset_index(drop=True)
    b = pd.read_parquet(on_ray / "results.parquet").sort_values(keys).reset_index(drop=True)
    assert len(a) == len(b) == 7 * 12 and a[keys].equals(b[keys])
    np.testing.assert_allclose(a[["logp_chosen", "logp_rejected"]].to_numpy(),
                               b[["logp_chosen", "logp_rejected"]].to_numpy(), atol=1e-4, rtol=0)
    ra = json.loads((local / "report.json").read_text())["statistics"]["pairs"]["reward_accuracy"]["rows"]
    rb = json.loads((on_ray / "report.json").read_text())["statistics"]["pairs"]["reward_accuracy"]["rows"]
    assert [r["mean"] for r in ra] == [r["mean"] for r in rb]

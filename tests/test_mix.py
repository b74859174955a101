"""The mix study on the tiny model: design, one selection per mix and seed at the budget, trainings
shared with validate, the fit and recommendation in the report, predictions for any mix, a killed
study resumed with its finished trainings kept, and folders of other studies refused."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

from curation.runs.score import ScoreConfig, run_score
from curation.validation.mix import MixConfig, MixStudy, latest_study, run_mix
from curation.validation.mixing_law import MixError
from curation.validation.proxy import ValidationError
from tests.conftest import write_jsonl

FRUITS = ["apples", "pears", "plums", "figs", "dates", "limes"]


def math_row(k: int) -> dict:
    return {"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}.\n#### {2 * k}"}


def chat_row(k: int) -> dict:
    fruit = FRUITS[k % len(FRUITS)]
    return {"instruction": f"Tell me about the {fruit} in box {k}.", "input": "",
            "output": f"The {fruit} in box {k} are sweet and ripe."}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("mix")
    math = write_jsonl(d / "math.jsonl", [math_row(k) for k in range(30)])
    chat = write_jsonl(d / "chat.jsonl", [chat_row(k) for k in range(40)])
    ev = {"math": str(write_jsonl(d / "eval-math.jsonl", [math_row(k) for k in range(100, 110)])),
          "chat": str(write_jsonl(d / "eval-chat.jsonl", [chat_row(k) for k in range(200, 210)]))}
    run = run_score(ScoreConfig(sources=[f"math={math}", f"chat={chat}"], out=str(d / "run"), model=str(tiny_model_dir),
                                max_length=64, cache=str(d / "cache")))
    return {"dir": d, "run": run, "eval": ev}


def mcfg(pool, out, **kw):
    args = {"eval": pool["eval"], "out": str(out), "budget": "14", "design": "3", "seeds": 2, "lr": 3e-3, "epochs": 2,
            "train_batch_tokens": 256, "bootstrap": 100, "cache": str(pool["dir"] / "cache")}
    args.update(kw)
    return MixConfig(run=str(pool["run"]), **args)


def test_a_mix_study_fits_recommends_and_predicts(pool, capsys):
    from curation.cli import main

    out = pool["dir"] / "study"
    argv = ["mix", str(pool["run"]), "--out", str(out), "--budget", "14", "--design", "3", "--seeds", "2",
            "--lr", "3e-3", "--epochs", "2", "--train-batch-tokens", "256", "--bootstrap", "100",
            "--cache", str(pool["dir"] / "cache")] + [a for k, v in pool["eval"].items() for a in ("--eval", f"{k}={v}")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recommended mix (mean)" in printed and "--baselines natural" in printed
    rep = json.loads((out / "report.json").read_text())
    assert rep["domains"] == ["chat", "math"] and rep["evals"] == ["chat", "math"]
    # The design: chat share 0, 0.5, 1; every mix trains on the budget, split by its shares.
    assert [p["mix"]["chat"] for p in rep["points"]] == [0.0, 0.5, 1.0]
    assert [p["examples"] for p in rep["points"]] == [{"chat": 0, "math": 14}, {"chat": 7, "math": 7},
                                                     {"chat": 14, "math": 0}]
    res = pd.read_parquet(out / "results.parquet")
    assert set(res["candidate"]) == {"base"} | {p["name"] for p in rep["points"]}
    assert (res[res.candidate != "base"].groupby(["candidate", "seed"]).size() == 20).all()  # 10 + 10 eval examples
    for e in rep["evals"]:
        f = rep["fit"][e]
        assert len(f["measured"]) == 3 and all(len(m["seeds"]) == 2 for m in f["measured"])
        assert len(f["loo"]["law_error"]) == 3 and f["verdict"].startswith(e)
        assert f["interval"]["c"][0] <= f["interval"]["c"][1]
        assert len(rep["bootstrap"]["params"][e]) == 100
    rec = rep["recommended"]
    assert rec["on_front"] and abs(sum(rec["mix"].values()) - 1) < 1e-9
    # The study predicts any mix; at the recommended one it gives the report's numbers.
    pred = MixStudy(out).predict(rec["mix"])
    for e in rep["evals"]:
        for k in ("value", "lo", "hi"):  # the point and its bootstrap interval
            assert pred[e][k] == pytest.approx(rec["predicted"][e][k], abs=1e-9), (e, k)
        assert pred[e]["lo"] < pred[e]["value"] < pred[e]["hi"], (e, pred[e])
    assert latest_study(pool["dir"], pool["run"]).path == out
    # Against the natural mix: the paired difference, equal to the two predictions' difference, and
    # an objective row (the mean of the eval sets' differences).
    for e in rep["evals"]:
        d = rep["vs_natural"][e]
        assert d["value"] == pytest.approx(rec["predicted"][e]["value"] - rep["at_natural"][e]["value"], abs=1e-9)
        assert d["lo"] <= d["hi"]
    assert rep["vs_natural"]["objective"]["value"] == pytest.approx(
        np.mean([rep["vs_natural"][e]["value"] for e in rep["evals"]]), abs=1e-9)
    md = (out / "report.md").read_text()
    assert "against the natural mix" in md
    assert "Recommended mix" in md and "python -m curation validate SEL_DIR" in md and "--baselines natural" in md
    # A second study with the same trainings trains nothing: they come from the training cache.
    phases = []
    run_mix(mcfg(pool, pool["dir"] / "again"), progress=lambda **p: phases.append(p.get("phase", "")))
    assert not any(str(p).startswith("training") for p in phases)
    assert sum(str(p).startswith("reusing the training") for p in set(phases)) == 6
    again = json.loads((pool["dir"] / "again" / "report.json").read_text())
    # What the trainings cost is kept per part: timed in the first study, from the cache in the second.
    assert rep["trainings"]["timed"] == 6 and rep["trainings"]["seconds"] > 0 and rep["trainings"]["reused"] == 0
    assert again["trainings"]["reused"] == 6 and again["trainings"]["timed"] == 0
    assert again["fit"]["math"]["law"] == rep["fit"]["math"]["law"]


def test_a_mix_that_a_domain_cannot_fill_is_refused(pool):
    with pytest.raises(MixError, match=r"mix chat=0,math=1: domain math has 30 eligible examples for its 40"):
        run_mix(mcfg(pool, pool["dir"] / "short", budget="40"))


def test_a_study_folder_of_other_settings_or_of_the_user_is_refused(pool):
    out = pool["dir"] / "study"  # written by the first test with epochs 2
    if not (out / "report.json").is_file():
        run_mix(mcfg(pool, out))
    with pytest.raises(ValidationError, match="holds a mix study with other settings.*epochs: 2 there, 3 now"):
        run_mix(mcfg(pool, out, epochs=3))
    mine = pool["dir"] / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    with pytest.raises(ValidationError, match="is not empty and holds no mix study"):
        run_mix(mcfg(pool, mine))
    assert (mine / "report.md").read_text() == "my notes"


def test_a_study_whose_decisions_changed_its_training_sets_says_so(pool, tmp_path):
    """Issue 30, item 15: the same command after the curator excluded an example (another training
    set, the same settings) was refused as "its data or model changed"."""
    from curation.runs.folder import Run

    out = pool["dir"] / "study"
    if not (out / "report.json").is_file():
        run_mix(mcfg(pool, out))
    table = Run(pool["run"]).scores()
    chat = sorted(table.loc[table["domain"] == "chat", "example_id"])
    decisions = write_jsonl(tmp_path / "decisions.jsonl", [{"example_id": i, "decision": "exclude"} for i in chat[:3]])
    with pytest.raises(ValidationError, match=r"the curator's decisions changed since: .* there, 3 \(3 excluded, 0 kept\) "
                                              r"now, which changes \d+ training set"):
        run_mix(mcfg(pool, out, decisions=str(decisions)))


def test_a_mix_report_of_the_wrong_shape_is_refused_with_one_line(pool, tmp_path):
    """Issue 30, item 3: a newest study whose report.json is valid JSON of the wrong shape gave the
    Select page a KeyError ('fit') and the Mix page an AttributeError; the reader names what is wrong."""
    import copy

    out = pool["dir"] / "study"
    if not (out / "report.json").is_file():
        run_mix(mcfg(pool, out))
    good = json.loads((out / "report.json").read_text())

    def drop(path):
        def edit(rep):
            *parents, last = path
            node = rep
            for k in parents:
                node = node[k]
            del node[last]
        return edit

    variants = {"only the kind": lambda rep: [rep.pop(k) for k in list(rep) if k != "kind"],
                "no fit": drop(["fit"]), "no law": drop(["fit", "chat", "law"]),
                "fit a list": lambda rep: rep.update(fit=[]), "run a list": lambda rep: rep.update(run=[]),
                "one point": lambda rep: rep.update(points=rep["points"][:1]),
                "short params": lambda rep: rep["bootstrap"]["params"].update(chat=[[1.0]]),
                "another eval": lambda rep: rep.update(evals=["chat", "code"]),
                "no share": drop(["recommended", "mix", "math"]), "text share": lambda rep: rep["natural"].update(chat="x")}
    for name, edit in variants.items():
        rep = copy.deepcopy(good)
        edit(rep)
        folder = tmp_path / "mixes" / name.replace(" ", "-")
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(rep))
        with pytest.raises(MixError) as e:
            MixStudy(folder).report()
        msg = str(e.value)
        assert msg.startswith(f"{folder / 'report.json'}: not a readable mix study report (") and "\n" not in msg, msg
        assert msg.endswith("; run the mix study again into a new folder"), msg
        newest = latest_study(tmp_path / "mixes", pool["run"])
        assert newest is None if name in ("only the kind", "run a list") else newest.path == folder, name
        if newest is not None:
            with pytest.raises(MixError):
                newest.predict({"chat": 0.5, "math": 0.5})
        (folder / "report.json").unlink()


def test_every_mix_trains_on_the_budget_at_shares_it_can_express_with_kept_examples_inside(pool, tmp_path):
    """Issue 30, item 1: kept examples were added to every design point (a "chat 0" point trained on 4
    kept chat + 12 math, more than the budget), budget rounding trained other shares than the design's,
    and the law was fitted at the nominal shares. Each mix now trains exactly the budget, kept examples
    inside, at the shares of whole examples it gets, and the law is fitted there."""
    from curation.runs.folder import Run
    from curation.selection.decisions import Decisions, read_jsonl
    from curation.validation.mix import selections
    from curation.validation.mixing_law import grid, two_domain_design

    run = Run(pool["run"])
    meta, table = run.require_finished(), run.scores()
    chat = sorted(table.loc[table["domain"] == "chat", "example_id"])[:4]
    keep = write_jsonl(tmp_path / "keep.jsonl", [{"example_id": i, "decision": "keep"} for i in chat])
    quiet = lambda **p: None  # noqa: E731

    def design(budget, n, decisions="none"):
        cfg = mcfg(pool, tmp_path / "s", budget=budget, design=str(n), seeds=2, decisions=decisions)
        snapshot = read_jsonl(keep) if decisions != "none" else Decisions()
        return selections(cfg, run, table, meta, ["chat", "math"], two_domain_design(n), quiet, snapshot)

    points, trainings, room, notes = design("12", 3, str(keep))
    assert [p["examples"] for p in points] == [{"chat": 4, "math": 8}, {"chat": 6, "math": 6}, {"chat": 12, "math": 0}]
    assert [p["mix"]["chat"] for p in points] == [4 / 12, 0.5, 1.0] and points[0]["name"] == "chat=0.3333,math=0.6667"
    assert all(len(t.ids) == 12 and set(chat) <= set(t.ids) for t in trainings)
    assert notes == ["mix chat=0,math=1 is trained at chat=0.3333,math=0.6667: the 4 kept chat examples count inside "
                     "its 12"]
    # The recommendation is chosen among the mixes the budget can train: whole examples, kept ones inside.
    lattice = room.lattice(grid(2))
    assert np.allclose(lattice * 12, np.round(lattice * 12)) and lattice[:, 0].min() == pytest.approx(4 / 12)
    assert len(lattice) == 9  # 4..12 chat examples of 12
    # Budget rounding: a quarter of 14 examples is 3 or 4, never 3.5; the law is fitted at 3/14.
    points, _, _, notes = design("14", 5)
    assert [p["examples"]["chat"] for p in points] == [0, 3, 7, 11, 14]
    assert [p["mix"]["chat"] for p in points] == [0.0, 3 / 14, 0.5, 11 / 14, 1.0]
    assert notes[0] == "mix chat=0.25,math=0.75 is trained at chat=0.2143,math=0.7857: the nearest shares 14 examples can have"
    # One example cannot hold three mixes: the 0.5 point is one of the ends.
    with pytest.raises(MixError, match=r"at a budget of 1 examples \(with 0 kept\), the design 3 comes down to 2 distinct "
                                       r"mix\(es\); the law needs 3: raise --budget"):
        design("1", 3)


def test_a_mix_study_with_kept_examples_fits_and_recommends_mixes_it_can_train(pool, tmp_path):
    from curation.runs.folder import Run

    table = Run(pool["run"]).scores()
    chat = sorted(table.loc[table["domain"] == "chat", "example_id"])[:4]
    keep = write_jsonl(tmp_path / "keep.jsonl", [{"example_id": i, "decision": "keep"} for i in chat])
    out = run_mix(mcfg(pool, tmp_path / "kept", budget="12", seeds=1, epochs=1, decisions=str(keep)))
    rep = MixStudy(out).report()
    assert [p["mix"]["chat"] for p in rep["points"]] == [4 / 12, 0.5, 1.0] and rep["budget"]["kept"]["chat"] == 4
    rec = rep["recommended"]["mix"]["chat"] * 12
    assert rec == pytest.approx(round(rec)) and round(rec) >= 4  # whole examples, the kept ones inside
    assert all(abs(m[0] * 12 - round(m[0] * 12)) < 1e-9 for m in (list(p["mix"].values()) for p in rep["pareto"]))
    assert "count inside its 12" in (out / "report.md").read_text()


def test_a_domain_left_empty_by_decontamination_is_named_not_a_budget_problem(pool, tmp_path):
    """Issue 30, item 15: every math example removed by decontamination was reported as a budget
    problem ("empty selection ... none fits the budget")."""
    near = write_jsonl(tmp_path / "near-math.jsonl", [{"question": "Q: " + math_row(k)["question"],
                                                       "answer": math_row(k)["answer"]} for k in range(30)])
    with pytest.raises(MixError, match=r"mix chat=0,math=1: domain math has no eligible example \(of its 30 examples, "
                                       r"decontamination \(8-word n-grams\) left 0\), so no mix that gives it a share "
                                       r"can be trained") as e:
        run_mix(mcfg(pool, tmp_path / "s", eval={"math": str(near), "chat": pool["eval"]["chat"]}, ngram=8))
    assert "budget" not in str(e.value)
    # Some left: the budget is the problem, and what left the others out is said too.
    half = write_jsonl(tmp_path / "half-math.jsonl", [{"question": "Q: " + math_row(k)["question"],
                                                       "answer": math_row(k)["answer"]} for k in range(20)])
    with pytest.raises(MixError, match=r"domain math has 10 eligible examples \(of its 30 examples, decontamination "
                                       r"\(8-word n-grams\) left 10\) for its 14 of the budget 14; lower --budget"):
        run_mix(mcfg(pool, tmp_path / "s2", eval={"math": str(half), "chat": pool["eval"]["chat"]}, ngram=8))


def test_mix_config_says_what_to_change():
    base = {"run": "r", "out": "o", "eval": {"chat": "c"}}
    for kw, msg in [({"method": "s2l"}, "random or a ranking score"), ({"budget": "500tok"}, "give N or P%"),
                    ({"objective": "code=1"}, "not eval sets"), ({"design": "dirichlet:x"}, "expected auto"),
                    ({"seeds": 0}, "positive"), ({"eval": {}}, "--eval"), ({"bootstrap": 50}, "at least 100")]:
        with pytest.raises(ValueError, match=msg):
            MixConfig(**{**base, **kw})


@pytest.mark.integration  # a job worker killed and resumed
def test_a_killed_mix_study_resumes_with_its_finished_trainings_kept(pool, tmp_path, monkeypatch):
    from curation.jobs import store as jobs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws, out = tmp_path / "ws", tmp_path / "ws" / "mixes" / "killed"
    cfg = mcfg(pool, out, cache=str(tmp_path / "cache"), seeds=2, epochs=4)
    job = jobs.submit("mix", cfg, workspace=ws)
    parts = out / "parts"
    t0 = time.time()
    while len(list(parts.glob("*.parquet"))) < 2:
        assert time.time() - t0 < 240, jobs.status(job, ws)
        time.sleep(0.05)
    os.kill(jobs.status(job, ws)["pid"], signal.SIGKILL)
    while jobs.status(job, ws)["state"] == "running":
        time.sleep(0.1)
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert 2 <= len(kept) < 6 and not (out / "report.json").exists()
    assert jobs.status(job, ws)["state"] == "interrupted"
    jobs.resume(job, workspace=ws)
    while jobs.status(job, ws)["state"] in ("queued", "running"):
        assert time.time() - t0 < 600
        time.sleep(0.2)
    assert jobs.status(job, ws)["state"] == "succeeded", jobs.status(job, ws)
    assert all(parts.joinpath(n).stat().st_mtime_ns == m for n, m in kept.items())  # not redone
    assert len(list(parts.glob("*.parquet"))) == 6
    # The resumed study equals one that ran without a kill (its own, empty training cache).
    whole = run_mix(mcfg(pool, tmp_path / "whole", cache=str(tmp_path / "cache2"), seeds=2, epochs=4))
    a = pd.read_parquet(out / "results.parquet").sort_values(["candidate", "seed", "example_id"])
    b = pd.read_parquet(whole / "results.parquet").sort_values(["candidate", "seed", "example_id"])
    assert np.allclose(a["nll"].to_numpy(), b["nll"].to_numpy(), atol=1e-5)


def test_the_law_is_called_better_than_interpolation_only_beyond_the_seed_noise():
    from curation.validation.mix import loo_verdict

    loo = {"law_mae": 0.0436, "linear_mae": 0.0447}
    assert "no better than linear interpolation" in loo_verdict("math", loo, 0.31, seed_sd=0.0051)
    assert "better than linear interpolation (mean" in loo_verdict("math", loo, 0.31, seed_sd=None)
    assert "better than linear interpolation (mean" in loo_verdict("chat", {"law_mae": 0.0022, "linear_mae": 0.0084},
                                                                   0.067, seed_sd=0.0016)
    assert "too few mixes" in loo_verdict("chat", {"law_mae": None, "linear_mae": None}, 0.0, None)

"""The study runner on the tiny model: trainings in rounds that see the results so far, a twin
trained once, a resumed study that replays its rounds without training again; the study folder."""

from __future__ import annotations

import pandas as pd
import pytest

from curation.progress import Reporter
from curation.runs.folder import Run
from curation.runs.score import ScoreConfig, run_score
from curation.validation.proxy import ProxyConfig, Training, ValidationError
from curation.validation.study import claim_study, run_study
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("study")
    math = write_jsonl(d / "math.jsonl", [{"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}."}
                                          for k in range(12)])
    chat = write_jsonl(d / "chat.jsonl", [{"instruction": f"Name the fruit in box {k}.", "input": "",
                                           "output": f"Box {k} holds a plum."} for k in range(12)])
    ev = {"math": str(write_jsonl(d / "em.jsonl", [{"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}."}
                                                   for k in range(50, 54)]))}
    run = run_score(ScoreConfig(sources=[f"math={math}", f"chat={chat}"], out=str(d / "run"), model=str(tiny_model_dir),
                                max_length=48, cache=str(d / "cache")))
    return {"dir": d, "run": Run(run), "eval": ev}


def cfg_of(pool, out, **kw) -> ProxyConfig:
    return ProxyConfig(**{"out": str(out), "eval": pool["eval"], "epochs": 1, "lr": 3e-3, "train_batch_tokens": 256,
                          "cache": str(pool["dir"] / "cache"), **kw})


def test_rounds_see_the_results_so_far_and_a_resumed_study_replays_them_without_training(pool, tmp_path):
    run = pool["run"]
    meta, table = run.require_finished(), run.scores()
    ids = sorted(table["example_id"])
    seen = []

    def rounds(study):
        yield [Training("a", 0, ids[:6])]
        results, curves = study.assemble()  # what the first round gave, before the second is asked
        seen.append((sorted(set(results["candidate"])), sorted(set(curves["candidate"]))))
        yield [Training("b", 1, ids[6:12]), Training("a twin", 0, ids[:6])]  # the twin: the same training as a

    phases: list[str] = []
    cfg = cfg_of(pool, tmp_path / "s", cache=str(tmp_path / "cache"))
    study = run_study(cfg, "validate", "k", {}, {}, run, meta, table, rounds, Reporter(lambda **p: phases.append(p.get("phase"))))
    assert seen == [(["a", "base"], ["a"])]
    assert sorted(study.parts) == ["a-seed0", "a_twin-seed0", "b-seed1"]
    assert study.seconds() == {**study.seconds(), "timed": 2, "reused": 1, "trainings": 3}  # the twin trained once
    res = study.results.set_index(["candidate", "example_id"])["nll"]
    pd.testing.assert_series_equal(res["a"], res["a twin"])
    assert sum(str(p).startswith("training ") for p in set(phases)) == 2
    again: list[str] = []
    seen.clear()
    resumed = run_study(cfg, "validate", "k", {}, {}, run, meta, table, rounds, Reporter(lambda **p: again.append(p.get("phase"))))
    assert seen == [(["a", "base"], ["a"])] and not any(str(p).startswith(("training", "reusing")) for p in again)
    pd.testing.assert_frame_equal(resumed.results, study.results)


@pytest.mark.parametrize("damage", ["garbage", "other columns", "curve"])
def test_a_damaged_part_is_named_and_deleting_it_trains_it_again(pool, tmp_path, damage):
    """Issue 30, item 15: a corrupt parts/*.parquet on resume gave a pyarrow error that did not say
    that deleting the part re-trains it."""
    run = pool["run"]
    meta, table = run.require_finished(), run.scores()
    cfg = cfg_of(pool, tmp_path / "s", cache=str(tmp_path / "cache"))
    trainings = [Training("a", 0, sorted(table["example_id"])[:6])]
    first = run_study(cfg, "validate", "k", {}, {}, run, meta, table, lambda study: [trainings], Reporter(None))
    part = first.parts["a-seed0"]
    if damage == "garbage":
        part.write_bytes(b"PAR1 not a parquet file")
    elif damage == "other columns":
        pd.DataFrame({"x": [1]}).to_parquet(part)
    else:
        part.with_suffix(".curve.json").write_text("[{")
    with pytest.raises(ValidationError, match=r"a-seed0.parquet cannot be read .*; delete it \(and its .curve.json and "
                                              r".time.json\) and run the same command again: that training is trained "
                                              r"again"):
        run_study(cfg, "validate", "k", {}, {}, run, meta, table, lambda study: [trainings], Reporter(None))
    for p in (part, part.with_suffix(".curve.json"), part.with_suffix(".time.json")):
        p.unlink()
    (tmp_path / "cache" / "trainings").rename(tmp_path / "gone")  # not from the training cache: trained again
    again = run_study(cfg, "validate", "k", {}, {}, run, meta, table, lambda study: [trainings], Reporter(None))
    assert again.seconds()["timed"] == 1
    pd.testing.assert_frame_equal(again.results, first.results)


def test_a_study_folder_is_claimed_once_and_refused_to_other_settings(tmp_path):
    out = tmp_path / "s"
    claim_study(out, "validate", "k1", {"epochs": 1}, check_only=True)
    assert not out.exists()  # a check writes nothing
    claim_study(out, "validate", "k1", {"epochs": 1})
    claim_study(out, "validate", "k1", {"epochs": 1})  # the same study: resumed
    with pytest.raises(ValidationError, match=r"holds a validation with other settings \(epochs: 1 there, 2 now\)"):
        claim_study(out, "validate", "k2", {"epochs": 2}, check_only=True)


def test_a_refused_study_folder_names_what_differs(tmp_path):
    """Issue 30, item 15: a folder of the other kind of study, or a study whose decisions changed its
    training sets, listed unrelated settings or said "its data or model changed"."""
    from curation.selection.decisions import Decisions
    from curation.validation.study import study_identity

    out = tmp_path / "s"
    trainings = [Training("chat=0.5,math=0.5", 0, ["a", "b"]), Training("chat=1,math=0", 0, ["a", "c"])]
    claim_study(out, "validate", "k1", {"epochs": 1}, study_identity("run1", trainings))
    with pytest.raises(ValidationError, match=r"holds a validation, not a mix study; use a new --out folder"):
        claim_study(out, "mix", "k2", {"epochs": 2, "budget": "10"})
    mix = tmp_path / "m"
    kept = Decisions({"a" * 16: {"decision": "keep", "tags": [], "note": ""}}, "d.jsonl")
    claim_study(mix, "mix", "k1", {"epochs": 1}, study_identity("run1", trainings, Decisions()))
    changed = [Training("chat=0.5,math=0.5", 0, ["a" * 16, "b"]), trainings[1]]
    with pytest.raises(ValidationError, match=r"the curator's decisions changed since: 0 \(0 excluded, 0 kept\) there, "
                                              r"1 \(0 excluded, 1 kept\) now, which changes 1 training set"):
        claim_study(mix, "mix", "k2", {"epochs": 1}, study_identity("run1", changed, kept))
    with pytest.raises(ValidationError, match=r"the run was scored again since"):
        claim_study(mix, "mix", "k3", {"epochs": 1}, study_identity("run2", trainings, Decisions()))
    with pytest.raises(ValidationError, match=r"1 training set\(s\) differ \(e.g. chat=0.5,math=0.5 seed 0\)"):
        claim_study(out, "validate", "k4", {"epochs": 1}, study_identity("run1", changed))

"""--engine ray on a real local Ray instance (2 CPU workers): the same tables as the local engine,
training on Ray Train equal to one process up to float summation order, a killed worker's chunk
re-run, a killed driver leaving no Ray work behind, and the resume after it."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray", reason="--engine ray needs the ray package (requirements.txt)")

from curation.runs.learn import LearnConfig, run_learn  # noqa: E402
from curation.runs.score import ScoreConfig, run_score  # noqa: E402
from tests.conftest import write_jsonl  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the Ray engine's watchdog needs /proc (Linux)")


def pool(tmp_path, n=240):
    rows = [{"question": f"What is {k} + {k}? " + "Think step by step. " * (k % 4),
             "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(n)]
    return [f"math={write_jsonl(tmp_path / 'math.jsonl', rows)}"]


def ray_processes() -> set[int]:
    """Pids of every Ray process on the machine (by their process names)."""
    import psutil

    out = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            text = " ".join([p.info["name"] or ""] + (p.info["cmdline"] or []))
        except (psutil.Error, TypeError):
            continue
        if "ray::" in text or "raylet" in text or "gcs_server" in text or "ray/dashboard" in text:
            out.add(p.pid)
    return out


def describe(pids) -> str:
    """What each leftover process is (for a failure message)."""
    import psutil

    lines = []
    for pid in sorted(pids):
        try:
            p = psutil.Process(pid)
            lines.append(f"{pid} ppid={p.ppid()} {p.status()} age={time.time() - p.create_time():.1f}s "
                         f"{' '.join(p.cmdline())[:160]!r} files={[f.path for f in p.open_files()][:3]}")
        except psutil.Error as e:
            lines.append(f"{pid}: {e}")
    return "\n".join(lines)


def same_tables(a, b, atol=1e-6):
    sa, sb = pd.read_parquet(a / "scores.parquet"), pd.read_parquet(b / "scores.parquet")
    assert sb["example_id"].is_unique and sa["example_id"].tolist() == sb["example_id"].tolist()
    assert (sa.drop(columns=["loss", "loss_sum"]) == sb.drop(columns=["loss", "loss_sum"])).all().all()
    np.testing.assert_allclose(sa["loss"], sb["loss"], atol=atol, rtol=0)
    ta, tb = pd.read_parquet(a / "token_losses.parquet"), pd.read_parquet(b / "token_losses.parquet")
    assert ta["example_id"].tolist() == tb["example_id"].tolist()


@pytest.mark.integration  # a real Ray instance
def test_score_on_two_ray_workers_equals_the_local_run(tmp_path, tiny_model_dir):
    src = pool(tmp_path)
    common = {"sources": src, "model": str(tiny_model_dir)}
    local = run_score(ScoreConfig(out=str(tmp_path / "local"), cache=str(tmp_path / "c1"), chunk_examples=24, **common))
    seen = []
    # 240 examples, chunks of up to 256: on 2 workers the pass is cut in 2 chunks of 120, one per
    # worker (not one chunk on one worker while the other idles)
    on_ray = run_score(ScoreConfig(out=str(tmp_path / "ray"), cache=str(tmp_path / "c2"), engine="ray", workers=2,
                                   chunk_examples=256, **common), progress=lambda **p: seen.append(p))
    same_tables(local, on_ray)
    commits = [p for p in seen if p.get("committed") and p.get("phase") == "scoring"]
    assert max(p["committed"] for p in commits) == 2 and {p["workers"] for p in commits} <= {1, 2}
    assert 2 in {p["workers"] for p in commits}
    time.sleep(2)
    assert not ray_processes(), "Ray processes left after the run"
    import ray

    # A Ray call after the run (as from a work thread a cancel left behind) must not auto-start a
    # new instance that nothing owns: that left two Ray agents running after a cancelled job.
    with pytest.raises(Exception, match="(?i)not .*(started|initialized)|init"):
        ray.put(1)
    assert not ray.is_initialized() and not ray_processes()


@pytest.mark.integration  # a real Ray instance
def test_a_pair_run_on_two_ray_workers_equals_the_local_run(tmp_path, tiny_model_dir):
    """The actor pool follows the pair plan: chunks of whole pairs, each pair one batch, progress in
    pairs; the tables and the prompt embeddings equal the local run's."""
    from curation.runs.folder import Run
    from tests.test_pair_score import MAX_LENGTH, pair_rows

    src = [str(write_jsonl(tmp_path / "pairs.jsonl", pair_rows(30)))]
    common = {"sources": src, "model": str(tiny_model_dir), "chunk_examples": 6, "max_length": MAX_LENGTH}
    local = run_score(ScoreConfig(out=str(tmp_path / "local"), cache=str(tmp_path / "c1"), **common))
    seen = []
    on_ray = run_score(ScoreConfig(out=str(tmp_path / "ray"), cache=str(tmp_path / "c2"), engine="ray", workers=2,
                                   **common), progress=lambda **p: seen.append(p))
    for name in ("scores.parquet", "examples.parquet", "token_losses.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(local / name), pd.read_parquet(on_ray / name), atol=1e-6)
    np.testing.assert_allclose(Run(local).embeddings()[1].astype(np.float32),
                               Run(on_ray).embeddings()[1].astype(np.float32), atol=2e-3)  # float16, one ulp
    scoring = [p for p in seen if p.get("phase") == "scoring"]
    assert {p["unit"] for p in scoring} == {"pairs"} and scoring[-1]["done"] == scoring[-1]["total"]
    assert max(p.get("committed") or 0 for p in scoring) == len(Run(on_ray).committed_parts()) > 2
    time.sleep(2)
    assert not ray_processes(), "Ray processes left after the run"


@pytest.mark.integration  # a real Ray instance
def test_a_killed_ray_worker_is_restarted_and_its_chunk_rerun(tmp_path, tiny_model_dir):
    import psutil

    src = pool(tmp_path)
    common = {"sources": src, "model": str(tiny_model_dir), "chunk_examples": 12}
    local = run_score(ScoreConfig(out=str(tmp_path / "local"), cache=str(tmp_path / "c1"), **common))
    killed = []

    def kill_one(**p):
        if p.get("committed") == 3 and not killed:
            victims = [q for q in psutil.process_iter(["name", "cmdline"])
                       if "ChunkScorer" in " ".join([q.info["name"] or ""] + (q.info["cmdline"] or []))]
            assert victims, "no Ray scoring worker found"
            os.kill(victims[0].pid, signal.SIGKILL)
            killed.append(victims[0].pid)

    on_ray = run_score(ScoreConfig(out=str(tmp_path / "ray"), cache=str(tmp_path / "c2"), engine="ray", workers=2,
                                   **common), progress=kill_one)
    assert killed
    same_tables(local, on_ray)
    from curation.runs.folder import Run

    assert len(Run(on_ray).committed_parts()) == 20  # every chunk committed once: none lost, none twice


@pytest.mark.integration  # a real Ray instance
def test_learn_on_two_ray_train_workers_matches_one_process(tmp_path, tiny_model_dir):
    """The global batch is the config's on any number of workers: the trajectories equal one
    process's up to the order of float sums (gradients added over 2 ranks)."""
    src = pool(tmp_path, 60)
    common = {"sources": src, "model": str(tiny_model_dir), "checkpoints": 2, "lr": 1e-2, "epochs": 2,
              "train_batch_tokens": 256, "grad_accum": 4, "ifd": False}
    a = run_learn(LearnConfig(out=str(tmp_path / "local"), cache=str(tmp_path / "c1"), **common))
    b = run_learn(LearnConfig(out=str(tmp_path / "ray"), cache=str(tmp_path / "c2"), engine="ray", workers=2, **common))
    A, B = pd.read_parquet(a / "scores.parquet"), pd.read_parquet(b / "scores.parquet")
    cols = ["loss_ckpt_0", "loss_ckpt_1", "loss_ckpt_2", "davir", "rho"]
    assert (A["loss_ckpt_2"] < A["loss_ckpt_0"]).mean() > 0.9  # the reference learned something
    np.testing.assert_allclose(A[cols].to_numpy(), B[cols].to_numpy(), atol=1e-5, rtol=0)
    ra, rb = (json.loads((x / "run.json").read_text())["train"] for x in (a, b))
    assert ra["total_steps"] == rb["total_steps"] and ra["tokens_trained"] == rb["tokens_trained"]
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(ra["loss_curve"], rb["loss_curve"])) < 1e-5
    assert sorted(p.name for p in (b / "train").iterdir() if p.name.startswith("ckpt")) == ["ckpt-1", "ckpt-2"]


@pytest.mark.integration  # a real Ray instance
def test_a_mix_study_runs_each_training_as_a_ray_task_and_equals_the_local_study(tmp_path, tiny_model_dir):
    """Independent trainings are Ray tasks side by side (not a DDP job): on 2 workers the study's
    eval losses equal a local study at one torch thread (each task's thread count)."""
    import torch

    from curation.validation.mix import MixConfig, run_mix

    chat = [{"instruction": f"Name fruit {k}.", "input": "", "output": f"Fruit {k} is a plum."} for k in range(30)]
    math = [{"question": f"What is {k} + 1?", "answer": f"{k} + 1 = {k + 1}\n#### {k + 1}"} for k in range(30)]
    src = [f"chat={write_jsonl(tmp_path / 'chat.jsonl', chat)}", f"math={write_jsonl(tmp_path / 'math.jsonl', math)}"]
    ev = {"chat": str(write_jsonl(tmp_path / "ec.jsonl", [{"instruction": f"Name fruit {k}.", "input": "",
                                                           "output": f"Fruit {k} is a fig."} for k in range(50, 56)])),
          "math": str(write_jsonl(tmp_path / "em.jsonl", [{"question": f"What is {k} + 2?",
                                                           "answer": f"{k} + 2 = {k + 2}\n#### {k + 2}"} for k in range(50, 56)]))}
    run = run_score(ScoreConfig(sources=src, out=str(tmp_path / "run"), model=str(tiny_model_dir), max_length=64,
                                cache=str(tmp_path / "c0")))
    common = {"run": str(run), "eval": ev, "budget": "10", "design": "3", "seeds": 2, "lr": 3e-3, "epochs": 2,
              "train_batch_tokens": 256, "bootstrap": 100}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_mix(MixConfig(out=str(tmp_path / "local"), cache=str(tmp_path / "c1"), **common))
    finally:
        torch.set_num_threads(threads)
    phases = []
    on_ray = run_mix(MixConfig(out=str(tmp_path / "ray"), cache=str(tmp_path / "c2"), engine="ray", workers=2,
                               **common), progress=lambda **p: phases.append(p))
    a = pd.read_parquet(local / "results.parquet").sort_values(["candidate", "seed", "example_id"])
    b = pd.read_parquet(on_ray / "results.parquet").sort_values(["candidate", "seed", "example_id"])
    assert len(a) == len(b) == (6 + 1) * 12
    np.testing.assert_allclose(a["nll"].to_numpy(), b["nll"].to_numpy(), atol=1e-5, rtol=0)
    ray_phases = [p for p in phases if p.get("phase") == "training on 2 Ray workers"]
    assert ray_phases and ray_phases[-1]["done"] == ray_phases[-1]["total"] == 6
    assert all(p.get("unit") == "trainings" for p in ray_phases)  # the CLI draws a bar, not one line for an hour
    assert not (on_ray / "train").exists() or not any((on_ray / "train").iterdir())  # models not kept


@pytest.mark.integration  # a real Ray instance
def test_killing_the_driver_leaves_no_ray_work_and_resume_continues(tmp_path, tiny_model_dir, monkeypatch):
    from curation.jobs import store as jobs
    from curation.runs.folder import Run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws = tmp_path / "ws"
    src = pool(tmp_path, 360)
    cfg = ScoreConfig(sources=src, model=str(tiny_model_dir), chunk_examples=12, out="", engine="ray", workers=2,
                      cache=str(tmp_path / "c2"))
    before = ray_processes()
    job = jobs.submit("score", cfg, workspace=ws)
    run = Run(ws / "runs" / job)
    t0 = time.time()
    while len(run.committed_parts()) < 3:
        assert time.time() - t0 < 240, jobs.status(job, ws)
        time.sleep(0.1)
    assert ray_processes() - before  # Ray is doing the work
    os.kill(jobs.status(job, ws)["pid"], signal.SIGKILL)
    t1 = time.time()
    while ray_processes() - before:
        assert time.time() - t1 < 20, f"Ray processes still running after the driver was killed:\n{describe(ray_processes() - before)}"
        time.sleep(0.2)
    kept = len(run.committed_parts())
    assert 3 <= kept < 30 and jobs.status(job, ws)["state"] == "interrupted"
    jobs.resume(job, ws)
    while jobs.status(job, ws)["state"] in ("queued", "running"):
        assert time.time() - t0 < 480, jobs.status(job, ws)
        time.sleep(0.5)
    st = jobs.status(job, ws)
    assert st["state"] == "succeeded", jobs.logs(job, ws)[-3000:]
    assert f"scoring {kept * 12}/360" in jobs.logs(job, ws)  # the resume started from the committed chunks
    local = run_score(ScoreConfig(sources=src, model=str(tiny_model_dir), chunk_examples=12, out=str(tmp_path / "local"),
                                  cache=str(tmp_path / "c1")))
    same_tables(local, ws / "runs" / job)


@pytest.mark.integration  # a real Ray instance
def test_cancelling_a_ray_job_stops_its_ray_work(tmp_path, tiny_model_dir, monkeypatch):
    from curation.jobs import store as jobs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws = tmp_path / "ws"
    before = ray_processes()
    job = jobs.submit("score", ScoreConfig(sources=pool(tmp_path, 480), model=str(tiny_model_dir), chunk_examples=12,
                                           out="", engine="ray", workers=2, cache=str(tmp_path / "c")), workspace=ws)
    t0 = time.time()
    while (jobs.status(job, ws)["done"] or 0) < 24:
        assert time.time() - t0 < 240, jobs.status(job, ws)
        time.sleep(0.1)
    st = jobs.cancel(job, ws, wait=60)
    assert st["state"] == "cancelled" and "killed" not in (st["error"] or ""), st["error"]  # stopped by itself
    t1 = time.time()
    while ray_processes() - before:
        assert time.time() - t1 < 20, describe(ray_processes() - before)
        time.sleep(0.2)


def test_config_refuses_ray_options_without_the_ray_engine():
    with pytest.raises(ValueError, match="apply to --engine ray"):
        ScoreConfig(sources=["x"], out="o", workers=2)
    with pytest.raises(ValueError, match="workers must be a positive"):
        ScoreConfig(sources=["x"], out="o", engine="ray", workers=0)


@pytest.mark.integration  # a real Ray instance
def test_the_default_model_on_ray_equals_the_local_run(tmp_path, default_pool):
    """The real default model: 2 Ray workers (one thread each) give the local table."""
    common = {"sources": [f"chat={default_pool['chat']}", f"math={default_pool['math']}"], "model": "default",
              "limit": 6, "chunk_examples": 3}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker runs: another thread count rounds matmuls differently (~1e-6)
    try:
        local = run_score(ScoreConfig(out=str(tmp_path / "local"), cache=str(tmp_path / "c1"), **common))
    finally:
        torch.set_num_threads(threads)
    on_ray = run_score(ScoreConfig(out=str(tmp_path / "ray"), cache=str(tmp_path / "c2"), engine="ray", workers=2,
                                   **common))
    same_tables(local, on_ray)
    assert len(pd.read_parquet(on_ray / "scores.parquet")) == 12


@pytest.mark.integration  # a real Ray instance
def test_the_score_page_starts_a_ray_job_equal_to_the_local_run(tmp_path, tiny_model_dir, monkeypatch):
    """The Score page's form with Engine = ray and 2 workers: a background job on Ray whose table
    equals a local run of the same sources."""
    from streamlit.testing.v1 import AppTest

    from curation.jobs import store as jobs

    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    pool(ws / "data", 96)
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    monkeypatch.setenv("CURATION_SCORE_CACHE", str(tmp_path / "c-page"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    at = AppTest.from_file(str(os.path.join(os.path.dirname(__file__), "..", "app.py")), default_timeout=120)
    at.switch_page("pages/score.py")
    at.run()
    at.text_input[0].input(str(tiny_model_dir))
    next(w for w in at.selectbox if w.label == "Engine").select("ray")
    next(w for w in at.number_input if w.label == "Ray workers (0 = one per CPU)").set_value(2)
    next(b for b in at.button if b.label == "Start job").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = at.session_state["watch_job"]
    st = jobs.status(job, ws)
    assert st["kind"] == "score" and st["config"]["engine"] == "ray" and st["config"]["workers"] == 2
    t0 = time.time()
    while jobs.status(job, ws)["state"] in ("queued", "running"):
        assert time.time() - t0 < 300, jobs.status(job, ws)
        time.sleep(0.5)
    assert jobs.status(job, ws)["state"] == "succeeded", jobs.logs(job, ws)[-3000:]
    local = run_score(ScoreConfig(sources=[f"math={ws / 'data' / 'math.jsonl'}"], model=str(tiny_model_dir),
                                  out=str(tmp_path / "local"), cache=str(tmp_path / "c-local")))
    same_tables(local, ws / "runs" / job)


def task_engine(workers: int):
    """A local Ray engine for tasks defined in this file (pytest imports it as a top-level module
    that a Ray worker cannot import, so its functions travel by value)."""
    import sys
    from types import SimpleNamespace

    from ray import cloudpickle

    from curation.scoring.engine import open_engine

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return open_engine(SimpleNamespace(engine="ray", workers=workers, ray_address=None, gpus_per_worker=0.0))


def test_packed_losses_come_back_as_they_were_scored(tiny_lm):
    """What a Ray worker sends back (pack_losses) unpacks to the losses it scored: sums, counts,
    token losses, positions, and the embeddings when they travel (NaN row: none)."""
    from curation.data.templates import encode_many, resolve_template
    from curation.scoring.engine import pack_losses, unpack_losses
    from curation.scoring.losses import score_examples

    tok = tiny_lm.tokenizer
    convs = [[{"role": "user", "content": f"What is {k} + 1?"}, {"role": "assistant", "content": f"{k + 1}."}]
             for k in range(3)]
    res = score_examples(tiny_lm.model, encode_many(tok, resolve_template(tok), convs, 64), 256)
    for embeddings in (True, False):
        back = unpack_losses(pack_losses(res, embeddings=embeddings))
        assert [(b.loss_sum, b.n_tokens) for b in back] == [(r.loss_sum, r.n_tokens) for r in res]
        for b, r in zip(back, res):
            np.testing.assert_array_equal(b.token_losses, r.token_losses)
            np.testing.assert_array_equal(b.positions, r.positions)
            assert (b.embedding is None) != embeddings and (b.rds is None) != embeddings
            assert (b.prompt_rds is None) != embeddings
            if embeddings:
                np.testing.assert_array_equal(b.embedding, r.embedding)
                np.testing.assert_array_equal(b.rds, r.rds)
                np.testing.assert_array_equal(b.prompt_rds, r.prompt_rds)
    assert unpack_losses(pack_losses([])) == []


def _busy_task(spec: dict, threads: int, progress) -> dict:
    """A task that reports progress often (each report is a small Ray call inside the task)."""
    folder = spec["folder"]
    with open(os.path.join(folder, f"{spec['label']}.start"), "w") as f:
        f.write(repr(time.time()))
    for i in range(150):
        progress(done=i, total=150)
        time.sleep(0.01)
    with open(os.path.join(folder, f"{spec['label']}.end"), "w") as f:
        f.write(repr(time.time()))
    return {"threads": threads}


@pytest.mark.integration  # a real Ray instance
def test_independent_ray_tasks_never_run_more_at_once_than_workers(tmp_path):
    """Ray lends a task's CPU to the next task while the first blocks in a Ray call (a progress
    report is one), so submitting every task at once ran 3 trainings on 2 one-core workers (seen
    in a mix study: 3 processes at 64% CPU each, 4 GB each). At most ``workers`` may run at once."""
    specs = [{"label": f"t{i}", "folder": str(tmp_path)} for i in range(6)]
    finished = []
    with task_engine(workers=2) as engine:
        engine.run_tasks(_busy_task, specs, lambda spec, result: finished.append((spec["label"], result)),
                         lambda **p: None)
    assert sorted(f for f, _ in finished) == [s["label"] for s in specs]
    assert all(r["threads"] == 1 for _, r in finished)
    spans = [(float((tmp_path / f"{s['label']}.start").read_text()), float((tmp_path / f"{s['label']}.end").read_text()))
             for s in specs]
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert most <= 2, f"{most} tasks ran at once on 2 workers: {spans}"


def _failing_task(spec: dict, threads: int, progress) -> dict:
    raise ValueError(f"no rows in {spec['label']}")


@pytest.mark.integration  # a real Ray instance
def test_a_failed_ray_task_says_why(tmp_path):
    """The error names the task's own exception (the last line of Ray's), not Ray's header line."""
    from curation.scoring.engine import EngineError

    with task_engine(workers=1) as engine, pytest.raises(EngineError, match="Ray task 'x' failed: .*ValueError: no rows in x"):
        engine.run_tasks(_failing_task, [{"label": "x"}], lambda spec, result: None, lambda **p: None)


def test_a_ray_address_where_nothing_answers_fails_at_once():
    from curation.scoring.engine import EngineError, check_address

    t0 = time.time()
    with pytest.raises(EngineError, match="127.0.0.1:1: nothing answers there"):
        check_address("127.0.0.1:1")
    assert time.time() - t0 < 5
    with pytest.raises(EngineError, match="ray\\[client\\]"):
        check_address("ray://127.0.0.1:10001")

"""Background jobs with real worker processes, a real SQLite store and the tiny fixture model:
kill -9 and resume, cancel, queueing on one device, failures, hung workers, the CLI; a job store
that cannot be read is named with what to do."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from curation.jobs import store as jobs
from curation.system import process_start_time
from curation.runs.folder import Run
from curation.runs.score import ScoreConfig, run_score
from tests.conftest import ROOT, write_jsonl


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace; at the end any worker still running is killed (only ours, by pid)."""
    # Workers inherit this: one thread is fastest for the tiny model on a shared 2-core machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws = tmp_path / "ws"
    yield ws
    for j in jobs.list_jobs(ws):
        if j["state"] == "running" and process_start_time(j["pid"]) == j["pid_start"]:
            os.kill(j["pid"], signal.SIGKILL)


def make_pool(tmp_path, n_math=150, n_chat=150):
    math = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": f"What is {k} + {k}? " + "The quick brown fox. " * (k % 5),
         "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(n_math)
    ] + [{"question": "broken row"}])
    chat = tmp_path / "alpaca.json"
    chat.write_text(json.dumps([
        {"instruction": f"Say something about fox number {k}.", "input": "", "output": "The lazy dog. " * (k % 6 + 1)}
        for k in range(n_chat)
    ]))
    return [f"math={math}", f"chat={chat}"]


def config(pool, model, out="", chunk_examples=20, **kw):
    # Small chunks, so that a kill lands between commits in the middle of a run.
    return ScoreConfig(sources=pool, out=str(out), model=str(model), device="cpu", chunk_examples=chunk_examples, **kw)


def wait_for(pred, timeout=60.0, every=0.02):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s")


def finished(job_id, ws):
    st = jobs.status(job_id, ws)
    return st if st["state"] not in ("queued", "running") else None


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "curation", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def assert_same_run(a, b):
    sa, sb = pd.read_parquet(a / "scores.parquet"), pd.read_parquet(b / "scores.parquet")
    assert sb["example_id"].is_unique and len(sb) == len(sa)
    # Equal to float32 precision, not bit for bit: the two runs score in different processes, and
    # MKL's kernels (and the shared-prefix attention) may round differently with other memory
    # alignments, ~1e-7 relative. Counts, ids, flags and order must match exactly.
    pd.testing.assert_frame_equal(sa, sb, atol=1e-6, rtol=1e-6)
    ta, tb = pd.read_parquet(a / "token_losses.parquet"), pd.read_parquet(b / "token_losses.parquet")
    assert ta["example_id"].tolist() == tb["example_id"].tolist()
    assert all(np.allclose(x, y, rtol=2e-3, atol=1e-4) for x, y in zip(ta["token_losses"], tb["token_losses"]))
    assert (a / "rejected.jsonl").read_text() == (b / "rejected.jsonl").read_text()


@pytest.mark.integration  # real worker processes
def test_kill_9_then_resume_gives_the_uninterrupted_tables(tmp_path, ws, tiny_model_dir):
    pool = make_pool(tmp_path)
    job = jobs.submit("score", config(pool, tiny_model_dir, chunk_examples=25), workspace=ws)
    st = jobs.status(job, ws)
    assert st["state"] == "running" and st["out"] == str(ws.resolve() / "runs" / job)
    run = Run(ws / "runs" / job)
    # Kill once a third of the 12 chunks are committed (into the score cache): in the middle of the run.
    wait_for(lambda: len(run.committed_parts()) >= 4)
    os.kill(st["pid"], signal.SIGKILL)
    n_committed = len(run.committed_parts())
    assert n_committed < 12, "the run finished before the kill; make it longer"

    r = cli("jobs", "status", job, "--json", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["state"] == "interrupted" and st["id"] == job and st["kind"] == "score"
    assert 0 < st["done"] < st["total"] == 300 and "died" in st["error"]
    assert {"pid", "out", "tokens", "tokens_per_s", "eta_s", "phase", "log", "device"} <= set(st)
    assert not (ws / "runs" / job / "scores.parquet").exists()

    r = cli("jobs", "resume", job, "--workspace", str(ws))
    assert r.returncode == 0 and "running" in r.stdout, r.stderr
    st = wait_for(lambda: finished(job, ws))
    assert st["state"] == "succeeded" and st["done"] == st["total"] == 300 and st["attempts"] == 2
    log = jobs.logs(job, ws)
    assert log.count("==== job") == 2 and f"scoring {n_committed * 25}/300" in log  # skipped the committed chunks

    ref = run_score(config(pool, tiny_model_dir, out=tmp_path / "uninterrupted", chunk_examples=25))
    assert_same_run(ref, ws / "runs" / job)
    with pytest.raises(jobs.JobError, match="cannot be resumed: it finished"):
        jobs.resume(job, ws)


@pytest.mark.integration  # real worker processes
def test_jobs_queue_on_one_device_cancel_and_readers_see_consistent_progress(tmp_path, ws, tiny_model_dir):
    pool = make_pool(tmp_path, 60, 60)
    a = jobs.submit("score", config(pool, tiny_model_dir, chunk_examples=10), workspace=ws)
    b = jobs.submit("score", config(pool, tiny_model_dir, chunk_examples=10), workspace=ws)
    sa, sb = jobs.status(a, ws), jobs.status(b, ws)
    assert (sa["state"], sb["state"], sb["queue_position"]) == ("running", "queued", 1)
    with pytest.raises(jobs.JobError, match="already writing there"):
        jobs.submit("score", config(pool, tiny_model_dir, out=sa["out"]), workspace=ws)

    snapshots, stop = [], threading.Event()

    def reader():  # another connection, polling while the workers write
        while not stop.is_set():
            snapshots.append({j["id"]: j for j in jobs.list_jobs(ws)})
            time.sleep(0.01)

    t = threading.Thread(target=reader)
    t.start()
    try:
        wait_for(lambda: (jobs.status(a, ws)["done"] or 0) >= 20)
        st = jobs.cancel(a, ws)
        assert st["state"] == "cancelled"
        wait_for(lambda: process_start_time(sa["pid"]) is None, timeout=30)  # the worker exits
        c = jobs.submit("score", config(pool, tiny_model_dir), workspace=ws)  # queued behind b
        assert jobs.status(c, ws)["state"] == "queued"
        assert jobs.cancel(c, ws)["state"] == "cancelled"
        sb = wait_for(lambda: finished(b, ws), timeout=90)
    finally:
        stop.set()
        t.join()

    assert sb["state"] == "succeeded" and sb["done"] == sb["total"] == 120
    sa, sc = jobs.status(a, ws), jobs.status(c, ws)
    assert sa["done"] < sa["total"] and "cancelled" in jobs.logs(a, ws)
    assert sc["attempts"] == 0 and sc["started"] is None  # cancelled while queued: never ran
    assert sb["started"] >= sa["finished"]  # b only started once a had stopped
    assert len(snapshots) > 20
    order = {"queued": 0, "running": 1, "succeeded": 2, "cancelled": 2}
    last = {}
    for snap in snapshots:
        assert sum(j["state"] == "running" for j in snap.values()) <= 1  # never two at once on cpu
        for jid, j in snap.items():
            assert j["state"] in order, j["state"]
            if j["total"] is not None:
                assert 0 <= (j["done"] or 0) <= j["total"]
            prev = last.get(jid)
            if prev is not None:
                assert order[j["state"]] >= order[prev["state"]]  # states only move forward
                if j["state"] == prev["state"] == "running" and prev["done"] is not None:
                    assert (j["done"] or 0) >= prev["done"]  # progress never goes back
            last[jid] = j
    scores = pd.read_parquet(ws / "runs" / b / "scores.parquet")
    assert len(scores) == 120 and scores["example_id"].is_unique


@pytest.mark.integration  # real worker processes
def test_a_job_on_a_bad_file_fails_with_a_one_line_reason_and_its_log(tmp_path, ws, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"nothing": 1}, {"also": "nothing"}])
    r = cli("jobs", "submit", "score", str(bad), "--model", str(tiny_model_dir), "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    assert job.startswith("score-") and "\n" not in job
    st = wait_for(lambda: finished(job, ws))
    assert st["state"] == "failed"
    assert "\n" not in st["error"] and "bad.jsonl: no usable row" in st["error"] and st["log"] in st["error"]
    assert "Traceback" in jobs.logs(job, ws)  # the details are in the log
    r = cli("jobs", "status", job, "--workspace", str(ws))
    assert r.returncode == 0 and "failed" in r.stdout and f"log       {st['log']}" in r.stdout
    r = cli("jobs", "list", "--workspace", str(ws))
    assert job in r.stdout and "failed" in r.stdout
    r = cli("jobs", "status", "no-such-job", "--workspace", str(ws))
    assert r.returncode == 2 and "error: no job 'no-such-job'" in r.stderr and "Traceback" not in r.stderr
    r = cli("jobs", "cancel", job, "--workspace", str(ws))
    assert r.returncode == 2 and "only queued or running jobs" in r.stderr


@pytest.mark.integration  # real worker processes
def test_a_hung_worker_is_reported_interrupted_and_killed(tmp_path, ws, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CURATION_JOB_STALE_S", "3")  # the readers' threshold; heartbeats come every 2 s
    job = jobs.submit("score", config(make_pool(tmp_path, 5, 5), tiny_model_dir), workspace=ws)
    st = wait_for(lambda: jobs.status(job, ws)["phase"] != "starting" and jobs.status(job, ws))
    os.kill(st["pid"], signal.SIGSTOP)  # alive but silent
    t0 = time.time()
    st = wait_for(lambda: finished(job, ws), timeout=20)
    assert st["state"] == "interrupted" and "no heartbeat" in st["error"]
    assert time.time() - t0 > jobs.HEARTBEAT_S * 2  # suspected first, given up only later
    wait_for(lambda: process_start_time(st["pid"]) is None, timeout=5)  # killed: it cannot write any more


def _not_a_database(ws):
    (ws / "jobs.sqlite").write_bytes(b"this is a text file, not SQLite" * 100)


def _truncated_store(ws):
    jobs.JobStore(ws).list()  # creates a real store
    with sqlite3.connect(ws / "jobs.sqlite") as c:
        c.execute("CREATE TABLE filler (x TEXT)")
        c.executemany("INSERT INTO filler VALUES (?)", [("x" * 1000,)] * 200)
    data = (ws / "jobs.sqlite").read_bytes()
    for f in ws.glob("jobs.sqlite-*"):
        f.unlink()
    (ws / "jobs.sqlite").write_bytes(data[: len(data) // 3])


def _another_schema(ws):
    with sqlite3.connect(ws / "jobs.sqlite") as c:
        c.execute("CREATE TABLE jobs (name TEXT, size INTEGER)")


@pytest.mark.parametrize("damage", [_not_a_database, _truncated_store, _another_schema],
                         ids=["not a database", "truncated", "another schema"])
def test_an_unreadable_job_store_is_named_with_what_to_do(tmp_path, run_cli, damage):
    ws = tmp_path / "ws"
    ws.mkdir()
    damage(ws)
    for args in (["jobs", "list"], ["jobs", "status", "x"], ["jobs", "resume", "x"]):
        r = run_cli(*args, "--workspace", str(ws))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"{ws / 'jobs.sqlite'}: the job store is unreadable" in r.stderr and "move it aside" in r.stderr

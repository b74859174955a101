"""Hardening: every bad input is one clear line (never a traceback), one bad row never aborts the
rest, no code runs from a run folder, no upload or export leftover is lost or left behind."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_jsonl

GOOD = [{"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(6)]


def cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "curation", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def _truncated_gzip(tmp):
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in GOOD).encode())
    (tmp / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    return [str(tmp / "cut.jsonl.gz")], []


def _corrupt_gzip(tmp):
    (tmp / "junk.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00this is not deflate data at all" * 3)
    return [str(tmp / "junk.jsonl.gz")], []


def _missing_column(tmp):
    return [str(write_jsonl(tmp / "qa.jsonl", GOOD))], ["--columns", "answer=solution"]


def _out_is_a_file(tmp):
    (tmp / "taken").write_text("I am a file")
    return [str(write_jsonl(tmp / "qa.jsonl", GOOD))], ["--out", str(tmp / "taken")]


def _template_syntax_error(tmp):
    (tmp / "bad.jinja").write_text("{% for m in messages %}{{ m['content'] }\n")
    return [str(write_jsonl(tmp / "qa.jsonl", GOOD))], ["--template", str(tmp / "bad.jinja")]


def _template_refused_by_the_sandbox(tmp):
    (tmp / "evil.jinja").write_text("{{ messages.__class__.__init__.__globals__ }}")
    return [str(write_jsonl(tmp / "qa.jsonl", GOOD))], ["--template", str(tmp / "evil.jinja")]


def _device_tpu(tmp):
    return [str(write_jsonl(tmp / "qa.jsonl", GOOD))], ["--device", "tpu"]


def _max_length_above_context(tmp):
    return [str(write_jsonl(tmp / "qa.jsonl", GOOD))], ["--max-length", "5000"]


def _domain_with_spaces(tmp):
    return [f"my chat={write_jsonl(tmp / 'qa.jsonl', GOOD)}"], []


# (case, the message the user sees: a regex)
CLI_CASES = [
    (_truncated_gzip, r"cut\.jsonl\.gz: not a valid gzip file, or a truncated one \(EOFError"),
    (_corrupt_gzip, r"junk\.jsonl\.gz: not a valid gzip file, or a truncated one"),
    (_missing_column, r"qa\.jsonl: --columns answer=solution: no column 'solution' in this source; its columns are"),
    (_out_is_a_file, r"--out .*taken is a file; give a folder"),
    (_template_syntax_error, r"--template .*bad\.jinja: the Jinja template cannot be used \(line 1\): TemplateSyntaxError"),
    (_template_refused_by_the_sandbox, r"--template .*evil\.jinja: the Jinja template cannot be used: SecurityError"),
    (_device_tpu, r"--device tpu: expected cpu, cuda or cuda:N"),
    (_max_length_above_context, r"--max-length 5000 is above the model's context length \(1024 tokens\)"),
    (_domain_with_spaces, r"domain 'my chat': use letters, digits, '\.', '_' and '-' only \(e\.g\. my_chat\)"),
]


@pytest.mark.parametrize("case,message", CLI_CASES, ids=[c.__name__.strip("_") for c, _ in CLI_CASES])
def test_bad_input_is_one_clear_line(tmp_path, tiny_model_dir, case, message):
    import re

    sources, extra = case(tmp_path)
    args = ["score", *sources, "--model", str(tiny_model_dir), *extra]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "run")]
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), r.stderr


def _deep(depth: int) -> str:
    return '{"question": "deep", "answer": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("name,lines,bad", [
    ("deeply nested line", [json.dumps(GOOD[0]), _deep(100_000), json.dumps(GOOD[1])], ["nested too deeply"]),
    ("U+2028, U+2029, CRLF and a BOM", [
        "\ufeff" + json.dumps(GOOD[0]),
        json.dumps({"question": "Line\u2028separator and para\u2029graph?", "answer": "Both are fine.\u2028#### 1"},
                   ensure_ascii=False),
        json.dumps(GOOD[1]) + "\r", json.dumps(GOOD[2])], []),
    ("one broken row among good ones", [json.dumps(GOOD[0]), '{"question": "cut', json.dumps(GOOD[1])],
     ["malformed JSON"]),
])
def test_one_bad_row_never_aborts_the_rest_and_every_row_is_accounted(tmp_path, name, lines, bad):
    from curation.data.load import SourceSpec, load_sources

    f = tmp_path / "rows.jsonl"
    f.write_bytes("\n".join(lines).encode("utf-8"))
    res = load_sources([SourceSpec(str(f), "math")])
    assert len(res.examples) + len(res.rejected) == res.sources[0].n_records == len(lines)  # rows in = out
    assert [e.source_index for e in res.examples] == [i for i in range(len(lines))
                                                      if not any(i == r.source_index for r in res.rejected)]
    assert len(res.rejected) == len(bad) and all(b in r.reason for b, r in zip(bad, res.rejected))
    if "U+2028" in name:
        assert "\u2028" in res.examples[1].messages[0]["content"] and res.examples[0].source_index == 0


def test_a_deeply_nested_json_array_record_is_one_rejected_row(tmp_path):
    from curation.data.load import SourceSpec, load_sources

    f = tmp_path / "arr.json"
    f.write_text("[" + json.dumps(GOOD[0]) + "," + _deep(100_000) + "]")
    res = load_sources([SourceSpec(str(f), "math")])
    assert len(res.examples) == 1 and "nested too deeply" in res.rejected[0].reason


# ----------------------------------------------------------------------------------------------
# The job store


def _not_a_database(ws):
    (ws / "jobs.sqlite").write_bytes(b"this is a text file, not SQLite" * 100)


def _truncated_store(ws):
    from curation.jobs import store as jobs

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
def test_an_unreadable_job_store_is_named_with_what_to_do(tmp_path, damage):
    ws = tmp_path / "ws"
    ws.mkdir()
    damage(ws)
    for args in (["jobs", "list"], ["jobs", "status", "x"], ["jobs", "resume", "x"]):
        r = cli(*args, "--workspace", str(ws))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"{ws / 'jobs.sqlite'}: the job store is unreadable" in r.stderr and "move it aside" in r.stderr


def test_jobs_status_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "curation", "jobs", "list", "--workspace", str(ws)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader (`| head`) is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


# ----------------------------------------------------------------------------------------------
# No code runs from a run folder


class Planted:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(state_file, marker):
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_bytes(pickle.dumps({"model": Planted(marker), "total_steps": 1}))


class Stop(Exception):
    pass


def _interrupted_learn_run(cfg):
    """A learn run stopped when its training starts: a run folder whose training a re-run resumes."""
    from curation.runs.learn import run_learn

    def stop(**p):
        if str(p.get("phase", "")).startswith("training"):
            raise Stop

    with pytest.raises(Stop):
        run_learn(cfg, progress=stop)


def test_a_planted_pickle_in_a_run_folder_is_never_read(tmp_path, tiny_model_dir):
    """A pickled resume state (an earlier version's ``state.pt``, or one planted) is never
    unpickled: the run resumes from its own safetensors state and finishes; no code runs."""
    from curation.runs.learn import LearnConfig

    data = write_jsonl(tmp_path / "qa.jsonl", GOOD)
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    args = ["learn", f"math={data}", "--model", str(tiny_model_dir), "--out", str(out), "--checkpoints", "1",
            "--no-ifd", "--cache", str(tmp_path / "cache")]
    _interrupted_learn_run(LearnConfig(sources=[f"math={data}"], out=str(out), model=str(tiny_model_dir),
                                       checkpoints=1, ifd=False, cache=str(tmp_path / "cache")))
    _plant(out / "train" / "state.pt", marker)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert (out / "scores.parquet").is_file() and not marker.exists()


def test_our_own_resume_state_holds_no_pickle(tmp_path, tiny_model_dir, tiny_lm):
    from curation.data.templates import encode_many, resolve_template
    from curation.runs.training import TrainConfig, train

    enc = encode_many(tiny_lm.tokenizer, resolve_template(tiny_lm.tokenizer), [
        [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"answer {k}"}] for k in range(6)], 64)
    train(str(tiny_model_dir), tiny_lm.tokenizer, enc, TrainConfig(lr=1e-3, save_every_s=0.0), tmp_path / "t", 1)
    files = sorted(p.name for p in (tmp_path / "t" / "state").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    assert not list((tmp_path / "t").rglob("*.pt")) and not list((tmp_path / "t").rglob("*.bin"))


def test_a_checkpoint_with_pickled_weights_is_not_loaded(tmp_path, tiny_model_dir):
    from curation.scoring.models import ModelError
    from curation.scoring.models import load_checkpoint

    ckpt = tmp_path / "ckpt-1"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(Planted(tmp_path / "PWNED")))
    with pytest.raises(ModelError, match="without model.safetensors"):
        load_checkpoint(str(tiny_model_dir), ckpt)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------------------------
# Uploads, stale export folders, a source edited after scoring


def test_uploads_never_overwrite_without_the_users_word(tmp_path):
    from curation.jobs.workspace import UploadExists, save_upload

    ws = tmp_path / "ws"
    p = save_upload(b'{"question": "a", "answer": "b"}\n', "mine.jsonl", ws)
    p.write_text('{"question": "edited", "answer": "b"}\n')  # edited on disk afterwards
    assert save_upload(b'{"question": "edited", "answer": "b"}\n', "mine.jsonl", ws) == p  # same bytes: no-op
    with pytest.raises(UploadExists) as e:
        save_upload(b'{"question": "other", "answer": "c"}\n', "mine.jsonl", ws)
    assert e.value.free.name == "mine-2.jsonl" and "edited" in p.read_text()
    kept = save_upload(b'{"question": "other", "answer": "c"}\n', "mine.jsonl", ws, on_exists="keep-both")
    assert kept.name == "mine-2.jsonl" and "edited" in p.read_text() and "other" in kept.read_text()
    save_upload(b'{"question": "new", "answer": "c"}\n', "mine.jsonl", ws, on_exists="replace")
    assert "new" in p.read_text()


def test_a_killed_exports_leftovers_are_removed_and_reported(tmp_path, capsys):
    from curation.cli import main
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from tests.synthetic import make_run

    data = write_jsonl(tmp_path / "qa.jsonl", GOOD)
    run = make_run(tmp_path / "run", [f"math={data}"])
    select_run(run, Recipe("davir", budget="3"), tmp_path / "sel")
    dead_pid = 2 ** 22 + 12345  # above the kernel's pid range: never running
    for name in (f".exp.{dead_pid}-abcd.tmp", f".exp.{dead_pid}-ef01.old"):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "train" / "data.arrow").write_bytes(b"x" * 2_000_000)
    alive = tmp_path / f".exp.{os.getpid()}-9999.tmp"  # a writer still running: left alone
    alive.mkdir()
    assert main(["export", str(tmp_path / "sel"), "--out", str(tmp_path / "exp")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: removed .exp.") == 2 and "(2.0 MB)" in err and "killed" in err
    assert sorted(p.name for p in tmp_path.glob(".exp.*")) == [alive.name]


def test_inspect_says_when_a_source_changed_since_scoring(tmp_path, tiny_model_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from curation.runs.folder import Run, SourceChanged
    from curation.runs.score import ScoreConfig, run_score

    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    data = write_jsonl(ws / "data" / "qa.jsonl", GOOD)
    run = run_score(ScoreConfig(sources=[f"math={data}"], out=str(ws / "runs" / "r"), model=str(tiny_model_dir)))
    row = Run(run).scores().iloc[0]
    assert Run(run).example(row.source, row.source_index, row.example_id)[0]["content"] == GOOD[0]["question"]
    lines = data.read_text().splitlines()
    lines[0] = json.dumps({"question": "A different question", "answer": GOOD[0]["answer"]})
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceChanged, match="no longer matches example"):
        Run(run).example(row.source, row.source_index, row.example_id)
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/inspect.py")
    at.run()
    at.text_input(key=next(t.key for t in at.text_input if t.label.startswith("Example id"))).set_value(row.example_id).run()
    errors = " ".join(e.value for e in at.error)
    assert "source changed since it was scored" in errors and "A different question" not in str(at.markdown)

"""python -m curation: every bad input is one line that names what to change (never a traceback),
a reader that goes away (``| head``) is not an error, and long work shows bars in its own units."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys

import pytest

from curation.cli import TqdmProgress
from curation.progress import Reporter
from tests.conftest import ROOT, math_rows, write_jsonl

GOOD = math_rows(6)


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
def test_bad_input_is_one_clear_line(tmp_path, tiny_model_dir, run_cli, case, message):
    sources, extra = case(tmp_path)
    args = ["score", *sources, "--model", str(tiny_model_dir), *extra]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "run")]
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), r.stderr


def test_an_out_that_cannot_be_written_is_one_line(tmp_path, run_cli):
    from tests.synthetic import make_selection

    run, sel = make_selection(tmp_path)
    for args in (["select", str(run), "--method", "loss", "--budget", "5", "--out", "/proc/curation-test/sel"],
                 ["export", str(sel), "--out", "/proc/curation-test/exp"]):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "afile").write_text("x")
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 99 + 99?", "answer": "198"}])
    r = run_cli("validate", str(sel), "--eval", f"math={ev}", "--out", str(tmp_path / "afile"))
    assert r.returncode == 2 and "is a file; give a folder" in r.stderr, r.stderr


def test_jobs_logs_with_a_negative_tail_and_jobs_list_on_a_file_say_what_to_give(tmp_path, run_cli):
    r = run_cli("jobs", "logs", "some-id", "--tail", "-5")
    assert r.returncode == 2 and "expected a positive whole number" in r.stderr
    (tmp_path / "ws.txt").write_text("x")
    r = run_cli("jobs", "list", "--workspace", str(tmp_path / "ws.txt"))
    assert r.returncode == 2 and "is a file; give the workspace folder" in r.stderr, r.stderr


@pytest.mark.integration  # the module's own entry point, in a process of its own
def test_jobs_status_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "curation", "jobs", "list", "--workspace", str(ws)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader (`| head`) is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err





def test_every_phase_that_counts_done_of_a_total_gets_a_bar_in_its_unit(capsys):
    bars = TqdmProgress()
    report = Reporter(bars)  # as a run reports: the whole state on every update
    report(phase="loading data", done=0, total=3)  # no unit: a line, not a bar
    report(phase="evaluating held-out loss", done=0, total=4, unit="trainings")  # no name prefix to guess from
    assert bars.bar is not None and bars.bar.unit == "trainings" and bars.bar.total == 4
    report(done=3)
    assert bars.bar.n == 3
    report(phase="scoring checkpoint 0/2", done=0, total=10, unit="examples")
    assert bars.bar.unit == "ex" and bars.bar.desc == "scoring checkpoint 0/2"
    report(phase="training reference model", done=2, total=8, unit="steps", train_loss=1.5, tokens_per_s=10.0)
    assert bars.bar.unit == "step" and bars.bar.n == 2 and "loss 1.5000" in bars.bar.postfix
    report(phase="training on 2 Ray workers", done=1, total=6, unit="trainings", running="random seed 2 3/8")
    assert bars.bar.unit == "trainings" and bars.bar.n == 1 and "random seed 2 3/8" in bars.bar.postfix
    report(phase="evaluating base model", done=0, total=9, unit="examples", tokens_per_s=5.0)
    assert "random seed" not in bars.bar.postfix  # what ran belongs to its phase
    report(phase="writing tables")
    assert bars.bar is None
    bars.close()
    err = capsys.readouterr().err
    assert "[loading data]" in err and "[writing tables]" in err and "[evaluating" not in err


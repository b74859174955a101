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


# ----------------------------------------------------------------------------------------------
# Second round (issue 20): no stale verdicts, no user folder deleted, no file served from outside,
# every input bounded, one clear line instead of a traceback.


def _selection(tmp_path):
    """A synthetic run and a saved 10-example selection of it: ``(run, selection folder)``."""
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from tests.synthetic import make_run

    math = write_jsonl(tmp_path / "gsm.jsonl", [{"question": f"What is {k} + {k}?", "answer": f"{2 * k}"}
                                                for k in range(20)])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"instruction": f"Say {k}.", "input": "", "output": f"{k}."}
                                                 for k in range(20)])
    run = make_run(tmp_path / "run", [f"math={math}", f"chat={chat}"])
    return run, select_run(run, Recipe("davir", budget="10"), tmp_path / "sel")


def test_r2_01_a_validation_folder_of_other_settings_is_refused(tmp_path):
    """Item 1: a study folder carries the key of its settings; another epochs or eval set is refused."""
    from curation.validation.proxy import ValidationError
    from curation.validation.study import claim_study

    out = tmp_path / "val"
    claim_study(out, "validate", "k1", {"epochs": 1, "eval": {"chat": "c.jsonl"}})
    claim_study(out, "validate", "k1", {"epochs": 1, "eval": {"chat": "c.jsonl"}})  # the same study: resumed
    with pytest.raises(ValidationError, match="holds a validation with other settings \\(epochs: 1 there, 3 now\\)"):
        claim_study(out, "validate", "k2", {"epochs": 3, "eval": {"chat": "c.jsonl"}})
    with pytest.raises(ValidationError, match="eval: \\{'chat': 'c.jsonl'\\} there, \\{'math': 'm.jsonl'\\} now"):
        claim_study(out, "validate", "k3", {"epochs": 1, "eval": {"math": "m.jsonl"}})


def test_r2_02_one_eval_file_under_two_names_is_refused():
    from curation.validation.validate import ValidateConfig

    with pytest.raises(ValueError, match="--eval a=x.jsonl and --eval b=x.jsonl name the same file"):
        ValidateConfig(selections=["s"], out="o", eval={"a": "x.jsonl", "b": "x.jsonl"})


@pytest.mark.parametrize("edit,message", [
    (lambda df: __import__("pandas").concat([df, df.iloc[:1]]), "is listed 2 times"),
    (lambda df: df.assign(example_id=["nope"] + df["example_id"].tolist()[1:]), "are not in the run's score table"),
    (lambda df: df.drop(columns=["source"]), "missing column\\(s\\) \\['source'\\]"),
    (lambda df: df.iloc[:0], "the selection is empty"),
])
def test_r2_03_a_hand_edited_selection_is_refused_by_export_and_validate(tmp_path, edit, message):
    """Items 3 and 19a: a duplicated row, an unknown id, missing columns, no row: one line, never a
    KeyError (nor a row exported twice)."""
    import pandas as pd

    run, sel = _selection(tmp_path)
    p = sel / "selected.parquet"
    edit(pd.read_parquet(p)).to_parquet(p, index=False)
    r = cli("export", str(sel), "--out", str(tmp_path / "exp"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "KeyError" not in r.stderr, r.stderr
    assert ("empty" in message and "empty" in r.stderr) or pytest.importorskip("re").search(message, r.stderr), r.stderr
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 99 + 99?", "answer": "198"}])
    r = cli("validate", str(sel), "--eval", f"math={ev}", "--out", str(tmp_path / "val"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_r2_04_a_single_valued_option_given_twice_is_refused(tmp_path):
    r = cli("learn", "math=x.jsonl", "--out", str(tmp_path / "o"), "--stability-runs", "3",
            "--stability-vary", "lr=1e-5", "--stability-vary", "seed=4")
    assert r.returncode == 2 and "--stability-vary: given twice ('lr=1e-5' and 'seed=4')" in r.stderr, r.stderr
    r = cli("select", "run", "--method", "loss", "--budget", "5", "--budget", "10", "--out", "x")
    assert r.returncode == 2 and "--budget: given twice" in r.stderr


def test_r2_05_export_and_select_never_delete_a_folder_holding_other_files(tmp_path):
    run, sel = _selection(tmp_path)
    for command, folder, marker in (("export", tmp_path / "site", "manifest.json"),
                                    ("select", tmp_path / "mine", "recipe.yaml")):
        (folder / "icons").mkdir(parents=True)
        (folder / marker).write_text("{}")
        (folder / "index.html").write_text("<html>mine</html>")
        (folder / "icons" / "a.png").write_bytes(b"png")
        args = [str(sel), "--out", str(folder)] if command == "export" else \
            [str(run), "--method", "loss", "--budget", "5", "--out", str(folder)]
        r = cli(command, *args)
        assert r.returncode == 2 and "holds 2 entries a" in r.stderr and "icons, index.html" in r.stderr, r.stderr
        assert (folder / "index.html").read_text() == "<html>mine</html>" and (folder / "icons" / "a.png").is_file()
    # A folder that is entirely a previous export is replaced as before.
    assert cli("export", str(sel), "--out", str(tmp_path / "e")).returncode == 0
    assert cli("export", str(sel), "--out", str(tmp_path / "e"), "--format", "parquet").returncode == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["README.md", "manifest.json", "train.parquet"]


def test_r2_06_validate_never_writes_into_a_folder_holding_the_users_files(tmp_path):
    run, sel = _selection(tmp_path)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 99 + 99?", "answer": "198"}])
    r = cli("validate", str(sel), "--eval", f"math={ev}", "--out", str(out))
    assert r.returncode == 2 and "is not empty and holds no validation" in r.stderr, r.stderr
    assert (out / "report.md").read_text() == "my own report" and sorted(os.listdir(out)) == ["report.md"]


def test_r2_08_a_linked_out_is_refused_and_old_leftovers_lose_only_the_link(tmp_path, capsys):
    from curation.export.writer import ExportConfig, export_selection

    run, sel = _selection(tmp_path)
    target = export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "v1")))
    link = tmp_path / "latest"
    link.symlink_to(target)
    r = cli("export", str(sel), "--out", str(link))
    assert r.returncode == 2 and "is a symbolic link" in r.stderr, r.stderr
    assert link.is_symlink() and (target / "manifest.json").is_file()
    # An earlier version's leftover: the link renamed aside by a process that is gone.
    stale = tmp_path / ".latest.999999-abcd1234.old"
    stale.symlink_to(target)
    notes = []
    export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "latest2")), notes=notes)
    export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "other")), notes=notes)
    assert not any(".latest" in n for n in notes)  # only leftovers of the same --out are touched
    (tmp_path / "latest").unlink()
    export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "latest")), notes=notes)
    assert not stale.exists() and not stale.is_symlink() and (target / "manifest.json").is_file()
    assert any(".latest.999999" in n for n in notes)


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../etc/passwd", "manifest.json", "train.jsonl"])
def test_r2_09_an_export_serves_only_its_own_data_file(tmp_path, name):
    from curation.export.writer import ExportConfig, ExportError, download_payload, export_selection, load_export

    run, sel = _selection(tmp_path)
    out = export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "exp")))
    manifest = json.loads((out / "manifest.json").read_text())
    if name == "train.jsonl":  # the right name, but a link to a file outside the export
        (out / "train.jsonl").unlink()
        (out / "train.jsonl").symlink_to("/etc/hosts")
    manifest["files"]["data"] = name
    (out / "manifest.json").write_text(json.dumps(manifest))
    for read in (download_payload, load_export):
        with pytest.raises(ExportError, match="not a data file of this export"):
            read(out)


def test_r2_09_the_export_page_does_not_offer_a_file_from_outside(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from curation.export.writer import ExportConfig, export_selection

    ws = tmp_path / "ws"
    run, sel = _selection(tmp_path)
    out = export_selection(ExportConfig(selection=str(sel), out=str(ws / "exports" / "evil")))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["data"] = "../../../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(manifest))
    (ws / "selections").mkdir()
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/export.py")
    at.run()
    assert not at.exception
    assert any("not a data file of this export" in e.value for e in at.error)
    assert not at.get("download_button")


def test_r2_10_links_leaving_the_workspace_are_not_listed_nor_read(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from curation.jobs.workspace import list_data_files, outside_links

    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    write_jsonl(ws / "data" / "mine.jsonl", GOOD)
    (ws / "data" / "passwd.csv").symlink_to("/etc/passwd")
    (ws / "data" / "inside.jsonl").symlink_to(ws / "data" / "mine.jsonl")  # a link within the workspace is fine
    assert [p.name for p in list_data_files(ws)] == ["inside.jsonl", "mine.jsonl"]
    assert [p.name for p in outside_links(ws)] == ["passwd.csv"]
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/data.py")
    at.run()
    assert not at.exception
    assert any("passwd.csv" in w.value and "outside the workspace" in w.value for w in at.warning)
    shown = "\n".join(str(x.value) for x in [*at.markdown, *at.caption, *at.error, *at.info])
    assert "root:" not in shown  # nothing of the linked file is read


def test_r2_13_counts_that_multiply_the_work_are_bounded():
    from curation.runs.learn import LearnConfig
    from curation.validation.mix import MixConfig
    from curation.validation.validate import ValidateConfig

    for make, msg in [(lambda: ValidateConfig(selections=["s"], out="o", eval={"m": "x"}, seeds=1_000_000_000),
                       "seeds 1000000000: at most 50"),
                      (lambda: MixConfig(run="r", out="o", eval={"m": "x"}, seeds=51), "at most 50"),
                      (lambda: LearnConfig(sources=["x.jsonl"], out="o", stability_runs=1000), "at most 20"),
                      (lambda: ValidateConfig(selections=["s"], out="o", eval={"m": "x"}, epochs=10**6), "at most 1,000")]:
        with pytest.raises(ValueError, match=msg):
            make()


def test_r2_14_a_ray_address_where_nothing_answers_fails_at_once():
    import time

    from curation.scoring.engine import EngineError, check_address

    t0 = time.time()
    with pytest.raises(EngineError, match="127.0.0.1:1: nothing answers there"):
        check_address("127.0.0.1:1")
    assert time.time() - t0 < 5
    with pytest.raises(EngineError, match="ray\\[client\\]"):
        check_address("ray://127.0.0.1:10001")


def test_r2_15_an_out_that_cannot_be_written_is_one_line(tmp_path):
    run, sel = _selection(tmp_path)
    for args in (["select", str(run), "--method", "loss", "--budget", "5", "--out", "/proc/curation-test/sel"],
                 ["export", str(sel), "--out", "/proc/curation-test/exp"]):
        r = cli(*args)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "afile").write_text("x")
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 99 + 99?", "answer": "198"}])
    r = cli("validate", str(sel), "--eval", f"math={ev}", "--out", str(tmp_path / "afile"))
    assert r.returncode == 2 and "is a file; give a folder" in r.stderr, r.stderr


def test_r2_16_a_damaged_report_or_manifest_is_named_on_its_page(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    ws = tmp_path / "ws"
    for folder, name in (("exports", "manifest.json"), ("validations", "report.json")):
        (ws / folder / "broken").mkdir(parents=True)
        (ws / folder / "broken" / name).write_text("{not json")
    (ws / "selections").mkdir()
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    for page, name in (("export", "manifest.json"), ("validate", "report.json")):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.switch_page(f"pages/{page}.py")
        at.run()
        assert not at.exception, (page, at.exception)
        assert any(name in e.value and "not a readable" in e.value for e in at.error), (page, [e.value for e in at.error])


def test_r2_17_an_upload_with_a_very_long_name_is_saved(tmp_path):
    from curation.jobs.workspace import save_upload

    p = save_upload(b'{"question": "q", "answer": "a"}\n', "x" * 300 + ".jsonl", tmp_path)
    assert p.is_file() and p.name.endswith(".jsonl") and len(p.name) <= 120


def test_r2_18_a_near_duplicate_threshold_of_1_groups_identical_texts_only():
    from curation.selection.neardup import group_texts

    texts = ["The quick brown fox jumps over the dog.", "the quick brown fox, jumps over the dog",
             "The quick brown fox jumps over the cat.", "Something else entirely here."]
    assert group_texts(texts, ["a", "b", "c", "d"], threshold=1).tolist() == [0, 0, 1, 2]
    assert group_texts(texts, ["a", "b", "c", "d"], threshold=0.5).tolist()[:3] == [0, 0, 0]


def test_r2_19_messages_name_the_real_cause(tmp_path):
    from curation.selection.apply import apply_recipe
    from curation.selection.annotate import annotate
    from curation.selection.recipe import Recipe, SelectionError
    from curation.runs.folder import Run

    run, sel = _selection(tmp_path)
    # b: decontamination that flags everything is named, not the score or the thresholds.
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"question": "What is 1 + 1? Say 1.", "answer": "2"}])
    recipe = Recipe("loss", budget="5", decontaminate=[str(ev)], ngram=1)
    with pytest.raises(SelectionError, match="the step that left none is decontamination \\(1-word n-grams\\)"):
        apply_recipe(annotate(Run(run), Run(run).scores(), recipe), recipe)
    # c: a domain given twice in a mix.
    with pytest.raises(SelectionError, match="domain 'chat' is given twice"):
        Recipe("loss", mix="chat=0.5,chat=0.5")
    # f, g: jobs logs with a negative tail, jobs list on a file.
    r = cli("jobs", "logs", "some-id", "--tail", "-5")
    assert r.returncode == 2 and "expected a positive whole number" in r.stderr
    (tmp_path / "ws.txt").write_text("x")
    r = cli("jobs", "list", "--workspace", str(tmp_path / "ws.txt"))
    assert r.returncode == 2 and "is a file; give the workspace folder" in r.stderr, r.stderr


def test_r2_20_non_finite_numbers_export_as_strict_json(tmp_path):
    from curation.export.writer import ExportConfig, export_selection
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from tests.synthetic import make_run

    src = tmp_path / "qa.jsonl"
    src.write_text("".join(f'{{"question": "What is {k}?", "answer": "{k}", "weight": {v}}}\n'
                           for k, v in enumerate(["NaN", "Infinity", "-Infinity", "1.5"] * 3)))
    run = make_run(tmp_path / "run", [f"math={src}"])
    sel = select_run(run, Recipe("random", budget="12"), tmp_path / "sel")
    notes = []
    out = export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "exp"), style="original"), notes=notes)

    def strict(c):
        raise ValueError(f"non-standard JSON constant {c}")

    rows = [json.loads(line, parse_constant=strict) for line in (out / "train.jsonl").read_text().splitlines()]
    assert sorted(map(str, (r["weight"] for r in rows))) == ["1.5"] * 3 + ["None"] * 9
    m = json.loads((out / "manifest.json").read_text())
    assert m["non_finite_values"]["count"] == 9 and any("written as null" in n for n in notes)


def test_r2_21_map_previews_escape_markup_but_not_quotes():
    from curation.views.render import hover_text

    assert hover_text('He said "hi" & <b>left</b>') == 'He said "hi" &amp; &lt;b&gt;left&lt;/b&gt;'


def test_r2_22_written_files_follow_the_umask(tmp_path):
    from curation.atomic import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755

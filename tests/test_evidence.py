"""curation.validation.evidence: what the workspace measured about a run, for the choice being made."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from curation.runs.folder import Run
from curation.validation.evidence import EvidenceIndex, best_validated, choice_lines, mix_lines, pool_identity


@pytest.fixture(scope="module")
def scored(scored_ws):
    """The dashboard tests' workspace: a learn run, a davir 50% selection validated (2 seeds) and a
    mix study of the run, all on the tiny model."""
    return scored_ws, Run(scored_ws / "runs" / "learn-fixture")


def test_a_validated_choice_shows_its_verdicts_and_a_new_one_says_it_was_not(scored):
    ws, run = scored
    ev = EvidenceIndex(ws).for_run(run)
    assert [s["name"] for s in ev.validations()] == ["validate-fixture"]
    assert ev.validations()[0]["status"] == "this run"
    got = choice_lines(ev, "davir", "50%", "natural", "high")
    assert len(got["exact"]) == 1 and got["lines"][0].startswith("davir (highest), 50%: validated on this run "
                                                                 "(validate-fixture, 2 seeds, ")
    rep = json.loads((ws / "validations" / "validate-fixture" / "report.json").read_text())
    c = next(c for c in rep["statistics"]["token"]["comparisons"] if c["baseline"] == "random" and c["domain"] == "math")
    assert f"math {c['verdict']} against random at equal examples ({c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}])" \
        in got["lines"][0]
    other = choice_lines(ev, "davir", "10%", "natural", "high")
    assert other["exact"] == [] and other["lines"][0] == ("davir (highest), 10%: not validated on this pool: `validate` "
                                                          "it (about 9 trainings: the selection and 2 baselines x 3 seeds)")
    assert other["lines"][1].startswith("  nearest: davir, 50%: validated on this run")
    never = choice_lines(ev, "ifd", "10%")
    assert len(never["lines"]) == 1 and "not validated" in never["lines"][0]


def test_best_validated_and_the_mix_studys_prediction(scored):
    ws, run = scored
    ev = EvidenceIndex(ws).for_run(run)
    best = best_validated(ev)
    assert best is not None and best["line"].startswith("best validated on this pool: davir-fixture (davir, 50%)")
    rec = ev.mixes()[0]["recommended"]
    lines = mix_lines(ev, rec)
    assert lines and all("(a prediction, not a measurement)" in x for x in lines)


def test_a_study_of_an_earlier_pool_is_marked(scored, tmp_path):
    ws, run = scored
    earlier = ws / "validations" / "validate-earlier"
    shutil.copytree(ws / "validations" / "validate-fixture", earlier)
    rep = json.loads((earlier / "report.json").read_text())
    rep["run"]["run_key"] = "0" * 16
    rep["run"]["sources"][0]["fingerprint"] = "sha256:" + "1" * 64  # the file held other data then
    (earlier / "report.json").write_text(json.dumps(rep))
    try:
        ev = EvidenceIndex(ws).for_run(run)
        status = {s["name"]: s["status"] for s in ev.validations()}
        assert status == {"validate-fixture": "this run", "validate-earlier": "earlier pool"}
        lines = choice_lines(ev, "davir", "50%", "natural", "high")["lines"]
        assert any("validated on an earlier pool (validate-earlier" in x for x in lines)
        assert pool_identity(rep["run"]) != pool_identity(run.provenance())
    finally:
        shutil.rmtree(earlier)


def test_an_unreadable_report_is_left_out_not_fatal(scored):
    ws, run = scored
    bad = ws / "validations" / "validate-broken"
    bad.mkdir()
    (bad / "report.json").write_text(json.dumps({"kind": "validate", "statistics": {}}))
    try:
        entries = {e["name"]: e for e in EvidenceIndex(ws).entries()}
        assert "error" in entries["validate-broken"]
        assert [s["name"] for s in EvidenceIndex(ws).for_run(run).validations()] == ["validate-fixture"]
    finally:
        shutil.rmtree(bad)


def test_two_hundred_studies_read_in_well_under_a_second(scored, tmp_path):
    """200 validation folders: the first look summarises every report once; later looks read the
    index and stat the reports (what a page render does)."""
    ws, run = scored
    many = tmp_path / "workspace"
    shutil.copytree(ws, many, ignore=shutil.ignore_patterns("score-cache", "*.parquet", "train", "parts"))
    src = many / "validations" / "validate-fixture"
    for i in range(199):
        shutil.copytree(src, many / "validations" / f"validate-{i:03d}")
    t0 = time.perf_counter()
    first = EvidenceIndex(many).entries()
    t1 = time.perf_counter()
    ev = EvidenceIndex(many).for_run(run)
    choice_lines(ev, "davir", "50%", "natural", "high")
    t2 = time.perf_counter()
    print(f"200 studies: first index {t1 - t0:.2f} s, a page's read {t2 - t1:.3f} s")
    assert len(first) == 201 and len(ev.validations()) == 200
    assert t2 - t1 < 1.0, t2 - t1


def test_select_keeps_and_prints_the_evidence_and_export_carries_it(scored, tmp_path, run_cli, monkeypatch):
    """Issue 34: after a validation of a selection on a run, `select` on that run prints that
    validation's name, verdict words and interval for the matching method; the selection keeps them
    in summary.json; an export of the validated selection says what it was validated as, and one of
    a selection never validated says that it was not."""
    ws, run = scored
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    r = run_cli("select", str(run.path), "--method", "davir", "--budget", "50%", "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("evidence: davir (highest), 50%: validated on this run"))
    assert "(validate-fixture, 2 seeds, " in line and re.search(r"(chat|math) (better|worse|equivalent|undecided) "
                                                                 r"against random at equal examples \([+-]\d\.\d{4} \[", line)
    kept = json.loads((tmp_path / "again" / "summary.json").read_text())["evidence"]
    assert kept["lines"][0] == line.removeprefix("evidence: ") and kept["studies"]
    r = run_cli("select", str(run.path), "--method", "rho", "--budget", "10%", "--out", str(tmp_path / "new"))
    assert "evidence: rho (highest), 10%: not validated on this pool" in r.stdout, r.stdout
    # exports: the validated selection (the fixture's davir-fixture) and the one never validated
    r = run_cli("export", str(ws / "selections" / "davir-fixture"), "--out", str(tmp_path / "e1"))
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "e1" / "README.md").read_text()
    manifest = json.loads((tmp_path / "e1" / "manifest.json").read_text())
    assert manifest["evidence"]["validated"][0].startswith("validated in validate-fixture (2 seeds, ")
    assert "## Validated as" in card and "- validated in validate-fixture (2 seeds, " in card
    r = run_cli("export", str(tmp_path / "new"), "--out", str(tmp_path / "e2"))
    card = (tmp_path / "e2" / "README.md").read_text()
    assert "Not validated: no validation of this selection" in card
    assert "- rho (highest), 10%: not validated on this pool" in card
    assert "evidence: not validated" in r.stdout


def test_the_select_page_shows_the_evidence_for_the_choice(scored, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    ws, run = scored
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "pages" / "select.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "What this workspace measured about this choice" in text
    assert "davir \\(highest\\), 10%: not validated on this pool" in text  # the default budget: no exact evidence
    assert "nearest: davir, 50%: validated on this run \\(validate-fixture, 2 seeds" in text
    assert "Best validated on this pool: davir-fixture \\(davir, 50%\\)" in text
    at.number_input(key="sel_amount_% of pool").set_value(50.0).run()
    text = " ".join(m.value for m in at.markdown)
    assert "davir \\(highest\\), 50%: validated on this run \\(validate-fixture, 2 seeds" in text
    assert at.button(key="sel_open_evidence").label == "Open validate-fixture on the Validate page"


def test_the_best_validated_selection_is_best_in_its_measures_direction(scored, tmp_path):
    """A pair validation's findings are its primary measure, reward accuracy, where higher is
    better: the best validated selection is the one with the largest gain, not the smallest difference."""
    ws, run = scored
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    rep = json.loads((copy / "validations" / "validate-fixture" / "report.json").read_text())
    for name, diff in (("validate-higher-a", 0.30), ("validate-higher-b", -0.20)):
        other = json.loads(json.dumps(rep))
        other["statistics"]["token"]["lower_is_better"] = False
        for c in other["statistics"]["token"]["comparisons"]:
            c.update(diff=diff, lo=diff - 0.01, hi=diff + 0.01)
        (copy / "validations" / name).mkdir()
        (copy / "validations" / name / "report.json").write_text(json.dumps(other))
    shutil.rmtree(copy / "validations" / "validate-fixture")
    best = best_validated(EvidenceIndex(copy).for_run(run))
    assert best is not None and best["folder"].endswith("validate-higher-a") and best["finding"]["diff"] == 0.30

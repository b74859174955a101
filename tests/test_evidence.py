"""curation.validation.evidence: what the workspace measured about a run, for the choice being made."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from curation.runs.folder import Run
from curation.validation.evidence import EvidenceIndex, best_validated, choice_lines, mix_lines, pool_identity


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir):
    """The dashboard tests' workspace: a learn run, a davir 50% selection validated (2 seeds) and a
    mix study of the run, all on the tiny model."""
    from tests.ui_workspace import build_scored_workspace

    ws = tmp_path_factory.mktemp("evidence") / "workspace"
    run = build_scored_workspace(ws, tiny_model_dir)
    return ws, Run(run)


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

"""Every dashboard page under Streamlit's AppTest, on an empty workspace and on a small scored one
(a real learnability run of the tiny fixture model), the select -> export flow, and what a page
shows for a source edited since scoring, a damaged report, or a file outside the workspace."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, math_rows, write_jsonl

PAGES = ["home", "data", "score", "explore", "inspect", "decisions", "mix", "select", "validate", "export"]


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(f"pages/{name}.py")
    return at.run()


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info] \
        + [w.value for w in at.warning] + [e.value for e in at.error] + [s.value for s in at.success]
    return "\n".join(map(str, parts))


@pytest.fixture
def empty_ws(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


@pytest.fixture
def in_scored_ws(scored_ws, monkeypatch):
    monkeypatch.setenv("CURATION_WORKSPACE", str(scored_ws))
    return scored_ws


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_on_an_empty_workspace(empty_ws, name):
    at = _page(name)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title and at.title[0].value


def test_empty_workspace_says_what_to_do_next(empty_ws):
    at = _page("data")
    assert any(b.label == "Prepare the default pool" for b in at.button)
    assert "data folder is empty" in _texts(at)
    for name in ("explore", "inspect", "select"):
        assert "No scored run in this workspace yet" in _texts(_page(name)), name
    assert "No saved selection yet" in _texts(_page("export"))
    assert "No data yet" in _texts(_page("score"))


def test_prepare_default_pool_from_the_data_page(empty_ws):
    at = _page("data")
    next(b for b in at.button if b.label == "Prepare the default pool").click().run()
    assert not at.exception
    chat = (empty_ws / "data" / "chat.jsonl").read_text().splitlines()
    math = (empty_ws / "data" / "math.jsonl").read_text().splitlines()
    assert len(chat) == 300 and len(math) == 200  # 50 CHAMP problems are held out for validation, 20 are dev targets
    assert [len((empty_ws / "eval" / f).read_text().splitlines()) for f in ("chat.jsonl", "math.jsonl")] == [100, 50]
    assert "conversations" in json.loads(chat[0]) and {"question", "answer"} <= set(json.loads(math[0]))
    # The sources table shows each file with its detected format and counts.
    src = at.dataframe[0].value
    assert list(src["source"]) == ["chat.jsonl", "math.jsonl"]
    assert list(src["format"]) == ["sharegpt", "gsm8k"]
    assert list(src["accepted"]) == [300, 200]
    # The default pairs are listed beside them, not chosen with them (a run holds SFT examples or pairs).
    assert at.multiselect(key="sources_chosen").options == ["chat.jsonl", "math.jsonl", "pairs/math.jsonl",
                                                            "pairs-eval/math.jsonl"]
    at.multiselect(key="sources_chosen").set_value(["pairs/math.jsonl"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.dataframe[0].value["format"].tolist() == ["trl-conversational"]


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_on_a_scored_workspace(in_scored_ws, name):
    at = _page(name)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_data_page_shows_formats_rejections_preview_and_lengths(in_scored_ws):
    at = _page("data")
    src = at.dataframe[0].value
    assert dict(zip(src["source"], src["format"])) == {"chat.jsonl": "sharegpt", "math.jsonl": "gsm8k"}
    assert [t.label for t in at.text_input] == ["chat.jsonl", "math.jsonl"]  # a domain per source
    assert [t.value for t in at.text_input] == ["chat", "math"]
    assert at.radio(key="len_col").value == "n_tokens_full"
    assert len(at.get("plotly_chart")) == 1


def test_score_page_has_the_launch_form(in_scored_ws):
    at = _page("score")
    assert at.text_input[0].value == "default"
    # No GPU here: the fast plain-loss pass is preselected, the learnability run is the next option.
    assert at.radio[0].value == "score" and at.radio[0].options[0].startswith("Plain loss")
    assert at.radio[0].options[1].startswith("Learnability run")
    assert [n.label for n in at.number_input][:3] == ["Max length (tokens; 0 = the default)", "Records per source (0 = all)", "Checkpoints K"]
    assert "No job yet" in _texts(at)


def test_explore_page_shows_explained_scores_and_charts(in_scored_ws):
    at = _page("explore")
    assert at.selectbox(key="explore_score").value == "davir"
    assert "higher = more learnable" in _texts(at)  # the one-line explanation from SCORES
    assert len(at.get("plotly_chart")) >= 4  # histogram, base vs ref, score vs length, S2L x2
    at.selectbox(key="explore_score").select("ifd").run()
    assert "ifd > 1" in _texts(at)
    summary = at.dataframe[-1].value
    assert list(summary.index) == ["chat", "math", "all"] and summary.loc["all", "examples"] == 24


def test_inspect_page_filters_and_escapes(in_scored_ws):
    at = _page("inspect")
    assert at.dataframe[0].value.shape[0] == 24
    at.text_input(key="inspect_text").input("onerror").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table.shape[0] == 1 and table["domain"].iloc[0] == "chat"
    html = "".join(str(h.proto.body) for h in at.get("html"))
    assert "&lt;img src=x onerror=" in html and "<img src=x" not in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    at.multiselect(key="inspect_domains").set_value(["math"]).run()
    assert at.dataframe[0].value.shape[0] == 0  # the probe is a chat example


def test_select_then_export_writes_the_expected_file(in_scored_ws):
    at = _page("select")
    assert at.selectbox(key="sel_method").value == "davir"
    assert at.number_input(key="sel_amount_% of pool").value == 10.0
    assert at.toggle(key="sel_natural").value is True
    # A chat/math-balanced 10% selection: 24 rows -> 2 examples, one per domain.
    at.toggle(key="sel_natural").set_value(False).run()
    at.slider(key="sel_share").set_value(0.5).run()
    counts = at.dataframe[0].value.set_index("domain")
    assert counts["selected"].to_dict() == {"chat": 1, "math": 1}
    assert counts["random: selected"].to_dict() == {"chat": 1, "math": 1}  # the baseline beside it
    name_box = next(t for t in at.text_input if t.label == "Selection name")
    assert name_box.value.startswith("davir-10pct")
    at.selectbox(key="sel_method").set_value("rho").run()  # another method suggests its own name
    assert next(t for t in at.text_input if t.label == "Selection name").value.startswith("rho-10pct")
    at.selectbox(key="sel_method").set_value("davir").run()
    next(t for t in at.text_input if t.label == "Selection name").input("balanced").run()
    next(b for b in at.button if b.label == "Save selection").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    sel_dir = in_scored_ws / "selections" / "balanced"
    selected = pd.read_parquet(sel_dir / "selected.parquet")
    assert sorted(selected["domain"]) == ["chat", "math"]
    scores = pd.read_parquet(in_scored_ws / "runs" / "learn-fixture" / "scores.parquet")
    for dom, g in scores.groupby("domain"):  # each the highest-davir example of its domain
        assert selected.loc[selected["domain"] == dom, "example_id"].item() == g.loc[g["davir"].idxmax(), "example_id"]

    at.switch_page("pages/export.py").run()
    assert at.selectbox(key="exp_sel").value == "balanced"
    assert at.selectbox(key="exp_format").value == "jsonl" and at.selectbox(key="exp_style").value == "messages"
    next(b for b in at.button if b.label == "Export").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    out = in_scored_ws / "exports" / "balanced-jsonl-messages"
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "jsonl"
    assert any(d.proto.label.startswith("Download balanced-jsonl-messages-train.jsonl") for d in at.get("download_button"))


@pytest.mark.integration  # a real job worker process
def test_score_page_launches_a_background_job_and_shows_it(empty_ws, tiny_model_dir):
    import time

    from curation.jobs import store as jobs
    from tests.ui_workspace import write_data

    write_data(empty_ws)
    at = _page("score")
    at.text_input[0].input(str(tiny_model_dir))
    at.radio[0].set_value("score")
    at.button[0].click().run()  # the form's "Start job"
    assert not at.exception and not at.error, [e.value for e in at.error]
    [job] = jobs.list_jobs(empty_ws)
    assert job["kind"] == "score" and job["config"]["model"] == str(tiny_model_dir)
    deadline = time.time() + 240
    while jobs.status(job["id"], empty_ws)["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
    st = jobs.status(job["id"], empty_ws)
    assert st["state"] == "succeeded", st.get("error")
    assert st["done"] == st["total"] == 24
    at = _page("score")
    hist = at.dataframe[0].value
    assert hist["job"].tolist() == [job["id"]] and hist["state"].tolist() == ["succeeded"]
    # ... and its scores are on the Explore page.
    at = _page("explore")
    assert not at.exception
    assert at.selectbox(key="explore_score").value == "loss"


def test_score_page_starts_a_pair_learn_job_with_the_dpo_settings(empty_ws, tiny_model_dir):
    """The learn form on a workspace of preference pairs: a pair learn run with the objective and
    beta chosen in the form (reward columns scaled by that beta)."""
    import time

    from curation.jobs import store as jobs
    from curation.runs.folder import Run
    from tests.synthetic import write_pair_sources

    write_pair_sources(empty_ws / "data", n_chat=4, n_math=4)
    at = _page("score")
    at.text_input[0].input(str(tiny_model_dir))
    at.radio[0].set_value("learn")
    at.selectbox(key="learn_dpo_loss").set_value("sigmoid")
    at.number_input(key="learn_beta").set_value(0.5)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [job] = jobs.list_jobs(empty_ws)
    assert job["kind"] == "learn" and (job["config"]["dpo_loss"], job["config"]["beta"]) == ("sigmoid", 0.5)
    deadline = time.time() + 300
    while jobs.status(job["id"], empty_ws)["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
    st = jobs.status(job["id"], empty_ws)
    assert st["state"] == "succeeded", st.get("error")
    run = Run(job["config"]["out"])
    assert run.holds_pairs and run.meta()["dpo"]["loss"] == "sigmoid" and run.meta()["dpo"]["beta"] == 0.5
    assert run.scores()["reward_margin"].notna().all()


def test_validate_page_shows_verdicts_charts_and_lengths(in_scored_ws):
    at = _page("validate")
    assert not at.exception
    text = _texts(at)
    assert "Verdicts" in text and "Length: what the selection picked" in text
    v = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert set(v["against"]) == {"random", "random-tokens"} and set(v["domain"]) == {"chat", "math", "objective"}
    assert set(v["verdict"]) <= {"better", "worse", "equivalent", "undecided"} and len(v) > 0
    assert all(t.startswith(("better than", "worse than", "equivalent to", "undecided")) for t in v["in words"])
    assert {"could detect", "seeds", "trainings", "training time"} <= set(v.columns)
    assert len(at.get("plotly_chart")) >= 3  # NLL per domain, difference with interval, training curves
    # The form offers the workspace's selections and eval sets.
    assert "davir-fixture" in at.multiselect[0].options and set(at.multiselect[2].value) == {"chat.jsonl", "math.jsonl"}


def test_select_page_shows_pick_stability(in_scored_ws):
    at = _page("select")
    assert not at.exception
    counts = at.dataframe[0].value
    assert "kept by every run" in counts.columns and "Jaccard vs each other run" in counts.columns
    assert "Pick stability" in _texts(at)


def test_select_page_stratifies_softens_and_shows_lengths(in_scored_ws):
    at = _page("select")
    assert not at.exception
    lengths = next(d.value for d in at.dataframe if "p50" in d.value.columns).set_index("rows")
    assert list(lengths.index) == ["pool", "eligible", "selection", "random"]
    at.selectbox(key="sel_method").select("longest").run()
    at.number_input(key="sel_strata").set_value(2).run()
    at.number_input(key="sel_temperature").set_value(0.5).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    yaml_text = next(c.value for c in at.code if "method:" in c.value)
    assert "method: longest" in yaml_text and "stratify: length:2" in yaml_text and "temperature: 0.5" in yaml_text
    assert "Response length" in _texts(at)


def test_select_page_dedups_and_decontaminates(in_scored_ws):
    at = _page("select")
    at.checkbox(key="sel_dedup").check().run()
    at.multiselect(key="sel_decon").set_value(["chat.jsonl"]).run()
    at.number_input(key="sel_ngram").set_value(2).run()  # "... french bonjour" is in the pool and the eval set
    assert not at.exception and not at.error, [e.value for e in at.error]
    info = "\n".join(i.value for i in at.info)
    assert "Decontamination (2-word n-grams)" in info and "excluded" in info and "Near-duplicates" in info
    yaml_text = next(c.value for c in at.code if "method:" in c.value)
    assert "dedup: near" in yaml_text and "eval/chat.jsonl" in yaml_text and "ngram: 2" in yaml_text


def test_explore_page_lists_near_duplicate_groups_on_demand(in_scored_ws):
    cache = in_scored_ws / "runs" / "learn-fixture" / "near_dups-t0.8.parquet"
    cache.unlink(missing_ok=True)  # the Select page test may have computed them
    at = _page("explore")
    assert "Computed on demand" in _texts(at)
    next(b for b in at.button if b.label == "Find near-duplicate groups").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "group(s) with more than one example" in _texts(at)
    assert cache.is_file()


def test_select_page_picks_for_diversity_with_the_runs_embeddings(in_scored_ws):
    assert (in_scored_ws / "runs" / "learn-fixture" / "embeddings.npy").is_file()  # the learn run kept them
    at = _page("select")
    at.radio(key="sel_diversity").set_value("kcenter").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    cov = next(d.value for d in at.dataframe if "covered by the selection" in d.value.columns)
    assert set(cov["domain"]) == {"chat", "math"}
    assert "diversity: kcenter" in next(c.value for c in at.code if "method:" in c.value)


def _map_spec(at) -> str:
    specs = [c.proto.spec for c in at.get("plotly_chart") if "pool_map" in (c.proto.id or "") or '"customdata"' in c.proto.spec]
    assert specs, "no map drawn"
    return specs[-1]


def test_explore_page_draws_the_pool_map_with_escaped_previews(in_scored_ws, monkeypatch):
    from curation.views import pool_map

    for p in (in_scored_ws / "runs" / "learn-fixture").glob("map-*.parquet"):
        p.unlink()
    at = _page("select")  # a current selection, for the colouring
    at.switch_page("pages/explore.py").run()
    at.radio(key="map_method").set_value("pca").run()
    next(b for b in at.button if b.label == "Compute the map").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    spec = _map_spec(at)
    assert "scattergl" in spec and "XSS-EXECUTED" in spec  # the probe's text is in the hover previews ...
    assert "<img src=x" not in spec and "&lt;img src=x" in spec  # ... escaped
    assert "&quot;" not in spec and "&#x27;" not in spec  # quotes show as quotes (plotly does not decode them)
    assert "PCA layout" in _texts(at) and (in_scored_ws / "runs" / "learn-fixture" / "map-pca-s0.parquet").is_file()
    at.radio(key="map_colour").set_value("in the current selection").run()
    assert not at.exception and "not selected" in _map_spec(at)
    # Above the points threshold: a server-side density grid instead of points.
    monkeypatch.setattr(pool_map, "POINTS_MAX_ROWS", 5)
    at.radio(key="map_colour").set_value("domain").run()
    spec = _map_spec(at)
    assert not at.exception and '"heatmap"' in spec and "scattergl" not in spec
    assert "density grid computed on the server" in _texts(at)


def test_mix_page_shows_the_law_the_recommendation_and_the_commands(in_scored_ws):
    at = _page("mix")
    assert not at.exception
    text = _texts(at)
    rep = json.loads((in_scored_ws / "mixes" / "mix-fixture" / "report.json").read_text())
    assert rep["fit"]["chat"]["verdict"] in text and rep["fit"]["math"]["verdict"] in text
    assert any(m.label.startswith("Recommended mix (mean)") for m in at.metric)
    assert any("python -m curation validate SEL_DIR" in c.value and "--baselines natural" in c.value for c in at.code)
    assert len(at.get("plotly_chart")) >= 2  # the law per eval set, the Pareto front
    assert any(b.label == "Start mix study" for b in at.button)


def test_mix_page_refuses_two_eval_files_of_one_name(scored_ws, tmp_path, monkeypatch):
    """Issue 30, item 14: math.json beside math.jsonl became one eval set (one was silently dropped)."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(scored_ws, ws)
    (ws / "eval" / "math.json").write_text(json.dumps([{"question": "What is 70 + 70?", "answer": "140"}]))
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("mix")
    next(b for b in at.button if b.label == "Start mix study").click().run()
    assert not at.exception
    assert any("eval files math.json and math.jsonl would both be the eval set 'math'" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert "No mix study job yet." in _texts(at)  # nothing started


def test_a_malformed_newest_mix_study_is_named_on_the_select_and_mix_pages(scored_ws, tmp_path, monkeypatch):
    """Issue 30, item 3: valid JSON of the wrong shape as the newest study's report gave the Select
    page a KeyError (everything below it gone, no selection possible) and the Mix page an
    AttributeError."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(scored_ws, ws)
    run = {"dir": str((ws / "runs" / "learn-fixture").resolve())}  # the copy's run
    (ws / "mixes" / "mix-new").mkdir()
    (ws / "mixes" / "mix-new" / "report.json").write_text(json.dumps({"kind": "mix", "run": run, "points": 3}))
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("select")
    assert not at.exception, at.exception
    assert any(c.value.startswith("The latest mix study of this run cannot be read:") and "mix-new" in c.value
               for c in at.caption), [c.value for c in at.caption]
    assert any(b.label == "Save selection" for b in at.button)  # the rest of the page is there
    at = _page("mix")
    assert not at.exception, at.exception
    assert any("mix-new" in e.value and "not a readable mix study report" in e.value for e in at.error)


def test_a_validation_report_of_the_wrong_shape_is_named_on_the_validate_page(scored_ws, tmp_path, monkeypatch):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(scored_ws, ws)
    (ws / "validations" / "validate-new").mkdir()
    (ws / "validations" / "validate-new" / "report.json").write_text(json.dumps({"kind": "validate", "statistics": {}}))
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("validate")
    assert not at.exception, at.exception
    assert any("validate-new" in e.value and "not a readable validation report" in e.value for e in at.error)


def test_select_page_predicts_the_mix_and_sets_the_recommended_one(in_scored_ws):
    at = _page("select")
    assert not at.exception
    assert "Predicted held-out NLL at this mix (mix study `mix-fixture`)" in _texts(at)
    rep = json.loads((in_scored_ws / "mixes" / "mix-fixture" / "report.json").read_text())
    want = round(rep["recommended"]["mix"]["chat"], 2)
    next(b for b in at.button if b.label.startswith("Use the recommended mix")).click().run()
    assert not at.exception
    assert at.toggle(key="sel_natural").value is False and at.slider(key="sel_share").value == pytest.approx(want)
    # The prediction follows the slider: another share, another predicted loss.
    before = next(c.value for c in at.caption if c.value.startswith("Predicted held-out NLL"))
    at.slider(key="sel_share").set_value(0.0 if want > 0.5 else 1.0).run()
    after = next(c.value for c in at.caption if c.value.startswith("Predicted held-out NLL"))
    assert before != after


def test_select_page_selects_toward_the_dev_targets(in_scored_ws):
    at = _page("select")
    at.selectbox(key="sel_method").set_value("target").run()
    at.toggle(key="sel_natural").set_value(True).run()
    assert not at.exception, at.exception
    assert at.multiselect(key="sel_targets").value == ["chat.jsonl", "math.jsonl"]
    counts = next(d.value for d in at.dataframe if "selection: mean target similarity" in d.value.columns)
    assert counts["selection: mean target similarity"].notna().all()
    assert counts["random: mean target similarity"].notna().all()  # the baseline's, beside it
    assert "Target similarity: the RDS+ cosine" in _texts(at)


def test_explore_map_marks_the_targets_and_colours_by_similarity(in_scored_ws):
    at = _page("explore")
    at.radio(key="map_method").set_value("pca").run()
    if any(b.label == "Compute the map" for b in at.button):
        next(b for b in at.button if b.label == "Compute the map").click().run()
    at.multiselect(key="map_targets").set_value(["math.jsonl"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.radio(key="map_colour").set_value("target similarity").run()
    assert not at.exception
    spec = _map_spec(at)
    assert '"name":"targets"' in spec.replace(" ", "") and "target dev" not in spec
    assert "stars: the targets" in _texts(at)


def test_inspect_records_decisions_the_decisions_page_lists_them_and_select_honours_them(scored_ws, tmp_path,
                                                                                      monkeypatch):
    import shutil

    from curation.selection.decisions import DecisionStore

    ws = tmp_path / "ws"
    shutil.copytree(scored_ws, ws)  # decisions change the workspace: a copy keeps the shared one clean
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("inspect")
    eid = next(t.value for t in at.text_input if t.label.startswith("Example id"))
    next(b for b in at.button if b.label == "Exclude this example").click().run()
    assert not at.exception
    assert DecisionStore(ws).snapshot().excluded() == {eid}
    assert any("exclude: 1 example(s)" in s.value for s in at.success)
    assert any(b.label.startswith("Undo: exclude on 1 example") for b in at.button)
    at = _page("decisions")
    assert not at.exception
    assert eid in set(at.dataframe[0].value["example_id"])
    assert any(m.label == "Excluded" and m.value == "1" for m in at.metric)
    at = _page("select")
    assert not at.exception
    assert any(i.value.startswith("Curator decisions: 1 example(s) of this run excluded") for i in at.info)
    off = next(t for t in at.toggle if t.label.startswith("Honour the curator's decisions"))
    off.set_value(False).run()
    assert not any(i.value.startswith("Curator decisions") for i in at.info)


# ----------------------------------------------------------------------------------------------
# A pair run (tests.ui_workspace.build_pair_workspace): Data, Explore, Inspect, Select, Export


PAIR_PAGES = ["data", "explore", "inspect", "decisions", "select", "export"]


@pytest.fixture(scope="module")
def pair_ws(tmp_path_factory, tiny_model_dir):
    from tests.ui_workspace import build_pair_workspace

    ws = tmp_path_factory.mktemp("pair-ws")
    build_pair_workspace(ws, tiny_model_dir)
    return ws


@pytest.fixture
def in_pair_ws(pair_ws, monkeypatch):
    monkeypatch.setenv("CURATION_WORKSPACE", str(pair_ws))
    return pair_ws


@pytest.mark.parametrize("name", PAIR_PAGES)
def test_page_renders_on_a_pair_workspace(in_pair_ws, name):
    at = _page(name)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_data_page_recognises_pair_sources_in_the_pairs_folder(in_pair_ws):
    at = _page("data")
    src = at.dataframe[0].value
    assert list(src["source"]) == ["chat_pairs.jsonl", "math_pairs.jsonl"]
    assert list(src["format"]) == ["trl-conversational", "alpaca-ranking"]
    assert any(m.label == "Preference pairs" and m.value == "24" for m in at.metric)
    assert at.multiselect(key="sources_chosen").value == ["pairs/chat_pairs.jsonl", "pairs/math_pairs.jsonl"]
    assert at.radio(key="len_col_pairs").value == "len_diff"
    assert "a preference pair: the prompt, then the chosen and the rejected response" in _texts(at)


def test_explore_page_on_a_pair_run_shows_losses_length_bias_and_ratings(in_pair_ws):
    from curation.runs.folder import Run
    from curation.views.pair_margins import length_bias

    at = _page("explore")
    assert at.selectbox(key="explore_score").value == "margin_sum" and "gets most wrong" in _texts(at)
    assert "24 pairs" in _texts(at)
    assert len(at.get("plotly_chart")) >= 4  # distribution, chosen vs rejected, margin vs len_diff, ratings
    bias = next(d.value for d in at.dataframe if "margin" in d.value.columns and "spearman" in d.value.columns)
    want = length_bias(Run(in_pair_ws / "runs" / "pairs-fixture").scores()).round(3)
    pd.testing.assert_frame_equal(bias.reset_index(drop=True), want.reset_index(drop=True))
    assert set(bias["margin"]) == {"margin_sum", "margin_mean", "reward_margin", "davir_margin"}
    assert "Rating margin vs implicit margin" in [s.value for s in at.subheader]
    assert "S2L" not in " ".join(s.value for s in at.subheader)  # SFT-only sections are not drawn


def test_explore_page_plots_a_pair_learn_runs_dpo_curve(in_pair_ws):
    from curation.runs.pair_tables import TRAIN_CURVE, write_train_curve

    run_dir = in_pair_ws / "runs" / "pairs-fixture"
    at = _page("explore")
    assert "DPO training curve" not in [s.value for s in at.subheader]  # a run without one: no section
    write_train_curve(run_dir, [{"step": k, "loss": 0.69 - 0.01 * k, "reward_accuracy": 0.5 + 0.1 * k,
                                 "reward_chosen": 0.01 * k, "reward_rejected": -0.01 * k, "reward_margin": 0.02 * k,
                                 "davir_margin": 0.001 * k, "lr": 1e-5, "tokens": 100 * k} for k in (1, 2, 3)])
    try:
        at = _page("explore")
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert "DPO training curve" in [s.value for s in at.subheader]
        charts = {c.proto.spec for c in at.get("plotly_chart")}
        assert any('"reward_accuracy"' in c for c in charts) and any('"davir_margin"' in c for c in charts)
    finally:
        (run_dir / TRAIN_CURVE).unlink()


def test_inspect_page_shows_a_pair_side_by_side_escaped_with_coloured_tokens(in_pair_ws):
    at = _page("inspect")
    at.text_input(key="inspect_text").input("onerror").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.dataframe[0].value.shape[0] == 1 and "1 of 24 pairs match" in _texts(at)
    html = "".join(str(h.proto.body) for h in at.get("html"))
    assert html.count("Is this safe? &lt;img src=x onerror=") == 1  # the prompt once, escaped
    text = re.sub(r"</?span[^>]*>", "", html)  # the responses' tokens joined again
    assert "It is shown as text: &lt;img src=x" in text and "Run it: &lt;img src=x" in text
    assert "<img src=x" not in html and "<script>" not in html
    assert "**Chosen**" in _texts(at) and "**Rejected**" in _texts(at)
    assert "background:#" in html and 'title="' in html  # tokens coloured, their loss on hover
    assert at.radio(key="inspect_colour").options == ["base loss", "reference loss", "drop (base - reference)"]
    at.radio(key="inspect_colour").set_value("drop (base - reference)").run()
    assert not at.exception and "drop (nats)" in "".join(str(h.proto.body) for h in at.get("html"))


def test_select_then_export_a_pair_selection_as_dpo_rows(in_pair_ws):
    at = _page("select")
    assert at.selectbox(key="sel_method").value == "davir_margin"
    assert "davir" not in at.selectbox(key="sel_method").options  # SFT scores are not offered for pairs
    means = next(d.value for d in at.dataframe if "len_diff" in d.value.columns).set_index("rows")
    assert list(means.index) == ["pool", "selection", "random baseline"] and "reward_margin" in means.columns
    assert "Kept the highest davir_margin first" in _texts(at)
    next(t for t in at.text_input if t.label == "Selection name").input("pairs-top").run()
    next(b for b in at.button if b.label == "Save selection").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("pages/export.py").run()
    assert at.selectbox(key="exp_sel").value == "pairs-top"
    assert at.selectbox(key="exp_style_pairs").value == "dpo" and at.selectbox(key="exp_style_pairs").options == ["dpo", "original"]
    assert "preference pairs" in _texts(at)
    next(b for b in at.button if b.label == "Export").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rows = [json.loads(x) for x in (in_pair_ws / "exports" / "pairs-top-jsonl-dpo" / "train.jsonl").read_text().splitlines()]
    selected = pd.read_parquet(in_pair_ws / "selections" / "pairs-top" / "selected.parquet")
    assert len(rows) == len(selected) and all(set(r) >= {"prompt", "chosen", "rejected"} for r in rows)


def test_inspect_says_when_a_source_changed_since_scoring(tmp_path, tiny_model_dir, monkeypatch):
    from curation.runs.folder import Run, SourceChanged
    from curation.runs.score import ScoreConfig, run_score

    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    rows = math_rows(6)
    data = write_jsonl(ws / "data" / "qa.jsonl", rows)
    run = run_score(ScoreConfig(sources=[f"math={data}"], out=str(ws / "runs" / "r"), model=str(tiny_model_dir)))
    row = Run(run).scores().iloc[0]
    assert Run(run).example(row.source, row.source_index, row.example_id)[0]["content"] == rows[0]["question"]
    lines = data.read_text().splitlines()
    lines[0] = json.dumps({"question": "A different question", "answer": rows[0]["answer"]})
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceChanged, match="no longer matches example"):
        Run(run).example(row.source, row.source_index, row.example_id)
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("inspect")
    at.text_input(key=next(t.key for t in at.text_input if t.label.startswith("Example id"))).set_value(row.example_id).run()
    errors = " ".join(e.value for e in at.error)
    assert "source changed since it was scored" in errors and "A different question" not in str(at.markdown)


def test_the_export_page_does_not_offer_a_file_from_outside(tmp_path, monkeypatch):
    from curation.export.writer import ExportConfig, export_selection
    from tests.synthetic import make_selection

    ws = tmp_path / "ws"
    run, sel = make_selection(tmp_path)
    out = export_selection(ExportConfig(selection=str(sel), out=str(ws / "exports" / "evil")))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["data"] = "../../../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(manifest))
    (ws / "selections").mkdir()
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("export")
    assert not at.exception
    assert any("not a data file of this export" in e.value for e in at.error)
    assert not at.get("download_button")


def test_the_data_page_warns_of_a_link_leaving_the_workspace_and_reads_nothing_of_it(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    write_jsonl(ws / "data" / "mine.jsonl", math_rows(6))
    (ws / "data" / "passwd.csv").symlink_to("/etc/passwd")
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("data")
    assert not at.exception
    assert any("passwd.csv" in w.value and "outside the workspace" in w.value for w in at.warning)
    shown = "\n".join(str(x.value) for x in [*at.markdown, *at.caption, *at.error, *at.info])
    assert "root:" not in shown  # nothing of the linked file is read


def test_a_damaged_report_or_manifest_is_named_on_its_page(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    for folder, name in (("exports", "manifest.json"), ("validations", "report.json")):
        (ws / folder / "broken").mkdir(parents=True)
        (ws / folder / "broken" / name).write_text("{not json")
    (ws / "selections").mkdir()
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    for page, name in (("export", "manifest.json"), ("validate", "report.json")):
        at = _page(page)
        assert not at.exception, (page, at.exception)
        assert any(name in e.value and "not a readable" in e.value for e in at.error), (page, [e.value for e in at.error])


def test_the_validate_page_shows_a_pair_validation_measure_by_measure(tmp_path, tiny_model_dir, monkeypatch):
    """A pair validation's report on the Validate page: the primary measure (reward accuracy, higher
    is better) first, a switch to the other measures, the length-bias table and, with two objectives,
    their paired length-bias comparison."""
    from curation.runs.score import ScoreConfig, run_score
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from curation.validation.validate import ValidateConfig, run_validate
    from tests.synthetic import write_pair_sources

    ws = tmp_path / "ws"
    src = write_pair_sources(tmp_path / "pool", n_chat=10, n_math=12)
    ev = write_jsonl(tmp_path / "ev.jsonl", [{"instruction": f"What is {k} + 1?", "chosen": f"{k + 1}. #### {k + 1}",
                                              "rejected": f"{k}. #### {k}"} for k in range(50, 58)])
    run = run_score(ScoreConfig(sources=src, out=str(tmp_path / "run"), model=str(tiny_model_dir), max_length=128,
                                cache=str(tmp_path / "c")))
    sel = select_run(run, Recipe("margin_mean", budget="6"), tmp_path / "sel")
    run_validate(ValidateConfig(selections=[str(sel)], eval={"math": str(ev)}, out=str(ws / "validations" / "v"),
                                seeds=2, baselines="random", lr=1e-3, epochs=1, cache=str(tmp_path / "c"),
                                dpo_loss="sigmoid,davir"))
    monkeypatch.setenv("CURATION_WORKSPACE", str(ws))
    at = _page("validate")
    assert not at.exception, at.exception
    assert "reward accuracy" in _texts(at) and "(higher is better)" in _texts(at) and "1 epoch ·" in _texts(at)
    v = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert "difference (share)" in v.columns and set(v["against"]) == {"random [davir]", "random [sigmoid]",
                                                                        "sel [sigmoid]"}
    assert any("pearson" in d.value.columns for d in at.dataframe)
    bias = next(d.value for d in at.dataframe if "abs_r_diff" in d.value.columns)
    assert set(zip(bias["candidate"], bias["baseline"])) == {("sel [davir]", "sel [sigmoid]"),
                                                             ("random [davir]", "random [sigmoid]")}
    at.radio(key="val_measure").set_value("chosen_nll").run()
    assert not at.exception and "(lower is better)" in _texts(at)
    v = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert "difference (nats)" in v.columns

"""The real thing: `streamlit run app.py` on a free localhost port, driven by headless Chromium.

Needs Debian's chromium (/usr/bin/chromium; `.ci/run` installs it) and the `playwright` Python
package (its own browser download is never used).  Screenshots of every page go to
test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
# A deep link first: a fresh server must route it through app.py's navigation too.
PAGES = ["data", "", "score", "explore", "inspect", "decisions", "mix", "select", "validate", "export"]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = [pytest.mark.integration,  # a Streamlit server driven by Chromium
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(scored_ws):
    yield from _serve(scored_ws)


@pytest.fixture(scope="module")
def pair_server(tmp_path_factory, tiny_model_dir):
    """The dashboard over a workspace holding a pair run (tests.ui_workspace.build_pair_workspace)."""
    from tests.ui_workspace import build_pair_workspace

    ws = tmp_path_factory.mktemp("browser-pair-ws")
    build_pair_workspace(ws, tiny_model_dir)
    yield from _serve(ws)


def _serve(ws: Path):
    """``streamlit run app.py`` over the workspace ``ws`` on a free port: yields ``(url, ws)``."""
    port = _free_port()
    env = {**os.environ, "CURATION_WORKSPACE": str(ws)}
    log = open(ws / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {(ws / 'streamlit.log').read_text()}")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("streamlit did not come up within 60 s")
    yield url, ws
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _open(browser, url: str, requests: list | None = None):
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("[data-testid='stApp']", timeout=30_000)
    page.wait_for_selector("h1", timeout=60_000)
    _idle(page)
    return page


def _idle(page, timeout: int = 120_000) -> None:
    """Wait until the app's script run is over (Streamlit marks it on the stApp element)."""
    page.wait_for_timeout(500)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')"
        "?.getAttribute('data-test-script-state') === 'notRunning'", timeout=timeout)
    page.wait_for_timeout(1000)


def _search(page, label: str, needle: str) -> None:
    """Type ``needle`` into the text box ``label`` and wait for the rerun."""
    box = page.get_by_label(label)
    box.fill(needle)
    box.press("Enter")
    _idle(page)


def _shot(page, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main container, so the viewport
    is grown to the container's height first."""
    h = page.evaluate("() => (document.querySelector('[data-testid=\\'stMainBlockContainer\\']') || document.body).scrollHeight + 120")
    page.set_viewport_size({"width": 1400, "height": min(max(int(h), 900), 8000)})
    # Charts and tables draw once visible; wait for them after the resize (best effort: a slow
    # machine gets a screenshot with placeholders rather than a failure).
    try:
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
                     .every(e => e.querySelector('.main-svg'))""", timeout=30_000)
    except Exception:
        pass
    page.wait_for_timeout(1500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


@pytest.mark.parametrize("path", PAGES)
def test_every_page_loads_without_an_exception(server, browser, path):
    url, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.close()
    page = _open(browser, f"{url}/{path}", requests)
    _shot(page, f"page-{path or 'home'}.png")
    assert page.locator("[data-testid='stException']").count() == 0, page.inner_text("body")[:2000]
    assert page.locator("h1").first.inner_text().strip()
    nav = page.inner_text("[data-testid='stSidebarNav']")
    assert all(t in nav for t in ("Data", "Score", "Explore", "Inspect", "Mix", "Select", "Validate", "Export")), nav
    assert "common" not in nav  # the helper module is not a page
    # Everything the page loads (favicon, fonts, icons, scripts) comes from the server itself.
    outside = [u for u in requests if not u.startswith((url, "data:", "blob:", "about:"))]
    assert not outside, outside
    page.close()


def test_xss_probe_shows_as_text_on_inspect(server, browser):
    url, _ = server
    page = _open(browser, f"{url}/inspect")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _search(page, "Text search (in the conversations)", "onerror")  # find the probe, then open it
    _shot(page, "inspect-xss-probe.png")
    body = page.inner_text("body")
    assert "1 of 24 examples match" in body
    # The probe's markup is visible as text in the rendered conversation ...
    assert '<img src=x onerror="document.title=' in body
    # ... and nothing of it ran or became an element.
    assert page.title() != "XSS-EXECUTED"
    assert page.evaluate("() => document.title") != "XSS-EXECUTED"
    assert page.locator("img[src='x']").count() == 0
    assert not dialogs
    page.close()


@pytest.mark.parametrize("path,expected,charts", [
    ("validate", ["Verdicts", "random"], 3),  # held-out NLL, the difference with its interval, training curves
    ("select", ["Pick stability", "picks kept by every run"], 0),
])
def test_validation_and_pick_stability_show_in_the_browser(server, browser, path, expected, charts):
    url, _ = server
    page = _open(browser, f"{url}/{path}")
    for t in expected:  # elements draw after the script run ends: wait for each text to appear
        page.get_by_text(t).first.wait_for(timeout=60_000)
    _shot(page, f"{path}-results.png")
    body = page.inner_text("body")
    assert all(t in body for t in expected), body[:3000]
    assert page.locator("[data-testid='stPlotlyChart']").count() >= charts
    assert page.locator("[data-testid='stException']").count() == 0
    if path == "validate":
        assert any(v in body for v in ("better than random", "undecided", "equivalent to random", "worse than random"))
    page.close()


def _box_on_the_map(page, right: float) -> None:
    """Lay out the Explore map with PCA (no UMAP compile in a test) and drag a box over the left
    ``right`` share of its plot area."""
    page.get_by_text("pca", exact=True).first.click()
    _idle(page)
    go = page.get_by_role("button", name="Compute the map")
    if go.count():
        go.click()
        _idle(page)
    chart = page.locator("[data-testid='stPlotlyChart']").filter(has=page.locator(".scatterlayer, .gl-container")).last
    chart.scroll_into_view_if_needed()
    box = chart.locator(".nsewdrag").first.bounding_box()  # the plot area, inside the axes
    assert box, "the map's plot area is not drawn"
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * right / 2, box["y"] + box["height"] / 2, steps=8)
    page.mouse.move(box["x"] + box["width"] * right, box["y"] + box["height"] - 2, steps=8)
    page.mouse.up()


def test_a_box_drawn_on_the_map_opens_those_examples_in_inspect(server, browser):
    url, _ = server
    page = _open(browser, f"{url}/explore")
    _box_on_the_map(page, 0.6)  # the left 60%
    page.get_by_text("examples picked on the map").wait_for(timeout=60_000)
    body = page.inner_text("body")
    picked = int(body.split(" examples picked on the map")[0].split()[-1].replace(",", ""))
    assert picked > 0, body[:3000]
    _shot(page, "explore-map-picked.png")
    page.get_by_role("button", name="Open them in Inspect").click()
    page.get_by_text("picked on the map (Explore)").wait_for(timeout=60_000)
    _idle(page)
    body = page.inner_text("body")
    assert f"Showing only the {picked:,} examples picked on the map" in body, body[:3000]
    total = int(body.split(" examples match")[0].split(" of ")[-1].replace(",", ""))
    assert 0 < picked < total and f"{picked:,} of {total:,} examples match" in body, body[:3000]  # a part of the pool
    assert page.locator("[data-testid='stException']").count() == 0
    _shot(page, "inspect-map-pick.png")
    page.get_by_role("button", name="Show every example").click()
    _idle(page)
    assert "picked on the map" not in page.inner_text("body")
    page.close()


def test_an_upload_is_saved_once_and_a_taken_name_is_never_overwritten(server, browser, tmp_path):
    url, ws = server
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"question": "What is 1 + 1?", "answer": "2\\n#### 2"}\n')
    page = _open(browser, f"{url}/data")
    page.get_by_text("Add data").first.click()  # the expander is closed when the data folder has files
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(mine))
    page.get_by_text("Saved mine.jsonl").first.wait_for(timeout=60_000)
    saved = ws / "data" / "mine.jsonl"
    assert saved.read_text() == mine.read_text()
    # Edited on disk, then any widget changes (a rerun): the upload is not written again.
    saved.write_text('{"question": "What is 2 + 2?", "answer": "4\\n#### 4"}\n')
    page.get_by_label("Read at most N records per source (0 = all)").fill("7")
    page.keyboard.press("Enter")
    _idle(page)
    assert "2 + 2" in saved.read_text()
    # Another file with the taken name: the user is asked, and "Keep both" saves it under a new name.
    other = tmp_path / "sub" / "mine.jsonl"
    other.parent.mkdir()
    other.write_text('{"question": "What is 3 + 3?", "answer": "6\\n#### 6"}\n')
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(other))
    page.get_by_text("already exists in the data folder with other content").first.wait_for(timeout=60_000)
    assert "2 + 2" in saved.read_text()  # nothing overwritten while the question is open
    page.get_by_role("button", name="Keep both").click()
    page.get_by_text("Saved mine-2.jsonl").first.wait_for(timeout=60_000)
    _shot(page, "data-upload-keep-both.png")
    assert "2 + 2" in saved.read_text() and "3 + 3" in (ws / "data" / "mine-2.jsonl").read_text()
    page.close()


def test_the_mix_view_and_the_live_slider_prediction(server, browser):
    """The Mix view draws the study (the law per eval set with the measured mixes, the Pareto front,
    the recommendation); on Select, the recommended mix is one click and the predicted losses follow
    the mix slider as it moves."""
    import json
    import re

    url, ws = server
    rep = json.loads((ws / "mixes" / "mix-fixture" / "report.json").read_text())
    page = _open(browser, f"{url}/mix")
    page.get_by_text("Recommended mix (mean)").first.wait_for(timeout=60_000)
    page.get_by_text("Pareto front").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stPlotlyChart']").count() >= 2
    body = page.inner_text("body")
    assert rep["fit"]["chat"]["verdict"].split(" (")[0] in body and "--baselines natural" in body
    assert page.locator("[data-testid='stException']").count() == 0
    _shot(page, "mix-study.png")
    page.close()

    page = _open(browser, f"{url}/select")
    caption = page.get_by_text(re.compile("^Predicted held-out NLL at this mix")).first
    caption.wait_for(timeout=60_000)
    at_natural = caption.inner_text()
    page.get_by_role("button", name=re.compile("^Use the recommended mix")).click()
    _idle(page)
    want = round(rep["recommended"]["mix"]["chat"], 2)
    # The slider's keyboard handle is a visually hidden range input.
    thumb = page.locator("[data-testid='stSlider']").filter(has_text="Share of chat").locator("input[type='range']")
    thumb.wait_for(state="attached", timeout=60_000)
    assert float(thumb.input_value()) == pytest.approx(want)
    at_recommended = page.get_by_text(re.compile("^Predicted held-out NLL at this mix")).first.inner_text()
    _shot(page, "select-mix-prediction.png")
    # Move the slider with the keyboard: the prediction follows.
    thumb.focus()
    for _ in range(20):
        thumb.press("ArrowLeft" if want > 0.5 else "ArrowRight")
    _idle(page)
    moved = page.get_by_text(re.compile("^Predicted held-out NLL at this mix")).first.inner_text()
    assert float(thumb.input_value()) == pytest.approx(want - 0.2 if want > 0.5 else want + 0.2)
    assert moved != at_recommended and at_natural
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_decisions_made_on_inspect_and_the_map_show_and_every_selection_and_export_honours_them(server, browser):
    """Exclude an example on Inspect, tag a box of examples on the map, see both on the Decisions
    page, then a selection saved on Select and its export leave the excluded one out, keep its
    decisions and carry the tags.  (Last in this module: it changes the shared workspace.)"""
    import json
    import re

    import pandas as pd

    url, ws = server
    page = _open(browser, f"{url}/inspect")
    page.get_by_role("button", name="Exclude this example").first.wait_for(timeout=60_000)
    excluded = page.get_by_label("Example id (click a row above, or paste an id)").input_value()
    page.get_by_role("button", name="Exclude this example").click()
    page.get_by_text("exclude: 1 example(s). Every selection honours it.").wait_for(timeout=60_000)
    _idle(page)
    assert page.get_by_text("Curator decision: exclude").count() >= 1
    assert page.get_by_role("button", name=re.compile("^Undo: exclude on 1 example")).count() >= 1
    _shot(page, "inspect-decision.png")
    page.close()

    page = _open(browser, f"{url}/explore")
    _box_on_the_map(page, 0.5)
    page.get_by_text("examples picked on the map").wait_for(timeout=60_000)
    body = page.inner_text("body")
    boxed = int(body.split(" examples picked on the map")[0].split()[-1].replace(",", ""))
    tag = page.get_by_placeholder("e.g. wrong answer").last
    tag.fill("boxed")
    tag.press("Enter")
    _idle(page)
    page.get_by_role("button", name=re.compile(r"^Tag these")).click()
    page.get_by_text(f"tagged {boxed:,} example(s)").wait_for(timeout=60_000)
    _shot(page, "explore-map-tagged.png")
    page.close()

    page = _open(browser, f"{url}/decisions")
    page.get_by_text("In no run of this workspace").wait_for(timeout=60_000)
    from curation.selection.decisions import DecisionStore

    snap = DecisionStore(ws).snapshot()
    assert snap.excluded() == {excluded} and len(snap.tags()) == boxed
    metrics = page.locator("[data-testid='stMetric']").all_inner_texts()
    assert any(t.startswith("Excluded") and t.strip().endswith("1") for t in metrics), metrics
    assert any(t.startswith("Decisions") and t.strip().endswith(f"{len(snap.rows):,}") for t in metrics), metrics
    assert page.locator("[data-testid='stException']").count() == 0
    _shot(page, "decisions.png")
    page.close()

    page = _open(browser, f"{url}/select")
    page.get_by_text(re.compile("^Curator decisions: 1 example")).first.wait_for(timeout=60_000)
    name = page.get_by_label("Selection name")
    name.fill("with-decisions")
    name.press("Enter")
    _idle(page)
    page.get_by_role("button", name="Save selection").click()
    page.get_by_text("Saved").first.wait_for(timeout=60_000)
    sel = ws / "selections" / "with-decisions"
    rows = pd.read_parquet(sel / "selected.parquet")
    assert excluded not in set(rows["example_id"]) and (sel / "decisions.jsonl").is_file()
    summary = json.loads((sel / "summary.json").read_text())
    assert summary["decisions"]["excluded"] == 1 and summary["recipe"]["decisions"] == "decisions.jsonl"
    page.close()

    page = _open(browser, f"{url}/export")
    page.get_by_text("Curator decisions applied: 1 excluded").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text("Exported to").first.wait_for(timeout=60_000)
    _idle(page)
    out = next(p for p in (ws / "exports").iterdir() if p.name.startswith("with-decisions"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["decisions"]["applied"]["excluded"] == 1 and excluded not in {e["example_id"] for e in m["examples"]}
    tagged = {e["example_id"] for e in m["examples"] if e.get("tags") == ["boxed"]}
    assert tagged == set(rows["example_id"]) & set(snap.tags())
    assert "## Curator decisions" in (out / "README.md").read_text()
    assert page.locator("[data-testid='stException']").count() == 0
    _shot(page, "export-decisions.png")
    page.close()


# ----------------------------------------------------------------------------------------------
# A pair run: Explore, Inspect, Select and Export in a real browser


@pytest.mark.integration
@pytest.mark.parametrize("path,expected", [
    ("explore", ["Chosen vs rejected loss", "Margin vs length difference", "Rating margin vs implicit margin"]),
    ("inspect", ["1 of 24 pairs match", "Is this safe?"]),
    ("select", ["davir_margin", "random baseline"]),
    ("export", ["No saved selection yet"]),
])
def test_pair_pages_load_without_an_exception(pair_server, browser, path, expected):
    url, _ = pair_server
    page = _open(browser, f"{url}/{path}")
    if path == "inspect":  # the XSS probe's pair, found by a word of its markup
        _search(page, "Text search (in the prompts and responses)", "onerror")
    for t in expected:
        page.get_by_text(t).first.wait_for(timeout=60_000)
    _shot(page, f"pairs-{path}.png")
    assert page.locator("[data-testid='stException']").count() == 0, page.inner_text("body")[:2000]
    if path == "explore":
        assert page.locator("[data-testid='stPlotlyChart']").count() >= 4
    page.close()


@pytest.mark.integration
def test_a_pairs_xss_probe_shows_as_text_in_its_prompt_and_both_responses(pair_server, browser):
    url, _ = pair_server
    page = _open(browser, f"{url}/inspect")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _search(page, "Text search (in the prompts and responses)", "onerror")
    page.get_by_text("1 of 24 pairs match").wait_for(timeout=60_000)
    _shot(page, "pairs-inspect-xss-probe.png")
    body = page.inner_text("body")
    probe = '<img src=x onerror="document.title='
    assert f"Is this safe? {probe}" in body  # the prompt, as text
    assert f"It is shown as text: {probe}" in body and f"Run it: {probe}" in body  # both responses, as text
    assert page.title() != "XSS-EXECUTED" and page.evaluate("() => document.title") != "XSS-EXECUTED"
    assert page.locator("img[src='x']").count() == 0 and not dialogs
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


@pytest.mark.integration
def test_a_pair_selection_saved_on_select_exports_as_dpo_rows(pair_server, browser):
    import json

    import pandas as pd

    url, ws = pair_server
    page = _open(browser, f"{url}/select")
    name = page.get_by_label("Selection name")
    name.fill("pairs-browser")
    name.press("Enter")
    _idle(page)
    page.get_by_role("button", name="Save selection").click()
    page.get_by_text("Saved").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()

    page = _open(browser, f"{url}/export")
    page.get_by_text("preference pairs").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text("Exported to").first.wait_for(timeout=60_000)
    _idle(page)
    _shot(page, "pairs-export.png")
    out = ws / "exports" / "pairs-browser-jsonl-dpo"
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    selected = pd.read_parquet(ws / "selections" / "pairs-browser" / "selected.parquet")
    assert len(rows) == len(selected) and all(r["chosen"][0]["role"] == "assistant" for r in rows)
    assert json.loads((out / "manifest.json").read_text())["data"] == "pairs"
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_the_select_page_shows_what_validation_found_for_the_method(server, browser):
    """Issue 34: the validation of the davir selection shows beside the choice (its name, verdict
    words and interval), and a method never validated says so."""
    url, _ = server
    page = _open(browser, f"{url}/select")
    page.get_by_text("What this workspace measured about this choice").first.wait_for(timeout=60_000)
    body = page.inner_text("body")
    assert "davir (highest), 10%: not validated on this pool" in body, body[:3000]
    assert re.search(r"nearest: davir, 50%: validated on this run \(validate-fixture, 2 seeds, [0-9-]+\): "
                     r"(chat|math) (better|worse|equivalent|undecided) against random at equal examples "
                     r"\([+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]\)", body), body[:3000]
    assert page.locator("[data-testid='stException']").count() == 0
    _shot(page, "select-evidence.png")
    page.close()

"""The newcomer's first session, timed in a real browser on the real default model.

Starts ``streamlit run app.py`` on a fresh workspace that holds only the embedded default pool
(what ``make run`` prepares), then drives headless Chromium the way a newcomer would: open the Score
page and press *Start job* (the preselected plain loss), watch the Explore page until the first
histogram appears, wait for the job to finish, then on the Select page switch off the natural mix
(half chat, half math) at the default 10% budget, save, export on the Export page and download the
file.  Prints the time of each step from launch; screenshots go to bench/results/newcomer/.

    .venv/bin/python bench/newcomer_flow.py [--keep WORKSPACE]

Needs Debian's chromium (/usr/bin/chromium) and the playwright package (in requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "newcomer"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settled(page, timeout_ms: int = 120_000) -> None:
    """Return once Streamlit has finished the page's script run (its stApp element says so)."""
    page.wait_for_timeout(500)
    state = "document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state')"
    page.wait_for_function(f"() => {state} === 'notRunning'", timeout=timeout_ms)
    page.wait_for_timeout(1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="use (and keep) this workspace folder instead of a temporary one")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from curation.jobs import store as jobs
    from curation.runs.folder import Run
    from curation.data.default_data import prepare_default_data

    ws = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="newcomer-ws-"))
    prepare_default_data(ws)
    OUT.mkdir(parents=True, exist_ok=True)
    marks: dict[str, float] = {}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(OUT / "streamlit.log", "w")
    t0 = time.perf_counter()

    def mark(name: str) -> None:
        marks[name] = time.perf_counter() - t0
        print(f"{marks[name]:8.1f} s  {name}", flush=True)

    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "CURATION_WORKSPACE": str(ws)})
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    raise SystemExit(f"streamlit did not start: {(OUT / 'streamlit.log').read_text()}")
                time.sleep(0.3)
        mark("server up")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url + "/score")
            page.wait_for_selector("h1")
            settled(page)
            mark("Score page shown")
            page.get_by_role("button", name="Start job").click()
            page.get_by_text("Started job").wait_for(timeout=60_000)
            mark("job started (plain loss, default pool)")
            page.screenshot(path=str(OUT / "1-score-started.png"))
            [job] = jobs.list_jobs(ws)
            while not Run(job["out"]).committed_parts() and not (Path(job["out"]) / "scores.parquet").is_file():
                if jobs.status(job["id"], ws)["state"] not in ("queued", "running"):
                    raise SystemExit(f"job ended early: {jobs.status(job['id'], ws)}")
                time.sleep(0.5)
            mark("first chunk of scores committed")
            explore = browser.new_page(viewport={"width": 1400, "height": 1800})
            explore.goto(url + "/explore")
            explore.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=120_000)
            settled(explore)
            mark("Explore page shows the first histogram")
            explore.screenshot(path=str(OUT / "2-explore-partial.png"))
            page.screenshot(path=str(OUT / "3-score-progress.png"))
            while (st := jobs.status(job["id"], ws))["state"] in ("queued", "running"):
                time.sleep(1)
            if st["state"] != "succeeded":
                raise SystemExit(f"job {st['state']}: {st.get('error')}")
            mark(f"job finished ({st['done']} examples, {st.get('tokens') or 0:,} tokens)")
            explore.reload()
            explore.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=120_000)
            settled(explore)
            explore.screenshot(path=str(OUT / "4-explore-done.png"))

            sel = browser.new_page(viewport={"width": 1400, "height": 2400})
            sel.goto(url + "/select")
            sel.wait_for_selector("h1")
            settled(sel)
            sel.get_by_text("Natural mix").click()  # off: the share slider appears, at half / half
            settled(sel)
            sel.get_by_role("button", name="Save selection").click()
            sel.get_by_text("Saved").first.wait_for(timeout=60_000)
            mark("10% chat/math-balanced selection saved")
            sel.screenshot(path=str(OUT / "5-select.png"), full_page=True)

            exp = browser.new_page(viewport={"width": 1400, "height": 2000}, accept_downloads=True)
            exp.goto(url + "/export")
            exp.wait_for_selector("h1")
            settled(exp)
            exp.get_by_role("button", name="Export", exact=True).click()
            exp.get_by_text("Exported to").wait_for(timeout=120_000)
            settled(exp)
            with exp.expect_download() as dl:
                exp.get_by_test_id("stDownloadButton").get_by_role("button").click()
            target = OUT / dl.value.suggested_filename
            dl.value.save_as(target)
            mark(f"export downloaded ({target.name}, {target.stat().st_size / 1e3:.0f} kB)")
            exp.screenshot(path=str(OUT / "6-export.png"), full_page=True)
            browser.close()
        rows = [json.loads(line) for line in target.read_text().splitlines()] if target.suffix == ".jsonl" else []
        if rows:
            print(f"downloaded file: {len(rows)} examples")
        (OUT / "timings.json").write_text(json.dumps(marks, indent=2))
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()

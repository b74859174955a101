"""Helpers shared by the pages: the workspace, cached readers, the run picker, config inputs.

Only UI glue lives here; everything that computes is in ``curation``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from curation.config import field_info
from curation.jobs import store as jobs
from curation.jobs.workspace import ensure_layout, list_folders, list_runs
from curation.progress import format_duration
from curation.runs.folder import Run
from curation.scores import SCORES
from curation.views import render


def _leave_multipage_v1_mode() -> None:
    """Route deep links through app.py's st.navigation.

    Streamlit treats an app with a ``pages/`` folder as a legacy (v1) multipage app until the main
    script has called ``st.navigation`` once; a fresh server's first request for ``/inspect`` would
    then run ``pages/inspect.py`` on its own, with a sidebar listing every file of ``pages/``.  The
    flag below is what ``st.navigation`` itself clears; clearing it and rerunning runs app.py,
    which opens the requested page.  Runs once per server process (at first import).
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # another Streamlit version: nothing to fix
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_multipage_v1_mode()


def workspace() -> Path:
    """The workspace folder (``$CURATION_WORKSPACE`` or ``./workspace``), created if missing."""
    return ensure_layout()


@st.cache_data(show_spinner="Checking the installation...")
def installation() -> dict:
    """Versions, device and default model (curation.views.installation.info), probed once per session."""
    from curation.views.installation import info

    return info()


@st.cache_data(show_spinner="Reading scores...", max_entries=4)
def read_scores(path: str, mtime: float) -> pd.DataFrame:
    """A run's score table, or the rows scored so far (cached per version)."""
    return Run(path).scores()


@st.cache_data(max_entries=16)
def read_run(path: str, mtime: float) -> dict:
    """A run's provenance (run.json)."""
    return Run(path).meta()


def pick_run(key: str = "run", label: str = "Score run", finished_only: bool = False):
    """A select box over runs with scores (also runs still scoring, unless ``finished_only``);
    remembers the choice across pages.

    Returns ``(RunInfo, scores DataFrame, run.json dict)`` or None (after explaining why).
    """
    runs = [r for r in list_runs(workspace()) if r.n_rows and (r.finished or not finished_only)]
    if not runs:
        st.info("No scored run in this workspace yet. Start one on the **Score** page; its results "
                "appear here as soon as it finishes.")
        return None
    names = [r.name for r in runs]
    current = st.session_state.get("run_name")
    idx = names.index(current) if current in names else 0
    name = st.selectbox(label, names, index=idx, key=f"{key}_picker",
                        format_func=lambda n: next(r.label for r in runs if r.name == n),
                        help="Folders under WORKSPACE/runs that hold scores. Newest first.")
    st.session_state["run_name"] = name
    info = next(r for r in runs if r.name == name)
    if not info.finished:
        st.info("This run is still scoring: showing the rows scored so far (reload for more).")
    return info, read_scores(str(info.path), info.mtime), read_run(str(info.path), info.mtime)


def pick_folder(parent: Path, marker: str, label: str, key: str, remembered: str, empty: str) -> Path | None:
    """A select box over the sub-folders of ``parent`` holding ``marker`` (newest first), preselecting
    the one named in ``st.session_state[remembered]``; None (after saying ``empty``) when there is none."""
    found = list_folders(parent, marker)
    if not found:
        st.info(empty)
        return None
    names = [p.name for p in found]
    want = st.session_state.get(remembered)
    name = st.selectbox(label, names, index=names.index(want) if want in names else 0, key=key,
                        help=f"Folders under {parent.name}/ in the workspace, newest first.")
    return parent / name


def explain(score: str) -> str:
    """The one-line explanation of a score from the selection library's SCORES registry."""
    info = SCORES.get(score)
    return info.explanation if info else ""


def score_picker(columns: list[str], key: str, label: str = "Score", default: str = "davir") -> str:
    """A select box over score columns with the one-line explanation of the chosen one below."""
    idx = columns.index(default) if default in columns else 0
    choice = st.selectbox(label, columns, index=idx, key=key)
    line = explain(choice)
    if line:
        st.caption(f"**{choice}**: {line}")
    return choice


def config_input(cls, name: str, label: str, where=st, **kw):
    """A widget for the setting ``name`` of the config dataclass ``cls``: its default and help come
    from the field (curation.config), so the form and the CLI agree.  ``kw`` goes to the widget."""
    f = field_info(cls, name)
    default, typ = kw.pop("value", f["default"]), f["type"]
    if f["choices"]:
        options = list(f["choices"])
        return where.selectbox(label, options, index=options.index(default) if default in options else 0,
                               help=f["help"], **kw)
    if typ is bool:
        return where.toggle(label, value=bool(default), help=f["help"], **kw)
    if typ is int:
        return int(where.number_input(label, value=int(default or 0), step=1, help=f["help"], **kw))
    if typ is float:
        return float(where.number_input(label, value=float(default or 0.0), help=f["help"], **kw))
    return where.text_input(label, value="" if default is None else str(default), help=f["help"], **kw)


def domain_colours(domains) -> dict[str, str]:
    palette = ["#2a6f97", "#e07a5f", "#81b29a", "#f2cc8f", "#6d597a", "#3d405b"]
    return {d: palette[i % len(palette)] for i, d in enumerate(sorted(map(str, domains)))}


def conversation(messages, **kw) -> None:
    """Render a conversation; all dataset text is escaped by curation.views.render.conversation_html."""
    st.html(render.conversation_html(messages, **kw))


def jobs_panel(ws: Path, key: str, kinds: tuple[str, ...] | None = None, empty: str = "No job yet.") -> None:
    """The live job list (polled every 2 s in a fragment: only it reruns): progress, tokens/s, ETA,
    cancel; the history with states and errors; resume; the log of the last failure."""

    @st.fragment(run_every=2)
    def live():
        try:
            all_jobs = [j for j in jobs.list_jobs(ws) if kinds is None or j["kind"] in kinds]
        except jobs.JobError as e:  # an unreadable job store: say which file and what to do
            st.error(str(e))
            return
        st.subheader("Jobs")
        if not all_jobs:
            st.info(empty)
            return
        for j in [j for j in all_jobs if j["state"] in ("running", "queued")]:
            with st.container(border=True):
                st.markdown(f"**{j['id']}** · {j['kind']} · `{j['state']}` · phase: {j.get('phase') or '–'} · "
                            f"device: `{j.get('device')}`")
                frac = j.get("fraction") or 0.0
                unit = "steps" if str(j.get("phase") or "").startswith("training") else "examples"
                st.progress(min(max(frac, 0.0), 1.0), text=f"{j.get('done') or 0} / {j.get('total') or '?'} {unit}")
                workers = (j.get("extra") or {}).get("workers")
                cols = st.columns(5 if workers is not None else 4)
                cols[0].metric("Tokens", f"{j.get('tokens') or 0:,}")
                cols[1].metric("Tokens/s", f"{j['tokens_per_s']:.0f}" if j.get("tokens_per_s") else "–")
                cols[2].metric("ETA (phase)", format_duration(j.get("eta_s"), "–"))
                cols[3].metric("Elapsed", format_duration(j.get("elapsed_s"), "–"))
                if workers is not None:
                    cols[4].metric("Ray workers alive", workers)
                if j["state"] == "queued" and j.get("queue_position"):
                    st.caption(f"Waiting for the device: position {j['queue_position']} in the queue.")
                if st.button("Cancel", key=f"{key}_cancel_{j['id']}"):
                    try:
                        jobs.cancel(j["id"], ws, wait=10)
                    except jobs.JobError as e:
                        st.error(str(e))
                    st.rerun(scope="fragment")
        st.markdown("**History**")
        st.dataframe(pd.DataFrame([{
            "job": j["id"], "kind": j["kind"], "state": j["state"], "phase": j.get("phase"),
            "done": f"{j.get('done') or 0}/{j.get('total') or '?'}",
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(j["started"])) if j.get("started") else "",
            "elapsed": format_duration(j.get("elapsed_s"), "–"), "error": j.get("error") or "", "output": j.get("out"),
        } for j in all_jobs]), hide_index=True, width="stretch")
        resumable = [j["id"] for j in all_jobs if j["state"] in jobs.RESUMABLE_STATES]
        if resumable:
            c1, c2 = st.columns([3, 1])
            pick = c1.selectbox("Resume a stopped job (finished work is kept)", resumable, key=f"{key}_resume_pick")
            if c2.button("Resume", key=f"{key}_resume_btn"):
                try:
                    jobs.resume(pick, ws)
                except jobs.JobError as e:
                    st.error(str(e))
                st.rerun(scope="fragment")
        failed = [j for j in all_jobs if j["state"] == "failed"]
        if failed:
            with st.expander(f"Log of the last failed job ({failed[0]['id']})"):
                st.caption(f"Reason: {failed[0].get('error')}; full log: `{failed[0].get('log')}`")
                st.code(jobs.logs(failed[0]["id"], ws, tail=40) or "(empty log)")

    live()


# ---- the curator's decisions (curation.selection.decisions) -------------------------------------


def decision_store():
    """The workspace's decisions (WORKSPACE/decisions.sqlite)."""
    from curation.selection.decisions import DecisionStore

    return DecisionStore(workspace())


def decision_actions(ids: list[str], page: str, key: str, what: str = "this example", note_box: bool = False) -> None:
    """Buttons that record a decision for ``ids`` (exclude, keep, clear, a tag; with ``note_box`` a
    note too), the undo of the last action, and a line saying what happened.  Every selection (CLI,
    Select page, validate's baselines, mix studies) honours the decisions."""
    store = decision_store()
    done = st.session_state.pop(f"{key}_done", None)
    if done:
        st.success(done)
    if not ids:
        return
    n = len(ids)
    c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 2, 1])
    tag = c4.text_input("Tag", key=f"{key}_tag", placeholder="e.g. wrong answer", label_visibility="collapsed")
    note = (st.text_input("Note (saved with the next action)", key=f"{key}_note",
                          placeholder="why: e.g. the final answer is wrong") or None) if note_box else None
    actions = {"exclude": c1.button(f"Exclude {what}", key=f"{key}_exclude",
                                    help="Never selected by any recipe, baseline or mix study (undo is one click)."),
               "keep": c2.button(f"Keep {what}", key=f"{key}_keep",
                                 help="Always selected: first in its domain, counted against the domain's budget."),
               None: c3.button("Clear the decision", key=f"{key}_clear", help="Neither excluded nor kept (tags stay).")}
    tag_it = c5.button(f"Tag {what}", key=f"{key}_tag_go", disabled=not tag.strip())
    try:
        for decision, pressed in actions.items():
            if pressed:
                store.set(ids, decision=decision, note=note, page=page)
                st.session_state[f"{key}_done"] = f"{decision or 'cleared'}: {n:,} example(s). Every selection honours it."
                st.rerun()
        if tag_it:
            store.set(ids, add_tags=[tag.strip()], note=note, page=page)
            st.session_state[f"{key}_done"] = f"tagged {n:,} example(s) `{tag.strip()}`."
            st.rerun()
    except ValueError as e:  # DecisionError: a bad tag, an unreadable database
        st.error(str(e))
    undo_button(f"{key}_undo")


def undo_button(key: str) -> None:
    """'Undo: <the last action>' (decisions from any page or the CLI)."""
    store = decision_store()
    try:
        last = store.can_undo()
    except ValueError as e:
        st.error(str(e))
        return
    if last and st.button(f"Undo: {last}", key=key):
        store.undo()
        st.session_state[f"{key}_undone"] = f"Undone: {last}."
        st.rerun()
    undone = st.session_state.pop(f"{key}_undone", None)
    if undone:
        st.info(undone)


def with_decisions(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (with ``example_id``) plus the workspace's ``decision`` and ``tags`` columns, for tables."""
    snap = decision_store().snapshot()
    ids = df["example_id"].astype(str)
    return df.assign(decision=ids.map(lambda i: snap.rows.get(i, {}).get("decision")),
                     tags=ids.map(lambda i: ", ".join(snap.rows.get(i, {}).get("tags", []))))

"""Helpers shared by the pages: the workspace, cached readers, the run picker, score explanations.

Only UI glue lives here; everything that computes is in ``curation``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import streamlit as st

from curation import views
from curation.workspace import ensure_layout, list_runs, read_run_scores


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


def optional(module: str):
    """Import a library module that another part of the project provides, or None if it is not
    there yet (the page then says so instead of failing)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


def not_available(what: str, module: str) -> None:
    st.warning(f"{what} is not available yet: the library module `{module}` is not installed in this build.")


@st.cache_data(show_spinner="Checking the installation...")
def installation() -> dict:
    """Versions, device and default model (curation.system.info), probed once per session."""
    from curation.system import info

    return info()


@st.cache_data(show_spinner="Reading scores...", max_entries=4)
def read_scores(path: str, mtime: float) -> pd.DataFrame:
    """A run's score table, or the chunks committed so far (cached per version)."""
    return read_run_scores(path)


@st.cache_data(max_entries=16)
def read_run(path: str, mtime: float) -> dict:
    import json

    p = Path(path) / "run.json"
    return json.loads(p.read_text()) if p.is_file() else {}


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
                        help="Folders under WORKSPACE/runs that hold a scores.parquet. Newest first.")
    st.session_state["run_name"] = name
    info = next(r for r in runs if r.name == name)
    if not info.finished:
        st.info("This run is still scoring: showing the chunks committed so far (reload for more).")
    return info, read_scores(str(info.path), info.mtime), read_run(str(info.path), info.mtime)


def explain(score: str) -> str:
    """The one-line explanation of a score from the selection library's SCORES registry."""
    sel = optional("curation.selection")
    reg = getattr(sel, "SCORES", None) if sel else None
    if not reg or score not in reg:
        return ""
    entry = reg[score]
    for attr in ("explanation", "help", "description", "doc"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def score_picker(columns: list[str], key: str, label: str = "Score", default: str = "davir") -> str:
    """A select box over score columns with the one-line explanation of the chosen one below."""
    idx = columns.index(default) if default in columns else 0
    choice = st.selectbox(label, columns, index=idx, key=key)
    line = explain(choice)
    if line:
        st.caption(f"**{choice}**: {line}")
    return choice


def domain_colours(domains) -> dict[str, str]:
    palette = ["#2a6f97", "#e07a5f", "#81b29a", "#f2cc8f", "#6d597a", "#3d405b"]
    return {d: palette[i % len(palette)] for i, d in enumerate(sorted(map(str, domains)))}


def conversation(messages, **kw) -> None:
    """Render a conversation; all dataset text is escaped by curation.views.conversation_html."""
    st.html(views.conversation_html(messages, **kw))

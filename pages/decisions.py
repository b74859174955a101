"""Decisions: every exclude / keep / tag the curator recorded (on Inspect, on the Explore map, or with
``python -m curation decisions``), filtered by kind, tag, domain and run; remove, undo, share as a file."""

import tempfile
import time
from pathlib import Path

import streamlit as st

from curation.jobs.workspace import list_runs
from curation.runs.folder import Run
from curation.selection.decisions import filter_decisions, where_found
from pages.common import decision_actions, decision_store, undo_button, workspace

st.title("Decisions")
st.caption("What you decided about individual examples. Every selection (the Select page, `select`, validate's "
           "baselines, mix studies) leaves out excluded examples and takes kept ones first; a selection keeps the "
           "decisions it used, so re-applying its recipe gives the same examples.")
ws = workspace()
store = decision_store()
try:
    table = store.table()
except ValueError as e:  # an unreadable database: the message says what to do
    st.error(str(e))
    st.stop()

if table.empty:
    st.info("No decision yet. Exclude, keep or tag examples on the **Inspect** page (one example, or rows picked in "
            "its table) or on the **Explore** map (draw a box around examples); or import a decisions file below.")
else:
    runs = [Run(r.path) for r in list_runs(ws) if r.n_rows]
    found = where_found(table["example_id"].tolist(), runs)
    table["runs"] = table["example_id"].map(lambda i: ", ".join(sorted({r for r, _ in found[i]})) or "in no run")
    table["domain"] = table["example_id"].map(lambda i: ", ".join(sorted({d for _, d in found[i]})) or "")
    table["kind"] = table["decision"].fillna("tag only")
    f1, f2, f3, f4 = st.columns(4)
    kinds = f1.multiselect("Kind", ["exclude", "keep", "tag only"], default=[], key="dec_kinds",
                           placeholder="every kind")
    all_tags = sorted({t for ts in table["tags"] for t in ts})
    tags = f2.multiselect("Tag", all_tags, default=[], key="dec_tags", placeholder="any tag")
    domains = sorted({d for v in found.values() for _, d in v})
    doms = f3.multiselect("Domain", domains, default=[], key="dec_domains", placeholder="any domain")
    run_names = sorted({r for v in found.values() for r, _ in v})
    run_pick = f4.selectbox("Run", ["any run", "in no run", *run_names], key="dec_run")
    sub = filter_decisions(table, kinds=kinds, tags=tags, found=found, domains=doms,
                           run=None if run_pick == "any run" else run_pick)
    counts = table["kind"].value_counts()
    m = st.columns(4)
    m[0].metric("Decisions", f"{len(table):,}")
    m[1].metric("Excluded", f"{int(counts.get('exclude', 0)):,}")
    m[2].metric("Kept", f"{int(counts.get('keep', 0)):,}")
    m[3].metric("In no run of this workspace", f"{int((table['runs'] == 'in no run').sum()):,}",
                help="Decisions are kept by example id (a hash of the conversation), so they apply again as soon "
                     "as a run holds the example.")
    shown = sub.assign(tags=sub["tags"].map(", ".join),
                       updated=sub["updated"].map(lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))))
    cols = ["example_id", "kind", "tags", "note", "domain", "runs", "page", "updated"]
    event = st.dataframe(shown[cols], hide_index=True, width="stretch", height=320, on_select="rerun",
                         selection_mode="multi-row", key="dec_table")
    st.caption(f"{len(sub):,} of {len(table):,} decisions; pick rows to change or remove them.")
    rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
    picked = shown["example_id"].iloc[rows].tolist() if rows else []
    if picked:
        with st.container(border=True):
            st.markdown(f"**{len(picked)} picked**")
            if st.button(f"Remove the decisions of these {len(picked)}", key="dec_remove"):
                n = store.remove(picked, page="decisions")
                st.session_state["dec_removed"] = f"Removed the decisions of {n} example(s)."
                st.rerun()
            decision_actions(picked, "decisions", "dec_table", what=f"these {len(picked)}")
    else:
        undo_button("dec_table_undo")
    removed = st.session_state.pop("dec_removed", None)
    if removed:
        st.success(removed)

st.subheader("Share")
s1, s2 = st.columns(2)
snap = store.snapshot()
s1.download_button(f"Download decisions.jsonl ({len(snap.rows):,} decisions)", snap.to_jsonl().encode("utf-8"),
                   file_name="decisions.jsonl", mime="application/jsonl", key="dec_download",
                   disabled=not snap.rows)
up = s2.file_uploader("Import a decisions file (JSONL: example_id, decision, tags, note)", type=["jsonl"],
                      key="dec_upload")
if up is not None and s2.button(f"Import {up.name}", key="dec_import"):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / (Path(up.name).name or "decisions.jsonl")
        p.write_bytes(up.getvalue())
        try:
            n = store.import_jsonl(p, page="decisions")
            st.success(f"Imported {n:,} decision(s) from {up.name}.")
        except ValueError as e:  # a malformed line: named, nothing imported
            st.error(str(e).replace(str(p), up.name))
st.caption("The same file works with `python -m curation decisions import FILE` and `... export FILE`.")

"""Export: write a saved selection as a training file with its manifest, and download it."""

import pandas as pd
import streamlit as st

from curation.export import writer as exp_mod
from curation.export.writer import download_payload, read_manifest
from curation.jobs.workspace import list_folders
from curation.system import exports_dir, selections_dir
from curation.selection.folder import Selection
from pages.common import pick_folder, workspace

st.title("Export")
ws = workspace()
def export_form(sel_dir) -> None:
    """The chosen selection's numbers, the format and style, and the Export button."""
    try:
        summary = Selection(sel_dir).summary()
    except ValueError as e:  # a damaged selection folder: say so, the others stay pickable
        st.error(str(e))
        return
    r = summary.get("recipe", {})
    pairs = (summary.get("run") or {}).get("data") == "pairs"
    st.caption(f"method **{r.get('method')}** ({r.get('order') or 'sampling'}), budget **{r.get('budget')}**, "
               f"mix **{r.get('mix')}**, seed {r.get('seed')} · {summary.get('totals', {}).get('examples')} "
               f"{'preference pairs' if pairs else 'examples'}, "
               f"{summary.get('totals', {}).get('tokens') or 0:,} tokens")
    st.dataframe(pd.DataFrame(summary.get("domains", {})).T.reindex(columns=["pool", "eligible", "selected", "kept",
                                                                              "tokens"]), width="stretch")
    dec = summary.get("decisions")
    st.caption(f"Curator decisions applied: {dec.get('excluded', 0):,} excluded, {dec.get('kept_selected', 0):,} kept "
               "example(s) selected first (a snapshot kept in the selection folder)." if dec else
               "This selection was made without the curator's decisions.")
    c1, c2, c3 = st.columns([1, 1, 2])
    fmt = c1.selectbox("Format", list(exp_mod.EXPORT_FORMATS), key="exp_format",
                       help="jsonl and parquet: one file; hf: a datasets save_to_disk folder (downloaded as a zip)")
    styles = list(exp_mod.PAIR_STYLES if pairs else exp_mod.SFT_STYLES)  # the first: the data's default
    style = c2.selectbox("Style", styles, key=f"exp_style{'_pairs' if pairs else ''}",
                         help="dpo: TRL DPOTrainer's {\"prompt\": [...], \"chosen\": [...], \"rejected\": [...]} "
                              "rows; original: records as in their sources" if pairs else
                         "messages: {\"messages\": [...]} rows for TRL / LLaMA-Factory; prompt-completion: "
                         "TRL's {\"prompt\": [...], \"completion\": [last answer]} rows (TRL trains on the "
                         "completion alone, whatever the chat template); original: records as in their sources")
    out = exports_dir(ws) / f"{sel_dir.name}-{fmt}-{style}"
    c3.caption(f"Writes `{out}` (atomically: complete or absent).")
    if st.button("Export", type="primary", key="exp_go"):
        try:
            with st.spinner("Reading the selected records from their sources..."):
                notes: list[str] = []
                exp_mod.export_selection(exp_mod.ExportConfig(selection=str(sel_dir), out=str(out), format=fmt,
                                                              style=style), notes=notes)
            for n in notes:
                st.info(n[0].upper() + n[1:] + ".")
            st.session_state["export_dir"] = str(out)
            st.success(f"Exported to `{out}`.")
        except (ValueError, OSError) as e:
            st.error(str(e))


sel_dir = pick_folder(selections_dir(ws), "summary.json", "Selection", "exp_sel", "selection_name",
                      "No saved selection yet: make one on the **Select** page and press *Save selection*.")
if sel_dir is not None:
    export_form(sel_dir)

st.subheader("Exports")
exports = list_folders(exports_dir(ws), "manifest.json")
if not exports:
    st.info("Nothing exported yet.")
    st.stop()
enames = [p.name for p in exports]
cur = st.session_state.get("export_dir")
default = enames.index(cur.rsplit("/", 1)[-1]) if cur and cur.rsplit("/", 1)[-1] in enames else 0
ename = st.selectbox("Export", enames, index=default, key="exp_pick")
edir = exports_dir(ws) / ename
try:
    manifest = read_manifest(edir)
    payload, fname, mime = download_payload(edir)
except ValueError as e:  # a damaged or foreign manifest: say so; the other exports stay listed above
    st.error(str(e))
    st.stop()
st.download_button(f"Download {fname} ({len(payload) / 1e6:.2f} MB)", payload, file_name=fname, mime=mime,
                   type="primary", key="exp_download")
dec = (manifest.get("decisions") or {})
if dec.get("excluded_since"):
    st.warning(f"{len(dec['excluded_since'])} exported example(s) have been excluded since this selection was made "
               "(Decisions page); select again and export to leave them out.")
card = edir / exp_mod.CARD
if card.is_file() and not card.is_symlink():
    with st.expander("Dataset card (README.md)"):
        st.code(card.read_text(encoding="utf-8", errors="replace")[:20_000], language="markdown")
st.markdown("**Manifest**")
small = {k: v for k, v in manifest.items() if not isinstance(v, list)}
st.json(small, expanded=1)
lists = {k: v for k, v in manifest.items() if isinstance(v, list)}
for k, v in lists.items():
    with st.expander(f"{k} ({len(v)} entries)"):
        st.dataframe(pd.DataFrame(v) if v and isinstance(v[0], dict) else pd.DataFrame({k: v}), width="stretch")

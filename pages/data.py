"""Data: pick or upload files, give each a domain, see formats, counts, rejected rows, a preview
and token lengths per domain.  Preference-pair sources (the workspace's pairs/ and pairs-eval/, or
any file of pairs) are recognised: a pair's prompt once beside its two responses, len_diff."""

import numpy as np
import plotly.express as px
import streamlit as st

from curation.data.default_data import N_CHAT, N_MATH, prepare_default_data
from curation.data.load import SourceError, SourceSpec, check_domain, source_stem
from curation.data.pairs import load_data, pair_token_lengths
from curation.jobs.workspace import UploadExists, list_data_files, outside_links, save_upload
from curation.system import data_dir
from curation.views import aggregate
from pages.common import conversation, domain_colours, workspace

st.title("Data")
st.caption("The pool to curate: files in the workspace's data folder, each tagged with a domain "
           "(e.g. chat, math). The Score page scores exactly the sources chosen here.")

ws = workspace()
PAIR_FOLDERS = ("pairs", "pairs-eval")  # listed as pairs/NAME beside the data folder's files


def all_files() -> dict[str, object]:
    """``{name shown: path}``: the data folder's files, then the workspace's pairs/ and pairs-eval/."""
    out = {p.name: p for p in list_data_files(ws)}
    for folder in PAIR_FOLDERS:
        out.update({f"{folder}/{p.name}": p for p in list_data_files(ws, folder=folder)})
    return out


files = all_files()
for link in outside_links(ws):
    st.warning(f"`{link.name}` in the data folder links to a place outside the workspace; it is not read. Copy the "
               "file into the data folder instead.")

with st.expander("Add data", expanded=not files):
    c1, c2 = st.columns(2)
    with c1:
        st.markdown(f"**Embedded default pool**: {N_CHAT} ShareGPT chat conversations and {N_MATH} CHAMP "
                    "math problems with step-by-step solutions, plus held-out eval sets for Validate "
                    "(from PyPI wheels, works offline).")
        if st.button("Prepare the default pool", key="prepare_default"):
            try:
                with st.spinner("Writing chat.jsonl and math.jsonl..."):
                    prepare_default_data(ws)
                st.rerun()
            except FileNotFoundError as e:
                st.error(str(e))
    with c2:
        up = st.file_uploader("Upload JSON, JSONL, Parquet or CSV files", accept_multiple_files=True,
                              type=["json", "jsonl", "parquet", "csv", "gz"], key="upload")
        # Each upload is saved once (the uploader keeps its files across reruns: saving them again
        # would undo edits made to the file since), and a name that is taken is never overwritten
        # without the user's word.
        handled = st.session_state.setdefault("uploads_handled", {})
        for f in up or []:
            if f.file_id in handled:
                if handled[f.file_id]:
                    st.success(handled[f.file_id])
                continue
            try:
                p = save_upload(f.getvalue(), f.name, ws)
                handled[f.file_id] = f"Saved `{p.name}` to the data folder."
                st.success(handled[f.file_id])
            except UploadExists as e:
                st.warning(f"`{e.path.name}` already exists in the data folder with other content. Replace it, "
                           f"or keep both (the upload is saved as `{e.free.name}`)?")
                b1, b2, _ = st.columns([1, 1, 2])
                choice = ("replace" if b1.button(f"Replace {e.path.name}", key=f"replace_{f.file_id}") else
                          "keep-both" if b2.button("Keep both", key=f"keep_{f.file_id}") else None)
                if choice:
                    p = save_upload(f.getvalue(), f.name, ws, on_exists=choice)
                    handled[f.file_id] = f"{'Replaced' if choice == 'replace' else 'Saved'} `{p.name}` in the data folder."
                    st.rerun()
            except ValueError as e:
                handled[f.file_id] = ""
                st.error(str(e))
        files = all_files()
    st.caption(f"Data folder: `{data_dir(ws)}`. Your own files can also be copied there, or scored "
               "from the command line (`python -m curation score chat=my.jsonl ...`).")

if not files:
    st.info("The data folder is empty: prepare the default pool or upload a file above.")
    st.stop()

names = list(files)
# By default the data folder's files (a run holds SFT examples or pairs, not both), else the pairs.
first = [n for n in names if "/" not in n] or names
chosen = st.multiselect("Sources", names, default=[n for n in names if n in st.session_state.get("source_names", first)],
                        key="sources_chosen", help="The data folder's files, and the workspace's preference pairs "
                                                   "(pairs/, pairs-eval/): a run holds SFT examples or pairs, not both.")
if not chosen:
    st.warning("Choose at least one source.")
    st.stop()

st.markdown("**Domain of each source** (the selection mixes domains, e.g. half chat, half math)")
cols = st.columns(min(len(chosen), 4))
saved = st.session_state.get("domains", {})
domains = {}
for i, name in enumerate(chosen):
    domains[name] = cols[i % len(cols)].text_input(name, value=saved.get(name, source_stem(name)), key=f"domain_{name}",
                                                   help="letters, digits, '.', '_' and '-'")
bad = []
for name, d in domains.items():
    try:
        check_domain(d)
    except SourceError as e:
        bad.append(f"{name}: {e}")
if bad:
    st.error("\n\n".join(bad))
    st.stop()
limit = st.number_input("Read at most N records per source (0 = all)", min_value=0, value=0, step=100, key="data_limit")

# What the Score page will use.
st.session_state["source_names"] = chosen
st.session_state["domains"] = domains
st.session_state["sources"] = [f"{domains[n]}={files[n]}" for n in chosen]
st.session_state["limit"] = int(limit) or None


@st.cache_data(show_spinner="Reading and normalising the sources...", max_entries=4)
def _load(pairs: tuple, limit: int | None, mtimes: tuple):
    """``(kind, result)``: the sources as a score run reads them (same rules, same rejections), SFT
    examples or preference pairs."""
    return load_data([SourceSpec(path=p, domain=d) for p, d in pairs], limit=limit)


@st.cache_data(show_spinner="Counting tokens with the default model's tokenizer...", max_entries=4)
def _lengths(pairs: tuple, limit: int | None, mtimes: tuple, max_examples: int = 5000):
    from curation.scoring.models import load_tokenizer
    from curation.data.templates import resolve_template, token_lengths

    kind, res = _load(pairs, limit, mtimes)
    examples = res.pairs if kind == "pairs" else res.examples
    if len(examples) > max_examples:  # a seeded sample: the histogram's shape, quickly
        examples = [examples[i] for i in sorted(np.random.default_rng(0).choice(len(examples), max_examples,
                                                                              replace=False))]
    tok = load_tokenizer("default")
    return (pair_token_lengths if kind == "pairs" else token_lengths)(tok, resolve_template(tok, "auto"), examples)


pairs = tuple((str(files[n]), domains[n]) for n in chosen)
mtimes = tuple(files[n].stat().st_mtime for n in chosen)
try:
    kind, res = _load(pairs, int(limit) or None, mtimes)
except SourceError as e:
    st.error(str(e))
    st.stop()

st.subheader("Sources")
st.dataframe(
    [{"source": s.source, "domain": s.domain, "format": s.format, "records": s.n_records,
      "accepted": s.n_accepted, "rejected": s.n_rejected} for s in res.sources],
    hide_index=True, width="stretch")
items = res.pairs if kind == "pairs" else res.examples
m1, m2, m3 = st.columns(3)
m1.metric("Preference pairs" if kind == "pairs" else "Examples", len(items))
m2.metric("Rejected rows", len(res.rejected))
m3.metric("Domains", len({e.domain for e in items}))

if res.rejected:
    with st.expander(f"Rejected rows ({len(res.rejected)}) with reasons"):
        st.dataframe(res.rejected_rows(), hide_index=True, width="stretch")

st.subheader("Preview")
by_domain = {}
for e in items:
    by_domain.setdefault(e.domain, []).append(e)
pc1, pc2 = st.columns([1, 3])
dom = pc1.selectbox("Domain", sorted(by_domain), key="preview_domain")
k = pc1.number_input("Pair #" if kind == "pairs" else "Example #", min_value=0, max_value=len(by_domain[dom]) - 1,
                     value=0, key="preview_k")
ex = by_domain[dom][int(k)]
with pc2:
    if kind == "pairs":  # the prompt once, the two responses side by side
        st.caption(f"{ex.source} #{ex.source_index} · pair id `{ex.pair_id}` · a preference pair: the prompt, then "
                   "the chosen and the rejected response")
        conversation(ex.prompt)
        for side, col in zip(("chosen", "rejected"), st.columns(2)):
            rating = ex.rating_chosen if side == "chosen" else ex.rating_rejected
            col.markdown(f"**{side.capitalize()}**" + (f" (rating {rating:g})" if rating is not None else ""))
            with col:
                conversation([{"role": "assistant", "content": ex.response(side)}])
    else:
        st.caption(f"{ex.source} #{ex.source_index} · id `{ex.example_id}` · normalised to chat messages")
        conversation(ex.messages)

st.subheader("Token lengths per domain")
try:
    lengths = _lengths(pairs, int(limit) or None, mtimes)
except Exception as e:  # the tokenizer may be missing before `make setup`: say so, keep the page
    st.warning(f"Token lengths need the default model's tokenizer: {e}")
else:
    names = ({"len_diff": "chosen - rejected tokens", "n_chosen_tokens": "chosen tokens",
              "n_rejected_tokens": "rejected tokens", "n_prompt_tokens": "prompt tokens"} if kind == "pairs" else
             {"n_tokens_full": "whole example", "n_response_tokens": "assistant tokens",
              "n_prompt_tokens": "prompt tokens"})
    which = st.radio("Length", list(names), horizontal=True, key=f"len_col{'_pairs' if kind == 'pairs' else ''}",
                     format_func=names.get)
    h = aggregate.histogram(lengths, which, by="domain", bins=40)
    fig = px.bar(h, x="mid", y="count", color="group", barmode="overlay", opacity=0.6,
                 color_discrete_map=domain_colours(h["group"].unique()),
                 labels={"mid": "tokens", "group": "domain"})
    fig.update_layout(height=320, margin=dict(t=10, b=10), bargap=0)
    st.plotly_chart(fig, width="stretch")
    st.dataframe(lengths.groupby("domain")[list(names)[::-1]].agg(["mean", "median", "max", "sum"]).round(1),
                 width="stretch")

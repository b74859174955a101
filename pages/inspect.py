"""Inspect: filter and sort examples, read one with its tokens coloured by loss, record the curator's
decisions (exclude, keep, tag) on one example or on the rows picked in the table, and see where two
methods disagree most.  On a pair run: one pair side by side (its prompt once), each response's
tokens coloured.  All dataset text is escaped (curation.views.render.conversation_html)."""

import numpy as np
import streamlit as st

from curation.runs.folder import Run, RunError, SourceChanged
from curation.scores import keeps_high, score_columns
from curation.views import aggregate, render
from pages.common import conversation, decision_actions, decision_store, explain, pick_run, score_picker, with_decisions

st.title("Inspect")
picked = pick_run("inspect")
if picked is None:
    st.stop()
info, df, run = picked
pairs = run.get("data") == "pairs"
unit = "pairs" if pairs else "examples"
scores = score_columns(df.columns)
numeric = aggregate.numeric_columns(df)
MAX_ROWS = 500  # rows sent to the browser; sorting and filtering happen on the server

# ---- filters -------------------------------------------------------------------------------
with st.container(border=True):
    f1, f2, f3 = st.columns([2, 2, 3])
    domains = sorted(df["domain"].astype(str).unique()) if "domain" in df else []
    dom = f1.multiselect("Domains", domains, default=domains, key="inspect_domains")
    col = f2.selectbox("Filter on", numeric, key="inspect_range_col")
    v = df[col].replace([np.inf, -np.inf], np.nan).dropna()
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    rng = f3.slider(f"{col} range", lo, hi, (lo, hi), key=f"inspect_range_{col}")
    s1, s2, s3 = st.columns([3, 2, 1])
    text = s1.text_input("Text search (in the prompts and responses)" if pairs else "Text search (in the conversations)",
                         key="inspect_text", placeholder="e.g. triangle")
    sort_by = s2.selectbox("Sort by", numeric, index=0, key="inspect_sort")
    desc = s3.toggle("Descending", value=keeps_high(sort_by), key=f"inspect_desc_{sort_by}")

ids = None
if text.strip():
    @st.cache_data(show_spinner="Searching the sources...", max_entries=8)
    def _search(run_dir: str, mtime: float, needle: str):
        return Run(run_dir).search(needle)

    try:
        ids = _search(str(info.path), info.mtime, text.strip())
    except (ValueError, OSError) as e:
        st.error(str(e))
map_pick = st.session_state.get("map_pick") or {}
if map_pick.get("run") == str(info.path):  # examples picked on the Explore page's map
    m1, m2 = st.columns([4, 1])
    m1.info(f"Showing only the {len(map_pick['ids']):,} examples picked on the map (Explore); the filters above "
            "apply within them.")
    if m2.button("Show every example", key="inspect_clear_map_pick"):
        del st.session_state["map_pick"]
        st.rerun()
    ids = set(map_pick["ids"]) if ids is None else ids & set(map_pick["ids"])
ranges = {} if rng == (lo, hi) else {col: rng}
sub = aggregate.filter_table(df, ranges, dom or None, ids)
sub = sub.sort_values(sort_by, ascending=not desc, na_position="last")
st.caption(f"{len(sub):,} of {len(df):,} {unit} match" + (f"; the first {MAX_ROWS} are listed" if len(sub) > MAX_ROWS else ""))
show_cols = [c for c in ["example_id", "domain", *scores, "len_diff", "n_chosen_tokens", "n_rejected_tokens",
                         "n_response_tokens", "n_prompt_tokens", "truncated", "source", "source_index"] if c in sub.columns]
listed = with_decisions(sub[show_cols].head(MAX_ROWS))
event = st.dataframe(listed, hide_index=True, width="stretch", height=280,
                     on_select="rerun", selection_mode="multi-row", key="inspect_table")
rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
if len(rows) > 1:
    picked_ids = listed["example_id"].iloc[rows].tolist()
    with st.container(border=True):
        st.markdown(f"**{len(picked_ids)} rows picked in the table** (the first is shown below)")
        decision_actions(picked_ids, "inspect", "inspect_multi", what=f"these {len(picked_ids)}")

# ---- one example ------------------------------------------------------------------------------
st.subheader("Pair" if pairs else "Example")
default_id = sub["example_id"].iloc[rows[0]] if rows else (sub["example_id"].iloc[0] if len(sub) else "")
eid = st.text_input(f"{'Pair' if pairs else 'Example'} id (click a row above, or paste an id)", value=default_id,
                    key=f"inspect_id_{default_id}")
match = df[df["example_id"] == eid.strip()]
if eid and match.empty:
    st.warning(f"No {'pair' if pairs else 'example'} with id `{eid}` in this run.")
elif not match.empty and not info.finished:
    st.info("The example view (text and per-token losses) opens when this run finishes.")
elif not match.empty:
    row = match.iloc[0]
    mcols = st.columns(min(6, len(scores) + 2))
    mcols[0].metric("Domain", str(row.get("domain")))
    mcols[1].metric("Chosen / rejected tokens" if pairs else "Response tokens",
                    f"{int(row['n_chosen_tokens'])} / {int(row['n_rejected_tokens'])}" if pairs
                    else int(row.get("n_response_tokens", 0)))
    for c, name in zip(mcols[2:], scores):
        c.metric(name, "–" if row[name] is None or not np.isfinite(row[name]) else f"{row[name]:.3f}",
                 help=explain(name) or None)
    with st.container(border=True):
        mine = decision_store().snapshot().rows.get(str(row["example_id"])) or {}
        st.markdown(f"**Curator decision**: `{mine.get('decision') or 'none'}`")
        if mine.get("tags") or mine.get("note"):  # the curator's own text, shown as plain text
            st.text(" · ".join(filter(None, ["tags: " + ", ".join(mine["tags"]) if mine.get("tags") else "",
                                             "note: " + mine["note"] if mine.get("note") else ""])))
        decision_actions([str(row["example_id"])], "inspect", "inspect_one", what=f"this {unit[:-1]}", note_box=True)

    @st.cache_resource(show_spinner="Loading the tokenizer...")
    def _tokenizer(run_dir: str):
        return Run(run_dir).tokenizer()

    @st.cache_data(max_entries=64)
    def _example(run_dir: str, mtime: float, example_id: str, source: str, source_index: int):
        run = Run(run_dir)
        if run.holds_pairs:
            return run.pair(source, source_index, example_id), run.pair_token_losses(example_id)
        return run.example(source, source_index, example_id), run.token_losses(example_id)

    try:
        messages, tl = _example(str(info.path), info.mtime, row["example_id"], row["source"], int(row["source_index"]))
    except SourceChanged as e:
        st.error(f"This example's source changed since it was scored, so its text cannot be shown next to "
                 f"its scores: {e}")
        st.stop()
    except (OSError, RunError) as e:
        st.error(f"Cannot re-read this example from its source: {e}")
        st.stop()
    modes = render.token_modes(next(iter(tl.values()), None) if pairs else tl)
    c1, c2 = st.columns([3, 1])
    mode = c1.radio("Colour assistant tokens by", modes, horizontal=True, key="inspect_colour")
    vmax = c2.slider("Scale max (nats)", 0.5, 15.0, 6.0 if mode != modes[-1] or len(modes) == 1 else 3.0,
                     0.5, key=f"inspect_vmax_{mode}")
    signed = mode == render.TOKEN_MODES[-1]
    if tl:
        st.html(render.colour_scale_html(vmax, signed, "drop (nats): blue = got worse, red = learned"
                                         if signed else "loss per token (nats); hover a token for its value"))

    def coloured(messages, record) -> None:
        """``messages`` with the assistant tokens of ``record`` coloured by ``mode`` (the text alone
        when the run has no token losses for it or its tokens cannot be shown)."""
        if record is None:
            st.info("This run has no per-token losses for it; showing the text only.")
            return conversation(messages)
        try:
            pieces = render.token_pieces(_tokenizer(str(info.path)), record["token_ids"])
        except (OSError, ValueError) as e:
            st.warning(f"Tokens cannot be shown ({e}); showing the text only.")
            return conversation(messages)
        vals, _ = render.token_values(record, mode)
        conversation(messages, pieces=pieces, values=list(vals), positions=list(record["positions"]), vmax=vmax,
                     signed=signed)

    if pairs:  # the prompt once, then the two responses side by side
        conversation(messages.prompt)
        for side, col in zip(("chosen", "rejected"), st.columns(2)):
            with col:
                st.markdown(f"**{side.capitalize()}** ({int(row[f'n_{side}_tokens'])} tokens"
                            + (f", rating {row[f'rating_{side}']:g}" if f"rating_{side}" in row and
                               np.isfinite(row[f"rating_{side}"]) else "") + ")")
                coloured([{"role": "assistant", "content": messages.response(side)}], tl.get(side))
    else:
        coloured(messages, tl)

# ---- disagreement -----------------------------------------------------------------------------
st.subheader("Where two methods disagree most")
if len(scores) < 2:
    st.info("Disagreement needs two scores; a learnability run gives davir, rho, ifd, loss ...")
else:
    d1, d2, d3 = st.columns([2, 2, 1])
    with d1:
        a = score_picker(scores, key="dis_a", label="Method A", default="davir")
    with d2:
        b = score_picker(scores, key="dis_b", label="Method B", default="rho" if "rho" in scores and a != "rho" else scores[1])
    n = d3.number_input("Examples", 5, 200, 20, key="dis_n")
    if a == b:
        st.warning("Pick two different scores.")
    else:
        dis = aggregate.disagreement(df, a, b, int(n))
        st.caption("Ranks are percentiles in the pool, 0 = the method's favourite. rank_diff < 0: A "
                   "likes the example more than B does. Paste an id above to read it.")
        st.dataframe(dis, hide_index=True, width="stretch")

"""Explore: score distributions per domain, loss_base vs loss_ref, score vs length, S2L clusters,
a summary per domain.  Everything plotted is aggregated by curation.aggregate (bins, samples)."""

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from curation import aggregate, neardup
from curation.config import field_info
from curation.render import preview
from curation.runs import Run, read_examples
from curation.selection import Recipe
from curation.textnorm import conversation_text
from curation.formulas import run_columns
from pages.common import domain_colours, pick_run, score_picker

st.title("Explore")
picked = pick_run("explore")
if picked is None:
    st.stop()
info, df, run = picked
scores = aggregate.score_columns(df)
if not scores:
    st.error(f"{info.path}/scores.parquet has no score column (expected loss, davir, ...).")
    st.stop()
colours = domain_colours(df["domain"].unique()) if "domain" in df else {}
st.caption(f"{len(df):,} examples · {df['domain'].nunique() if 'domain' in df else 1} domain(s) · "
           f"model `{run.get('model', {}).get('spec', 'in run.json when the run finishes')}` · run `{info.name}`")

# ---- histogram ------------------------------------------------------------------------------
st.subheader("Distribution")
c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    score = score_picker(scores, key="explore_score")
layout = c2.radio("Domains", ["overlaid", "side by side"], horizontal=True, key="explore_layout")
bins = c3.slider("Bins", 10, 200, 60, key="explore_bins")
h = aggregate.histogram(df, score, by="domain", bins=bins)
if layout == "overlaid":
    fig = px.bar(h, x="mid", y="count", color="group", barmode="overlay", opacity=0.6,
                 color_discrete_map=colours, labels={"mid": score, "group": "domain"})
else:
    fig = px.bar(h, x="mid", y="count", color="group", facet_col="group", color_discrete_map=colours,
                 labels={"mid": score, "group": "domain"})
    fig.update_yaxes(matches=None)
# The thresholds set on the Select page, drawn where they apply to this score.
th = st.session_state.get("thresholds", {})
for kind, dash in (("min", "dash"), ("max", "dot")):
    v = th.get(kind, {}).get(score)
    if v is not None:
        fig.add_vline(x=v, line_dash=dash, line_color="black", annotation_text=f"{kind} {v:g}")
fig.update_layout(height=340, bargap=0, margin=dict(t=30, b=10))
st.plotly_chart(fig, width="stretch")
if th.get("min") or th.get("max"):
    st.caption("Dashed/dotted lines: the min/max thresholds set on the Select page.")

# ---- scatter plots (a bounded sample) ------------------------------------------------------
N_POINTS = 4000
left, right = st.columns(2)
with left:
    st.subheader("Base vs reference loss")
    if {"loss_base", "loss_ref"} <= set(df.columns):
        s = aggregate.sample_rows(df, N_POINTS, columns=["loss_base", "loss_ref", "domain", "example_id"])
        fig = px.scatter(s, x="loss_base", y="loss_ref", color="domain", opacity=0.5,
                         color_discrete_map=colours, hover_data=["example_id"])
        lo = float(min(s["loss_base"].min(), s["loss_ref"].min()))
        hi = float(max(s["loss_base"].max(), s["loss_ref"].max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="grey", dash="dash"),
                                 name="no change"))
        fig.update_layout(height=380, margin=dict(t=10, b=10))
        st.plotly_chart(fig, width="stretch")
        st.caption(f"Below the diagonal the reference model learned the example (davir > 0). "
                   f"{min(len(df), N_POINTS):,} of {len(df):,} points shown (random sample).")
    else:
        st.info("This run has only the base model's loss. A learnability run (Score page) adds "
                "the reference loss and the scores built on it.")
with right:
    st.subheader("Score vs length")
    lengths = [c for c in aggregate.LENGTH_COLUMNS if c in df.columns]
    lc1, lc2 = st.columns(2)
    yscore = lc1.selectbox("Score", scores, index=scores.index(score), key="explore_len_score")
    xlen = lc2.selectbox("Length", lengths, key="explore_len_col")
    s = aggregate.sample_rows(df, N_POINTS, columns=[xlen, yscore, "domain", "example_id"])
    fig = px.scatter(s, x=xlen, y=yscore, color="domain", opacity=0.5, color_discrete_map=colours,
                     hover_data=["example_id"], log_x=True)
    fig.update_layout(height=330, margin=dict(t=10, b=10))
    st.plotly_chart(fig, width="stretch")
    corr = aggregate.correlation(df, xlen, yscore)
    st.dataframe(corr.round(3), hide_index=True, width="stretch")
    st.caption("Correlation with length, on all rows. Loss-based scores are known to favour long "
               "answers (rho most); a large |spearman| means the score partly measures length.")

# ---- S2L ---------------------------------------------------------------------------------------
st.subheader("S2L: loss trajectories per cluster")
if "s2l_cluster" in df.columns and any(c.startswith("loss_ckpt_") for c in df.columns):
    traj, sizes = aggregate.cluster_means(df)
    top = len(sizes) if len(sizes) <= 2 else st.slider("Clusters shown (largest first)", 1, len(sizes),
                                                         min(12, len(sizes)), key="s2l_top")
    shown = sizes["cluster"].head(top).tolist()
    t1, t2 = st.columns([3, 2])
    fig = px.line(traj[traj["cluster"].isin(shown)], x="checkpoint", y="loss", color="cluster", markers=True)
    fig.update_layout(height=360, margin=dict(t=10, b=10))
    t1.plotly_chart(fig, width="stretch")
    dom_cols = [c for c in sizes.columns if c not in ("cluster", "size")]
    fig = px.bar(sizes.head(top).astype({"cluster": str}), x="cluster", y=dom_cols or "size",
                 color_discrete_map=colours, labels={"value": "examples", "variable": "domain"})
    fig.update_layout(height=360, margin=dict(t=10, b=10))
    t2.plotly_chart(fig, width="stretch")
    st.caption(f"{len(sizes)} clusters; S2L samples from the smallest cluster first, so rare "
               "trajectory shapes are not crowded out by the common ones.")
else:
    st.info("No S2L clusters in this run: they come from a learnability run with K checkpoints.")

# ---- stability across reference runs -----------------------------------------------------------
st.subheader("Stability: does the ranking survive another reference training?")
stab_scores = [s for s in ("davir", "rho") if len(run_columns(df.columns, s)) >= 2]
if stab_scores:
    s1, s2, s3 = st.columns(3)
    sscore = s1.selectbox("Score", stab_scores, key="stab_score")
    cols = run_columns(df.columns, sscore)
    ra = s2.selectbox("Run", cols, index=0, key="stab_a")
    rb = s3.selectbox("against run", cols, index=1, key="stab_b")
    smp = aggregate.sample_rows(df, N_POINTS, columns=[ra, rb, "domain", "example_id"])
    fig = px.scatter(smp, x=ra, y=rb, color="domain", opacity=0.5, color_discrete_map=colours,
                     hover_data=["example_id"])
    fig.update_layout(height=380, margin=dict(t=10, b=10))
    st.plotly_chart(fig, width="stretch")
    agree = aggregate.rank_agreement_by_domain(df, ra, rb)
    st.dataframe(agree.round(3), hide_index=True, width="stretch")
    st.caption(f"Each point is an example's {sscore} under two reference trainings that differ only by seed (or the "
               f"varied setting). Spearman near 1: the ranking is stable and a threshold means something; low: the "
               f"cut-off is partly chance. `{sscore}_sd` (the spread across runs) is a column on the Inspect page.")
else:
    st.info("One reference training gives one ranking. A learnability run with `--stability-runs 2` (or more) trains "
            "extra references and shows here how much the ranking depends on the run.")

# ---- near-duplicates ---------------------------------------------------------------------------
st.subheader("Near-duplicate groups")
g1, g2 = st.columns([1, 3])
near_t = g1.slider("Threshold", 0.5, 1.0, neardup.DEFAULT_THRESHOLD, 0.05, key="explore_near_t",
                   help=field_info(Recipe, "near_dup_threshold")["help"])
cached = neardup.cache_path(info.path, near_t).is_file()
if cached or g2.button("Find near-duplicate groups", key="explore_near_go",
                       help="Reads the run's sources once (MinHash LSH over word shingles of each whole "
                            "conversation); the groups are cached in the run folder."):
    try:
        with st.spinner("Grouping near-duplicates..."):
            groups = neardup.near_dup_groups(Run(info.path), near_t)
    except (ValueError, OSError) as e:
        st.error(str(e))
    else:
        listing = neardup.group_listing(groups)
        n_rows = int(listing["size"].sum()) if len(listing) else 0
        st.caption(f"{len(listing):,} group(s) with more than one example, {n_rows:,} examples in them, of "
                   f"{len(groups):,}. `select --dedup near` (or the Select page) keeps the best-ranked of each.")
        if len(listing):
            shown = listing.head(50)
            firsts = [ids[:2] for ids in shown["example_ids"]]
            keyed = df.set_index("example_id")
            rows = [{"example_id": i, "source": keyed.at[i, "source"], "source_index": int(keyed.at[i, "source_index"])}
                    for pair in firsts for i in pair]
            try:
                texts = {r["example_id"]: conversation_text(m) for r, (_, m) in
                         zip(rows, read_examples(run, rows, check_fingerprints=False))}
            except (ValueError, OSError):
                texts = {}
            table = pd.DataFrame({
                "group": shown["near_dup_group"], "size": shown["size"],
                "domains": [", ".join(sorted(set(keyed.loc[ids, "domain"].astype(str)))) for ids in shown["example_ids"]],
                "example ids": [", ".join(ids) for ids in shown["example_ids"]],
                "first": [preview(texts.get(p[0], ""), escape=False) for p in firsts],  # a table shows plain text
                "second": [preview(texts.get(p[1], ""), escape=False) for p in firsts]})
            st.dataframe(table, hide_index=True, width="stretch")
else:
    st.caption("Groups of examples that are almost the same (reworded, reformatted). Computed on demand.")

# ---- summary ---------------------------------------------------------------------------------
st.subheader("Summary per domain")
st.dataframe(aggregate.domain_summary(df).round(4), width="stretch")

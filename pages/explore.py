"""Explore: score distributions per domain, loss_base vs loss_ref, score vs length, S2L clusters,
a summary per domain; on a pair run chosen vs rejected loss, each margin against len_diff, ratings
against the implicit margins, the map over prompts.  Everything plotted is aggregated by curation.views.aggregate (bins, samples)."""

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from curation.config import field_info
from curation.data import canary
from curation.data.textnorm import conversation_text
from curation.jobs.workspace import list_data_files
from curation.runs.folder import Run, read_examples, read_pairs
from curation.runs.pair_tables import read_train_curve
from curation.scores import LENGTH_COLUMNS, run_columns, score_columns
from curation.selection import neardup
from curation.selection.canaries import canary_report
from curation.selection.recipe import Recipe, targets_from_files
from curation.views import aggregate, pool_map
from curation.views import pair_margins as pair_views
from curation.views.render import hover_text, preview
from pages.common import decision_actions, decision_store, domain_colours, pick_run, score_picker, undo_button, workspace

st.title("Explore")
picked = pick_run("explore")
if picked is None:
    st.stop()
info, df, run = picked
pairs = run.get("data") == "pairs"
scores = score_columns(df.columns)
if not scores:
    st.error(f"{info.path}/scores.parquet has no score column (expected loss, davir, ...).")
    st.stop()
colours = domain_colours(df["domain"].unique()) if "domain" in df else {}
st.caption(f"{len(df):,} {'pairs' if pairs else 'examples'} · {df['domain'].nunique() if 'domain' in df else 1} domain(s) · "
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


def diagonal_scatter(x: str, y: str, line: str):
    """A sampled scatter of two losses coloured by domain, with the diagonal x = y (named ``line``)."""
    s = aggregate.sample_rows(df, N_POINTS, columns=[x, y, "domain", "example_id"])
    fig = px.scatter(s, x=x, y=y, color="domain", opacity=0.5, color_discrete_map=colours, hover_data=["example_id"])
    lo, hi = float(min(s[x].min(), s[y].min())), float(max(s[x].max(), s[y].max()))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="grey", dash="dash"), name=line))
    fig.update_layout(height=380, margin=dict(t=10, b=10))
    return fig


def pair_sections() -> None:
    """A pair run: chosen vs rejected loss, each margin against len_diff (the length bias), ratings."""
    left, right = st.columns(2)
    with left:
        st.subheader("Chosen vs rejected loss")
        st.plotly_chart(diagonal_scatter("loss_rejected", "loss_chosen", "equal"), width="stretch", key="pair_losses")
        st.dataframe(pair_views.prefers_chosen(df).round(3), hide_index=True, width="stretch")
        st.caption("Base model's mean loss per token of each response. Below the diagonal the chosen response is the "
                   "likelier one per token; the table counts pairs whose summed log-probability already prefers "
                   f"chosen (margin_sum > 0). {min(len(df), N_POINTS):,} of {len(df):,} pairs shown.")
    with right:
        st.subheader("Margin vs length difference")
        margins = pair_views.margin_columns(df)
        margin = st.selectbox("Margin", margins, key="pair_margin")
        s = aggregate.sample_rows(df, N_POINTS, columns=["len_diff", margin, "domain", "example_id"])
        fig = px.scatter(s, x="len_diff", y=margin, color="domain", opacity=0.5, color_discrete_map=colours,
                         hover_data=["example_id"])
        fig.update_layout(height=330, margin=dict(t=10, b=10))
        st.plotly_chart(fig, width="stretch", key="pair_len_diff")
        st.dataframe(pair_views.length_bias(df).round(3), hide_index=True, width="stretch")
        st.caption("len_diff = chosen - rejected tokens. A margin summed over tokens follows it (DavIR-DPO reports a "
                   "correlation of 0.38 for vanilla DPO's margin and 0.07 for its normalised one): a large |spearman| "
                   "means a selection by that margin is partly a selection by length.")
    if "rating_margin" in df.columns and df["rating_margin"].notna().any():
        st.subheader("Rating margin vs implicit margin")
        r1, r2 = st.columns([2, 1])
        implicit = r2.selectbox("Implicit margin", margins, key="pair_rating_margin")
        rated = df[df["rating_margin"].notna()]
        s = aggregate.sample_rows(rated, N_POINTS, columns=["rating_margin", implicit, "domain", "example_id"])
        fig = px.scatter(s, x="rating_margin", y=implicit, color="domain", opacity=0.5, color_discrete_map=colours,
                         hover_data=["example_id"])
        fig.update_layout(height=330, margin=dict(t=10, b=10))
        r1.plotly_chart(fig, width="stretch", key="pair_ratings")
        r2.dataframe(aggregate.correlation(rated, "rating_margin", implicit).round(3), hide_index=True, width="stretch")
        r2.caption(f"The source's raters (rating_chosen - rating_rejected) against the model's {implicit}, on the "
                   f"{len(rated):,} rated pairs: do the raters and the model agree on which pairs are clear?")
    curve = read_train_curve(info.path)
    if curve is not None and not curve.empty:
        st.subheader("DPO training curve")
        c1, c2 = st.columns(2)
        for col, ys, key in ((c1, ["loss", "reward_accuracy"], "dpo_loss"),
                             (c2, [c for c in ("reward_chosen", "reward_rejected", "reward_margin", "davir_margin")
                                   if c in curve.columns], "dpo_rewards")):
            fig = px.line(curve, x="step", y=ys)
            fig.update_layout(height=300, margin=dict(t=10, b=10), legend_title_text="")
            col.plotly_chart(fig, width="stretch", key=key)
        st.caption(f"The reference's DPO training ({run.get('dpo', {}).get('loss')}, beta "
                   f"{run.get('dpo', {}).get('beta')}), per optimizer step, means over the step's pairs: reward "
                   "accuracy = share of pairs whose reward margin is > 0 (train_curve.parquet).")


if pairs:
    pair_sections()
else:
    left, right = st.columns(2)
    with left:
        st.subheader("Base vs reference loss")
        if {"loss_base", "loss_ref"} <= set(df.columns):
            st.plotly_chart(diagonal_scatter("loss_base", "loss_ref", "no change"), width="stretch")
            st.caption(f"Below the diagonal the reference model learned the example (davir > 0). "
                       f"{min(len(df), N_POINTS):,} of {len(df):,} points shown (random sample).")
        else:
            st.info("This run has only the base model's loss. A learnability run (Score page) adds "
                    "the reference loss and the scores built on it.")
    with right:
        st.subheader("Score vs length")
        lengths = [c for c in LENGTH_COLUMNS if c in df.columns]
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

# ---- map of the pool ---------------------------------------------------------------------------
st.subheader("Map of the pool")


@st.cache_data(show_spinner="Reading the examples for the hover previews...", max_entries=4)
def _previews(run_dir: str, mtime: float) -> dict[str, str]:
    try:
        return {i: hover_text(t, 120) for i, t in Run(run_dir).texts().items()}  # markup escaped for plotly
    except (ValueError, OSError):
        return {}


@st.cache_data(show_spinner="Embedding the targets with the run's model...", max_entries=4)
def _targets(run_dir: str, mtime: float, files: tuple[str, ...]) -> dict:
    """The targets' similarity to every pool example, and what the map needs to draw them."""
    from curation.selection.target import embed_targets, target_columns

    run = Run(run_dir)
    got = embed_targets(run, targets_from_files(files), set(df["example_id"].astype(str)))
    sim = target_columns(run, df[["example_id", "domain"]], got)[["example_id", "target_sim"]]
    return {"sim": sim, "embedding": np.vstack([t.embedding for t in got.values()]),
            "labels": [x for t in got.values() for x in t.labels],
            "domains": [t.domain for t in got.values() for _ in t.labels]}


if not (info.path / Run.EMBEDDINGS).is_file():
    st.info("This run has no embeddings (embeddings.npy), so there is no map; score the data again into a new "
            "folder to get them.")
else:
    mc1, mc2, mc3 = st.columns([1, 2, 1])
    map_method = mc1.radio("Layout", ["auto", "pca"], horizontal=True, key="map_method",
                           help=f"auto: PCA to 50 dimensions then UMAP up to {pool_map.UMAP_MAX_ROWS:,} rows (keeps "
                                "neighbourhoods; the first one in a process also compiles UMAP), PCA alone above; "
                                "pca: the two main directions of the embeddings, seconds at any size.")
    current = st.session_state.get("current_selection") or {}
    dev_files = {p.name: str(p) for p in list_data_files(workspace(), folder="dev")}
    picked_targets = st.multiselect("Targets (workspace/dev): mark them on the map, colour by similarity to them",
                                    list(dev_files), default=[], key="map_targets",
                                    disabled=pairs or not (info.path / Run.RDS).is_file(),
                                    help="Examples of what you want more of; the Select page's target method takes "
                                         "the pool examples most similar to them (RDS+).")
    targets, target_error = None, None
    if picked_targets:
        try:
            targets = _targets(str(info.path), info.mtime, tuple(sorted(dev_files[n] for n in picked_targets)))
        except (ValueError, OSError) as e:
            target_error = str(e)
    if target_error:
        st.error(target_error)
    colour_opts = ["domain", f"score ({score})"] + (["S2L cluster"] if "s2l_cluster" in df.columns else []) \
        + (["in the current selection"] if current.get("run") == str(info.path) else []) \
        + (["target similarity"] if targets is not None else []) + ["curator decision"]
    colour_by = mc2.radio("Colour", colour_opts, horizontal=True, key="map_colour")
    cached_map = pool_map.cache_path(info.path, map_method).is_file()
    if cached_map or mc3.button("Compute the map", key="map_go"):
        try:
            with st.spinner("Laying out the embeddings..."):
                lay = pool_map.run_layout(Run(info.path), map_method)
        except (ValueError, OSError) as e:
            st.error(str(e))
            lay = None
        if lay is not None:
            cols = ["example_id", "domain", score] + (["s2l_cluster"] if "s2l_cluster" in df.columns else [])
            pts = lay.merge(df[list(dict.fromkeys(cols))], on="example_id", how="inner")
            if targets is not None:
                pts = pts.merge(targets["sim"], on="example_id", how="left")
            if colour_by == "curator decision":
                snap = decision_store().snapshot()
                pts["colour"] = pts["example_id"].map(lambda i: snap.rows.get(i, {}).get("decision")
                                                      or ("tagged" if snap.rows.get(i, {}).get("tags") else "none"))
            elif colour_by == "target similarity":
                pts["colour"] = pts["target_sim"].astype("float64")
            elif colour_by == "in the current selection":
                pts["colour"] = pts["example_id"].isin(set(current.get("ids", []))).map({True: "selected", False: "not selected"})
            elif colour_by == "S2L cluster":
                pts["colour"] = pts["s2l_cluster"].astype("Int64").astype(str)
            elif colour_by == "domain":
                pts["colour"] = pts["domain"].astype(str)
            else:
                pts["colour"] = pts[score].astype("float64")
            if len(pts) <= pool_map.POINTS_MAX_ROWS:
                prev = _previews(str(info.path), info.mtime)
                pts["preview"] = pts["example_id"].map(prev).fillna("")
                fig = px.scatter(pts, x="x", y="y", color="colour", render_mode="webgl", opacity=0.7,
                                 custom_data=["example_id", "domain", "preview"],
                                 color_discrete_map=colours if colour_by == "domain" else (
                                     {"selected": "#e07a5f", "not selected": "#c9ccd1"}
                                     if colour_by == "in the current selection" else
                                     {"exclude": "#d62828", "keep": "#2a9d8f", "tagged": "#f4a261", "none": "#c9ccd1"}
                                     if colour_by == "curator decision" else None),
                                 labels={"colour": colour_by})
                fig.update_traces(marker=dict(size=5),
                                  hovertemplate="<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]}<extra></extra>")
                what = f"{len(pts):,} examples, one point each; hover for a preview"
                if targets is not None:
                    xy = pool_map.place_nearby(lay, Run(info.path), targets["embedding"])
                    fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name="targets",
                                             marker=dict(symbol="star", size=13, color="#111111",
                                                         line=dict(width=1, color="white")),
                                             customdata=np.column_stack([targets["labels"], targets["domains"]]),
                                             hovertemplate="<b>target %{customdata[0]}</b> (%{customdata[1]})<extra></extra>"))
                    what += "; stars: the targets, placed among their 5 nearest pool examples"
            else:
                if colour_by.startswith("score"):
                    z, counts, xe, ye = pool_map.cell_means(pts["x"], pts["y"], pts[score], bins=128)
                    ztitle = f"mean {score}"
                elif colour_by == "in the current selection":
                    z, counts, xe, ye = pool_map.cell_means(pts["x"], pts["y"], pts["colour"] == "selected", bins=128)
                    ztitle = "share selected"
                elif colour_by == "curator decision":
                    z, counts, xe, ye = pool_map.cell_means(pts["x"], pts["y"], pts["colour"] == "exclude", bins=128)
                    ztitle = "share excluded"
                else:
                    counts, xe, ye = pool_map.density_grid(pts["x"], pts["y"], 128)
                    z, ztitle = np.where(counts > 0, np.log10(np.maximum(counts, 1)), np.nan), "log10 examples"
                fig = go.Figure(go.Heatmap(z=z, x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2,
                                           colorscale="Viridis", colorbar=dict(title=ztitle),
                                           customdata=counts, hovertemplate="%{customdata} examples<br>"
                                           + ztitle + " %{z:.3g}<extra></extra>"))
                what = (f"{len(pts):,} examples: above {pool_map.POINTS_MAX_ROWS:,} a 128 x 128 density grid computed "
                        f"on the server ({ztitle} per cell)")
            fig.update_layout(height=480, margin=dict(t=10, b=10), xaxis_title=None, yaxis_title=None)
            if len(pts) <= pool_map.POINTS_MAX_ROWS:
                # A drag draws a box (the lasso and zoom are in the chart's toolbar); the ids picked
                # go to Inspect as a filter.
                fig.update_layout(dragmode="select")
                event = st.plotly_chart(fig, width="stretch", key="pool_map", on_select="rerun",
                                        selection_mode=("box", "lasso"))
                on_map = [p["customdata"][0] for p in (event.selection.points if event else [])
                          if p.get("customdata")]
            else:
                st.plotly_chart(fig, width="stretch", key="pool_map_grid")
                on_map = []
            st.caption(f"{lay.attrs.get('method', map_method).upper()} layout of the embeddings ("
                       + ("each pair's prompt: RDS+'s position-weighted mean of the final hidden states over it" if pairs
                          else "each example's mean final hidden state over its answer")
                       + f"); {what}. Nearby points: examples the model represents alike."
                       + (" Drag a box (or pick the lasso in the chart's toolbar) to pick examples and read them "
                          "in Inspect." if len(pts) <= pool_map.POINTS_MAX_ROWS else ""))
            if on_map:
                on_map = list(dict.fromkeys(on_map))
                per_domain = pts[pts["example_id"].isin(on_map)]["domain"].astype(str).value_counts()
                p1, p2 = st.columns([3, 1])
                p1.markdown(f"**{len(on_map):,} examples picked on the map** ("
                            + ", ".join(f"{n:,} {d}" for d, n in per_domain.items()) + ")")
                if p2.button("Open them in Inspect", key="map_to_inspect", type="primary"):
                    st.session_state["map_pick"] = {"run": str(info.path), "ids": on_map}
                    st.switch_page("pages/inspect.py")
                decision_actions(on_map, "explore", "map_decide", what=f"these {len(on_map):,}")
            else:
                undo_button("map_decide_undo")
    else:
        st.caption("A 2-D layout of the examples' embeddings, computed once and kept in the run folder.")

# ---- planted defects ----------------------------------------------------------------------------
try:
    truth = canary.truth_for(Run(info.path).provenance())
except ValueError as e:  # a damaged truth file: say which
    st.error(str(e))
    truth = None
if truth is not None:
    st.subheader("Planted defects (canaries)")
    rep = canary_report(df, truth)
    if rep.get("warning"):
        st.warning(rep["warning"][0].upper() + rep["warning"][1:] + ".")
if truth is not None and rep["covered"]:
    st.caption(f"This run scored a canary pool: {rep['corrupted']:,} of {rep['examples']:,} examples carry a planted "
               "defect (" + ", ".join(f"{k} {n}" for k, n in rep["by_kind"].items()) + "). AUROC: the chance that the "
               "score, in its own direction, keeps a clean example before a corrupted one (1 = it finds every "
               "defect, 0.5 = no better than random, below 0.5 = it prefers the defects).")
    rows = []
    for name, a in rep["auroc"].items():
        rows.append({"score": name, "keeps": a["order"], "all": a["all"],
                     **{f"{d}": v for d, v in a["by_domain"].items()}, **{f"{k}": v for k, v in a["by_kind"].items()}})
    table = pd.DataFrame(rows)
    fig = px.bar(table, x="score", y="all", range_y=[0, 1], labels={"all": "AUROC (clean before corrupted)"})
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="random")
    fig.update_layout(height=280, margin=dict(t=10, b=10))
    a1, a2 = st.columns([1, 2])
    a1.plotly_chart(fig, width="stretch", key="canary_auroc")
    a2.dataframe(table.round(3), hide_index=True, width="stretch")

# ---- near-duplicates ---------------------------------------------------------------------------
st.subheader("Near-duplicate groups")
g1, g2 = st.columns([1, 3])
near_t = g1.slider("Threshold", 0.5, 1.0, Recipe.near_dup_threshold, 0.05, key="explore_near_t",
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
                read = read_pairs if pairs else read_examples  # a pair's prompt, an example's conversation
                texts = {r["example_id"]: conversation_text(m.prompt if pairs else m) for r, (_, m) in
                         zip(rows, read(run, rows, check_fingerprints=False))}
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

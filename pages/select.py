"""Select: method, order, budget, domain mix and thresholds -> a selection with live counts, beside
the random baseline at the same budget and mix; save it as a re-appliable recipe.  On a pair run the
pair scores, len_diff's strata, and the selection's mean len_diff and margins beside random's."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from curation.config import field_info
from curation.jobs.workspace import dev_targets, list_data_files, new_folder_name, safe_name
from curation.system import mixes_dir, selections_dir
from curation.runs.folder import Run
from curation.scores import SCORES, default_method, methods_for, run_columns
from curation.selection.annotate import annotation_key
from curation.selection.apply import COVERAGE_CLUSTERS
from curation.selection.folder import Selection, apply_with_baseline, prepare_table
from curation.selection.recipe import Recipe, budget_text, diversity_text, stratify_text
from curation.selection.summary import PAIR_MEANS, detail_lines, kept_end, length_profile, pick_stability, score_meta
from curation.validation.evidence import (EvidenceIndex, best_validated, choice_lines, mix_lines,
                                          selection_evidence)
from curation.validation.mix import latest_study
from curation.validation.mixing_law import MixError
from curation.views import aggregate
from curation.views import pair_margins as pair_views
from curation.views.render import markdown_text
from pages.common import pick_run, workspace

st.title("Select")
picked = pick_run("select", finished_only=True)
if picked is None:
    st.stop()
info, df, run = picked
pairs = run.get("data") == "pairs"
unit_name = "pairs" if pairs else "examples"
ws = workspace()
domains = sorted(df["domain"].astype(str).unique())

# ---- the recipe ------------------------------------------------------------------------------
c1, c2, c3 = st.columns([2, 1, 2])
methods = methods_for(df.columns)
method = c1.selectbox("Method", methods, index=methods.index(default_method(df.columns)), key="sel_method",
                      help="Defaults: davir (on pairs davir_margin, else margin_sum), top 10%, natural mix: one click "
                           "gives a first selection.")
st.caption(f"**{method}**: {SCORES[method].explanation}")
dev_files = {p.name: str(p) for p in list_data_files(ws, folder="dev")}
has_rds = (info.path / Run.RDS).is_file()
targets: dict[str, list[str]] = {}
if method == "target" or st.session_state.get("sel_targets"):
    t1, t2 = st.columns([3, 1])
    chosen_targets = t1.multiselect("Targets: examples of what you want more of (workspace/dev; the file name is the "
                                    "domain)", list(dev_files), default=list(dev_files) if method == "target" else [],
                                    key="sel_targets", help=field_info(Recipe, "target")["help"])
    targets = dev_targets(ws, chosen_targets)
    if not has_rds:
        t2.caption("This run has no RDS+ embeddings (rds_embeddings.npy): score the data again into a new folder to "
                   "select toward targets.")
    elif not dev_files:
        t2.caption("No file in workspace/dev: put a few examples of what you want more of there (make setup writes "
                   "the default pool's dev sets).")
order = None
if SCORES[method].order is not None:
    order = c2.radio("Keep", ["high", "low"], index=["high", "low"].index(SCORES[method].order),
                     key=f"sel_order_{method}", horizontal=True, format_func=lambda o: f"{o}est")
with c3:
    b1, b2 = st.columns([1, 1])
    unit = b1.selectbox("Budget in", ["% of pool", unit_name, "tokens"], key="sel_unit")
    all_tokens = df["n_tokens_full"] if "n_tokens_full" in df else df["n_prompt_tokens"] + df["n_response_tokens"]
    defaults = {"% of pool": 10.0, unit_name: float(max(1, len(df) // 10)),
                "tokens": float(max(1, int(all_tokens.sum() // 10)))}
    amount = b2.number_input("Budget", min_value=0.1 if unit == "% of pool" else 1.0,
                             max_value=100.0 if unit == "% of pool" else None,
                             value=defaults[unit], step=1.0, key=f"sel_amount_{unit}")
budget = budget_text(amount, {"% of pool": "percent", unit_name: "count", "tokens": "tokens"}[unit])

m1, m2, m3 = st.columns([1, 3, 1])
natural = m1.toggle("Natural mix", value=True, key="sel_natural",
                    help="Keep the pool's domain proportions; switch off to set shares (e.g. half chat, half math).")
seed = m3.number_input("Seed (random, s2l)", 0, 10**9, 0, key="sel_seed")
mix = "natural"
if not natural and len(domains) >= 2:
    if len(domains) == 2:
        share = m2.slider(f"Share of {domains[0]} (rest: {domains[1]})", 0.0, 1.0, 0.5, 0.01, key="sel_share")
        mix = {domains[0]: round(share, 4), domains[1]: round(1 - share, 4)}
    else:
        cols = m2.columns(len(domains))
        raw = {d: cols[i].number_input(d, 0.0, 1.0, round(1 / len(domains), 3), 0.05, key=f"sel_w_{d}")
               for i, d in enumerate(domains)}
        tot = sum(raw.values()) or 1.0
        mix = {d: v / tot for d, v in raw.items()}
fill = m2.checkbox("Fill: give a domain's shortfall to the others", value=False, key="sel_fill") if mix != "natural" else False


def use_mix(shares: dict) -> None:
    """Set the mix widgets to ``shares`` (a callback: it runs before the widgets are drawn again)."""
    st.session_state["sel_natural"] = False
    if len(domains) == 2:
        st.session_state["sel_share"] = round(float(shares[domains[0]]), 2)
    else:
        for d in domains:
            st.session_state[f"sel_w_{d}"] = round(float(shares[d]), 3)


study = latest_study(mixes_dir(ws), info.path)
if study is not None:
    try:
        srep = study.report()
        if sorted(srep["domains"]) == domains:
            at = mix if mix != "natural" else srep["natural"]
            pred = study.predict(at)
            m2.caption(f"Predicted held-out NLL at this mix (mix study `{study.path.name}`): " + " · ".join(
                f"{e} {v['value']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}]" for e, v in pred.items())
                + ". A prediction of the fitted law, not a measurement.")
            rec = srep["recommended"]["mix"]
            m2.button("Use the recommended mix (" + ", ".join(f"{d} {v:.2f}" for d, v in rec.items()) + ")",
                      key="sel_use_recommended", on_click=use_mix, args=(rec,),
                      help=f"The mix that minimises the study's {srep['objective']['kind']} objective over its "
                           "eval sets. Validate it against the natural mix (Validate page, baseline natural).")
    except MixError as e:
        m2.caption(f"The latest mix study of this run cannot be read: {e}")

# ---- what the workspace already measured about this choice -------------------------------------
@st.cache_data(ttl=10, show_spinner=False, max_entries=8)
def _evidence(ws_dir: str, run_dir: str, mtime: float):
    return EvidenceIndex(ws_dir).for_run(Run(run_dir))


evidence = _evidence(str(ws), str(info.path), info.mtime)
known = choice_lines(evidence, method, budget, mix, order)
best = best_validated(evidence)
with st.container(border=True):
    st.markdown("**What this workspace measured about this choice**")
    for line in known["lines"]:
        st.markdown(("- " if not line.startswith("  ") else "  - ") + markdown_text(line.strip()))
    if best is not None:
        st.caption(markdown_text(best["line"][0].upper() + best["line"][1:]) + " (not selected for you: choose it above)")
    for line in (mix_lines(evidence, mix) if mix != "natural" else []):
        st.caption("At this mix: " + markdown_text(line))
    opened = [Path(f).name for f in known["exact"] + known["neighbours"]][:1]
    if opened and st.button(f"Open {opened[0]} on the Validate page", key="sel_open_evidence"):
        st.session_state["validation_name"] = opened[0]
        st.switch_page("pages/validate.py")

with st.expander("Thresholds (filter before ranking)", expanded=False):
    numeric = aggregate.numeric_columns(df)
    chosen = st.multiselect("Columns", numeric, default=[], key="sel_th_cols",
                            help="e.g. ifd <= 1 drops pairs whose prompt does not help; n_response_tokens >= 5 drops trivial answers.")
    mins, maxs = {}, {}
    for c in chosen:
        v = df[c].replace([np.inf, -np.inf], np.nan).dropna()
        if v.empty:
            continue
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            hi = lo + 1
        a, b = st.slider(c, lo, hi, (lo, hi), key=f"sel_th_{c}")
        if a > lo:
            mins[c] = a
        if b < hi:
            maxs[c] = b
st.session_state["thresholds"] = {"min": mins, "max": maxs}

stratify = temperature = None
if order is not None:
    k1, k2 = st.columns(2)
    q = k1.number_input("Length strata (0: off)", 0, 20, 0, key="sel_strata",
                        help=field_info(Recipe, "stratify")["help"])
    stratify = stratify_text(int(q))
    t = k2.number_input("Temperature (0: plain top-k)", 0.0, 100.0, 0.0, 0.1, key="sel_temperature",
                        help=field_info(Recipe, "temperature")["help"] + "; uses the seed")
    temperature = float(t) if t > 0 else None

diversity = None
if order is not None:
    has_emb = (info.path / Run.EMBEDDINGS).is_file()
    v1, v2 = st.columns([2, 1])
    div = v1.radio("Diversity (embeddings)", ["off", "kcenter", "clusters"], horizontal=True, key="sel_diversity",
                   disabled=not has_emb, help=field_info(Recipe, "diversity")["help"])
    n_cl = v2.number_input("Clusters", 2, 1000, COVERAGE_CLUSTERS, key="sel_div_clusters",
                           disabled=div != "clusters")
    diversity = diversity_text(div if has_emb else "off", int(n_cl))
    if not has_emb:
        st.caption("This run has no embeddings (embeddings.npy): score the data again into a new folder to pick "
                   "for diversity.")
    if diversity:
        stratify = temperature = None  # diversity picks by itself

with st.expander("Near-duplicates and contamination", expanded=False):
    n1, n2 = st.columns(2)
    dedup = "near" if n1.checkbox("Keep one example per near-duplicate group", value=False, key="sel_dedup",
                                  help=field_info(Recipe, "dedup")["help"]) else None
    near_t = n2.slider("Near-duplicate threshold", 0.5, 1.0, float(field_info(Recipe, "near_dup_threshold")["default"]),
                       0.05, key="sel_near_t", help=field_info(Recipe, "near_dup_threshold")["help"])
    eval_files = {p.name: str(p) for p in list_data_files(ws, folder="eval")}
    decon = st.multiselect("Decontaminate against eval sets (workspace/eval)", list(eval_files), default=[],
                           key="sel_decon", help=field_info(Recipe, "decontaminate")["help"])
    d1, d2 = st.columns(2)
    ngram = d1.number_input("n-gram (words)", 1, 100, int(field_info(Recipe, "ngram")["default"]),
                            key="sel_ngram", help=field_info(Recipe, "ngram")["help"])
    keep_cont = d2.checkbox("Keep flagged examples (report only)", value=False, key="sel_keep_cont",
                            disabled=not decon) and bool(decon)

honour = st.toggle("Honour the curator's decisions (Decisions page)", value=True, key="sel_decisions",
                   help=field_info(Recipe, "decisions")["help"])
runs_of_score = run_columns(df.columns, SCORES[method].column or "")
agg = None
if len(runs_of_score) >= 2 and order is not None:
    if st.toggle(f"Rank by the mean over the {len(runs_of_score)} reference runs (ensemble)", value=False,
                 key=f"sel_aggregate_{method}", help=field_info(Recipe, "aggregate")["help"]):
        agg = "mean"

try:
    recipe = Recipe(method=method, budget=budget, order=order, mix=mix, min=mins, max=maxs,
                            fill=bool(fill), seed=int(seed), aggregate=agg, stratify=stratify,
                            temperature=temperature, diversity=diversity, dedup=dedup, near_dup_threshold=float(near_t),
                            decontaminate=[eval_files[n] for n in decon], ngram=int(ngram),
                            keep_contaminated=bool(keep_cont), target=targets,
                            decisions="current" if honour else "none")
except (ValueError, TypeError) as e:
    st.error(str(e))
    st.stop()


@st.cache_data(show_spinner="Reading the pool's texts (near-duplicates, contamination)...", max_entries=8)
def _annotate(run_dir: str, mtime: float, key: tuple, _recipe: Recipe):  # cached by key only
    return prepare_table(Run(run_dir), df, _recipe)  # the decisions applied are the ones saved with the selection


@st.cache_data(show_spinner="Selecting...", max_entries=16)
def _apply(run_dir: str, mtime: float, recipe: Recipe, key: tuple):  # key: what annotate adds, decisions included
    table, decisions = _annotate(run_dir, mtime, key, recipe)
    sel, base = apply_with_baseline(table, recipe, run.get("kind"))
    return table, sel, base, pick_stability(table, sel, run.get("kind")), decisions


try:
    table, sel, base, stability, decisions = _apply(str(info.path), info.mtime, recipe, annotation_key(recipe))
except ValueError as e:  # SelectionError: a missing column, an impossible mix, ...
    st.error(str(e))
    st.stop()

st.session_state["current_selection"] = {"run": str(info.path), "ids": sel.rows["example_id"].tolist()}  # the map

# ---- live counts --------------------------------------------------------------------------------
st.subheader("Result")
for w in sel.warnings:
    st.warning(w)
tot1, tot2, tot3, tot4 = st.columns(4)
tot1.metric("Selected", f"{len(sel.rows):,}", help=unit_name)
tot2.metric("of the pool", f"{len(sel.rows) / max(len(df), 1):.1%}")
tot3.metric("Tokens", f"{int(sel.rows['n_tokens'].sum()):,}")
tot4.metric("Eligible after thresholds", f"{int(sel.eligible_mask.sum()):,}")
notes = detail_lines(sel.details, markup=True)
if "decisions" in notes:
    st.info(notes["decisions"] + " Manage them on the Decisions page.")
if "contamination" in notes:
    st.info(notes["contamination"])
if "diversity" in sel.details:
    dv = sel.details["diversity"]
    st.dataframe(pd.DataFrame([{"domain": d, "embedding clusters": v["clusters"], "covered by the selection": f"{v['coverage']:.0%}",
                                "covered by plain top-k": f"{v['top_k_coverage']:.0%}"} for d, v in dv["by_domain"].items()]),
                 hide_index=True, width="stretch")
    st.caption(f"Coverage: the share of each domain's k-means clusters of the embeddings that the selection touches "
               f"({dv['method']}), beside plain top-k at the same budget.")
if "dedup" in notes:
    st.info(notes["dedup"] + " The groups are listed on the Explore page.")
counts = pd.DataFrame([{
    "domain": d, "pool": p.pool, "eligible": p.eligible, "selected": p.selected, "kept": p.kept, "tokens": p.tokens,
    "random: selected": base.domains[d].selected if d in base.domains else 0,
    "random: tokens": base.domains[d].tokens if d in base.domains else 0,
} for d, p in sel.domains.items()])
if stability:
    counts["kept by every run"] = counts["domain"].map(
        lambda d: f"{stability['by_domain'][d]['share']:.0%}" if d in stability["by_domain"] else "")
    counts["Jaccard vs each other run"] = counts["domain"].map(
        lambda d: round(stability["by_domain"][d]["jaccard_mean"], 2) if d in stability["by_domain"] else None)
if "target_sim" in table.columns:
    sim = table.set_index("example_id")["target_sim"]
    for name, rows in (("selection: mean target similarity", sel.rows), ("random: mean target similarity", base.rows)):
        means = sim.reindex(rows["example_id"]).groupby(rows.set_index("example_id")["domain"]).mean()
        counts[name] = counts["domain"].map(lambda d: round(float(means[d]), 3) if d in means else None)
st.dataframe(counts, hide_index=True, width="stretch")
if "target_sim" in table.columns:
    st.caption("Target similarity: the RDS+ cosine of an example to the most similar target of its domain (1: the "
               "same representation). The random baseline shows what a selection not aimed at the targets reaches.")
if stability:
    cols = st.columns(len(stability["by_domain"]) + 1)
    for c, (d, v) in zip(cols, stability["by_domain"].items()):
        c.metric(f"{d}: picks kept by every run", f"{v['share']:.0%}", help=f"mean Jaccard overlap with each other run's "
                 f"selection {v['jaccard_mean']:.2f} (lowest {v['jaccard_min']:.2f})")
    cols[-1].metric("all domains", f"{stability['all']['share']:.0%}")
    st.caption(f"**Pick stability**: of the selected examples, the share that each of the run's other reference "
               f"trainings ({stability['runs']} in all; another seed or setting) would also select under this "
               "recipe. Low values mean "
               "the cut-off depends on one training run's luck; ranking by the mean over runs (above) is the usual fix.")

# ---- before / after ---------------------------------------------------------------------------------
score_col = sel.score_column if sel.score_column in df.columns and sel.score_column != "s2l_cluster" else None
in_sel = df["example_id"].isin(set(sel.rows["example_id"]))
in_rand = df["example_id"].isin(set(base.rows["example_id"]))
groups = {"pool": pd.Series(True, index=df.index), "selection": in_sel, "random baseline": in_rand}
palette = {"pool": "#b0b0b0", "selection": "#2a6f97", "random baseline": "#e07a5f"}
h1, h2 = st.columns(2)
lengths = length_profile(df, sel, base)
plot_cols = ([score_col] if score_col else []) + [c for c in (lengths["column"],) if c in df.columns and c != score_col]
for holder, col in zip((h1, h2), plot_cols):
    h = aggregate.compare_histograms(df, col, groups)
    fig = px.line(h, x="mid", y="share", color="group", line_shape="hvh", color_discrete_map=palette,
                  labels={"mid": col, "share": "share of rows"})
    fig.update_layout(height=300, margin=dict(t=30, b=10), title=f"{col}: pool vs selection vs random")
    holder.plotly_chart(fig, width="stretch")
qnames = [f"p{round(100 * q)}" for q in lengths["quantiles"]]
st.dataframe(pd.DataFrame([{"rows": g, **dict(zip(qnames, lengths[g]["all"] or []))}
                           for g in ("pool", "eligible", "selection", "random") if g in lengths]),
             hide_index=True, width="stretch")
st.caption(("len_diff (chosen - rejected tokens)" if pairs else "Response length (n_response_tokens)")
           + " quantiles. A score that tracks length moves the selection's quantiles away from the eligible rows'; "
           "length strata keep them together.")
if pairs:
    st.dataframe(pair_views.means_beside(df, {"pool": df["example_id"], "selection": sel.rows["example_id"],
                                              "random baseline": base.rows["example_id"]}, PAIR_MEANS).round(4),
                 hide_index=True, width="stretch")
    st.caption("Mean per pair of len_diff and of each margin: the selection beside the random baseline at the same "
               "budget and mix.")
end = kept_end(score_meta(sel))
if end:
    st.caption(end[0].upper() + end[1:] + ".")
st.caption("Shares, so the pool and a 10% selection compare. The random baseline uses the same "
           "budget, mix and thresholds: what the method changes is the gap between blue and orange.")

if score_col:
    with st.expander("Examples just inside and just outside the cut-off", expanded=False):
        cut = aggregate.cutoff_examples(df, sel.eligible_mask, sel.rows["example_id"], score_col,
                                    higher_first=(sel.recipe.order == "high"))
        st.dataframe(cut, hide_index=True, width="stretch")
        st.caption("Read any of them on the Inspect page (paste the id).")

# ---- save ------------------------------------------------------------------------------------------
st.subheader("Save")
s1, s2 = st.columns([3, 1])
prefix = f"{method}-{budget.replace('%', 'pct')}"
# Keyed by method and budget: another one suggests a new name instead of keeping the old one.
name = s1.text_input("Selection name", value=new_folder_name(prefix), key=f"sel_name_{prefix}")
if s2.button("Save selection", type="primary", key="sel_save"):
    try:
        out = selections_dir(ws) / safe_name(name)
        Selection.write(out, table, sel, base, Run(info.path).provenance(), decisions,  # what is shown, as shown
                        selection_evidence(Run(info.path), recipe, ws))
        st.session_state["selection_name"] = out.name
        st.success(f"Saved `{out}` (recipe.yaml, selected.parquet, summary.json"
                   + (", decisions.jsonl" if decisions.source != "none" else "") + "). Export it on the Export page.")
    except (ValueError, OSError) as e:
        st.error(str(e))
with st.expander("Recipe (recipe.yaml)"):
    st.code(recipe.to_yaml(), language="yaml")

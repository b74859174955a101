"""Validate: does a selection train a better model than random, at equal examples and at equal tokens?
Start a validation job (a proxy fine-tuned on each selection and baseline, several seeds), then read
the held-out NLL per domain, the differences with their intervals, the verdicts and the lengths."""

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from curation.jobs import store as jobs
from curation.jobs.workspace import list_data_files, list_folders, new_folder_name
from curation.system import selections_dir, validations_dir
from curation.selection.baselines import BASELINES
from curation.validation.proxy import eval_files
from curation.validation.validate import ValidateConfig, Validation
from curation.config import field_info
from curation.progress import count_text, format_duration
from pages.common import config_input, jobs_panel, pick_folder, workspace

st.title("Validate")
st.caption("Scores rank examples; only training shows whether the ranking helps. Large studies found most "
           "score-based selections no better than random, and much of what they pick explained by length: "
           "check your cut-off here before you trust it.")
ws = workspace()
sels = list_folders(selections_dir(ws), "summary.json")
evals = list_data_files(ws, folder="eval")
# held-out preference pairs, for a selection of a pair run (labelled by folder: the eval sets keep their names)
pair_evals = {f"pairs-eval/{p.name}": p for p in list_data_files(ws, folder="pairs-eval")}

with st.form("validate"):
    st.subheader("New validation")
    names = [p.name for p in sels]
    want = st.session_state.get("selection_name")
    chosen = st.multiselect("Selections (of one run)", names, default=[want] if want in names else names[:1],
                            help="Saved on the Select page (WORKSPACE/selections).")
    baselines = st.multiselect("Baselines", list(BASELINES), default=["random", "random-tokens"],
                               help="random: same examples per domain; random-tokens: same assistant tokens per domain "
                                    "(fair when a score prefers short or long answers); longest: the longest responses; "
                                    "full: the whole eligible pool, once (the ceiling); natural: as many examples at the "
                                    "pool's domain proportions (judges a mix, e.g. one a Mix study recommended).")
    ev = st.multiselect("Held-out eval sets", [p.name for p in evals] + list(pair_evals),
                        default=[p.name for p in evals],
                        help="Files in WORKSPACE/eval (make setup writes the default pool's); the file name is the domain. "
                             "A selection of preference pairs is evaluated on held-out pairs: WORKSPACE/pairs-eval.")
    c1, c2, c3, c4 = st.columns(4)
    seeds = c1.selectbox("Seeds", ["auto", "3", "5", "8"], index=1, help=field_info(ValidateConfig, "seeds")["help"])
    max_seeds = config_input(ValidateConfig, "max_seeds", "Most seeds (auto)", c2, min_value=3, max_value=20)
    margin = config_input(ValidateConfig, "margin", "Equivalence margin (nats)", c3, min_value=0.001, max_value=1.0,
                          step=0.005, format="%.3f")
    epochs = config_input(ValidateConfig, "epochs", "Epochs", c4, min_value=1, max_value=20)
    c5, c6, c7 = st.columns(3)
    objective = config_input(ValidateConfig, "objective", "Objective over the domains", c5)
    draws = config_input(ValidateConfig, "draws", "Random selections' draws", c6)
    lora = config_input(ValidateConfig, "lora", "LoRA instead of full fine-tuning", c7)
    c8, c9 = st.columns(2)
    dpo_loss = c8.multiselect("DPO objective(s), pairs", ["davir", "sigmoid"], default=["davir"],
                              help=field_info(ValidateConfig, "dpo_loss")["help"])
    beta = config_input(ValidateConfig, "beta", "DPO beta, pairs", c9, min_value=0.001, max_value=1000.0,
                        format="%.3f")
    st.caption("Every candidate trains once per seed from the same model with the same settings, then each trained "
               "model is scored on the eval sets; on a CPU this takes a while (the job shows its progress and ETA; "
               "the README's benchmark gives measured times). Finished (candidate, seed) trainings survive a stop.")
    go_clicked = st.form_submit_button("Start validation", type="primary", disabled=not (sels and (evals or pair_evals)))
if not sels:
    st.info("No saved selection yet: make one on the **Select** page.")
if not evals:
    st.info("No eval set in the workspace's eval folder: the default pool's are written by `make setup` "
            "(or the *Prepare the default pool* button on the Data page).")

if go_clicked:
    try:
        if not chosen:
            raise ValueError("choose at least one selection")
        out = validations_dir(ws) / new_folder_name("validate-" + "-".join(chosen)[:60])
        cfg = ValidateConfig(selections=[str(selections_dir(ws) / n) for n in chosen], out=str(out),
                             eval=eval_files(pair_evals[n] if n in pair_evals else ws / "eval" / n for n in ev),
                             baselines=",".join(baselines), dpo_loss=",".join(dpo_loss) or "davir", beta=float(beta),
                             seeds=seeds, max_seeds=int(max_seeds), margin=float(margin), draws=str(draws),
                             epochs=int(epochs), lora=bool(lora), objective=str(objective))
        job = jobs.submit("validate", cfg, workspace=ws)
        st.session_state["validation_name"] = out.name
        st.success(f"Started job `{job}`; its report appears below when it finishes.")
    except (ValueError, jobs.JobError) as e:
        st.error(str(e))

jobs_panel(ws, key="validate", kinds=("validate",), empty="No validation job yet.")

# ---- results -----------------------------------------------------------------------------------
st.subheader("Results")
vdir = pick_folder(validations_dir(ws), "report.json", "Validation", "val_pick", "validation_name",
                   "No finished validation yet.")
if vdir is None:
    st.stop()
validation = Validation(vdir)
try:
    rep = validation.report()
except ValueError as e:  # the reader says what is wrong with it; the other validations stay listed
    st.error(f"{e}. Pick another validation above.")
    st.stop()
stats = rep["statistics"]["token"]
by_measure = rep["statistics"].get("pairs")  # a pair validation: one report per measure
if by_measure:
    name = st.radio("Measure", list(by_measure), horizontal=True, key="val_measure",
                    help="reward_accuracy is the primary measure (seeds until decided stop on it); rejected_nll is "
                         "reported, not judged.")
    stats = by_measure[name]
unit = (stats.get("measure") or {}).get("unit", "nats")
better = "lower" if stats.get("lower_is_better", True) else "higher"
seeds_used = (f"seeds until decided (at most {rep['config'].get('max_seeds')})" if rep["config"]["seeds"] == "auto"
              else f"{rep['config']['seeds']} seeds")
st.caption(f"{', '.join(s['name'] for s in rep['selections'])} · proxy `{rep['model']['spec']}` · "
           f"{count_text(rep['config']['epochs'], 'epoch')} · {seeds_used} · "
           f"{stats['metric_text']} ({better} is better)")

st.markdown("**Verdicts**")
for note in rep.get("notes", []):  # a baseline drawn again, or one that could not be compared
    st.warning(note)
verdicts = pd.DataFrame([{
    "candidate": c["candidate"], "against": c["baseline"], "domain": c["domain"], "verdict": c["verdict"],
    "in words": c["verdict_text"], f"difference ({unit})": round(c["diff"], 4),
    "interval": f"[{c['lo']:+.4f}, {c['hi']:+.4f}] ({c.get('level', 0.95):.1%})",
    "could detect": None if c.get("detectable") is None else round(c["detectable"], 4),
    "seeds": c.get("decided_at") or min(c["n_seeds_candidate"], c["n_seeds_baseline"]),
    "trainings": (c.get("cost") or {}).get("trainings"),
    "training time": format_duration((c.get("cost") or {}).get("seconds")) if c.get("cost") else "",
    "candidate mean": round(c["candidate_mean"], 4), "baseline mean": round(c["baseline_mean"], 4),
} for c in stats["comparisons"]])
st.dataframe(verdicts, hide_index=True, width="stretch")
margin = stats.get("margin") or {}
st.caption("A negative difference means the candidate's model predicts the held-out answers better. Each "
           "selection is compared with its random baselines; longest and full with random (same examples). The "
           "objective rows combine the domains (mean of their NLL, or as the validation was asked). The "
           "interval accounts for the eval sample (paired over examples) and for training noise (seeds, paired when "
           "both arms share them): **better** or **worse** when it excludes 0, **equivalent** when it lies inside "
           f"±{margin.get('domains', 0.02)} nats (the objective ±{margin.get('objective', 0.02)}), else **undecided**; "
           "'could detect' is the smallest true difference this many seeds would show four times in five. With "
           "seeds until decided, each comparison's verdict, seeds, trainings and time are those of the look that "
           "decided it.")

if by_measure:
    corr = pd.DataFrame(rep["pairs"]["length_correlation"])
    st.markdown("**Length bias**: Pearson(reward margin, chosen - rejected tokens) over the eval pairs, per "
                "trained candidate (mean over seeds, 95% bootstrap interval over pairs and seeds); DavIR-DPO is "
                "said to lower it (0.38 -> 0.07).")
    st.dataframe(corr.round(3), hide_index=True, width="stretch")
    bias = rep["pairs"].get("length_bias_comparisons") or []
    if bias:
        st.markdown("**Objectives compared on length bias**: |r| of the first - |r| of the second (paired: the "
                    "bootstrap resamples both arms' seeds and eval pairs together); *less* means the first's reward "
                    "margin follows the length difference less.")
        st.dataframe(pd.DataFrame(bias).round(3), hide_index=True, width="stretch")

rows = pd.DataFrame(stats["rows"])
left, right = st.columns(2)
with left:
    fig = px.bar(rows, x="domain", y="mean", color="candidate", barmode="group", error_y="sd",
                 labels={"mean": f"{stats['metric_text'][:40]} ({unit})"})
    lo = float((rows["mean"] - rows["sd"].fillna(0)).min())
    if not by_measure:  # NLLs: positive, close together
        fig.update_yaxes(range=[lo * 0.98, float((rows["mean"] + rows["sd"].fillna(0)).max()) * 1.01])
    fig.update_layout(height=360, margin=dict(t=30, b=10), title="Per candidate (error bars: sd over seeds)")
    st.plotly_chart(fig, width="stretch")
with right:
    comp = pd.DataFrame(stats["comparisons"])
    if not comp.empty:
        comp["label"] = comp["candidate"] + " vs " + comp["baseline"]
        fig = go.Figure()
        for label, g in comp.groupby("label"):
            fig.add_trace(go.Scatter(x=g["domain"], y=g["diff"], mode="markers", name=label,
                                     error_y=dict(type="data", symmetric=False, array=g["hi"] - g["diff"],
                                                  arrayminus=g["diff"] - g["lo"])))
        fig.add_hline(y=0, line_dash="dash", line_color="grey")
        fig.update_layout(height=360, margin=dict(t=30, b=10), title="Difference vs baseline with 95% interval",
                          scattermode="group",  # side by side within a domain, not drawn over each other
                          yaxis_title=f"{unit} ({'negative' if better == 'lower' else 'positive'} = candidate better)")
        st.plotly_chart(fig, width="stretch")

st.markdown("**Length: what the selection picked**")
lens = pd.DataFrame([{"selection": name, "domain": d, "score": v["score"],
                      "selected mean response tokens": e["selection_mean_response_tokens"],
                      "pool mean response tokens": e["pool_mean_response_tokens"],
                      "Spearman(score, length)": e.get("score_length_spearman")}
                     for name, v in rep["lengths"].items() for d, e in v["by_domain"].items()])
st.dataframe(lens.round(3), hide_index=True, width="stretch")
if lens["Spearman(score, length)"].isna().any():
    st.caption("No Spearman where the selection has no ranking score (s2l samples clusters, random samples; "
               "their length effect shows in the two mean lengths).")
cands = pd.DataFrame([{"candidate": c["name"], "seed": c["seeds"][k], "examples": p["examples"],
                       "response tokens": p["response_tokens"]}
                      for c in rep["candidates"] for k, p in enumerate(c["per_seed"])])
with st.expander("Training sets per candidate and seed"):
    st.dataframe(cands, hide_index=True, width="stretch")

curves = validation.curves()
if curves is not None:
    if not curves.empty:
        curves["run"] = curves["candidate"] + " seed " + curves["seed"].astype(str)
        fig = px.line(curves, x="step", y="loss", color="candidate", line_group="run",
                      labels={"loss": "training loss"})
        fig.update_layout(height=320, margin=dict(t=30, b=10), title="Training curves")
        st.plotly_chart(fig, width="stretch")
with st.expander("report.md"):
    st.markdown(validation.markdown())

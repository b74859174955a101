"""Mix: what the share of each domain does to each held-out eval set.  Start a mix study (trainings
at a design of mixes, the mixing law fitted per eval set), then read the law, how well it predicts
a left-out mix, the recommended mix and the commands that validate it against the natural mix."""

import html

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from curation.config import field_info
from curation.jobs import store as jobs
from curation.jobs.workspace import list_data_files, new_folder_name
from curation.progress import count_text
from curation.system import mixes_dir
from curation.scores import SCORES, available_methods
from curation.validation.mix import MixConfig, MixStudy
from curation.validation.mixing_law import MixError
from curation.validation.proxy import eval_files
from pages.common import config_input, jobs_panel, pick_folder, pick_run, workspace

st.title("Mix")
st.caption("The domain mix usually moves each domain's held-out loss more than choosing examples inside a domain "
           "does. A mix study trains at several mixes, fits a mixing law per eval set (Data Mixing Laws: "
           "L(r) = c + k·exp(t·r)), checks it on left-out mixes, and recommends the mix that minimises your "
           "objective. A prediction is not a measurement: validate the recommendation against the natural mix.")
ws = workspace()
picked = pick_run("mix", finished_only=True)
if picked is None:
    st.stop()
info, df, run = picked
evals = list_data_files(ws, folder="eval")

with st.form("mix"):
    st.subheader("New mix study")
    ev = st.multiselect("Held-out eval sets", [p.name for p in evals], default=[p.name for p in evals],
                        help="Files in WORKSPACE/eval; the file name is the eval set's name. Pool examples that share "
                             f"{MixConfig.ngram} consecutive words with them are left out of every mix.")
    c1, c2, c3, c4 = st.columns(4)
    budget = config_input(MixConfig, "budget", "Budget", c1)
    design = config_input(MixConfig, "design", "Design", c2)
    seeds = config_input(MixConfig, "seeds", "Seeds per mix", c3, min_value=1, max_value=10)
    epochs = config_input(MixConfig, "epochs", "Epochs", c4, min_value=1, max_value=20)
    ok = [m for m, why in available_methods(df.columns).items()
          if why is None and m != "target" and (m == "random" or SCORES[m].ranks)]
    d1, d2, d3 = st.columns(3)
    method = d1.selectbox("Inside each domain", ok, index=ok.index("random"),
                          help=field_info(MixConfig, "method")["help"])
    objective = d2.text_input("Objective", value=MixConfig.objective,
                              help=field_info(MixConfig, "objective")["help"])
    lora = config_input(MixConfig, "lora", "LoRA instead of full fine-tuning", d3)
    st.caption("Every mix trains on the same number of examples, once per seed, exactly as Validate trains its "
               "candidates (trainings are shared through the training cache). On a CPU a study takes a while; "
               "the job shows its progress, and finished trainings survive a stop.")
    start = st.form_submit_button("Start mix study", type="primary", disabled=not evals)
if not evals:
    st.info("No eval set in the workspace's eval folder: the default pool's are written by `make setup`.")
if start:
    try:
        out = mixes_dir(ws) / new_folder_name(f"mix-{info.name}")
        cfg = MixConfig(run=str(info.path), out=str(out), eval=eval_files(ws / "eval" / n for n in ev),
                        budget=str(budget), design=str(design), seeds=int(seeds), epochs=int(epochs), method=method,
                        objective=objective, lora=bool(lora))
        job = jobs.submit("mix", cfg, workspace=ws)
        st.session_state["mix_name"] = out.name
        st.success(f"Started job `{job}`; the study appears below when it finishes.")
    except (ValueError, jobs.JobError) as e:
        st.error(str(e))

jobs_panel(ws, key="mix", kinds=("mix",), empty="No mix study job yet.")

# ---- results -----------------------------------------------------------------------------------
st.subheader("Studies")
mdir = pick_folder(mixes_dir(ws), "report.json", "Mix study", "mix_pick", "mix_name", "No finished mix study yet.")
if mdir is None:
    st.stop()
study = MixStudy(mdir)
try:
    rep = study.report()
except MixError as e:
    st.error(str(e))
    st.stop()
domains, names, cfg = rep["domains"], rep["evals"], rep["config"]
rec, natural = rep["recommended"], rep["natural"]
fmt = lambda m: ", ".join(f"{d} {v:.2f}" for d, v in m.items())  # noqa: E731
st.caption(f"Run `{html.escape(str(rep['run'].get('dir')))}` · {len(rep['points'])} mixes × {cfg['seeds']} seeds · "
           f"budget {cfg['budget']} ({cfg['method']} inside each domain) · {count_text(cfg['epochs'], 'epoch')} · "
           "natural mix "
           f"{fmt(natural)} · this run of the study {rep['seconds'] / 60:.0f} min"
           + (f", its {rep['trainings']['timed']} trainings {rep['trainings']['seconds'] / 60:.0f} min of their own"
              if rep.get("trainings", {}).get("timed") else ""))

for note in rep.get("notes", []):  # mixes trained at other shares than the design's, or merged
    st.warning(note)

m1, m2 = st.columns([1, 2])
with m1:
    st.metric(f"Recommended mix ({rep['objective']['kind']})", fmt(rec["mix"]))
    st.caption("95% interval of each share over the bootstrap: "
               + ", ".join(f"{d} [{lo:.2f}, {hi:.2f}]" for d, (lo, hi) in rec["mix_interval"].items()))
with m2:
    vs = rep.get("vs_natural", {})
    band = lambda v, sign="": f"{v['value']:{sign}.4f} [{v['lo']:{sign}.4f}, {v['hi']:{sign}.4f}]"  # noqa: E731
    rows = [{"eval set": e, "predicted at the recommended mix": band(rec["predicted"][e]),
             "predicted at the natural mix": band(rep["at_natural"][e]),
             "recommended - natural (paired)": band(vs[e], "+") if e in vs else "",
             "verdict (predicted)": vs.get(e, {}).get("verdict", "")} for e in names]
    if "objective" in vs:
        rows.append({"eval set": f"objective ({rep['objective']['kind']})", "predicted at the recommended mix": "",
                     "predicted at the natural mix": "", "recommended - natural (paired)": band(vs["objective"], "+"),
                     "verdict (predicted)": vs["objective"].get("verdict", "")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("Verdicts as a validation says them (better, worse, equivalent within the margin, undecided), here of the "
               "law's prediction over the bootstrap: validate the recommended mix against the natural one to measure it.")
for e in names:
    st.info(rep["fit"][e]["verdict"] + ".")

if len(domains) == 2:
    first = domains[0]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"eval: {e}" for e in names])
    for col, e in enumerate(names, start=1):
        f = rep["fit"][e]
        xs = [m[0] for m in f["curve"]["mixes"]]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=f["curve"]["hi"] + f["curve"]["lo"][::-1], fill="toself",
                                 line=dict(width=0), fillcolor="rgba(42,111,151,0.15)", name="95% band",
                                 showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
        fig.add_trace(go.Scatter(x=xs, y=f["curve"]["fit"], mode="lines", line=dict(color="#2a6f97"),
                                 name="fitted law", showlegend=col == 1), row=1, col=col)
        meas = pd.DataFrame(f["measured"])
        fig.add_trace(go.Scatter(x=[p["mix"][first] for p in rep["points"]], y=meas["mean"], mode="markers",
                                 marker=dict(color="#e07a5f", size=9), name="measured (sd over seeds)",
                                 error_y=dict(type="data", array=meas["sd"].fillna(0)), showlegend=col == 1),
                      row=1, col=col)
        for share, label, colour in ((natural[first], "natural", "grey"), (rec["mix"][first], "recommended", "#81b29a")):
            fig.add_vline(x=share, line_dash="dash", line_color=colour, row=1, col=col,
                          **({"annotation_text": label} if col == 1 else {}))
        fig.update_xaxes(title_text=f"share of {first}", range=[-0.02, 1.02], row=1, col=col)
        fig.update_yaxes(title_text="held-out NLL (nats)" if col == 1 else None, row=1, col=col)
    fig.update_layout(height=380, margin=dict(t=40, b=10), legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(fig, width="stretch")
    st.caption("The band is the 95% bootstrap band over the eval examples and the seeds: mostly the eval set's own "
               "level, which a resample of its examples moves at every mix alike. What a change of mix does is "
               "the paired difference in the table above (recommended - natural), which that level cancels.")
elif len(domains) == 3:
    pts = pd.DataFrame([{**p["mix"], "mix": p["name"],
                         **{e: rep["fit"][e]["measured"][i]["mean"] for e in names}} for i, p in enumerate(rep["points"])])
    pts["kind"] = "measured"
    extra = pd.DataFrame([{**rec["mix"], "mix": "recommended", "kind": "recommended"},
                          {**natural, "mix": "natural", "kind": "natural"}])
    fig = px.scatter_ternary(pd.concat([pts, extra], ignore_index=True), a=domains[0], b=domains[1], c=domains[2],
                             color="kind", symbol="kind", hover_name="mix", hover_data=names,
                             color_discrete_map={"measured": "#e07a5f", "recommended": "#81b29a", "natural": "grey"})
    fig.update_layout(height=420, margin=dict(t=30, b=10))
    st.plotly_chart(fig, width="stretch")
else:
    st.caption("More than three domains: the mixes are listed below (no 2-D picture of the simplex).")

if len(names) == 2 and rep["pareto"]:
    front = pd.DataFrame([{names[0]: p["predicted"][names[0]], names[1]: p["predicted"][names[1]],
                           "mix": fmt(p["mix"])} for p in rep["pareto"]])
    fig = px.line(front, x=names[0], y=names[1], hover_name="mix", markers=True,
                  labels={names[0]: f"{names[0]} NLL", names[1]: f"{names[1]} NLL"})
    fig.add_trace(go.Scatter(x=[rec["predicted"][names[0]]["value"]], y=[rec["predicted"][names[1]]["value"]],
                             mode="markers", marker=dict(size=14, color="#81b29a", symbol="star"), name="recommended"))
    fig.add_trace(go.Scatter(x=[rep["at_natural"][names[0]]["value"]], y=[rep["at_natural"][names[1]]["value"]],
                             mode="markers", marker=dict(size=12, color="grey", symbol="diamond"), name="natural"))
    fig.update_layout(height=340, margin=dict(t=30, b=10), title="Pareto front: mixes no other mix beats on both")
    st.plotly_chart(fig, width="stretch")

st.markdown("**Measured and fitted, per mix**")


def rounded(v):
    return round(v, 4) if v is not None and np.isfinite(v) else None


st.dataframe(pd.DataFrame([{"mix": p["name"], **{f"{d} examples": p["examples"][d] for d in domains},
                            **{f"{e} measured": rounded(rep["fit"][e]["measured"][i]["mean"]) for e in names},
                            **{f"{e} law, left out": rounded(rep["fit"][e]["loo"]["law_prediction"][i]) for e in names}}
                           for i, p in enumerate(rep["points"])]), hide_index=True, width="stretch")
st.dataframe(pd.DataFrame([{"eval set": e, "law: mean left-out error": rep["fit"][e]["loo"]["law_mae"],
                            "linear: mean left-out error": rep["fit"][e]["loo"]["linear_mae"],
                            "spread across mixes": rep["fit"][e]["spread"], "seed sd": rep["fit"][e]["seed_sd"]}
                           for e in names]).round(4), hide_index=True, width="stretch")
st.caption("Leave-one-out: each mix predicted from the others, by the law and by a straight line between the "
           "neighbouring mixes. A law that does not beat the line adds nothing to the measurements.")
st.markdown("**Validate the recommendation against the natural mix**")
st.code(rep["commands"]["select"] + "\n" + rep["commands"]["validate"], language="bash")
with st.expander("report.md"):
    st.markdown(study.markdown())

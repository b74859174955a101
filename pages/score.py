"""Score: choose the model and what to compute, launch a background job, watch it, cancel/resume."""

import streamlit as st

from curation.data.load import source_stem
from curation.jobs import store as jobs
from curation.jobs.workspace import list_data_files
from curation.runs.learn import LearnConfig
from curation.runs.score import ScoreConfig
from pages.common import config_input, installation, jobs_panel, workspace

st.title("Score")
st.caption("Scoring runs in a background worker: you can leave this page or close the browser; "
           "finished chunks are kept, and an interrupted job resumes where it stopped.")

ws = workspace()
sources = st.session_state.get("sources")
if not sources:
    # Nothing chosen on the Data page: every data file, domain = file name (chat.jsonl -> chat).
    sources = [f"{source_stem(p.name)}={p}" for p in list_data_files(ws)]

with st.form("launch"):
    st.subheader("New job")
    if sources:
        st.markdown("**Sources** (change them on the Data page): " +
                    ", ".join(f"`{s.split('=', 1)[0]}` ← {s.split('=', 1)[1].rsplit('/', 1)[-1]}" for s in sources))
    else:
        st.warning("No data yet: add files on the **Data** page (or prepare the default pool there).")
    c1, c2, c3 = st.columns(3)
    model = config_input(ScoreConfig, "model", "Base model", c1)
    max_length = config_input(ScoreConfig, "max_length", "Max length (tokens; 0 = the default)", c2, min_value=0,
                              max_value=131072)
    limit = config_input(ScoreConfig, "limit", "Records per source (0 = all)", c3, min_value=0,
                         value=st.session_state.get("limit") or 0)
    # A learnability run trains a model: on a CPU it takes far longer than one scoring pass, so
    # the first experience there is the plain loss; on a GPU both are quick.
    gpu = installation()["device"].startswith("cuda")
    what = st.radio(
        "What to compute",
        ["score", "learn", "reference"],
        index=1 if gpu else 0,
        format_func={
            "score": "Plain loss under the base model (fastest: one pass)",
            "learn": "Learnability run: fine-tune a reference on the pool, score K+1 checkpoints "
                     "(davir, rho, S2L trajectories, loss_base/loss_ref; on preference pairs a DPO reference: "
                     "reward and davir margins)",
            "reference": "Attach an existing fine-tuned model as the reference (two passes)",
        }.get,
        help="The learnability run gives every score the selection methods use (davir, rho, ifd, s2l); "
             "plain loss is a quick first look that the loss and perplexity baselines can already select from.",
    )
    c4, c5, c6, c7, c8 = st.columns(5)
    checkpoints = config_input(LearnConfig, "checkpoints", "Checkpoints K", c4, min_value=1, max_value=20)
    epochs = config_input(LearnConfig, "epochs", "Epochs", c5, min_value=1, max_value=10)
    stability_runs = config_input(LearnConfig, "stability_runs", "Reference runs (stability)", c6,
                                  min_value=1, max_value=10)
    lora = config_input(LearnConfig, "lora", "LoRA instead of full fine-tuning", c7)
    ifd = config_input(LearnConfig, "ifd", "Also IFD (one extra pass)", c8)
    d1, d2, _ = st.columns([1, 1, 2])
    dpo_loss = config_input(LearnConfig, "dpo_loss", "DPO objective (preference pairs)", d1, key="learn_dpo_loss")
    beta = config_input(LearnConfig, "beta", "DPO beta (preference pairs)", d2, min_value=0.001, max_value=1000.0,
                        key="learn_beta")
    st.caption("A learnability run trains a model and then scores the pool K+1 times, so it takes many times "
               "longer than plain loss on a CPU; the job's progress shows tokens/s and an ETA once it runs, and "
               "the README's benchmarks give measured times. Finished chunks and checkpoints survive a stop.")
    reference = config_input(LearnConfig, "reference", "Reference model (for 'attach a reference')")
    e1, e2, _ = st.columns([1, 1, 2])
    engine = config_input(ScoreConfig, "engine", "Engine", e1)
    workers = config_input(ScoreConfig, "workers", "Ray workers (0 = one per CPU)", e2, min_value=0, max_value=1024)
    launched = st.form_submit_button("Start job", type="primary", disabled=not sources)

if launched:
    base = {"sources": list(sources), "out": "", "model": model, "max_length": int(max_length) or None,
            "limit": int(limit) or None, "engine": engine,
            "workers": (int(workers) or None) if engine == "ray" else None}
    try:
        if what == "score":
            # Small chunks: the Explore page shows scores from the first committed chunk on.
            job = jobs.submit("score", ScoreConfig(**base, chunk_examples=64), workspace=ws)
        else:
            if what == "reference" and not reference.strip():
                raise ValueError("give the reference model's folder to attach it")
            job = jobs.submit("learn", LearnConfig(**base, checkpoints=int(checkpoints), epochs=int(epochs),
                                                   lora=bool(lora), ifd=bool(ifd), dpo_loss=dpo_loss,
                                                   beta=float(beta),
                                                   stability_runs=int(stability_runs) if what == "learn" else 1,
                                                   reference=reference.strip() if what == "reference" else None),
                              workspace=ws)
        st.session_state["watch_job"] = job
        when = "chunk by chunk as it runs" if what == "score" else "from its first scoring pass on"
        st.success(f"Started job `{job}`. Its scores appear on the Explore page {when}.")
    except (ValueError, jobs.JobError) as e:
        st.error(str(e))


jobs_panel(ws, key="score", empty="No job yet. Start one above: plain loss over the default pool is the quick one.")

"""Landing page: what is installed and where scoring will run."""

import streamlit as st

from pages.common import installation


st.title("SFT data curation")
st.caption("Score how learnable each SFT example is for a model, then select and export a subset.")
i = installation()
c1, c2, c3 = st.columns(3)
c1.metric("Version", i["curation"])
c2.metric("Device", i["device"])
c3.metric("Compute dtype", i["dtype"])
st.subheader("Default model")
st.write(i["default_model"])
if i.get("default_model_error"):
    st.error(i["default_model_error"])
elif i.get("default_model_prepared"):
    st.success(f"Prepared: `{i['default_model_prepared']}`")
else:
    st.warning("Not yet converted; `make setup` or the first score run converts it (about 30 s).")
st.subheader("Versions")
st.table({k: [str(i.get(k))] for k in ("python", "torch", "transformers")})
st.subheader("Getting started")
st.markdown(
    "1. **Data**: prepare the embedded default pool (ShareGPT chat + CHAMP math) or upload your files; "
    "give each source a domain.\n"
    "2. **Score**: start a background job (plain loss, or a learnability run that gives davir, rho, "
    "IFD and S2L clusters) and watch it progress.\n"
    "3. **Explore** the score distributions per domain, and their correlation with length.\n"
    "4. **Inspect** examples, coloured token by token by their loss.\n"
    "5. **Select**: one click gives the top 10% by davir in the pool's natural mix, beside a random "
    "baseline; tune method, budget, chat/math mix and thresholds.\n"
    "6. **Export** the selection as JSONL/Parquet/HF with a manifest, and download it.\n\n"
    "The same steps from the command line: `python -m curation score|learn|select|export ...`."
)

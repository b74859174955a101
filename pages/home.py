"""Landing page: what is installed and where scoring will run."""

import streamlit as st

from curation.system import info


@st.cache_data(show_spinner="Checking the installation...")
def _info() -> dict:
    return info()


st.title("SFT data curation")
st.caption("Score how learnable each SFT example is for a model, then select and export a subset.")
i = _info()
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
st.markdown(
    "Score data from the command line while the dashboard pages are being built:\n\n"
    "```\npython -m curation score math=gsm8k.jsonl chat=alpaca.json --limit 200 --out runs/demo\n```"
)

"""Entry point: navigation over the pages in pages/; nothing else."""

import streamlit as st

st.set_page_config(page_title="SFT curation", layout="wide")
pages = [
    st.Page("pages/home.py", title="Home", url_path="home", default=True),
]
st.navigation(pages).run()

"""Entry point: navigation over the pages in pages/; nothing else."""

import streamlit as st

# An emoji favicon is drawn by the page itself; a ":material/...:" one would be fetched from a font host.
st.set_page_config(page_title="SFT curation", page_icon="🧪", layout="wide")
pages = {
    "": [st.Page("pages/home.py", title="Home", icon=":material/home:", url_path="home", default=True)],
    "Curate": [
        st.Page("pages/data.py", title="Data", icon=":material/folder_open:", url_path="data"),
        st.Page("pages/score.py", title="Score", icon=":material/play_circle:", url_path="score"),
        st.Page("pages/explore.py", title="Explore", icon=":material/bar_chart:", url_path="explore"),
        st.Page("pages/inspect.py", title="Inspect", icon=":material/search:", url_path="inspect"),
        st.Page("pages/decisions.py", title="Decisions", icon=":material/rule:", url_path="decisions"),
        st.Page("pages/mix.py", title="Mix", icon=":material/tune:", url_path="mix"),
        st.Page("pages/select.py", title="Select", icon=":material/filter_alt:", url_path="select"),
        st.Page("pages/validate.py", title="Validate", icon=":material/verified:", url_path="validate"),
        st.Page("pages/export.py", title="Export", icon=":material/download:", url_path="export"),
    ],
}
st.navigation(pages).run()

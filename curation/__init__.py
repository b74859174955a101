"""Learnability-based curation of SFT data: the library behind the dashboard and the CLI.

Everything that computes, stores or decides lives here; the Streamlit pages only call it.
Heavy imports (torch, transformers) happen inside the functions that need them.
"""

__version__ = "0.1.0"

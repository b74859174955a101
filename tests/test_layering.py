"""The layering the design relies on: thin pages, a library without Streamlit."""

import re

from tests.conftest import ROOT

HEAVY = re.compile(r"^\s*(import|from)\s+(torch|transformers|peft|accelerate)\b", re.M)


def test_no_heavy_imports_in_the_ui():
    for f in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        assert not HEAVY.search(f.read_text()), f


def test_library_never_imports_streamlit():
    for f in sorted((ROOT / "curation").rglob("*.py")):
        assert not re.search(r"^\s*(import|from)\s+streamlit\b", f.read_text(), re.M), f

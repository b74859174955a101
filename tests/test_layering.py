"""The layering the design relies on: thin pages, a library without Streamlit, no private names
shared between modules."""

import ast
import re

from tests.conftest import ROOT

HEAVY = re.compile(r"^\s*(import|from)\s+(torch|transformers|peft|accelerate)\b", re.M)
LIBRARY = sorted((ROOT / "curation").rglob("*.py"))


def _imports(path):
    """``(module, [names])`` of every import statement in a file (top level and inside functions)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]


def test_no_heavy_imports_in_the_ui():
    for f in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        assert not HEAVY.search(f.read_text()), f


def test_library_never_imports_the_ui_the_benchmarks_or_the_tests():
    for f in LIBRARY:
        for module, _ in _imports(f):
            assert module.split(".")[0] not in ("streamlit", "pages", "bench", "tests"), (f, module)


def test_no_private_name_crosses_a_module_of_the_library():
    for f in LIBRARY:
        for module, names in _imports(f):
            if module.startswith("curation"):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, f"{f.relative_to(ROOT)} imports {private} from {module}"
                assert not any(part.startswith("_") and part != "__main__" for part in module.split(".")), (f, module)
    # Nor does any page or benchmark reach into the library's private names.
    for f in [*sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]:
        for module, names in _imports(f):
            if module.startswith("curation"):
                assert not [n for n in names if n.startswith("_") and not n.startswith("__")], (f, module)
        assert not re.search(r"\b(jobs|runs|selection|export)\._[a-z]", f.read_text()), f


def test_benchmarks_depend_on_the_library_only():
    for f in sorted((ROOT / "bench").glob("*.py")):
        for module, _ in _imports(f):
            assert module.split(".")[0] not in ("tests", "pages"), (f, module)

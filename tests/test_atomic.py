"""Atomic files and folders: complete or absent, and what they refuse to replace."""

from __future__ import annotations

import pytest

from curation.atomic import AtomicError, atomic_dir


@pytest.mark.parametrize("what, article", [("export", "an"), ("selection", "a")])
def test_a_folder_with_foreign_entries_is_refused_in_plain_english(tmp_path, what, article):
    """Issue 30 #15: the message said "a export"."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AtomicError, match=f"holds 1 entry {article} {what} does not write \\(notes.txt\\)"):
        with atomic_dir(out, marker="marker.json", what=what, known=("marker.json",)):
            pass
    assert (out / "notes.txt").read_text() == "mine"

"""The project root and the one workspace finder."""

from __future__ import annotations

import pytest

from curation.system import workspace_root


def test_the_workspace_is_found_one_way_by_jobs_decisions_and_the_layout(tmp_path, monkeypatch):
    from curation.jobs.store import JobStore
    from curation.system import data_dir
    from curation.selection.decisions import DecisionStore

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CURATION_WORKSPACE", "ws")
    assert workspace_root() == tmp_path / "ws" and workspace_root().is_absolute()
    assert JobStore().ws == DecisionStore().ws == workspace_root() and data_dir() == tmp_path / "ws" / "data"
    assert workspace_root("other") == tmp_path / "other"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile is a file; give the workspace folder"):
        workspace_root("afile")

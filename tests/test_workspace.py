"""The workspace folder (curation.jobs.workspace): uploads never overwrite without the user's word,
links leaving the workspace are neither listed nor read, and the dev sets are the targets."""

from __future__ import annotations

import pytest

from curation.jobs.workspace import UploadExists, dev_targets, ensure_layout, list_data_files, outside_links, save_upload
from tests.conftest import math_rows, write_jsonl


def test_uploads_never_overwrite_without_the_users_word(tmp_path):
    ws = tmp_path / "ws"
    p = save_upload(b'{"question": "a", "answer": "b"}\n', "mine.jsonl", ws)
    p.write_text('{"question": "edited", "answer": "b"}\n')  # edited on disk afterwards
    assert save_upload(b'{"question": "edited", "answer": "b"}\n', "mine.jsonl", ws) == p  # same bytes: no-op
    with pytest.raises(UploadExists) as e:
        save_upload(b'{"question": "other", "answer": "c"}\n', "mine.jsonl", ws)
    assert e.value.free.name == "mine-2.jsonl" and "edited" in p.read_text()
    kept = save_upload(b'{"question": "other", "answer": "c"}\n', "mine.jsonl", ws, on_exists="keep-both")
    assert kept.name == "mine-2.jsonl" and "edited" in p.read_text() and "other" in kept.read_text()
    save_upload(b'{"question": "new", "answer": "c"}\n', "mine.jsonl", ws, on_exists="replace")
    assert "new" in p.read_text()


def test_an_upload_with_a_very_long_name_is_saved(tmp_path):
    p = save_upload(b'{"question": "q", "answer": "a"}\n', "x" * 300 + ".jsonl", tmp_path)
    assert p.is_file() and p.name.endswith(".jsonl") and len(p.name) <= 120


def test_links_leaving_the_workspace_are_not_listed(tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    write_jsonl(ws / "data" / "mine.jsonl", math_rows(6))
    (ws / "data" / "passwd.csv").symlink_to("/etc/passwd")
    (ws / "data" / "inside.jsonl").symlink_to(ws / "data" / "mine.jsonl")  # a link within the workspace is fine
    assert [p.name for p in list_data_files(ws)] == ["inside.jsonl", "mine.jsonl"]
    assert [p.name for p in outside_links(ws)] == ["passwd.csv"]



def test_the_dev_sets_are_the_targets_named_after_their_domain(tmp_path):
    ws = ensure_layout(tmp_path / "ws")
    assert dev_targets(ws) == {}
    for name in ("math.jsonl", "chat.json", "math.csv", "notes.txt"):
        (ws / "dev" / name).write_text("[]")
    assert dev_targets(ws) == {"chat": [str(ws / "dev" / "chat.json")],
                               "math": [str(ws / "dev" / "math.csv"), str(ws / "dev" / "math.jsonl")]}
    assert dev_targets(ws, ["math.jsonl"]) == {"math": [str(ws / "dev" / "math.jsonl")]}

"""The workspace folder: its layout, its listings and the dev sets as targets."""

from __future__ import annotations

from curation.jobs.workspace import dev_targets, ensure_layout


def test_the_dev_sets_are_the_targets_named_after_their_domain(tmp_path):
    ws = ensure_layout(tmp_path / "ws")
    assert dev_targets(ws) == {}
    for name in ("math.jsonl", "chat.json", "math.csv", "notes.txt"):
        (ws / "dev" / name).write_text("[]")
    assert dev_targets(ws) == {"chat": [str(ws / "dev" / "chat.json")],
                               "math": [str(ws / "dev" / "math.csv"), str(ws / "dev" / "math.jsonl")]}
    assert dev_targets(ws, ["math.jsonl"]) == {"math": [str(ws / "dev" / "math.jsonl")]}

"""The proxy's shared pieces that need no model: eval files named by their file names."""

from __future__ import annotations

import pytest

from curation.validation.proxy import eval_files


def test_eval_files_of_one_name_are_refused_not_dropped(tmp_path):
    """Issue 30, item 14: the Mix page named eval sets by file stem, so math.json and math.jsonl
    became one eval set (the second silently replaced the first); the CLI refuses the clash."""
    assert eval_files([tmp_path / "chat.jsonl", tmp_path / "math.jsonl"]) == {
        "chat": str(tmp_path / "chat.jsonl"), "math": str(tmp_path / "math.jsonl")}
    for clash in (["math.json", "math.jsonl"], ["math.jsonl.gz", "math.parquet"], ["math.csv", "sub/math.jsonl"]):
        with pytest.raises(ValueError, match=r"eval files math\.\S+ and math\.\S+ would both be the eval set 'math'"):
            eval_files([tmp_path / "chat.jsonl"] + [tmp_path / n for n in clash])

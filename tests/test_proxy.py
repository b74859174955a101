"""What validate and mix share (curation.validation.proxy, curation.validation.study): a study folder is
claimed by the key of its settings; eval files are named by their file names."""

from __future__ import annotations

import pytest

from curation.validation.proxy import ValidationError, eval_files
from curation.validation.study import claim_study


def test_eval_files_of_one_name_are_refused_not_dropped(tmp_path):
    """Issue 30, item 14: the Mix page named eval sets by file stem, so math.json and math.jsonl
    became one eval set (the second silently replaced the first); the CLI refuses the clash."""
    assert eval_files([tmp_path / "chat.jsonl", tmp_path / "math.jsonl"]) == {
        "chat": str(tmp_path / "chat.jsonl"), "math": str(tmp_path / "math.jsonl")}
    for clash in (["math.json", "math.jsonl"], ["math.jsonl.gz", "math.parquet"], ["math.csv", "sub/math.jsonl"]):
        with pytest.raises(ValueError, match=r"eval files math\.\S+ and math\.\S+ would both be the eval set 'math'"):
            eval_files([tmp_path / "chat.jsonl"] + [tmp_path / n for n in clash])


def test_a_study_folder_of_other_settings_is_refused(tmp_path):
    """A study folder carries the key of its settings; another epochs or eval set is refused."""
    out = tmp_path / "val"
    claim_study(out, "validate", "k1", {"epochs": 1, "eval": {"chat": "c.jsonl"}})
    claim_study(out, "validate", "k1", {"epochs": 1, "eval": {"chat": "c.jsonl"}})  # the same study: resumed
    with pytest.raises(ValidationError, match="holds a validation with other settings \\(epochs: 1 there, 3 now\\)"):
        claim_study(out, "validate", "k2", {"epochs": 3, "eval": {"chat": "c.jsonl"}})
    with pytest.raises(ValidationError, match="eval: \\{'chat': 'c.jsonl'\\} there, \\{'math': 'm.jsonl'\\} now"):
        claim_study(out, "validate", "k3", {"epochs": 1, "eval": {"math": "m.jsonl"}})

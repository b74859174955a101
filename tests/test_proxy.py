"""What validate and mix share (curation.validation.proxy): a study folder is claimed by the key
of its settings."""

from __future__ import annotations

import pytest

from curation.validation.proxy import ValidationError, claim_study


def test_a_study_folder_of_other_settings_is_refused(tmp_path):
    """A study folder carries the key of its settings; another epochs or eval set is refused."""
    out = tmp_path / "val"
    claim_study(out, "validate", "k1", {"epochs": 1, "eval": {"chat": "c.jsonl"}})
    claim_study(out, "validate", "k1", {"epochs": 1, "eval": {"chat": "c.jsonl"}})  # the same study: resumed
    with pytest.raises(ValidationError, match="holds a validation with other settings \\(epochs: 1 there, 3 now\\)"):
        claim_study(out, "validate", "k2", {"epochs": 3, "eval": {"chat": "c.jsonl"}})
    with pytest.raises(ValidationError, match="eval: \\{'chat': 'c.jsonl'\\} there, \\{'math': 'm.jsonl'\\} now"):
        claim_study(out, "validate", "k3", {"epochs": 1, "eval": {"math": "m.jsonl"}})

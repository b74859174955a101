"""Models (curation.scoring.models): what is loaded from a checkpoint folder, and what never is."""

from __future__ import annotations

import pickle

import pytest

from curation.scoring.models import ModelError, load_checkpoint
from tests.conftest import Planted


def test_a_checkpoint_with_pickled_weights_is_not_loaded(tmp_path, tiny_model_dir):
    ckpt = tmp_path / "ckpt-1"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(Planted(tmp_path / "PWNED")))
    with pytest.raises(ModelError, match="without model.safetensors"):
        load_checkpoint(str(tiny_model_dir), ckpt)
    assert not (tmp_path / "PWNED").exists()

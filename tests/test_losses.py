"""The batched scorer equals HF's own per-example loss, for any batching."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from curation.scoring.losses import (
    check_head_path, plan_batches, reference_loss, score_examples, shared_prefix, target_losses,
)
from curation.data.templates import encode_many, resolve_template

WORDS = "the fox jumps over lazy dog clips sold April May 48 72 1 + 2 = 3 eat sleep well".split()


def conversations(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        turns = int(rng.integers(1, 4))
        conv = [{"role": "system", "content": "Be kind."}] if k % 3 == 0 else []
        for _ in range(turns):
            conv.append({"role": "user", "content": " ".join(rng.choice(WORDS, int(rng.integers(1, 30))))})
            conv.append({"role": "assistant", "content": " ".join(rng.choice(WORDS, int(rng.integers(1, 80))))})
        out.append(conv)
    return out


@pytest.fixture(scope="module")
def encoded(tiny_lm):
    t = resolve_template(tiny_lm.tokenizer)
    enc = encode_many(tiny_lm.tokenizer, t, conversations(40), max_length=500)
    assert len({len(e.input_ids) for e in enc}) > 15  # mixed lengths
    assert 0 < sum(e.truncated for e in enc) < 10  # some cut at max_length
    return enc


@pytest.mark.parametrize("batch_tokens", [1, 64, 500, 4096, 100000])
def test_batched_loss_equals_hf_loss_alone(tiny_lm, encoded, batch_tokens):
    got = score_examples(tiny_lm.model, encoded, batch_tokens=batch_tokens, vocab_tile=37, pos_chunk=50)
    for enc, res in zip(encoded, got):
        ref = reference_loss(tiny_lm.model, enc)
        assert res.n_tokens == enc.n_response_tokens
        assert abs(res.loss - ref) < 1e-4
        assert res.loss_sum == pytest.approx(float(res.token_losses.astype(np.float64).sum()))
        assert (res.positions == np.flatnonzero(enc.target)).all()


def test_shared_prefix_runs_once_and_changes_no_loss(tiny_lm):
    """A long system prompt common to every example: computed once per batch, losses still exact."""
    t = resolve_template(tiny_lm.tokenizer)
    system = {"role": "system", "content": " ".join(WORDS * 2)}
    convs = [[system] + c for c in conversations(24, seed=3)]
    # Two conversations whose first exchange is identical: the prefix must stop before its targets.
    convs += [[system, {"role": "user", "content": "1 + 2"}, {"role": "assistant", "content": "3"}] + tail
              for tail in ([], [{"role": "user", "content": "again"}, {"role": "assistant", "content": "3 3"}])]
    enc = encode_many(tiny_lm.tokenizer, t, convs, max_length=400)
    for budget in (600, 2000, 100000):
        batches = [b for b in plan_batches([len(e.input_ids) for e in enc], budget) if len(b) > 1]
        assert batches and all(shared_prefix(enc, b) > 20 for b in batches)
        shared = score_examples(tiny_lm.model, enc, batch_tokens=budget, vocab_tile=29, pos_chunk=23)
        full = score_examples(tiny_lm.model, enc, batch_tokens=budget, share_prefix=False)
        for e, a, b in zip(enc, shared, full):
            assert abs(a.loss - reference_loss(tiny_lm.model, e)) < 1e-4
            np.testing.assert_allclose(a.token_losses, b.token_losses, atol=1e-5)
            assert (a.positions == b.positions).all()


def test_shared_prefix_stops_before_the_first_target():
    from curation.data.templates import Encoded

    def enc(ids, first_target):
        ids = np.array(ids, dtype=np.int32)
        target = np.zeros(len(ids), bool)
        target[first_target:] = True
        return Encoded(input_ids=ids, target=target, n_tokens_full=len(ids), truncated=False)

    a, b, c = enc([1, 2, 3, 4, 5, 6], 4), enc([1, 2, 3, 4, 9], 4), enc([1, 2, 7, 4, 5], 3)
    assert shared_prefix([a, b], [0, 1]) == 3  # identical up to 4, but position 3 predicts a target
    assert shared_prefix([a, b, c], [0, 1, 2]) == 2
    assert shared_prefix([a, enc([5, 2], 1)], [0, 1]) == 0


def test_token_losses_are_per_token_cross_entropy(tiny_lm, encoded):
    import torch

    enc = encoded[0]
    [res] = score_examples(tiny_lm.model, [enc])
    with torch.no_grad():
        logits = tiny_lm.model(torch.tensor(enc.input_ids[None], dtype=torch.long)).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    expected = [-logp[p - 1, enc.input_ids[p]].item() for p in res.positions]
    np.testing.assert_allclose(res.token_losses, expected, atol=1e-5)


@pytest.mark.parametrize("vocab_tile,pos_chunk", [(1, 7), (64, 1000), (100, 3), (1000, 1000)])
@pytest.mark.parametrize("softcap,bias", [(None, False), (30.0, True)])
def test_target_losses_equal_full_cross_entropy(vocab_tile, pos_chunk, softcap, bias):
    """Vocabulary tiles (uneven, or one tile) and position chunks give F.cross_entropy's losses."""
    import torch

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 211, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(211, 16, generator=g) * 3)  # large logits: exercises the lse
    h, labels = torch.randn(40, 16, generator=g), torch.randint(0, 211, (40,), generator=g)
    labels[:3] = torch.tensor([0, 210, 100])  # the first and last token ids
    with torch.no_grad():
        logits = head(h)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        expected = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        got = target_losses(head, h, labels, softcap, vocab_tile, pos_chunk)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        target_losses(head, h, torch.tensor([211]), softcap, vocab_tile, pos_chunk)


def test_truncated_example_without_targets_has_no_loss(tiny_lm):
    t = resolve_template(tiny_lm.tokenizer)
    [enc] = encode_many(tiny_lm.tokenizer, t, conversations(1), max_length=4)
    [res] = score_examples(tiny_lm.model, [enc])
    assert res.n_tokens == 0 and res.loss is None and reference_loss(tiny_lm.model, enc) is None


@given(st.lists(st.integers(1, 300), min_size=0, max_size=60), st.integers(1, 2000))
@settings(max_examples=200, deadline=None)
def test_plan_batches_covers_each_example_once_within_budget(lengths, budget):
    batches = plan_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget


def test_head_path_check_passes_for_llama(tiny_lm):
    check_head_path(tiny_lm.model)


@pytest.mark.integration  # torch.compile builds C++ kernels: ~35 s on 2 cores
def test_compiled_decoder_gives_the_same_losses(tiny_lm, encoded):
    eager = score_examples(tiny_lm.model, encoded[:6], batch_tokens=1000)
    fingerprint = tiny_lm.fingerprint
    compiled = score_examples(tiny_lm.model, encoded[:6], batch_tokens=1000, compile=True)
    for a, b in zip(eager, compiled):
        assert abs(a.loss - b.loss) < 1e-5
    from curation.scoring.models import weights_fingerprint

    assert weights_fingerprint(tiny_lm.model) == fingerprint  # the compiled handle is not a submodule


def pair_encodings(tokenizer, n=12, seed=5, max_length=400):
    """Encodings of ``n`` preference pairs as a pair pass scores them: prompt + chosen, prompt +
    rejected (every third prompt multi-turn, every fourth with a system prompt)."""
    rng = np.random.default_rng(seed)
    t = resolve_template(tokenizer)
    convs = []
    for k, conv in enumerate(conversations(n, seed=seed)):
        prompt = conv[:-1] if k % 3 == 0 else conv[:2][:1]  # ends with a user turn
        if k % 4 == 1:
            prompt = [{"role": "system", "content": " ".join(WORDS)}] + prompt
        for _ in range(2):
            response = " ".join(rng.choice(WORDS, int(rng.integers(1, 40))))
            convs.append(prompt + [{"role": "assistant", "content": response}])
    return encode_many(tokenizer, t, convs, max_length=max_length)


def response_only(enc):
    """``enc`` with its targets cut to the final assistant turn (the response of a pair)."""
    from curation.data.templates import Encoded

    target = enc.target.copy()
    target[: enc.response_start] = False
    return Encoded(enc.input_ids, target, enc.n_tokens_full, enc.truncated)


def test_a_planned_pair_runs_its_prompt_once_and_scores_each_response_as_hf_alone(tiny_lm):
    """A pair's two responses as one batch: the decoder sees every prompt position once (earlier
    assistant turns included) and, on a CPU, each response's positions once (no padding); each
    response's loss (its final-turn targets) is what HF gives for prompt + that response alone, as
    is the whole row's."""
    enc = pair_encodings(tiny_lm.tokenizer)
    assert any(len(np.flatnonzero(np.diff(e.target.astype(int)) == 1)) > 1 for e in enc)  # multi-turn prompts
    plan = [[2 * k, 2 * k + 1] for k in range(len(enc) // 2)]
    calls = []  # per decoder call: (rows, the positions of its first row)
    hook = tiny_lm.model.get_decoder().register_forward_pre_hook(
        lambda _, args, kw: calls.append((kw["input_ids"].shape[0], kw["position_ids"][0].tolist()
                                          if kw.get("position_ids") is not None
                                          else list(range(kw["input_ids"].shape[1])))) or None, with_kwargs=True)
    try:
        got = score_examples(tiny_lm.model, enc, plan=plan, vocab_tile=41, pos_chunk=19)
    finally:
        hook.remove()
    starts = [k for k, (_, pos) in enumerate(calls) if pos[0] == 0] + [len(calls)]  # each pair's prefix call
    assert len(starts) == len(plan) + 1
    for (a, b), k, end in zip(plan, starts, starts[1:]):
        prompt = enc[a].response_start
        assert prompt == enc[b].response_start and (enc[a].input_ids[:prompt] == enc[b].input_ids[:prompt]).all()
        assert calls[k] == (1, list(range(prompt)))  # the prompt once
        rows = calls[k + 1:end]  # then the responses: every position once, none of padding
        assert all(pos[0] == prompt for _, pos in rows)
        assert sum(n * len(pos) for n, pos in rows) == len(enc[a].input_ids) + len(enc[b].input_ids) - 2 * prompt
    for e, res in zip(enc, got):
        assert abs(res.loss - reference_loss(tiny_lm.model, e)) < 1e-4
        n = int(e.target[e.response_start:].sum())
        response = float(res.token_losses[-n:].astype(np.float64).sum()) / n
        assert abs(response - reference_loss(tiny_lm.model, response_only(e))) < 1e-4
    plain = score_examples(tiny_lm.model, enc, batch_tokens=64)
    for a, b in zip(got, plain):
        np.testing.assert_allclose(a.token_losses, b.token_losses, atol=1e-5)
        np.testing.assert_allclose(a.rds, b.rds, atol=1e-5)
        np.testing.assert_allclose(a.prompt_rds, b.prompt_rds, atol=1e-5)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_the_prompt_embedding_is_rds_pooling_of_the_prompt_alone(tiny_lm):
    """prompt_rds: RDS+'s position-weighted mean of HF's hidden_states[-1] over the prompt alone
    (the tokens before the final assistant turn), unit norm; from a plan's shared prefix or not."""
    import torch

    enc = pair_encodings(tiny_lm.tokenizer, n=6)
    planned = score_examples(tiny_lm.model, enc, plan=[[2 * k, 2 * k + 1] for k in range(len(enc) // 2)])
    plain = score_examples(tiny_lm.model, enc, batch_tokens=1)
    for e, a, b in zip(enc, planned, plain):
        ids = torch.tensor(e.input_ids[: e.response_start][None], dtype=torch.long)
        with torch.no_grad():
            h = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()
        w = torch.arange(1, len(ids[0]) + 1, dtype=torch.float32)
        want = torch.nn.functional.normalize((w[:, None] * h).sum(0) / w.sum(), dim=0).numpy()
        np.testing.assert_allclose(a.prompt_rds, want, atol=1e-4)
        np.testing.assert_allclose(b.prompt_rds, want, atol=1e-4)
        assert abs(np.linalg.norm(a.prompt_rds) - 1) < 1e-5


def test_a_plan_holds_every_example_once(tiny_lm, encoded):
    for plan in ([[0, 1]], [[0, 1], [1, 2]], [[0], [], [1, 2]]):
        with pytest.raises(ValueError, match="exactly once"):
            score_examples(tiny_lm.model, encoded[:3], plan=plan)

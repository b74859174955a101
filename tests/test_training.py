"""Reference training on the tiny model: batching, loss, learning, determinism, exact resume."""

import pytest

from curation.scoring.losses import reference_loss, score_examples
from curation.scoring.models import load_checkpoint
from curation.runs.training import (TrainConfig, checkpoint_steps, plan_steps,
                               sft_loss_sum, train)


@pytest.fixture(scope="module")
def data(tiny_tokenizer):
    from curation.data.templates import encode_many, resolve_template

    t = resolve_template(tiny_tokenizer)
    convs = [[{"role": "user", "content": f"What is {k} + {k}?"},
              {"role": "assistant", "content": f"{k} + {k} = {2 * k}. The quick brown fox " * (1 + k % 3)}]
             for k in range(16)]
    return encode_many(tiny_tokenizer, t, convs, 128)


def mean_loss(model, encoded):
    res = score_examples(model, encoded)
    return sum(r.loss_sum for r in res) / sum(r.n_tokens for r in res)


def cfg(**kw):
    return TrainConfig(**{"lr": 1e-2, "train_batch_tokens": 256, "grad_accum": 2, "epochs": 2, **kw})


def test_plan_covers_every_example_once_per_epoch(data):
    lengths = [len(e.input_ids) for e in data]
    c = cfg()
    for epoch in range(2):
        steps = plan_steps(lengths, c, epoch)
        seen = sorted(i for step in steps for mb in step for i in mb)
        assert seen == list(range(len(data)))
        assert all(1 <= len(step) <= c.grad_accum for step in steps)
        assert all(len(mb) * max(lengths[i] for i in mb) <= c.train_batch_tokens or len(mb) == 1
                   for step in steps for mb in step)
    assert plan_steps(lengths, c, 0) == plan_steps(lengths, c, 0)
    assert plan_steps(lengths, c, 0) != plan_steps(lengths, c, 1)  # reshuffled each epoch


def test_checkpoint_steps_are_evenly_spaced():
    assert checkpoint_steps(10, 3) == [0, 3, 7, 10]
    assert checkpoint_steps(4, 4) == [0, 1, 2, 3, 4]
    assert checkpoint_steps(2, 4) == [0, 0, 1, 2, 2]
    with pytest.raises(ValueError):
        checkpoint_steps(10, 0)


def test_config_validation():
    with pytest.raises(ValueError, match="grad.accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="warmup.ratio"):
        TrainConfig(warmup_ratio=1.5)
    assert TrainConfig().peak_lr == 5e-5 and TrainConfig(lora=True).peak_lr == 3e-4


def test_training_loss_is_the_scoring_loss(tiny_lm, data):
    """The training objective uses exactly the scorer's masking: per example it equals HF's loss,
    and over a padded batch the sum equals the sum of per-example sums."""
    import torch

    with torch.no_grad():
        for i in range(3):
            s, n = sft_loss_sum(tiny_lm.model, data, [i])
            assert float(s) / n == pytest.approx(reference_loss(tiny_lm.model, data[i]), abs=1e-4)
        s, n = sft_loss_sum(tiny_lm.model, data, list(range(6)))
    res = score_examples(tiny_lm.model, data[:6])
    assert n == sum(r.n_tokens for r in res)
    assert float(s) == pytest.approx(sum(r.loss_sum for r in res), rel=1e-5)


def test_training_lowers_the_loss_and_is_deterministic(tmp_path, tiny_model_dir, tiny_lm, data):
    before = mean_loss(tiny_lm.model, data)
    a = train(str(tiny_model_dir), tiny_lm.tokenizer, data, cfg(), tmp_path / "a", 3)
    assert len(a.checkpoints) == 3 and a.checkpoint_steps[0] == 0
    assert a.checkpoint_steps[-1] == a.total_steps == len(a.loss_curve)
    losses = [mean_loss(load_checkpoint(str(tiny_model_dir), c), data) for c in a.checkpoints]
    assert losses[-1] < 0.7 * before
    assert losses[0] > losses[-1]
    b = train(str(tiny_model_dir), tiny_lm.tokenizer, data, cfg(), tmp_path / "b", 3)
    assert [p["loss"] for p in a.loss_curve] == [p["loss"] for p in b.loss_curve]
    assert _weights(a.checkpoints[-1]) == _weights(b.checkpoints[-1])
    c = train(str(tiny_model_dir), tiny_lm.tokenizer, data, cfg(seed=1), tmp_path / "c", 3)
    assert _weights(c.checkpoints[-1]) != _weights(a.checkpoints[-1])
    # A finished run is not retrained.
    again = train(str(tiny_model_dir), tiny_lm.tokenizer, data, cfg(), tmp_path / "a", 3)
    assert again.loss_curve == a.loss_curve


class Stop(Exception):
    pass


@pytest.mark.parametrize("lora", [False, True])
def test_interrupted_training_resumes_exactly(tmp_path, tiny_model_dir, tiny_lm, data, lora):
    c = cfg(lora=lora, lora_dropout=0.1, save_every_s=0.0, lr=3e-3 if lora else 1e-2)
    full = train(str(tiny_model_dir), tiny_lm.tokenizer, data, c, tmp_path / "full", 2)

    def stop_at_5(**p):
        if p["done"] == 5:
            raise Stop

    with pytest.raises(Stop):
        train(str(tiny_model_dir), tiny_lm.tokenizer, data, c, tmp_path / "cut", 2, progress=stop_at_5)
    seen = []
    resumed = train(str(tiny_model_dir), tiny_lm.tokenizer, data, c, tmp_path / "cut", 2,
                    progress=lambda **p: seen.append(p["done"]))
    assert seen[0] == 5  # step 5 was lost with the kill (its state was not saved), nothing earlier
    assert [p["loss"] for p in resumed.loss_curve] == pytest.approx([p["loss"] for p in full.loss_curve], abs=1e-6)
    ma = load_checkpoint(str(tiny_model_dir), full.checkpoints[-1])
    mb = load_checkpoint(str(tiny_model_dir), resumed.checkpoints[-1])
    for (na, pa), (nb, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert na == nb and float((pa - pb).abs().max()) < 1e-6
    assert abs(mean_loss(ma, data) - mean_loss(mb, data)) < 1e-6
    if lora:
        assert (full.checkpoints[-1] / "adapter_config.json").is_file()


def test_resume_refuses_another_run(tmp_path, tiny_model_dir, tiny_lm, data):
    def stop(**p):
        if p["done"] == 2:  # step 1's state was saved
            raise Stop

    with pytest.raises(Stop):
        train(str(tiny_model_dir), tiny_lm.tokenizer, data, cfg(save_every_s=0.0), tmp_path / "x", 2, progress=stop)
    with pytest.raises(ValueError, match="another training run"):
        train(str(tiny_model_dir), tiny_lm.tokenizer, data, cfg(lr=1e-3), tmp_path / "x", 2)


def _weights(ckpt):
    from safetensors.numpy import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    return [(k, v.tobytes()) for f in files for k, v in sorted(load_file(f).items())]


def test_our_own_resume_state_holds_no_pickle(tmp_path, tiny_model_dir, tiny_lm):
    from curation.data.templates import encode_many, resolve_template

    enc = encode_many(tiny_lm.tokenizer, resolve_template(tiny_lm.tokenizer), [
        [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"answer {k}"}] for k in range(6)], 64)
    train(str(tiny_model_dir), tiny_lm.tokenizer, enc, TrainConfig(lr=1e-3, save_every_s=0.0), tmp_path / "t", 1)
    files = sorted(p.name for p in (tmp_path / "t" / "state").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    assert not list((tmp_path / "t").rglob("*.pt")) and not list((tmp_path / "t").rglob("*.bin"))


def test_target_nll_gives_each_target_tokens_loss_with_its_row(tiny_lm, data):
    """The one training forward: per target token, the scorer's token loss, tagged with its row in
    the batch (SFT sums them all, DPO per row)."""
    import numpy as np
    import torch

    from curation.runs.training import target_nll

    batch = [5, 0, 3]
    with torch.no_grad():
        nll, rows = target_nll(tiny_lm.model, data, batch)
    res = score_examples(tiny_lm.model, [data[i] for i in batch])
    assert rows.tolist() == [r for r, x in enumerate(res) for _ in range(x.n_tokens)]
    np.testing.assert_allclose(nll.numpy(), np.concatenate([x.token_losses for x in res]), atol=1e-5)
    empty = type(data[0])(data[0].input_ids, np.zeros_like(data[0].target), len(data[0].input_ids), False)
    assert target_nll(tiny_lm.model, [empty], [0]) == (None, None)

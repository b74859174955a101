"""DPO on the tiny model: exact per-response log-probs, the two objectives on hand-computed numbers,
refused pairs, a step's gradient whatever its micro-batches, training, exact resume, Ray Train."""

import math
import os
from dataclasses import replace

import numpy as np
import pytest

from curation.runs.dpo import (DPOConfig, DPOObjective, pair_objective, pair_problem, response_logps,
                               score_pairs, with_reference_logps)
from curation.runs.training import accumulate_step, train
from curation.scoring.losses import reference_loss
from curation.scoring.models import load_checkpoint
from tests.conftest import StopTraining, checkpoint_weights, stop_at


def prompts(n):
    return [[{"role": "user", "content": f"What is {k} + {k}?"}] for k in range(n)]


@pytest.fixture(scope="module")
def encoded_pairs(tiny_tokenizer):
    """12 pairs of responses of different lengths: ``(chosen, rejected)`` Encoded lists."""
    from curation.data.templates import encode_many, resolve_template

    t = resolve_template(tiny_tokenizer)
    chosen = [p + [{"role": "assistant", "content": f"{k} + {k} = {2 * k}." + " The quick brown fox" * (k % 3)}]
              for k, p in enumerate(prompts(12))]
    rejected = [p + [{"role": "assistant", "content": f"{k} + {k} = {2 * k + 1}, 1 + 1 = 2" * (1 + k % 2)}]
                for k, p in enumerate(prompts(12))]
    return encode_many(tiny_tokenizer, t, chosen, 128), encode_many(tiny_tokenizer, t, rejected, 128)


@pytest.fixture(scope="module")
def ref_model(tiny_tokenizer):
    """A second tiny model (another seed) as the reference: log-ratios are not 0 at the start."""
    from tests.conftest import build_tiny_model

    return build_tiny_model(len(tiny_tokenizer), seed=1)


@pytest.fixture(scope="module")
def pairs(tiny_lm, encoded_pairs):
    """The pairs with the tiny model's own log-probs as the reference (the base pass)."""
    return with_reference_logps(tiny_lm.model, *encoded_pairs)


def cfg(**kw):
    return DPOConfig(**{"lr": 1e-2, "train_batch_tokens": 256, "grad_accum": 2, "epochs": 3, **kw})


def test_response_log_probs_are_hf_losses_times_tokens(tiny_lm, encoded_pairs):
    """Each row's summed log-prob in a padded batch is ``-model(input_ids, labels).loss * n_targets``
    of that row alone (the scorer's exactness contract), with autograd on."""
    chosen, rejected = encoded_pairs
    rows = [*chosen[:4], *rejected[:4]]
    lp = response_logps(tiny_lm.model, rows, range(len(rows)))
    assert lp.requires_grad
    for k, e in enumerate(rows):
        assert float(lp[k].detach()) == pytest.approx(-reference_loss(tiny_lm.model, e) * e.n_response_tokens, abs=1e-5)
    assert len({len(e.input_ids) for e in rows}) > 2  # the batch was padded


def test_the_objectives_on_hand_computed_numbers():
    import torch

    t = torch.tensor
    pc, pr, rc, rr = t([-10.0, -4.0]), t([-12.0, -3.0]), t([-11.0, -4.0]), t([-11.5, -3.5])
    for kind in ("sigmoid", "davir"):
        out = pair_objective(kind, 0.1, pc, pr, rc, rr)
        # pair 0: log-ratios +1 and -0.5; pair 1: 0 and +0.5
        assert out["reward_chosen"].tolist() == pytest.approx([0.1, 0.0])
        assert out["reward_rejected"].tolist() == pytest.approx([-0.05, 0.05])
        assert out["reward_margin"].tolist() == pytest.approx([0.15, -0.05])
        assert out["davir_margin"].tolist() == pytest.approx([1 / 11 + 0.5 / 11.5, 0 - 0.5 / 3.5])
    z_sigmoid = [0.1 * 1.5, 0.1 * -0.5]
    z_davir = [0.1 * (1 / 11 + 0.5 / 11.5), 0.1 * (-0.5 / 3.5)]
    for kind, z in (("sigmoid", z_sigmoid), ("davir", z_davir)):
        loss = pair_objective(kind, 0.1, pc, pr, rc, rr)["loss"]
        assert loss.tolist() == pytest.approx([math.log1p(math.exp(-v)) for v in z], rel=1e-6)
    with pytest.raises(ValueError, match="dpo_loss"):
        pair_objective("ipo", 0.1, pc, pr, rc, rr)


def test_davir_is_vanilla_dpo_when_every_reference_log_prob_is_minus_one():
    import torch

    g = torch.Generator().manual_seed(0)
    pc, pr = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    ones = -torch.ones(50, dtype=torch.float64)
    a, b = (pair_objective(k, 0.3, pc, pr, ones, ones)["loss"] for k in ("sigmoid", "davir"))
    assert torch.equal(a, b)
    other = pair_objective("davir", 0.3, pc, pr, 2 * ones, ones)["loss"]
    assert not torch.allclose(a, other)


def test_pairs_that_cannot_be_trained_on_are_refused_with_their_reason(pairs, tmp_path, tiny_model_dir, tiny_lm):

    p = pairs[0]
    assert pair_problem(p, "davir") is None
    zero = replace(p, ref_rejected=0.0)
    assert "base log-prob of the rejected response is 0" in pair_problem(zero, "davir")
    assert pair_problem(zero, "sigmoid") is None  # vanilla DPO does not divide by it
    assert "finite number <= 0" in pair_problem(replace(p, ref_chosen=float("nan")), "sigmoid")
    assert "finite number <= 0" in pair_problem(replace(p, ref_chosen=0.5), "sigmoid")
    empty = replace(p, chosen=replace(p.chosen, target=np.zeros_like(p.chosen.target)))
    assert "chosen response has no token" in pair_problem(empty, "sigmoid")
    bad = [*pairs[:3], replace(zero, pair_id="abc")]
    with pytest.raises(ValueError, match=r"pair #3 \(abc\): the base log-prob of the rejected response is 0"):
        train(str(tiny_model_dir), tiny_lm.tokenizer, bad, cfg(), tmp_path / "x", 1)
    with pytest.raises(ValueError, match="DPO trains on pairs"):
        train(str(tiny_model_dir), tiny_lm.tokenizer, [p.chosen for p in pairs], cfg(), tmp_path / "y", 1)
    with pytest.raises(ValueError, match="dpo-loss"):
        DPOConfig(dpo_loss="ipo")
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)


def test_a_dpo_step_is_the_mean_over_its_pairs_whatever_its_micro_batches(tiny_model_dir, encoded_pairs, ref_model):
    """The gradient a step accumulates equals the gradient of the mean pair loss computed from
    plain HF forward passes, one response at a time, however the step's pairs are split."""
    import torch

    pairs = with_reference_logps(ref_model, *encoded_pairs)[:6]
    model = load_checkpoint(str(tiny_model_dir), tiny_model_dir)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(split):
        model.zero_grad(set_to_none=True)
        totals = accumulate_step(model, DPOObjective("davir", 0.1), pairs, split, len(pairs))
        return totals, [p.grad.clone() for p in params]

    def hf_logp(e):
        ids = torch.from_numpy(e.input_ids.astype(np.int64))[None]
        labels = ids.masked_fill(torch.from_numpy(~e.target)[None], -100)
        return -model(input_ids=ids, labels=labels).loss.double() * e.n_response_tokens

    model.zero_grad(set_to_none=True)
    lc, lr = (torch.stack([hf_logp(getattr(p, side)) for p in pairs]) for side in ("chosen", "rejected"))
    ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p in pairs], dtype=torch.float64)
    expected = pair_objective("davir", 0.1, lc, lr, ref[:, 0], ref[:, 1])["loss"].mean()
    expected.backward()
    want = [p.grad.clone() for p in params]
    assert abs(float(expected.detach()) - math.log(2)) > 1e-4  # the reference is another model: log-ratios are not 0

    for split in ([[0, 1, 2, 3, 4, 5]], [[0], [1, 2], [3, 4, 5]], [[5, 3], [0, 4, 1], [2]]):
        totals, got = grads(split)
        assert totals[0] / len(pairs) == pytest.approx(float(expected.detach()), abs=1e-6)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


def test_dpo_training_learns_the_preferences_and_is_deterministic(tmp_path, tiny_model_dir, tiny_lm, pairs):
    before = score_pairs(tiny_lm.model, pairs).metrics()
    a = train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, cfg(), tmp_path / "a", 2)
    assert a.total_steps == len(a.loss_curve) == a.checkpoint_steps[-1]
    point = a.loss_curve[-1]
    assert list(point) == ["step", "loss", "reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin",
                           "davir_margin", "lr", "tokens"]
    n_tokens = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
    assert point["tokens"] == 3 * n_tokens  # both responses, every epoch
    after = score_pairs(load_checkpoint(str(tiny_model_dir), a.checkpoints[-1]), pairs).metrics()
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference
    assert after["reward_accuracy"] == 1.0 and after["davir_margin"] > 0.3 and after["loss"] < before["loss"] - 0.03
    b = train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, cfg(), tmp_path / "b", 2)
    assert a.loss_curve == b.loss_curve
    assert checkpoint_weights(a.checkpoints[-1]) == checkpoint_weights(b.checkpoints[-1])
    s = train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, cfg(dpo_loss="sigmoid"), tmp_path / "s", 2)
    assert "davir_margin" not in s.loss_curve[-1] and s.loss_curve[-1]["loss"] < 0.1
    assert checkpoint_weights(s.checkpoints[-1]) != checkpoint_weights(a.checkpoints[-1])


@pytest.mark.parametrize("lora", [False, True])
def test_interrupted_dpo_training_resumes_exactly(tmp_path, tiny_model_dir, tiny_lm, pairs, lora):
    """Killed after step 4's saved state, another beta is refused and the same run continues to
    the very weights and curve of an uninterrupted run."""
    c = cfg(lora=lora, lora_dropout=0.1, save_every_s=0.0, lr=3e-3 if lora else 1e-2)

    def run(out, config=c, progress=None):
        return train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, config, tmp_path / out, 2, progress=progress)

    full = run("full")
    with pytest.raises(StopTraining):
        run("cut", progress=stop_at(5))
    with pytest.raises(ValueError, match="another training run"):
        run("cut", replace(c, beta=0.2))
    seen = []
    resumed = run("cut", progress=lambda **p: seen.append(p))
    assert seen[0]["done"] == 5 and "reward_accuracy" in seen[0]
    assert [list(p.values()) for p in resumed.loss_curve] == [list(p.values()) for p in full.loss_curve]
    assert checkpoint_weights(resumed.checkpoints[-1]) == checkpoint_weights(full.checkpoints[-1])


def test_dpo_config_defaults_and_result_key():
    c = DPOConfig()
    assert (c.dpo_loss, c.beta) == ("davir", 0.1)
    assert c.peak_lr == 5e-6 and DPOConfig(lora=True).peak_lr == 5e-5 and DPOConfig(lr=1e-3).peak_lr == 1e-3
    key = c.result_key()
    assert key["dpo_loss"] == "davir" and key["beta"] == 0.1 and key["lr"] == 5e-6
    assert DPOConfig(beta=0.2).result_key() != key and DPOConfig(save_every_s=1.0).result_key() == key


def test_dpo_settings_on_the_command_line():
    """The CLI and the forms are built from the config's fields: --dpo-loss (choices), --beta, --lr with DPO's help."""
    import argparse

    from curation.config import add_arguments, field_info, from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, DPOConfig)
    c = from_arguments(DPOConfig, parser.parse_args(["--dpo-loss", "sigmoid", "--beta", "0.5", "--lora"]))
    assert (c.dpo_loss, c.beta, c.lora, c.peak_lr) == ("sigmoid", 0.5, True, 5e-5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dpo-loss", "ipo"])
    assert "5e-06 full" in field_info(DPOConfig, "lr")["help"]


@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the Ray engine's watchdog needs /proc (Linux)")
def test_dpo_on_two_ray_train_workers_matches_one_process(tmp_path, tiny_model_dir, tiny_lm, pairs):
    """The pairs travel as packed arrays; each step's micro-batches are dealt over 2 workers and the
    step's loss and metrics are summed over them: the curve equals one process's."""
    pytest.importorskip("ray", reason="--engine ray needs the ray package (requirements.txt)")
    from curation.config import ComputeConfig
    from curation.scoring.engine import open_engine

    c = cfg(grad_accum=4)
    local = train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, c, tmp_path / "local", 2)
    with open_engine(ComputeConfig(engine="ray", workers=2)) as engine:
        seen = []
        on_ray = train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, c, tmp_path / "ray", 2,
                       progress=lambda **p: seen.append(p), engine=engine)
    assert on_ray.total_steps == local.total_steps and len(on_ray.loss_curve) == len(local.loss_curve)
    for a, b in zip(local.loss_curve, on_ray.loss_curve):
        assert a.keys() == b.keys() and a["tokens"] == b["tokens"]
        assert all(abs(a[k] - b[k]) < 1e-5 for k in a), (a, b)
    assert seen and seen[-1]["done"] == local.total_steps
    ma, mb = (load_checkpoint(str(tiny_model_dir), r.checkpoints[-1]) for r in (local, on_ray))
    for (na, pa), (nb, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert na == nb and float((pa - pb).abs().max()) < 1e-5


@pytest.mark.parametrize("lora", [False, True])
def test_activation_checkpointing_trains_to_the_same_weights(tmp_path, tiny_model_dir, tiny_lm, pairs, lora):
    """Recomputing activations (DPO's default: a micro-batch holds at least a whole pair) changes
    memory, not numbers: the same curve and weights as keeping them, so it stays out of the training
    cache's key; ``auto`` means on for DPO, off for SFT."""
    from curation.runs.training import TrainConfig, load_trainable

    assert DPOConfig().checkpoints_activations and not TrainConfig().checkpoints_activations
    assert TrainConfig(activation_checkpointing="on").checkpoints_activations
    assert not DPOConfig(activation_checkpointing="off").checkpoints_activations
    assert DPOConfig(activation_checkpointing="off").result_key() == DPOConfig().result_key()
    with pytest.raises(ValueError, match="activation-checkpointing must be one of auto, on, off"):
        DPOConfig(activation_checkpointing="yes")
    c = cfg(lora=lora, lr=3e-3 if lora else 1e-2, epochs=2)
    assert load_trainable(str(tiny_model_dir), c, "cpu").is_activation_checkpointing
    off = replace(c, activation_checkpointing="off")
    assert not load_trainable(str(tiny_model_dir), off, "cpu").is_activation_checkpointing
    on_run = train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, c, tmp_path / "on", 2)
    off_run = train(str(tiny_model_dir), tiny_lm.tokenizer, pairs, off, tmp_path / "off", 2)
    assert on_run.loss_curve == off_run.loss_curve
    assert checkpoint_weights(on_run.checkpoints[-1]) == checkpoint_weights(off_run.checkpoints[-1])

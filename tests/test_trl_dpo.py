"""DavIR-DPO in TRL (the pinned trl): on the same batch its loss is the product trainer's, for DavIR-DPO
and for vanilla DPO (TRL's own sigmoid), on the same tokens; it trains a tiny model; it refuses what
DavIR-DPO cannot normalise."""

import math
import os

import pytest

pytest.importorskip("trl", reason="the TRL integration needs trl (requirements.txt)")

from curation.runs.dpo import DPOConfig, score_pairs, with_reference_logps  # noqa: E402
from curation.runs.training import train  # noqa: E402

N_PAIRS = 4


def rows(n=N_PAIRS):
    """TRL conversational pairs (what ``export --style dpo`` writes), responses of different lengths."""
    return [{"prompt": [{"role": "user", "content": f"What is {k} + {k}?"}],
             "chosen": [{"role": "assistant", "content": f"{k} + {k} = {2 * k}." + " The quick brown fox" * (k % 3)}],
             "rejected": [{"role": "assistant", "content": f"{k} + {k} = {2 * k + 1}, 1 + 1 = 2" * (1 + k % 2)}]}
            for k in range(n)]


@pytest.fixture(scope="module")
def ref_model(tiny_tokenizer):
    """The reference: another tiny model, so the log-ratios are not 0 on the first batch."""
    from tests.conftest import build_tiny_model

    return build_tiny_model(len(tiny_tokenizer), seed=1)


def trl_trainer(tiny_model_dir, tiny_tokenizer, ref_model, tmp_path, loss_type, davir=True, **kw):
    """A trainer on :func:`rows` in float32 (TRL would autocast to bf16 where it can, also on CPU),
    the reference's log-probs precomputed (the product's way: the reference never runs in training)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from curation.export.trl_dpo import DavirDPOTrainer

    args = TRLConfig(**{"output_dir": str(tmp_path / "trl"), "loss_type": loss_type, "beta": 0.1,
                        "precompute_ref_log_probs": True, "per_device_train_batch_size": N_PAIRS, "max_length": None,
                        "bf16": False, "use_cpu": True, "report_to": [], "save_strategy": "no", "logging_steps": 1,
                        "seed": 0, **kw})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # its own copy: TRL patches its forward
    return (DavirDPOTrainer if davir else DPOTrainer)(model=model, ref_model=ref_model, args=args,
                                                      train_dataset=Dataset.from_list(rows()),
                                                      processing_class=tiny_tokenizer)


def product_pairs(tokenizer, ref_model):
    from curation.data.templates import encode_many, resolve_template

    t = resolve_template(tokenizer)
    enc = [encode_many(tokenizer, t, [r["prompt"] + r[side] for r in rows()], 10**6) for side in ("chosen", "rejected")]
    return enc, with_reference_logps(ref_model, *enc)


@pytest.mark.parametrize("loss_type,davir", [("davir", True), ("sigmoid", True), ("sigmoid", False)])
def test_trl_loss_on_a_batch_equals_the_product_trainers(tmp_path, tiny_model_dir, tiny_tokenizer, tiny_lm,
                                                         ref_model, loss_type, davir):
    import torch

    trainer = trl_trainer(tiny_model_dir, tiny_tokenizer, ref_model, tmp_path, loss_type, davir)
    batch = next(iter(trainer.get_train_dataloader()))  # every pair, in TRL's shuffled order
    (chosen, rejected), pairs = product_pairs(tiny_tokenizer, ref_model)
    # The same tokens and targets: TRL's completion mask is the product's assistant-token mask.
    ours = {tuple(e.input_ids.tolist()): e.target.tolist() for e in [*chosen, *rejected]}
    for ids, mask, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        n = int(mask.sum())
        assert ours[tuple(ids[:n].tolist())] == completion[:n].bool().tolist()
    refs = sorted([p.ref_chosen for p in pairs] + [p.ref_rejected for p in pairs])
    trl_refs = sorted(batch["ref_chosen_logps"].tolist() + batch["ref_rejected_logps"].tolist())
    assert trl_refs == pytest.approx(refs, abs=1e-4)  # TRL's reference pass = the product's scorer

    trainer.model.eval()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
    product = score_pairs(tiny_lm.model, pairs, loss_type, 0.1).metrics()
    assert abs(product["loss"] - math.log(2)) > 1e-4  # not the trivial start (policy = reference)
    assert trl_loss == pytest.approx(product["loss"], abs=1e-5)
    # The product trainer's own first step (every pair in one step) reports the same loss.
    first = train(str(tiny_model_dir), tiny_tokenizer, pairs, DPOConfig(dpo_loss=loss_type, train_batch_tokens=1 << 14),
                  tmp_path / "product", 1).loss_curve[0]
    assert trl_loss == pytest.approx(first["loss"], abs=1e-5)
    if davir:
        logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
        assert logged["rewards/accuracies"] == pytest.approx(product["reward_accuracy"])
        assert logged["rewards/margins"] == pytest.approx(product["reward_margin"], abs=1e-5)
        if loss_type == "davir":
            assert logged["rewards/davir_margins"] == pytest.approx(product["davir_margin"], abs=1e-6)


def test_davir_dpo_in_trl_trains_a_tiny_model(tmp_path, tiny_model_dir, tiny_tokenizer, ref_model):
    trainer = trl_trainer(tiny_model_dir, tiny_tokenizer, ref_model, tmp_path, "davir", max_steps=8,
                          learning_rate=1e-2, lr_scheduler_type="constant")
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 8 and "rewards/davir_margins" in logs[0]
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.01
    assert logs[-1]["rewards/davir_margins"] > logs[0]["rewards/davir_margins"]


def test_davir_in_trl_refuses_what_it_cannot_normalise(tmp_path, tiny_model_dir, tiny_tokenizer, ref_model):
    trainer = trl_trainer(tiny_model_dir, tiny_tokenizer, ref_model, tmp_path, "davir")
    batch = next(iter(trainer.get_train_dataloader()))
    batch["ref_rejected_logps"][1] = 0.0
    with pytest.raises(ValueError, match="reference log-prob of 0"):
        trainer.compute_loss(trainer.model, batch)
    with pytest.raises(ValueError, match="cannot be combined"):
        trl_trainer(tiny_model_dir, tiny_tokenizer, ref_model, tmp_path, ["davir", "sigmoid"])
    with pytest.raises(ValueError, match="ld_alpha"):
        trl_trainer(tiny_model_dir, tiny_tokenizer, ref_model, tmp_path, "davir", ld_alpha=0.5)

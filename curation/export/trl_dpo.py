"""DavIR-DPO in TRL: what a curator hands to their own trainer (a GPU, a large model, TRL).

``DavirDPOTrainer`` is TRL's ``DPOTrainer`` (the pinned trl==1.16.0) that also understands
``loss_type="davir"``: the DavIR-DPO objective, computed by the product's own function
(:func:`curation.runs.dpo.pair_objective`, the one the product's trainer uses), so both train the
same objective and a test holds them to the same loss on the same batch (1e-5).  Every other
``loss_type`` (``sigmoid``, ...) is TRL's own code, untouched.

The objective, as summarised from DavIR v2 (arXiv 2310.13008 v2; the paper's text is not reachable
here, so this summary is the working definition): with log-probs summed over a response's tokens,

    L = -log sigmoid( beta * [ (log p_theta(y_w|x) - log p_ref(y_w|x)) / |log p_ref(y_w|x)|
                             - (log p_theta(y_l|x) - log p_ref(y_l|x)) / |log p_ref(y_l|x)| ] )

i.e. vanilla DPO with each side's log-ratio divided by the reference model's NLL of that response
(its relative loss drop, DavIR's learnability), reported to lower the objective's correlation with
the pair's length difference from 0.38 to 0.07 and to gain 8% (relative) on AlpacaEval with
Zephyr-7B-SFT.  TRL's ``sigmoid_norm`` divides by the token count instead; it is not this.

Usage (the pairs ``export --style dpo`` writes are TRL conversational rows; the README's "DavIR-DPO
in TRL" has the whole example)::

    from trl import DPOConfig
    from curation.export.trl_dpo import DavirDPOTrainer

    args = DPOConfig(output_dir="dpo-davir", loss_type="davir", beta=0.1, precompute_ref_log_probs=True)
    DavirDPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer).train()

Why a subclass that overrides ``compute_loss`` (TRL 1.16's ``_compute_loss`` has no hook for a
custom loss): only the loss changes, so the override computes the policy's log-probs exactly as
``_compute_loss`` does (``model(..., labels=..., fused_lm_head=True).log_probs`` summed over the
completion mask of TRL's collator, rows ``[chosen..., rejected...]``), takes the reference's from
the batch (``precompute_ref_log_probs=True``) or from TRL's public ``compute_ref_log_probs``, and
logs TRL's reward metrics (plus ``rewards/davir_margins``) into TRL's ``_metrics``.  What it relies
on in TRL, so what to re-check when TRL moves: the collator's keys (``input_ids, attention_mask,
completion_mask, ref_chosen_logps, ref_rejected_logps``), the fused LM head TRL installs on the
model in ``__init__``, ``compute_ref_log_probs`` and ``_metrics``.  ``ld_alpha`` and
``use_weighting`` (TRL's other per-sequence reweightings) are refused with ``davir``.

A pair whose reference log-prob is 0 (an empty response, or one the reference is certain of) cannot
be normalised: the batch is refused with one line; leave such pairs out of the dataset (the
product's pair runs name them with :func:`curation.runs.dpo.pair_problem`).  TRL trains in bf16 by
default where the hardware has it (also on CPU); ``bf16=False`` gives float32, as the equality test
uses.
"""

from __future__ import annotations

from functools import cache

from curation.runs.dpo import pair_objective

LOSS_TYPE = "davir"
TRL_VERSION = "1.16.0"  # the version the integration is written against and tested with (requirements.txt)
BATCH_ONLY = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")  # collator keys that are not model inputs


def __getattr__(name: str):
    # The subclass is built on first use, so importing this module does not import trl (seconds).
    if name == "DavirDPOTrainer":
        return trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def policy_logps(model, inputs: dict):
    """``(chosen, rejected)`` log-probs (P,) of a batch of TRL's preference collator, summed over each
    completion, computed as TRL 1.16's ``DPOTrainer._compute_loss`` computes them; and the model's
    output (its ``aux_loss`` for mixture-of-experts models)."""
    completion_mask = inputs["completion_mask"]  # (2P, T): rows [chosen..., rejected...]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    model_kwargs = {k: v for k, v in inputs.items() if k not in BATCH_ONLY}
    outputs = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
    seq_len = completion_mask.size(1) - 1  # log_probs[:, t] is token t+1's (prompt-learning PEFT prepends more)
    logps = outputs.log_probs[:, -seq_len:].sum(dim=1)  # (2P,)
    chosen, rejected = logps.chunk(2, dim=0)
    return chosen, rejected, outputs


@cache
def trainer_class():
    """``DavirDPOTrainer``: TRL's ``DPOTrainer`` with ``loss_type="davir"`` (see the module docstring)."""
    import torch
    from trl import DPOTrainer

    class DavirDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer that also trains with ``loss_type="davir"`` (DavIR-DPO, the product's
        :func:`curation.runs.dpo.pair_objective`); every other loss type is TRL's own."""

        _tag_names = [*DPOTrainer._tag_names, "davir-dpo"]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if LOSS_TYPE in self.loss_types:
                if self.loss_types != [LOSS_TYPE]:
                    raise ValueError(f"loss_type {self.loss_types}: davir cannot be combined with other loss types; "
                                     "use loss_type='davir' alone")
                if self.ld_alpha is not None or self.use_weighting:
                    raise ValueError("loss_type='davir' reweights each side by the reference's NLL itself: set "
                                     "ld_alpha=None and use_weighting=False")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.loss_types != [LOSS_TYPE]:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            chosen, rejected, outputs = policy_logps(model, inputs)
            if self.precompute_ref_logps:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = self.compute_ref_log_probs(
                    self.ref_model if self.ref_model is not None else self.model, inputs)
            if bool((ref_chosen == 0).any() or (ref_rejected == 0).any()):
                raise ValueError("loss_type='davir': a pair of this batch has a reference log-prob of 0 (an empty "
                                 "response, or one the reference model is certain of), which DavIR-DPO cannot "
                                 "normalise; leave such pairs out of the dataset or use loss_type='sigmoid'")
            out = pair_objective(LOSS_TYPE, self.beta, chosen, rejected, ref_chosen.to(chosen), ref_rejected.to(chosen))
            loss = out["loss"].mean()
            if self.aux_loss_enabled:
                loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self.log_pair_metrics(out, chosen, rejected)
            if return_outputs:  # as TRL does: the fused head builds no logits, so evaluation recomputes them
                with torch.no_grad():
                    outputs = model(**{k: v for k, v in inputs.items() if k not in BATCH_ONLY})
                return loss, outputs
            return loss

        def log_pair_metrics(self, out: dict, chosen, rejected) -> None:
            """TRL's reward metrics (and the davir margin), gathered over processes, for TRL's ``log``."""
            metrics = self._metrics["train" if self.model.training else "eval"]
            gather = self.accelerator.gather
            for key, values in (("rewards/chosen", out["reward_chosen"]), ("rewards/rejected", out["reward_rejected"]),
                                ("rewards/accuracies", (out["reward_margin"] > 0).float()),
                                ("rewards/margins", out["reward_margin"]),
                                ("rewards/davir_margins", out["davir_margin"]),
                                ("logps/chosen", chosen.detach()), ("logps/rejected", rejected.detach())):
                metrics[key].append(gather(values).mean().item())

    return DavirDPOTrainer

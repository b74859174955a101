"""DPO on preference pairs: the two objectives, the pair items and the DPO objective of the training loop.

Naming (the design every pair module shares): the *base* model is DPO's reference policy; its
log-probs are precomputed by the base pass (as TRL's ``precompute_ref_log_probs``) and never run in
training.  The *trained* model is the policy.  ``logp`` is a response's log-prob given the prompt,
summed over its assistant tokens (exactly the tokens, template, masking, end-of-turn marker and max
length of scoring prompt + response as an SFT example: ``logp = -loss_sum``).  For a pair
(chosen ``w``, rejected ``l``) and ``lr = logp_policy - logp_ref``:

    reward(y)      = beta * lr(y)
    reward_margin  = reward(w) - reward(l)
    davir(y)       = lr(y) / |logp_ref(y)|      = (L_base - L_trained) / L_base, SFT davir's relative loss drop
    davir_margin   = davir(w) - davir(l)

    sigmoid (vanilla DPO, Rafailov et al. 2023):   loss = -log sigmoid(beta * (lr(w) - lr(l)))
    davir   (DavIR-DPO, arXiv 2310.13008 v2):      loss = -log sigmoid(beta * davir_margin)

DavIR-DPO divides each side's log-ratio by the reference's NLL of that response, so a long response
(large |logp_ref|) does not dominate the margin; as summarised from the paper (its text is not
reachable here, so this is the working definition), it lowers the objective's correlation with the
pair's length difference from 0.38 to 0.07.  With every ``|logp_ref| = 1`` the two coincide.

A step's loss is the mean over its pairs (TRL's convention), however the step is split into
micro-batches or ranks.  A pair that cannot be trained on (a response without tokens, a reference
log-prob that is not a finite number <= 0, or for DavIR-DPO a reference log-prob of 0, which cannot
be normalised) is refused by :meth:`DPOObjective.usable` rather than dropped: the caller that builds
the pairs from the base pass (the pair learn run, a pair validation) leaves such pairs out first,
recording :func:`pair_problem`'s reason with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from curation.config import option
from curation.data.templates import Encoded, pack_encoded, unpack_encoded
from curation.runs.training import TrainConfig, target_nll

DPO_LOSSES = ("sigmoid", "davir")
# Measured on the default 135M model (README, "DPO training"): TRL's default, 1e-6, barely moves it
# in a few epochs; these move the held-out reward accuracy without wrecking the chosen responses' NLL.
DEFAULT_DPO_LR_FULL = 5e-6
DEFAULT_DPO_LR_LORA = 5e-5
MAX_BETA = 1000.0


def dpo_loss_option(scope: str = ""):
    """The ``dpo_loss`` field of a config (DPOConfig's; the learn run's, ``scope`` saying where it applies)."""
    return option("davir", f"{scope}DPO objective: davir (DavIR-DPO: each side's log-ratio divided by the base "
                           "model's NLL of that response) or sigmoid (vanilla DPO)", choices=DPO_LOSSES)


def beta_option(scope: str = ""):
    """The ``beta`` field of a config (DPOConfig's; the learn run's, ``scope`` saying where it applies)."""
    return option(0.1, f"{scope}DPO's beta: the strength of the pull towards the base model (reward = beta x "
                       "log-ratio)")


def check_dpo_settings(cfg) -> None:
    """Refuse a config's ``dpo_loss`` or ``beta`` outside their range (one line)."""
    if cfg.dpo_loss not in DPO_LOSSES:
        raise ValueError(f"dpo-loss must be one of {', '.join(DPO_LOSSES)}, got {cfg.dpo_loss!r}")
    if not (isinstance(cfg.beta, (int, float)) and 0 < cfg.beta <= MAX_BETA):
        raise ValueError(f"beta must be a number in (0, {MAX_BETA:g}], got {cfg.beta!r}")


@dataclass(kw_only=True)
class DPOConfig(TrainConfig):
    """Settings of a DPO training (a pair learn run and a pair validation extend it): the
    fine-tuning settings of :class:`TrainConfig` with DPO's objective, beta and learning rates."""

    lr: float | None = option(None, f"peak learning rate (default {DEFAULT_DPO_LR_FULL:g} full, "
                                    f"{DEFAULT_DPO_LR_LORA:g} LoRA: measured on the default model, README)")
    dpo_loss: str = dpo_loss_option()
    beta: float = beta_option()

    def __post_init__(self):
        super().__post_init__()
        check_dpo_settings(self)

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_DPO_LR_LORA if self.lora else DEFAULT_DPO_LR_FULL

    def result_key(self) -> dict:
        return {**super().result_key(), "dpo_loss": self.dpo_loss, "beta": self.beta}

    def objective(self) -> "DPOObjective":
        return DPOObjective(self.dpo_loss, self.beta)


@dataclass
class DPOPair:
    """One training item of DPO: the pair's two responses, each encoded as the SFT example prompt +
    response (:meth:`curation.data.pairs.Pair.sft_messages`), with the base model's log-probs of
    them (summed over the response's tokens: ``-loss_sum`` of the base pass)."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float
    ref_rejected: float
    pair_id: str = ""  # for messages only


def pair_problem(pair: DPOPair, dpo_loss: str) -> str | None:
    """Why ``pair`` cannot be trained on with ``dpo_loss`` (one line), or None."""
    for side, enc, ref in (("chosen", pair.chosen, pair.ref_chosen), ("rejected", pair.rejected, pair.ref_rejected)):
        if not enc.target.any():
            return f"the {side} response has no token to train on (the prompt fills the max length)"
        if not (isinstance(ref, (int, float, np.floating)) and math.isfinite(ref) and ref <= 0):
            return f"the base log-prob of the {side} response is {ref!r}: expected a finite number <= 0"
        if dpo_loss == "davir" and ref == 0:
            return (f"the base log-prob of the {side} response is 0 (the base model is certain of it): DavIR-DPO "
                    "divides by it; leave the pair out or use --dpo-loss sigmoid")
    return None


def with_reference_logps(ref_model, chosen: Sequence[Encoded], rejected: Sequence[Encoded], batch_tokens: int = 1024,
                         pair_ids: Sequence[str] | None = None) -> list[DPOPair]:
    """Pairs of ``chosen[i]`` and ``rejected[i]`` with their log-probs under ``ref_model`` from the
    exact scorer (:func:`curation.scoring.losses.score_examples`): what the base pass gives a pair
    learn run, for callers that have no base pass."""
    from curation.scoring.losses import score_examples

    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen but {len(rejected)} rejected responses: expected one of each per pair")
    scored = score_examples(ref_model, [*chosen, *rejected], batch_tokens)
    n = len(chosen)
    ids = list(pair_ids) if pair_ids is not None else [""] * n
    return [DPOPair(chosen[i], rejected[i], -scored[i].loss_sum, -scored[n + i].loss_sum, ids[i]) for i in range(n)]


def pair_objective(dpo_loss: str, beta: float, logp_chosen, logp_rejected, ref_chosen, ref_rejected) -> dict:
    """The DPO objective and its metrics per pair, from summed log-probs (tensors of shape (P,)):
    ``loss, reward_chosen, reward_rejected, reward_margin, davir_margin`` (see the module's
    docstring; ``davir_margin`` is inf or nan where a reference log-prob is 0).  Differentiable in
    the policy's log-probs; the dtype is theirs (callers with numpy arrays wrap them with
    ``torch.as_tensor``)."""
    import torch.nn.functional as F

    if dpo_loss not in DPO_LOSSES:
        raise ValueError(f"dpo_loss must be one of {', '.join(DPO_LOSSES)}, got {dpo_loss!r}")
    lr_chosen, lr_rejected = logp_chosen - ref_chosen, logp_rejected - ref_rejected  # (P,) log-ratios
    davir_margin = lr_chosen / ref_chosen.abs() - lr_rejected / ref_rejected.abs()
    z = beta * (lr_chosen - lr_rejected) if dpo_loss == "sigmoid" else beta * davir_margin  # as TRL orders it
    reward_chosen, reward_rejected = beta * lr_chosen.detach(), beta * lr_rejected.detach()
    return {"loss": -F.logsigmoid(z), "reward_chosen": reward_chosen, "reward_rejected": reward_rejected,
            "reward_margin": reward_chosen - reward_rejected, "davir_margin": davir_margin.detach()}


def curve_metrics(dpo_loss: str) -> tuple[str, ...]:
    """The DPO training curve's fields beside the loss (means over a step's pairs)."""
    return ("reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin") + \
        (("davir_margin",) if dpo_loss == "davir" else ())


def metric_sums(per_pair: dict, names: Sequence[str]) -> list[float]:
    """Sums over the pairs of :func:`pair_objective`'s metrics ``names`` (``reward_accuracy``
    counts the pairs whose reward margin is > 0)."""
    return [float((per_pair["reward_margin"] > 0).sum() if k == "reward_accuracy" else per_pair[k].sum())
            for k in names]


def response_logps(model, encoded: Sequence[Encoded], batch: Sequence[int]):
    """Each row's log-prob summed over its target tokens, ``(len(batch),)`` float64, differentiable
    (the training forward :func:`curation.runs.training.target_nll`, summed per row in float64 as the
    scorer sums)."""
    import torch

    nll, rows = target_nll(model, encoded, batch)
    out = torch.zeros(len(batch), dtype=torch.float64, device=next(model.parameters()).device)
    if nll is None:
        return out
    return -out.index_add(0, rows, nll.double())


class DPOObjective:
    """DPO on :class:`DPOPair` items, for the training loop (the interface of
    :class:`curation.runs.training.SFTObjective`).  A micro-batch is cut by the padded size of its
    pairs' two rows, ``2 x`` the longer response's sequence; its forward batch holds both responses
    of each of its pairs; each pair weighs 1, so a step's loss is the mean over its pairs."""

    name = "dpo"

    def __init__(self, dpo_loss: str, beta: float):
        self.dpo_loss, self.beta = dpo_loss, beta
        self.metrics = curve_metrics(dpo_loss)

    def usable(self, items: Sequence[DPOPair]) -> list[int]:
        if not items:
            raise ValueError("nothing to train on: no preference pair")
        if not isinstance(items[0], DPOPair):
            raise ValueError(f"DPO trains on pairs (DPOPair), got {type(items[0]).__name__}")
        bad = [(i, p, why) for i, p in enumerate(items) if (why := pair_problem(p, self.dpo_loss))]
        if bad:
            i, p, why = bad[0]
            raise ValueError(f"pair #{i}{f' ({p.pair_id})' if p.pair_id else ''}: {why} ({len(bad)} such pair(s); "
                             "leave them out with their reason before training)")
        return list(range(len(items)))

    def length(self, p: DPOPair) -> int:
        return 2 * max(len(p.chosen.input_ids), len(p.rejected.input_ids))

    def tokens(self, p: DPOPair) -> int:
        return len(p.chosen.input_ids) + len(p.rejected.input_ids)

    def weight(self, p: DPOPair) -> int:
        return 1

    def per_pair(self, model, items: Sequence[DPOPair], batch: Sequence[int]) -> dict:
        """:func:`pair_objective` of the pairs ``batch`` under ``model`` (one forward: rows
        chosen 0, rejected 0, chosen 1, ...), plus their ``logp_chosen`` and ``logp_rejected``."""
        import torch

        rows = [e for i in batch for e in (items[i].chosen, items[i].rejected)]
        logp = response_logps(model, rows, range(len(rows)))  # (2B,)
        ref = torch.tensor([[items[i].ref_chosen, items[i].ref_rejected] for i in batch], dtype=torch.float64,
                           device=logp.device)  # (B, 2)
        out = pair_objective(self.dpo_loss, self.beta, logp[0::2], logp[1::2], ref[:, 0], ref[:, 1])
        return {**out, "logp_chosen": logp[0::2].detach(), "logp_rejected": logp[1::2].detach()}

    def loss(self, model, items: Sequence[DPOPair], batch: Sequence[int]):
        out = self.per_pair(model, items, batch)
        return out["loss"].sum(), metric_sums(out, self.metrics)

    def pack(self, items: Sequence[DPOPair]) -> dict:
        return {"chosen": pack_encoded([p.chosen for p in items]), "rejected": pack_encoded([p.rejected for p in items]),
                "ref_chosen": np.array([p.ref_chosen for p in items], dtype=np.float64),
                "ref_rejected": np.array([p.ref_rejected for p in items], dtype=np.float64)}

    def unpack(self, packed: dict) -> list[DPOPair]:
        chosen, rejected = unpack_encoded(packed["chosen"]), unpack_encoded(packed["rejected"])
        return [DPOPair(c, r, float(a), float(b))
                for c, r, a, b in zip(chosen, rejected, packed["ref_chosen"], packed["ref_rejected"])]


@dataclass
class PairScores:
    """Per pair (arrays in the order of the pairs): the policy's log-probs and :func:`pair_objective`."""

    logp_chosen: np.ndarray
    logp_rejected: np.ndarray
    loss: np.ndarray
    reward_chosen: np.ndarray
    reward_rejected: np.ndarray
    reward_margin: np.ndarray
    davir_margin: np.ndarray
    dpo_loss: str

    def metrics(self) -> dict:
        """Means over the pairs: the fields of a DPO training curve's point (``loss, reward_accuracy, ...``)."""
        import torch

        n = len(self.loss)
        per_pair = {k: torch.from_numpy(getattr(self, k)) for k in ("reward_chosen", "reward_rejected",
                                                                     "reward_margin", "davir_margin")}
        names = curve_metrics(self.dpo_loss)
        return {"loss": float(self.loss.mean()), **{k: v / n for k, v in zip(names, metric_sums(per_pair, names))}}


def score_pairs(model, pairs: Sequence[DPOPair], dpo_loss: str = "davir", beta: float = 0.1,
                batch_tokens: int = 1024) -> PairScores:
    """The objective and its metrics for every pair under ``model``, without training (no autograd):
    for tests, evaluations and the check of the TRL integration.  Batches are cut as training cuts
    them (:class:`DPOObjective`)."""
    import torch

    from curation.scoring.losses import plan_batches

    objective = DPOObjective(dpo_loss, beta)
    objective.usable(pairs)
    fields = ("logp_chosen", "logp_rejected", "loss", "reward_chosen", "reward_rejected", "reward_margin",
              "davir_margin")
    cols = {k: np.zeros(len(pairs)) for k in fields}
    with torch.inference_mode():
        for batch in plan_batches([objective.length(p) for p in pairs], batch_tokens):
            out = objective.per_pair(model, pairs, batch)
            for k in fields:
                cols[k][batch] = out[k].cpu().numpy()
    return PairScores(**cols, dpo_loss=dpo_loss)

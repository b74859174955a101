"""Fine-tuning the reference (S2L: proxy, DPO: policy) model on the pool: the one training loop.

What is trained on and how its loss is computed is an *objective*, given by the config
(:meth:`TrainConfig.objective`): SFT (:class:`SFTObjective`, here) or DPO on preference pairs
(:class:`curation.runs.dpo.DPOObjective`, from a :class:`curation.runs.dpo.DPOConfig`).  Both run
the same forward (:func:`target_nll`: right padding, causal attention, the LM head only at target
positions, exactly the scoring core's masking of :func:`curation.data.templates.encode_many`), and a
step's loss is a mean over the whole step (SFT: over its target tokens; DPO: over its pairs), so
splitting a step into micro-batches (gradient accumulation) or ranks changes nothing but memory.

* Micro-batches are filled up to a padded-token budget after sorting by length (the scorer's
  :func:`~curation.scoring.losses.plan_batches`); their order is shuffled each epoch with the seed; an
  optimizer step accumulates ``grad_accum`` micro-batches.
* AdamW, linear warmup then cosine decay to 0, gradient clipping.
* Full fine-tuning or LoRA (peft, all linear layers).  fp32 weights; bf16 autocast on CUDA.
* Deterministic for a seed.  The resume state (weights, optimizer, scheduler, RNG, step, loss
  curve) is saved atomically at every trajectory checkpoint and every ``save_every_s`` seconds, so
  a killed run continues exactly where it stopped.

Output folder::

    ckpt-1 ... ckpt-K   trajectory checkpoints: HF model folders (full) or LoRA adapters
    state/              latest resume state: safetensors + JSON, never a pickle
    train.json          loss curve, steps, timings (written when training finishes)
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from curation.atomic import atomic_dir, write_json
from curation.config import check_at_most, check_choices, check_positive, option
from curation.progress import Progress
from curation.data.templates import Encoded, pack_encoded, unpack_encoded

DEFAULT_LR_FULL = 5e-5
DEFAULT_LR_LORA = 3e-4
ACTIVATION_CHECKPOINTING = ("auto", "on", "off")


@dataclass(kw_only=True)
class TrainConfig:
    """Settings of a fine-tuning run (LearnConfig extends it; the CLI and the forms are built from it)."""

    epochs: int = option(1, "passes over the pool")
    lr: float | None = option(None, f"peak learning rate (default {DEFAULT_LR_FULL:g} full, {DEFAULT_LR_LORA:g} LoRA)")
    warmup_ratio: float = option(0.1, "fraction of the steps with a linear warmup, then cosine decay to 0")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    # Activations scale with the micro-batch, so smaller micro-batches with more accumulation (same
    # tokens per step) lower the peak memory; the README's learn benchmark gives the numbers.
    train_batch_tokens: int = option(1024, "padded tokens per training micro-batch (rows x longest)")
    grad_accum: int = option(4, "micro-batches per optimizer step")
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)")
    lora: bool = option(False, "train LoRA adapters (peft, all linear layers) instead of all weights")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int | None = option(None, "LoRA scale numerator, scale = alpha / r (default 2 x rank)")
    # 0, not peft's usual 0.05: each adapted layer would keep a dropped-out copy of its input for
    # the backward pass (memory and time), for a regulariser that matters little in the one or two
    # epochs a reference model is trained.
    lora_dropout: float = option(0.0, "dropout on the LoRA input")
    # Recomputing a layer's activations in the backward pass gives the same numbers (tested) for one
    # more forward; it is DPO's one memory lever: a micro-batch cannot hold less than one whole pair
    # (two rows of up to max length), whose kept activations dominate the peak (README: DPO proxy
    # speed and memory).
    activation_checkpointing: str = option(
        "auto", "recompute each layer's activations in the backward pass instead of keeping them (less memory, "
                "the same numbers): on, off, or auto (on for DPO, whose micro-batch holds a whole pair; off for SFT)",
        choices=ACTIVATION_CHECKPOINTING, result=False)
    seed: int = option(0, "training order, LoRA initialisation, dropout (and K-means, folds)")
    save_every_s: float = option(300.0, "also save the training resume state this often (seconds)", result=False)

    def __post_init__(self):
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        check_positive(self, "epochs", "train_batch_tokens", "grad_accum", "lora_r", "lora_alpha")
        check_at_most(self, epochs=1000, train_batch_tokens=1 << 20, grad_accum=1 << 16, lora_r=4096)
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight-decay and max-grad-norm must be >= 0")
        check_choices(self, "activation_checkpointing")

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR_LORA if self.lora else DEFAULT_LR_FULL

    def objective(self) -> "SFTObjective":
        """What this config trains: SFT on examples (a DPO config trains on pairs)."""
        return SFTObjective()

    @property
    def checkpoints_activations(self) -> bool:
        """Whether the training recomputes activations (``activation_checkpointing`` resolved)."""
        if self.activation_checkpointing == "auto":
            return self.objective().name == "dpo"
        return self.activation_checkpointing == "on"

    def result_key(self) -> dict:
        """Settings that change the trained weights (the learning rate resolved; LoRA settings
        only with LoRA)."""
        d = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if f.metadata.get("result", True)}
        d["lr"] = self.peak_lr
        if not self.lora:
            for k in ("lora_r", "lora_alpha", "lora_dropout"):
                d.pop(k)
        return d


@dataclass
class TrainResult:
    """Where the trajectory checkpoints are and how training went."""

    checkpoints: list[Path]  # ckpt-1 .. ckpt-K (step 0 is the base model)
    checkpoint_steps: list[int]  # optimizer step of each point, 0 .. total
    total_steps: int
    loss_curve: list[dict]  # {step, loss, lr, tokens}
    tokens_trained: int  # real (unpadded) tokens seen over all epochs
    seconds: float  # training time summed over sessions
    lora: bool

    def summary(self) -> dict:
        """What run.json records of the training."""
        return {"total_steps": self.total_steps, "checkpoint_steps": self.checkpoint_steps,
                "tokens_trained": self.tokens_trained, "seconds": self.seconds, "loss_curve": self.loss_curve}


def plan_steps(lengths: Sequence[int], cfg: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """The optimizer steps of one epoch: each a list of micro-batches of example indices.

    Batches are cut by length (little padding) and shuffled with ``(seed, epoch)``, so the plan is
    a pure function of the data lengths and the config.
    """
    from curation.scoring.losses import plan_batches

    batches = plan_batches(lengths, cfg.train_batch_tokens)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(batches))
    batches = [batches[i] for i in order]
    return [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]


def checkpoint_steps(total_steps: int, n_checkpoints: int) -> list[int]:
    """K+1 evenly spaced optimizer steps ``0 .. total_steps`` (rounded)."""
    if n_checkpoints < 1:
        raise ValueError(f"checkpoints must be >= 1, got {n_checkpoints}")
    return [round(k * total_steps / n_checkpoints) for k in range(n_checkpoints + 1)]


def target_nll(model, encoded: Sequence[Encoded], batch: Sequence[int], reduction: str = "none"):
    """Per-token NLL ``(N,)`` of every target token of ``batch`` (differentiable, float32) and each
    token's row ``(N,)`` (its place in ``batch``), in sequence order within each row.

    Same computation as the scorer (right padding, causal attention, head only at positions whose
    next token is a target), with autograd on: DPO sums it per row
    (:func:`curation.runs.dpo.response_logps`), SFT all of it (``reduction="sum"``: the
    cross-entropy's own sum, whose float order the SFT loss curve has always had).  ``(None,
    None)`` when no row has a target.
    """
    import torch

    base = _base_model(model)
    device = next(model.parameters()).device
    lengths = [len(encoded[i].input_ids) for i in batch]
    B, T = len(batch), max(lengths)
    ids = torch.zeros((B, T), dtype=torch.long)
    rows, cols = [], []
    for row, i in enumerate(batch):
        ids[row, : lengths[row]] = torch.from_numpy(encoded[i].input_ids.astype(np.int64))
        pos = np.flatnonzero(encoded[i].target)
        rows.append(np.full(len(pos), row))
        cols.append(pos)
    rows_t = torch.from_numpy(np.concatenate(rows)).to(device)
    cols_t = torch.from_numpy(np.concatenate(cols)).to(device)
    ids = ids.to(device)
    if len(rows_t) == 0:
        return None, None
    hidden = base.get_decoder()(input_ids=ids).last_hidden_state  # (B, T, H)
    h = hidden[rows_t, cols_t - 1]  # (N, H): position t-1 predicts token t
    logits = base.get_output_embeddings()(h).float()  # (N, V)
    softcap = getattr(base.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, ids[rows_t, cols_t], reduction=reduction), rows_t


def sft_loss_sum(model, encoded: Sequence[Encoded], batch: Sequence[int]):
    """Summed NLL over the target tokens of ``batch`` (a differentiable scalar) and their count."""
    import torch

    nll, rows = target_nll(model, encoded, batch, reduction="sum")
    if nll is None:
        return torch.zeros((), device=next(model.parameters()).device, requires_grad=False), 0
    return nll, len(rows)


class SFTObjective:
    """SFT on :class:`~curation.data.templates.Encoded` examples: a step's loss is the mean NLL over
    its target tokens.  The loop asks an objective for each item's planning length, tokens and
    weight (its share of the step's mean), a micro-batch's summed loss with the sums of its curve
    metrics, a curve point, and the items as packed arrays (for Ray Train workers)."""

    name = "sft"
    metrics: tuple[str, ...] = ()  # curve fields beside the loss (sums over a micro-batch's items)

    def usable(self, items: Sequence[Encoded]) -> list[int]:
        """Indices of the items to train on: the examples with an assistant token."""
        usable = [i for i, e in enumerate(items) if e.target.any()]
        if not usable:
            raise ValueError("nothing to train on: no example has an assistant token")
        return usable

    def length(self, e: Encoded) -> int:
        """Padded tokens the item takes in a micro-batch row (what micro-batches are cut by)."""
        return len(e.input_ids)

    def tokens(self, e: Encoded) -> int:
        """Real tokens the item runs through the model (the curve's ``tokens``, tokens/s)."""
        return len(e.input_ids)

    def weight(self, e: Encoded) -> int:
        """The item's count in the step's mean: its target tokens."""
        return int(e.target.sum())

    def loss(self, model, items: Sequence[Encoded], batch: Sequence[int]):
        """``(summed loss, [metric sums])`` of a micro-batch."""
        loss_sum, _ = sft_loss_sum(model, items, batch)
        return loss_sum, []

    def pack(self, items: Sequence[Encoded]) -> dict:
        return pack_encoded(items)

    def unpack(self, packed: dict) -> list[Encoded]:
        return unpack_encoded(packed)


@dataclass
class TrainPlan:
    """Everything a training run does, fixed before it starts: the items trained on (examples with
    an assistant token, or pairs), the optimizer steps of every epoch (micro-batches of item
    indices), the K checkpoint steps and folders.  A pure function of the data lengths and the
    config, so every rank of a distributed run builds the same plan."""

    out: Path
    sub: list  # the items trained on (Encoded examples, or DPO pairs)
    lengths: list[int]  # planning length of each (the objective's ``length``)
    steps: list[tuple[int, list[list[int]]]]  # (epoch, micro-batches) per optimizer step, in order
    ckpt_steps: list[int]
    ckpt_dirs: list[Path]

    @classmethod
    def build(cls, items: Sequence, cfg: TrainConfig, n_checkpoints: int, out: Path) -> "TrainPlan":
        objective = cfg.objective()
        sub = [items[i] for i in objective.usable(items)]
        lengths = [objective.length(x) for x in sub]
        steps = [(e, micro) for e in range(cfg.epochs) for micro in plan_steps(lengths, cfg, e)]
        return cls(Path(out), sub, lengths, steps, checkpoint_steps(len(steps), n_checkpoints),
                   [Path(out) / f"ckpt-{k}" for k in range(1, n_checkpoints + 1)])

    @property
    def total(self) -> int:
        return len(self.steps)

    def packed(self, objective) -> dict:
        """The plan as plain data with the items as packed arrays (for Ray Train workers)."""
        return {"out": str(self.out), "examples": objective.pack(self.sub), "lengths": self.lengths,
                "steps": self.steps, "ckpt_steps": self.ckpt_steps, "ckpt_dirs": [str(d) for d in self.ckpt_dirs]}

    @classmethod
    def unpacked(cls, p: dict, objective) -> "TrainPlan":
        return cls(Path(p["out"]), objective.unpack(p["examples"]), p["lengths"], [(e, m) for e, m in p["steps"]],
                   p["ckpt_steps"], [Path(d) for d in p["ckpt_dirs"]])

    def finished(self, lora: bool) -> "TrainResult | None":
        """The result of a training that finished earlier (train.json and every checkpoint), or None."""
        f = self.out / "train.json"
        if not (f.is_file() and all((d / "DONE").is_file() for d in self.ckpt_dirs)):
            return None
        info = json.loads(f.read_text())
        return TrainResult(self.ckpt_dirs, self.ckpt_steps, self.total, info["loss_curve"], info["tokens_trained"],
                           info["seconds"], lora)


def train(model_path: str, tokenizer, items: Sequence, cfg: TrainConfig, out_dir: str | Path,
          n_checkpoints: int, device: str = "cpu", progress: Progress | None = None,
          phase: str = "training", engine=None) -> TrainResult:
    """Fine-tune the model at ``model_path`` on ``items`` and save K trajectory checkpoints.

    The config says what ``items`` are: a :class:`TrainConfig` trains SFT on
    :class:`~curation.data.templates.Encoded` examples, a :class:`curation.runs.dpo.DPOConfig` trains
    DPO on :class:`curation.runs.dpo.DPOPair` pairs.  Re-running with the same arguments resumes
    from ``out_dir/state/`` (or returns at once if training finished).  ``progress`` gets ``phase,
    done, total`` (optimizer steps), ``tokens, tokens_per_s, eta_s, train_loss, lr`` (DPO: and
    ``reward_accuracy``).  With a distributed ``engine`` (``--engine ray``) the same loop runs on
    its workers, each taking its share of every step's micro-batches.
    """
    plan = TrainPlan.build(items, cfg, n_checkpoints, Path(out_dir))
    plan.out.mkdir(parents=True, exist_ok=True)
    done = plan.finished(cfg.lora)
    if done is not None:
        return done
    if engine is not None and engine.distributed:
        engine.run_ddp(train_worker, {"model_path": model_path, "plan": plan.packed(cfg.objective()), "cfg": cfg,
                                      "phase": phase},
                       plan.out / "ray", progress)
        done = plan.finished(cfg.lora)
        if done is None:
            raise RuntimeError(f"training on Ray ended without {plan.out / 'train.json'}")
        return done
    return run_training(model_path, tokenizer, plan, cfg, device, progress, phase)


def run_training(model_path: str, tokenizer, plan: TrainPlan, cfg: TrainConfig, device: str = "cpu",
                 progress: Progress | None = None, phase: str = "training", rank: int = 0, world: int = 1,
                 reduce: Callable | None = None) -> TrainResult:
    """The training loop, as rank ``rank`` of ``world`` processes (1 of 1 locally).

    Every optimizer step's micro-batches are dealt round-robin over the ranks; each micro-batch's
    summed loss is divided by the step's weight over *all* ranks (SFT: target tokens; DPO: pairs),
    and ``reduce`` (an in-place sum over ranks) adds the gradients, so the step's gradient is the
    single-process one (up to the order of the float sums) and the global batch is what the config
    says whatever ``world``.  Rank 0 alone writes checkpoints, the resume state and train.json.
    """
    import torch

    out, total, objective = plan.out, plan.total, cfg.objective()
    model = load_trainable(model_path, cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    sched = _cosine_with_warmup(opt, round(cfg.warmup_ratio * total), total)
    state = {"step": 0, "loss_curve": [], "tokens_trained": 0, "seconds": 0.0}
    expect = {"total_steps": total, "config": cfg.result_key()}
    saved = load_resume_state(out, model, opt, sched, cfg.lora, device, expect)
    if saved is not None:
        state = {k: saved[k] for k in ("step", "loss_curve", "tokens_trained", "seconds")}
    model.train()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else nullcontext()
    t_session, t_mark, last_save = time.time(), time.time(), time.time()
    tok_session, steps_session = 0, 0
    for s, (epoch, micro) in enumerate(plan.steps):
        if s < state["step"]:
            continue  # done in an earlier session
        n_step = sum(objective.weight(plan.sub[i]) for mb in micro for i in mb)  # over every rank
        totals = accumulate_step(model, objective, plan.sub, micro[rank::world], n_step, autocast)
        if world > 1:
            totals = _sum_over_ranks(params, totals, reduce)
        loss_total, means = totals[0], {k: v / n_step for k, v in zip(objective.metrics, totals[1:])}
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step = s + 1
        step_tokens = sum(objective.tokens(plan.sub[i]) for mb in micro for i in mb)
        tok_session += step_tokens
        steps_session += 1
        state["step"] = step
        state["tokens_trained"] += step_tokens
        state["loss_curve"].append({"step": step, "loss": loss_total / n_step, **means, "lr": lr,
                                    "tokens": state["tokens_trained"]})
        elapsed = max(time.time() - t_session, 1e-9)
        if progress is not None and rank == 0:
            progress(phase=phase, done=step, total=total, unit="steps", tokens=state["tokens_trained"],
                     tokens_per_s=tok_session / elapsed, eta_s=(total - step) * elapsed / steps_session,
                     train_loss=loss_total / n_step, lr=lr, epoch=epoch, **means)
        if rank != 0:
            continue
        hits = [k for k, cs in enumerate(plan.ckpt_steps[1:]) if cs == step]
        for k in hits:
            _save_checkpoint(model, tokenizer, cfg, plan.ckpt_dirs[k], step)
        if hits or time.time() - last_save > cfg.save_every_s or step == total:
            now = time.time()
            state["seconds"] += now - t_mark
            t_mark = now
            save_resume_state(out, model, opt, sched, cfg.lora, {**state, **expect})
            last_save = time.time()
    if rank == 0:
        # Checkpoints at step 0 (a pool so small that total < K) are the base model itself.
        for k, cs in enumerate(plan.ckpt_steps[1:]):
            if cs == 0 and not (plan.ckpt_dirs[k] / "DONE").is_file():
                _save_checkpoint(model, tokenizer, cfg, plan.ckpt_dirs[k], 0)
        write_json(out / "train.json", {"total_steps": total, "checkpoint_steps": plan.ckpt_steps,
                                        "loss_curve": state["loss_curve"], "tokens_trained": state["tokens_trained"],
                                        "seconds": round(state["seconds"], 2), "config": cfg.result_key()})
    del model, opt
    return TrainResult(plan.ckpt_dirs, plan.ckpt_steps, total, state["loss_curve"], state["tokens_trained"],
                       round(state["seconds"], 2), cfg.lora)


def train_worker(config: dict) -> None:
    """One Ray Train worker (:meth:`curation.scoring.engine.RayEngine.run_ddp`): the training loop
    as rank r of W, gradients summed over the ranks."""
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    plan = TrainPlan.unpacked(config["plan"], config["cfg"].objective())
    device = str(ray.train.torch.get_device()) if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"]) if rank == 0 else None
    queue = config["queue"]

    def reduce(t):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)

    run_training(config["model_path"], tokenizer, plan, config["cfg"], device,
                 progress=(lambda **p: queue.put_nowait(p)) if rank == 0 else None, phase=config["phase"],
                 rank=rank, world=world, reduce=reduce)


def accumulate_step(model, objective, items: Sequence, micro: Sequence[Sequence[int]], n_step: int,
                    autocast=None) -> list[float]:
    """Run this rank's micro-batches of one optimizer step, accumulating the gradients of the
    step's mean loss (each micro-batch's summed loss divided by ``n_step``, the step's weight over
    every rank); return ``[summed loss, *summed metrics]`` of these micro-batches."""
    totals = [0.0] * (1 + len(objective.metrics))
    for mb in micro:
        with autocast or nullcontext():
            loss_sum, sums = objective.loss(model, items, mb)
        # Dividing by the step's weight makes the step loss a mean over the whole step (SFT: its
        # target tokens, DPO: its pairs), however it is split into micro-batches (and ranks).
        (loss_sum / n_step).backward()
        for k, v in enumerate([float(loss_sum.detach()), *sums]):
            totals[k] += v
    return totals


def _sum_over_ranks(params, totals: list[float], reduce) -> list[float]:
    """Sum the gradients (one flat tensor) and the step's loss and metric sums over the ranks, in place."""
    import torch

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    reduce(flat)
    for p, g in zip(params, torch._utils._unflatten_dense_tensors(flat, grads)):
        p.grad = g
    lt = torch.tensor(totals, dtype=torch.float64, device=flat.device)
    reduce(lt)
    return lt.tolist()


def save_resume_state(out: Path, model, opt, sched, lora: bool, state: dict) -> None:
    """Write ``out/state/`` atomically, without pickle: the trained weights (all of them, or the
    LoRA adapters) and the optimizer's tensors as safetensors, the RNG states as uint8 tensors,
    and everything else (step, loss curve, scheduler, optimizer hyper-parameters) as JSON."""
    import torch
    from safetensors.torch import save_file, save_model

    sd = opt.state_dict()
    opt_tensors = {f"{pid}.{name}": t.detach().contiguous() for pid, st in sd["state"].items()
                   for name, t in st.items() if torch.is_tensor(t)}
    opt_other = {f"{pid}.{name}": v for pid, st in sd["state"].items() for name, v in st.items()
                 if not torch.is_tensor(v)}
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
    with atomic_dir(out / STATE_DIR, marker=STATE_FILE, what="training resume state") as tmp:
        if lora:
            save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      str(tmp / "model.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps({
            **state, "optimizer": {"param_groups": sd["param_groups"], "other": opt_other},
            "scheduler": sched.state_dict(), "format": 1}, default=list))


def load_resume_state(out: Path, model, opt, sched, lora: bool, device: str, expect: dict) -> dict | None:
    """Restore the state :func:`save_resume_state` wrote into model, optimizer, scheduler and RNG;
    return its JSON part (None when there is no state yet).

    Nothing here unpickles: a run folder may come from elsewhere, and unpickling a planted file
    runs its code.  Any other file in ``out`` (a pickled ``state.pt``, say) is never read."""
    import torch
    from safetensors.torch import load_file, load_model

    folder = out / STATE_DIR
    if (folder / STATE_FILE).is_file():
        try:
            state = json.loads((folder / STATE_FILE).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder / STATE_FILE}: unreadable training resume state ({e}); delete {folder} "
                             "to restart training from the beginning") from None
        _check_state(folder, state, expect)
        if lora:
            missing = model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)),
                                            strict=False).unexpected_keys
            if missing:
                raise ValueError(f"{folder}: its adapter weights do not fit this model ({missing[:3]} ...)")
        else:
            load_model(model, str(folder / "model.safetensors"), device=str(device))
        tensors = load_file(str(folder / "optimizer.safetensors"), device=str(device))
        per_param: dict[int, dict] = {}
        for k, t in tensors.items():
            pid, name = k.split(".", 1)
            per_param.setdefault(int(pid), {})[name] = t
        for k, v in state["optimizer"].get("other", {}).items():
            pid, name = k.split(".", 1)
            per_param.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
        sched.load_state_dict(state["scheduler"])
        rng = load_file(str(folder / "rng.safetensors"))
        torch.set_rng_state(rng["cpu"])
        cuda = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        return state
    return None


def checkpoint_model(lm, ckpt: Path, report):
    """``(weights fingerprint, ModelSource)`` of a trajectory checkpoint, for a scoring pass.

    The fingerprint is stored next to the checkpoint the first time, so a resumed run knows the
    pass's cache key without loading (and hashing) the weights again; the model itself is then
    loaded only if the pass still has examples to score."""
    from curation.atomic import write_text
    from curation.scoring.models import ModelSource, weights_fingerprint

    source = ModelSource(str(ckpt), lm.device, lm.dtype, base=lm.path)
    fp_file = ckpt / f"FINGERPRINT-{lm.dtype}"
    if fp_file.is_file():
        return fp_file.read_text().strip(), source
    report(phase=f"loading {ckpt.name}", done=0, total=None)
    fp = weights_fingerprint(source.load())
    write_text(fp_file, fp)
    return fp, source


# ----------------------------------------------------------------------------------------------

STATE_DIR, STATE_FILE = "state", "state.json"


def _check_state(where: Path, state: dict, expect: dict) -> None:
    if state.get("total_steps") != expect["total_steps"] or state.get("config") != expect["config"]:
        raise ValueError(f"{where} belongs to another training run (other data or settings); "
                         "delete the folder or use another --out")


def _base_model(model):
    """The transformers model under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_trainable(model_path: str, cfg: TrainConfig, device: str):
    """The model at ``model_path`` ready to train with ``cfg``: float32, LoRA adapters with
    ``--lora``, activations recomputed in the backward pass when the config says so."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)  # LoRA init and dropout depend on it
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if cfg.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:  # pragma: no cover
            raise ValueError("--lora needs peft: pip install peft") from None
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    if cfg.checkpoints_activations:  # non-reentrant: LoRA's frozen inputs need no requires_grad hook
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device)


def _cosine_with_warmup(opt, warmup: int, total: int):
    """Linear warmup to the peak, then cosine decay to 0 at ``total`` (a LambdaLR, so its state
    saves and restores with the optimizer)."""
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _save_checkpoint(model, tokenizer, cfg: TrainConfig, target: Path, step: int) -> None:
    """Write a trajectory checkpoint atomically (a temp folder renamed into place)."""
    if (target / "DONE").is_file():
        return
    with atomic_dir(target, what="checkpoint") as tmp:
        model.save_pretrained(tmp)  # peft: the adapter only; full: an HF model folder
        if tokenizer is not None and not cfg.lora:
            tokenizer.save_pretrained(tmp)
        (tmp / "DONE").write_text(json.dumps({"step": step}))

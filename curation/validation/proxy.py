"""Proxy trainings: what every training of a study shares, and the one train-then-evaluate.

A study (``validate``, ``mix``; :mod:`curation.validation.study` runs them) fine-tunes a small proxy
model on several training sets and measures each trained model on held-out eval sets.  Here:

* :class:`ProxyConfig`: the settings every study's trainings share (the proxy model, the eval sets,
  the trainer's settings with a study's defaults, whether the trained models are kept); the
  validate and mix configs extend it;
* :class:`Training`: one training of a study (a name: a candidate or a mix point; a seed; the
  training example ids);
* :func:`open_proxy`: the proxy model, the run's model context reopened
  (:func:`curation.runs.steps.reopen`: template checked, pass settings), the eval sets (refused
  when an example is also in the pool); :meth:`Proxy.encode` encodes the training examples a
  round of trainings needs;
* :func:`training_spec` and :func:`train_and_evaluate`: one training as plain data (what to train
  and how to evaluate it, packed arrays) and the one function that trains and evaluates it,
  returning plain data: in this process, or as a Ray task on a worker (the same function);
* the held-out NLL evaluation (:func:`evaluate_base`, :func:`eval_rows`): every eval example's
  mean assistant-token loss, one row per model and example;
* preference pairs (a study of a pair run): the proxy trains DPO (trainer ``dpo``: from the base
  model, the base model's log-probs of each training pair from the pair pass as the reference) and
  evaluates held-out pairs (eval ``pairs``: the pair pass's batches, the prompt once), one row per
  model and eval pair with ``logp_chosen, logp_rejected, n_chosen_tokens, n_rejected_tokens``
  (:mod:`curation.validation.pair_eval` turns them into reward accuracy, margins and NLLs).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from curation.config import ComputeConfig, option, parse_pairs, project
from curation.runs.dpo import DPO_LOSSES, MAX_BETA, DPOConfig, DPOObjective, DPOPair, pair_problem
from curation.runs.training import TrainConfig

MAX_SEEDS = 50  # trainings per candidate or mix: every seed is a whole fine-tuning


class ValidationError(ValueError):
    """A validation or mix study that cannot run as asked (the message says what to change)."""


@dataclass(kw_only=True)
class ProxyConfig(TrainConfig, ComputeConfig):
    """What every study's trainings share (ValidateConfig and MixConfig extend it): the proxy model,
    the eval sets, one set of training settings for every training (TrainConfig's, with a study's
    defaults: three epochs and one micro-batch per step, since the training sets are small)."""

    out: str = option(help="study folder (report.json, report.md, results.parquet, curves.parquet); a resumed "
                           "study skips its finished trainings", result=False)
    eval: dict[str, str] = option(help="held-out eval sets as NAME=PATH (any format the loader reads; name them by "
                                       "domain); repeatable", default_factory=dict, metavar="NAME=PATH")
    model: str | None = option(None, "the proxy model to fine-tune (default: the run's model)")
    keep_models: bool = option(False, "keep the trained models (else only their loss curves and eval results)",
                               result=False)
    epochs: int = option(3, "passes over each training set")
    grad_accum: int = option(1, "micro-batches per optimizer step")

    def __post_init__(self):
        ComputeConfig.__post_init__(self)
        TrainConfig.__post_init__(self)
        self.eval = parse_pairs(self.eval, "NAME=PATH")
        if not self.eval:
            raise ValueError("give held-out eval sets with --eval NAME=PATH (the default workspace has "
                             "workspace/eval/chat.jsonl and workspace/eval/math.jsonl)")
        check_eval_files(self.eval)


@dataclass(kw_only=True)
class PairTrainingConfig:
    """A study's DPO settings, used when its run holds preference pairs (ValidateConfig has them)."""

    dpo_loss: str = option("davir", "pairs: the DPO objective(s) trained, comma-separated: davir (DavIR-DPO), sigmoid "
                                    "(vanilla DPO); both (sigmoid,davir) train every candidate with each on the same "
                                    "seeds and compare them", metavar="LOSS[,LOSS]")
    beta: float = option(0.1, "pairs: DPO's beta (reward = beta x log-ratio to the base model)")

    def __post_init__(self):
        losses = self.dpo_losses()
        if not losses or any(x not in DPO_LOSSES for x in losses) or len(set(losses)) != len(losses):
            raise ValueError(f"dpo-loss {self.dpo_loss!r}: expected one or both of {', '.join(DPO_LOSSES)}, "
                             "comma-separated (e.g. sigmoid,davir)")
        if isinstance(self.beta, bool) or not (isinstance(self.beta, (int, float)) and 0 < self.beta <= MAX_BETA):
            raise ValueError(f"beta must be a number in (0, {MAX_BETA:g}], got {self.beta!r}")

    def dpo_losses(self) -> list[str]:
        return [x.strip() for x in str(self.dpo_loss).split(",") if x.strip()]


@dataclass
class Training:
    """One training of a study: fine-tune the proxy on ``ids`` with ``seed`` (pairs: DPO with
    ``dpo_loss``)."""

    name: str  # the candidate or mix point it belongs to
    seed: int
    ids: list[str]
    dpo_loss: str | None = None  # a pair study's objective; None: SFT

    @property
    def part(self) -> str:
        """Its name in the study folder (``parts/PART.parquet``, ``train/PART/``)."""
        return f"{slug(self.name)}-seed{self.seed}"


@dataclass
class EvalSets:
    examples: list  # curation.data.load.Example, in order (pairs: curation.data.pairs.Pair)
    encoded: list  # curation.data.templates.Encoded, same order (pairs: the responses, in ``ids`` order)
    provenance: list[dict]
    pair_rows: tuple | None = None  # pairs: (response ids, groups: a pair's rows, {response id: its tokens})

    @property
    def ids(self) -> list[str]:
        """The score-cache rows of the eval sets: the examples', or each pair's responses'."""
        return self.pair_rows[0] if self.pair_rows else [e.example_id for e in self.examples]


@dataclass
class Proxy:
    """What every training of a study needs: the model, the run's context, the eval sets, and the
    encodings of the training examples encoded so far."""

    lm: object  # curation.scoring.models.LoadedModel
    context: object  # curation.runs.steps.RunContext
    evals: EvalSets
    run: object  # curation.runs.folder.Run: the pool's sources
    table: object  # the run's score table
    pool: dict  # {example_id: Encoded} of the training examples encoded so far (pairs: {pair_id: DPOPair})
    losses: tuple = ()  # pairs: the DPO objectives trained

    @property
    def settings(self):
        """The score-cache pass settings (curation.scoring.passes.PassSettings; ``engine`` is set
        while a study runs)."""
        return self.context.settings

    @property
    def template(self):
        return self.context.template

    @property
    def holds_pairs(self) -> bool:
        return self.evals.pair_rows is not None

    def encode(self, ids: set[str], report) -> None:
        """Encode the training examples ``ids`` not encoded yet, re-read from the run's sources
        (refused if a source changed since the run); pairs: :meth:`encode_pairs`."""
        from curation.data.templates import encode_many
        from curation.runs.folder import read_examples

        t = self.table
        rows = t[t["example_id"].isin(set(ids) - set(self.pool))][["source", "source_index", "example_id"]]
        if not len(rows):
            return
        report(phase="reading training examples", done=0, total=len(rows))
        if self.holds_pairs:
            return self.encode_pairs(rows, report)
        records = read_examples(self.run.meta(), rows.itertuples(index=False), check_fingerprints=True)
        ctx = self.context
        self.pool.update(zip(rows["example_id"], encode_many(ctx.tokenizer, ctx.template, [m for _, m in records],
                                                             ctx.max_length)))

    def encode_pairs(self, rows, report) -> None:
        """The training pairs of ``rows`` as :class:`curation.runs.dpo.DPOPair`: each response
        encoded as its SFT example, trained on its final turn only, with the proxy's log-prob of it
        from the pair pass (the score cache: free when the proxy is the run's model) as DPO's
        reference.  A pair that cannot be trained on is refused with its reason."""
        from curation.data.pairs import PairLoadResult
        from curation.runs.folder import read_pairs
        from curation.runs.pair_score import encode_pairs, pair_logps_with

        ctx, lm = self.context, self.lm
        pairs = [p for _, p in read_pairs(self.run.meta(), rows.itertuples(index=False), check_fingerprints=True)]
        kept, encoded, n_tokens, rejected = encode_pairs(PairLoadResult(pairs, [], []), ctx.tokenizer, ctx.template,
                                                         ctx.max_length)
        if rejected:
            r = rejected[0]
            raise ValidationError(f"training pair {r['source']} #{r['source_index']} cannot be trained on with this "
                                  f"proxy ({r['reason']}); score the pool with this model, or leave the pair out")
        ref = pair_logps_with(lm.source(), lm.fingerprint, kept, encoded, n_tokens, self.settings, report,
                              "scoring training pairs (DPO's reference)")
        for p in kept:
            c, r = (response_only(encoded[p.sft_id(s)], n_tokens[p.sft_id(s)]) for s in ("chosen", "rejected"))
            item = DPOPair(c, r, ref[p.pair_id][0], ref[p.pair_id][1], p.pair_id)
            why = next((w for loss in self.losses if (w := pair_problem(item, loss))), None)
            if why:
                raise ValidationError(f"training pair {p.source} #{p.source_index}: {why}")
            self.pool[p.pair_id] = item


def response_only(enc, n: int):
    """``enc`` trained on its final ``n`` targets only (a pair's response; a multi-turn prompt's
    earlier assistant turns are the prompt), as the pair tables count a response's log-prob."""
    import numpy as np

    from curation.data.templates import Encoded

    if int(enc.target.sum()) == n:
        return enc
    target = enc.target.copy()
    target[np.flatnonzero(target)[:-n] if n else np.flatnonzero(target)] = False
    return Encoded(enc.input_ids, target, enc.n_tokens_full, enc.truncated)


def slug(name: str) -> str:
    """A file-name-safe form of a candidate or mix point name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def eval_files(paths) -> dict[str, str]:
    """``{name: path}`` of eval files named by their file names without extensions (the pages' eval
    sets); two files of one name (``math.json`` and ``math.jsonl``) are refused, as ``--eval``
    given twice is: the second would silently replace the first."""
    from curation.data.load import source_stem

    out: dict[str, str] = {}
    for p in map(str, paths):
        name = source_stem(p)
        if name in out:
            raise ValueError(f"eval files {Path(out[name]).name} and {Path(p).name} would both be the eval set "
                             f"{name!r}; choose one of them, or rename one")
        out[name] = p
    return out


def check_eval_files(evals: dict[str, str]) -> None:
    """Each eval set its own file: one file under two names would give the second no example (the
    loader keeps one copy of each example), and its verdicts would silently be missing."""
    seen: dict[str, str] = {}
    for name, path in evals.items():
        key = str(Path(path).resolve()) if Path(path).exists() else str(path)
        if key in seen:
            raise ValueError(f"--eval {seen[key]}={path} and --eval {name}={path} name the same file; give each eval "
                             "set its own file")
        seen[key] = name


# ----------------------------------------------------------------------------------------------
# The proxy: model, the run's context, eval sets


def open_proxy(cfg: ProxyConfig, run, meta: dict, table, report) -> Proxy:
    """Load the proxy model (``cfg.model`` or the run's), reopen the run's context with it and
    load the eval sets (``cfg.eval``)."""
    from curation.runs.steps import reopen
    from curation.scoring.models import load_model

    report(phase="loading model", done=0, total=None)
    model = cfg.model or (meta["model"]["path"] if Path(meta["model"]["path"]).exists() else meta["model"]["spec"])
    lm = load_model(model, device=cfg.device, dtype=cfg.dtype)
    context = reopen(meta, lm.tokenizer, lm.dtype, lm.device, "use the run's model or give --model a model with the "
                     "same template", cache=cfg.cache, compute=cfg)
    report(phase="loading eval sets")
    if run.holds_pairs:
        if not isinstance(cfg, PairTrainingConfig):
            raise ValidationError(f"{run.path} holds preference pairs; this study trains on SFT examples (validate a "
                                  "pair selection instead)")
        evals = load_pair_evals(cfg.eval, run, context)
        return Proxy(lm, context, evals, run, table, {}, tuple(cfg.dpo_losses()))
    evals = load_evals(cfg.eval, set(table["example_id"]), context)
    return Proxy(lm, context, evals, run, table, {})


def load_evals(specs: dict[str, str], pool_ids: set[str], context) -> EvalSets:
    """The eval sets, normalised like any source; refused if an example is also in the pool."""
    from curation.data.load import SourceSpec, load_sources
    from curation.runs.folder import source_entries

    data = load_sources([SourceSpec(path=p, domain=d) for d, p in specs.items()])
    for e in data.examples:
        if e.example_id in pool_ids:
            raise ValidationError(f"eval example {e.source} #{e.source_index} (id {e.example_id}) is also in the pool "
                                  "the training sets come from; it would measure memorisation, not learning. Remove "
                                  "it from the eval file.")
    examples, encoded, rejected = context.encode(data, need_response=True)
    left_out = [{"source": r["source"], "source_index": r["source_index"], "reason": r["reason"]} for r in rejected]
    prov = source_entries(data.sources)
    for p in prov:
        p["left_out"] = [r for r in left_out if r["source"] == p["source"]]
        p["n_evaluated"] = sum(e.source == p["source"] for e in examples)
    return EvalSets(examples, encoded, prov)


def load_pair_evals(specs: dict[str, str], run, context) -> EvalSets:
    """Held-out preference pairs (:func:`curation.data.pairs.load_pairs`), each response encoded as
    its SFT example; refused when a pair, or its prompt, is also in the pool (the training sets come
    from it: a pair the proxy trained on, or another answer to a prompt it trained on, measures
    memorisation)."""
    from curation.data.load import SourceSpec
    from curation.data.pairs import load_pairs
    from curation.data.textnorm import conversation_text
    from curation.runs.folder import source_entries
    from curation.runs.pair_score import encode_pairs, pass_rows

    data = load_pairs([SourceSpec(path=p, domain=d) for d, p in specs.items()])
    texts = run.texts()  # a pair run's texts: {pair_id: its prompt}
    prompts = {t: i for i, t in texts.items()}
    for p in data.pairs:
        same = p.pair_id if p.pair_id in texts else prompts.get(conversation_text(p.prompt))
        if same:
            what = "pair" if same == p.pair_id else f"prompt (of pool pair {same})"
            raise ValidationError(f"eval pair {p.source} #{p.source_index}: its {what} is also in the pool the "
                                  "training sets come from; it would measure memorisation, not learning. Remove it "
                                  "from the eval file.")
    pairs, encoded, n_tokens, rejected = encode_pairs(data, context.tokenizer, context.template, context.max_length)
    ids, groups = pass_rows(pairs)
    prov = source_entries(data.sources)
    for e in prov:
        e["left_out"] = [{"source": r["source"], "source_index": r["source_index"], "reason": r["reason"]}
                         for r in rejected if r["source"] == e["source"]]
        e["n_evaluated"] = sum(p.source == e["source"] for p in pairs)
    if not pairs:
        raise ValidationError(f"no eval pair left in {', '.join(specs.values())} (see why with `load`); give held-out "
                              "preference pairs with --eval DOMAIN=PAIRS_FILE")
    return EvalSets(pairs, [encoded[i] for i in ids], prov, (ids, groups, n_tokens))


# ----------------------------------------------------------------------------------------------
# The held-out NLL evaluation


def evaluate_base(proxy: Proxy, report):
    """The base model's eval rows (``candidate`` = ``base``, seed -1), through the score cache (its
    chunks on the Ray workers with ``--engine ray``)."""
    from curation.scoring.passes import score_pass

    lm, ev = proxy.lm, proxy.evals
    groups = ev.pair_rows[1] if ev.pair_rows else None
    rows = score_pass(lm.source(), lm.fingerprint, ev.ids, ev.encoded, proxy.settings, report, "evaluating base model",
                      groups=groups, unit="pairs" if groups else "examples")
    return eval_rows("base", -1, ev, rows)


def eval_rows(candidate: str, seed: int, evals: EvalSets, rows: dict[str, dict]):
    """The results rows of one model: ``candidate, seed, domain, example_id, nll, n_tokens`` (pairs:
    ``example_id`` is the pair id, then ``logp_chosen, logp_rejected, n_chosen_tokens, n_rejected_tokens``)."""
    import pandas as pd

    out = []
    if evals.pair_rows:
        from curation.runs.pair_score import pair_logps

        n_tokens = evals.pair_rows[2]
        logps = pair_logps(evals.examples, n_tokens, rows)
        return pd.DataFrame([{"candidate": candidate, "seed": seed, "domain": p.domain, "example_id": p.pair_id,
                              "logp_chosen": logps[p.pair_id][0], "logp_rejected": logps[p.pair_id][1],
                              "n_chosen_tokens": int(n_tokens[p.sft_id("chosen")]),
                              "n_rejected_tokens": int(n_tokens[p.sft_id("rejected")])} for p in evals.examples])
    for e in evals.examples:
        r = rows[e.example_id]
        out.append({"candidate": candidate, "seed": seed, "domain": e.domain, "example_id": e.example_id,
                    "nll": r["loss_sum"] / r["n_tokens"], "n_tokens": int(r["n_tokens"])})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------
# One training as plain data, trained and evaluated here or in a Ray worker


def train_config(cfg: ProxyConfig, seed: int, dpo_loss: str | None = None) -> TrainConfig:
    """The trainer's settings of one training (``dpo_loss``: DPO on pairs with that objective)."""
    tcfg = project(cfg, TrainConfig)
    if dpo_loss is not None:
        tcfg = DPOConfig(**asdict(tcfg), dpo_loss=dpo_loss, beta=cfg.beta)
    tcfg.seed = seed
    return tcfg


def training_spec(cfg: ProxyConfig, proxy: Proxy, t: Training, folder: Path, label: str) -> dict:
    """Everything :func:`train_and_evaluate` needs for ``t``, as plain data (settings as dicts,
    examples as packed arrays), so that a Ray task can run it by itself: the model (by path), what
    to train (``train``: kind ``sft``, the settings, the examples, the folder) and how to evaluate
    the trained model (``eval``: kind ``nll``, the eval examples, the batching).  Pairs: kind ``dpo``
    (the pairs with their reference log-probs) and eval kind ``pairs`` (the pair pass's groups)."""
    from curation.data.templates import pack_encoded

    lm, s = proxy.lm, proxy.settings
    items = [proxy.pool[i] for i in t.ids]
    dpo = t.dpo_loss is not None
    ev = {"kind": "pairs" if dpo else "nll", "examples": pack_encoded(proxy.evals.encoded),
          "batch_tokens": s.batch_tokens, "chunk_examples": s.chunk_examples}
    if dpo:
        ev["groups"] = proxy.evals.pair_rows[1]
    return {"part": t.part, "label": label,
            "model": {"path": lm.path, "device": lm.device, "dtype": lm.dtype},
            "train": {"kind": "dpo" if dpo else "sft", "config": asdict(train_config(cfg, t.seed, t.dpo_loss)),
                      "folder": str(folder),
                      "examples": DPOObjective(t.dpo_loss, cfg.beta).pack(items) if dpo else pack_encoded(items)},
            "eval": ev}


def train_and_evaluate(spec: dict, threads: int | None, progress) -> dict:
    """Train what ``spec["train"]`` names, then evaluate the trained model as ``spec["eval"]`` says
    (see :func:`training_spec`); ``threads``: torch threads (a Ray worker's share; None: leave them).
    Returns plain data: the weights fingerprint, the loss curve, the tokens trained, the packed
    eval results and the wall seconds of both (the driver commits them)."""
    import torch

    from curation.scoring.models import load_checkpoint, weights_fingerprint

    t0 = time.time()
    if threads is not None:
        torch.set_num_threads(threads)
    m = spec["model"]
    device = "cpu" if m["device"].startswith("cuda") and not torch.cuda.is_available() else m["device"]
    trained = TRAINERS[spec["train"]["kind"]](m["path"], spec["train"], device, progress, spec["label"])
    model = load_checkpoint(m["path"], trained.checkpoints[-1], device, m["dtype"])
    packed = EVALUATORS[spec["eval"]["kind"]](model, spec["eval"], progress, spec["label"])
    return {"fingerprint": weights_fingerprint(model), "loss_curve": trained.loss_curve,
            "tokens_trained": trained.tokens_trained, "eval": packed, "seconds": time.time() - t0}


def train_sft(model_path: str, spec: dict, device: str, progress, label: str):
    """Supervised fine-tuning of the model at ``model_path`` on the packed examples: the project's
    trainer (:func:`curation.runs.training.train`), one checkpoint at the end."""
    from curation.data.templates import unpack_encoded
    from curation.runs.training import train
    from curation.scoring.models import load_tokenizer

    return train(model_path, load_tokenizer(model_path), unpack_encoded(spec["examples"]),
                 TrainConfig(**spec["config"]), spec["folder"], 1, device=device, progress=progress,
                 phase=f"training {label}")


def train_dpo(model_path: str, spec: dict, device: str, progress, label: str):
    """DPO of the model at ``model_path`` on the packed pairs (their reference log-probs inside):
    the project's trainer with a :class:`curation.runs.dpo.DPOConfig`, one checkpoint at the end."""
    from curation.runs.training import train
    from curation.scoring.models import load_tokenizer

    cfg = DPOConfig(**spec["config"])
    return train(model_path, load_tokenizer(model_path), cfg.objective().unpack(spec["examples"]), cfg,
                 spec["folder"], 1, device=device, progress=progress, phase=f"training {label}")


def evaluate_pairs(model, spec: dict, progress, label: str) -> dict:
    """The eval pairs' responses under ``model`` as the pair pass scores them (chunks of whole
    pairs, one scorer batch per pair, its prompt once; a response two pairs share, once), packed."""
    from curation.data.templates import unpack_encoded
    from curation.scoring.engine import pack_losses
    from curation.scoring.losses import score_examples
    from curation.scoring.passes import chunk_groups, local_plan

    encoded, seen, todo = unpack_encoded(spec["examples"]), set(), []
    for g in spec["groups"]:
        rest = [j for j in g if j not in seen]
        seen.update(rest)
        if rest:
            todo.append(rest)
    results: list = [None] * len(encoded)
    done = len(spec["groups"]) - len(todo)
    progress(phase=f"evaluating {label}", done=done, total=len(spec["groups"]))
    for chunk in chunk_groups(todo, spec["chunk_examples"]):
        rows = [j for g in chunk for j in g]
        for j, r in zip(rows, score_examples(model, [encoded[j] for j in rows], spec["batch_tokens"],
                                             plan=local_plan(chunk))):
            results[j] = r
        done += len(chunk)
        progress(phase=f"evaluating {label}", done=done, total=len(spec["groups"]))
    return pack_losses(results, embeddings=False)


def evaluate_nll(model, spec: dict, progress, label: str) -> dict:
    """The assistant-token losses of the packed eval examples, scored in the chunks a scoring pass
    commits (the same batches, so the same numbers as a pass), packed without embeddings."""
    from curation.data.templates import unpack_encoded
    from curation.scoring.engine import pack_losses
    from curation.scoring.losses import score_examples

    encoded, chunk = unpack_encoded(spec["examples"]), spec["chunk_examples"]
    results: list = []
    progress(phase=f"evaluating {label}", done=0, total=len(encoded))
    for c in range(0, len(encoded), chunk):
        results += score_examples(model, encoded[c:c + chunk], spec["batch_tokens"])
        progress(phase=f"evaluating {label}", done=len(results), total=len(encoded))
    return pack_losses(results, embeddings=False)


TRAINERS = {"sft": train_sft, "dpo": train_dpo}  # spec["train"]["kind"] -> (model path, spec, device, progress, label) -> TrainResult
EVALUATORS = {"nll": evaluate_nll, "pairs": evaluate_pairs}  # spec["eval"]["kind"] -> (model, spec, progress, label) -> packed results

"""The ``learn`` run on preference pairs: a DPO reference trained on the pool, every pair scored under it.

    load pairs -> tokenise (examples.parquet) -> the pair pass under the base model (the pair score
        run's columns, token losses, prompt embeddings) -> DPO training from the base model on the
        pool's pairs (runs/dpo.py; the base pass's log-probs are DPO's reference: the reference
        never runs in training) -> the pair pass under the trained model -> [held-out folds]
        -> formulas (runs/formulas.py) -> tables

``python -m curation learn`` runs this on sources of preference pairs (:func:`curation.runs.learn.run_learn`
detects them); it shares the learn run's settings (:class:`curation.runs.learn.LearnConfig`: the
training settings, ``--heldout-folds``, the seed), its folds and its claim.  A pair learn run's
scores.parquet holds the pair score run's columns and (:data:`curation.scores.PAIR_LEARN_COLUMNS`),
with ``logp = -`` a response's summed NLL and ``beta`` DPO's:

    reward_chosen  = beta * (logp_trained(chosen) - logp_base(chosen))      (likewise reward_rejected)
    davir_chosen   = (L_base - L_trained) / L_base, L the summed NLL        (likewise davir_rejected)
    reward_margin, davir_margin = chosen's - rejected's

(+ ``fold, reward_margin_heldout, davir_margin_heldout`` with ``--heldout-folds N``: each pair
scored under a model trained without its fold); token_losses.parquet adds ``token_losses_ref``;
``train/`` holds the training (its resume state and train.json) and ``train_curve.parquet`` the DPO
curve (loss, reward accuracy, rewards and margins per step).  The SFT learn run's S2L trajectory,
clusters, IFD, attached reference and stability runs do not apply: asked for, they are refused
(:func:`refuse_unused_settings`); the defaults are recorded in run.json's ``not_applied``.

Re-running the same command resumes: training continues from its saved state and each pass reads
the score cache (the base pass is the pair score run's, shared with it).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np

from curation.config import result_key
from curation.data.pair_formats import SIDES
from curation.progress import Progress, Reporter, Timings
from curation.runs.dpo import DPOConfig, DPOPair, pair_problem
from curation.runs.formulas import assign_folds, heldout_agreement, pair_heldout_columns, pair_learn_columns
from curation.runs.pair_score import encode_pairs, score_pairs_with, write_pair_tables
from curation.runs.pair_tables import pair_example_table, response_loss, write_train_curve
from curation.runs.steps import claim, load_inputs
from curation.scores import PAIR_HELDOUT_COLUMNS, PAIR_LEARN_COLUMNS

# The learn run's settings that apply to preference pairs only, and those that apply to SFT
# examples only (with why, for the one-line refusal and run.json's ``not_applied``).
PAIR_ONLY = ("dpo_loss", "beta")
SFT_ONLY = {
    "checkpoints": ("--checkpoints", "S2L trajectories: a pair learn run trains one DPO reference and scores it once"),
    "n_clusters": ("--clusters", "S2L clusters of SFT loss trajectories"),
    "ifd": ("--ifd", "IFD scores an SFT example's response alone"),
    "reference": ("--reference", "a pair learn run trains its DPO reference; attaching one is for SFT examples"),
    "stability_runs": ("--stability-runs", "extra references are trained for SFT examples only"),
    "stability_vary": ("--stability-vary", "extra references are trained for SFT examples only"),
}


def refuse_unused_settings(cfg, kind: str) -> None:
    """Refuse, in one line, the learn settings ``cfg`` asks for (a value other than the default)
    that do not apply to its data ``kind`` (``"pairs"``: the SFT-only settings; ``"sft"``: DPO's).
    ``--no-ifd`` on pairs asks for nothing and passes."""
    defaults = {f.name: f.default for f in fields(cfg)}
    if kind == "pairs":
        asked = [n for n in SFT_ONLY if getattr(cfg, n) != defaults[n] and not (n == "ifd" and not cfg.ifd)]
        if asked:
            raise ValueError("not for preference pairs: " + "; ".join(f"{SFT_ONLY[n][0]} ({SFT_ONLY[n][1]})"
                                                                    for n in asked) + "; leave it out")
    else:
        asked = [n for n in PAIR_ONLY if getattr(cfg, n) != defaults[n]]
        if asked:
            raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in asked)}: DPO settings, for preference "
                             "pairs; these sources hold SFT examples (leave them out)")


def not_applied(cfg) -> dict[str, str]:
    """The SFT-only settings ``cfg`` leaves on (their defaults), with why a pair learn run ignores them."""
    off = {"ifd": False, "reference": None, "stability_runs": 1, "stability_vary": None}
    return {n: why for n, (_, why) in SFT_ONLY.items() if n not in off or getattr(cfg, n) != off[n]}


def dpo_config(cfg) -> DPOConfig:
    """The DPO training of a pair learn run: the learn config's training settings, objective and
    beta (the learning rate defaults to DPO's, :attr:`DPOConfig.peak_lr`)."""
    return DPOConfig(**{f.name: getattr(cfg, f.name) for f in fields(DPOConfig)})


def pair_learn_key(cfg, dpo: DPOConfig) -> dict:
    """The settings that change a pair learn run's results: the pool and model's, the folds and
    the DPO training's (resolved learning rate, objective, beta)."""
    skip = {f.name for f in fields(DPOConfig)} | set(SFT_ONLY)
    return {**{k: v for k, v in result_key(cfg).items() if k not in skip}, **dpo.result_key(), "data": "pairs"}


def run_pair_learn(cfg, progress: Progress | None = None) -> Path:
    """Run (or finish) a learn run on preference pairs (``cfg``: a
    :class:`curation.runs.learn.LearnConfig`) and return its folder."""
    from curation.runs.training import checkpoint_model, train
    from curation.scoring.engine import open_engine
    from curation.scoring.passes import PassSettings

    refuse_unused_settings(cfg, "pairs")
    report, timings, dpo = Reporter(progress), Timings(), dpo_config(cfg)
    with timings("load"):
        data, lm, template, max_length = load_inputs(cfg, report, "pairs")
    settings = PassSettings.of(cfg, lm, template, max_length)
    run, meta = claim("learn", cfg, data, lm, template, settings, key=pair_learn_key(cfg, dpo), extra={
        "data": "pairs", "training": dpo.result_key(), "seed": cfg.seed, "not_applied": not_applied(cfg)})
    with timings("tokenise"):
        report(phase="tokenising", done=0, total=len(data.pairs))
        pairs, encoded, n_tokens, rejected = encode_pairs(data, lm.tokenizer, template, max_length)
        table = pair_example_table(pairs, encoded, n_tokens)
        run.write_examples(table)

    with open_engine(cfg) as settings.engine:  # this process, or Ray workers (--engine ray)
        with timings("score_base"):
            base = score_pairs_with(lm.source(), lm.fingerprint, pairs, encoded, settings, report,
                                    "scoring pairs (base model)", embed=("prompt_rds",))
        base_nll = nll_sums(pairs, n_tokens, base)
        items, left_out = dpo_items(pairs, encoded, base_nll, dpo.dpo_loss)
        with timings("train_session"):
            res = train(lm.path, lm.tokenizer, [x for x in items if x is not None], dpo, run.path / "train", 1,
                        device=lm.device, progress=report, phase="training reference model (DPO)",
                        engine=settings.engine)
        with timings("score_reference"):
            fp, model = checkpoint_model(lm, res.checkpoints[-1], report)
            trained = score_pairs_with(model, fp, pairs, encoded, settings, report, "scoring pairs (trained reference)")
        columns = pair_learn_columns(base_nll, nll_sums(pairs, n_tokens, trained), dpo.beta)
        if cfg.heldout_folds:
            with timings("heldout"):
                columns["fold"], held = heldout_sums(cfg.heldout_folds, cfg.seed, dpo, lm, pairs, encoded, n_tokens,
                                                     items, settings, run.path / "folds", report)
            columns.update(pair_heldout_columns(base_nll, held, dpo.beta))
            meta["heldout_agreement"] = heldout_agreement(columns, [p.domain for p in pairs],
                                                          [c.removesuffix("_heldout") for c in PAIR_HELDOUT_COLUMNS])

    report(phase="writing tables", done=len(pairs), total=len(pairs))
    scores = write_pair_tables(run, pairs, table, encoded, base, rejected, ref_rows=trained,
                               extra_columns=arrow_columns(columns))
    write_train_curve(run.path, res.loss_curve)
    meta.update({
        "checkpoint_fingerprints": [lm.fingerprint, fp], "train": res.summary(), "heldout_folds": cfg.heldout_folds,
        "dpo": {"loss": dpo.dpo_loss, "beta": dpo.beta, "lr": dpo.peak_lr}, "not_trained": left_out,
        "n_scored": int(sum(scores.column("scored").to_pylist())), "n_rejected": len(rejected),
        "score_cache": str(settings.cache.root), "timings_s": timings.total(),
    })
    run.finish(meta)
    report(phase="done", done=len(pairs), total=len(pairs))
    return run.path


def nll_sums(pairs, n_tokens: dict, rows: dict[str, dict]) -> dict[str, np.ndarray]:
    """Each pair's responses' summed NLL under a pass (``{side: (n_pairs,)}``; ``L = -logp``)."""
    return {s: np.array([response_loss(rows[p.sft_id(s)], n_tokens[p.sft_id(s)]) for p in pairs], dtype=np.float64)
            for s in SIDES}


def response_only(enc):
    """``enc`` (prompt + response as an SFT example) with only the response's targets: DPO's
    log-prob of a response is over its own tokens, not a multi-turn prompt's earlier assistant turns."""
    from curation.data.templates import Encoded

    target = enc.target.copy()
    target[: enc.response_start] = False
    return Encoded(enc.input_ids, target, enc.n_tokens_full, enc.truncated)


def dpo_items(pairs, encoded: dict, base_nll: dict[str, np.ndarray], dpo_loss: str):
    """The DPO training items of ``pairs`` (:class:`DPOPair`, base log-probs ``-base_nll``), None
    for a pair that cannot be trained on, and those pairs with their reason (:func:`pair_problem`):
    they are still scored, only left out of training."""
    items, left_out = [], []
    for k, p in enumerate(pairs):
        item = DPOPair(response_only(encoded[p.sft_id("chosen")]), response_only(encoded[p.sft_id("rejected")]),
                       -float(base_nll["chosen"][k]), -float(base_nll["rejected"][k]), p.pair_id)
        why = pair_problem(item, dpo_loss)
        if why is not None:
            left_out.append({"pair_id": p.pair_id, "source": p.source, "source_index": p.source_index, "reason": why})
        items.append(None if why else item)
    return items, left_out


def heldout_sums(n_folds: int, seed: int, dpo: DPOConfig, lm, pairs, encoded, n_tokens, items, settings,
                 folder: Path, report) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(fold of each pair, {side: its summed NLL under the model trained without its fold})``:
    fold f's model is trained (DPO, as the reference) on the other folds' pairs and scores fold f's."""
    from curation.runs.training import checkpoint_model, train

    folds = assign_folds(len(pairs), n_folds, seed)
    sums = {s: np.full(len(pairs), np.nan) for s in SIDES}
    for f in range(n_folds):
        held = np.flatnonzero(folds == f)
        res = train(lm.path, lm.tokenizer, [items[i] for i in np.flatnonzero(folds != f) if items[i] is not None],
                    dpo, folder / f"fold-{f}", 1, device=lm.device, progress=report,
                    phase=f"training held-out model {f + 1}/{n_folds} (DPO)", engine=settings.engine)
        fp, model = checkpoint_model(lm, res.checkpoints[-1], report)
        fold_pairs = [pairs[i] for i in held]
        rows = score_pairs_with(model, fp, fold_pairs, encoded, settings, report,
                                f"scoring held-out fold {f + 1}/{n_folds}")
        for s, v in nll_sums(fold_pairs, n_tokens, rows).items():
            sums[s][held] = v
    return folds, sums


def arrow_columns(columns: dict) -> dict:
    """The pair learn run's columns as Arrow arrays in the registry's order (NaN stored as null)."""
    import pyarrow as pa

    def f64(x):
        return pa.array(np.asarray(x, dtype=np.float64), pa.float64(), from_pandas=True)

    out = {c: f64(columns[c]) for c in PAIR_LEARN_COLUMNS}
    if "fold" in columns:
        out["fold"] = pa.array(columns["fold"], pa.int32())
        out.update({c: f64(columns[c]) for c in PAIR_HELDOUT_COLUMNS})
    return out

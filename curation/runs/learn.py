"""The ``learn`` run: one reference training run gives every learnability score.

    load -> tokenise -> score the base model (+ responses alone, for IFD)
         -> train the reference with K checkpoints (or attach one) -> score each checkpoint
         -> [extra references (stability)] -> [held-out folds] -> formulas -> tables

Fine-tune the base model on the pool (LoBaSS/DavIR's reference model = S2L's proxy) and score
every example at K+1 evenly spaced points (step 0 = base, ..., K = final).  Each example gets a
trajectory ``L_0..L_K``; :mod:`curation.runs.formulas` turns it into ``loss_base, loss_ref, davir, rho,
ppl_base``, IFD and S2L clusters.

The run folder (:mod:`curation.runs.folder`) adds to the score run's columns ``loss_ckpt_0..K``,
``loss_base, loss_ref, davir, rho, ifd, ppl_base, s2l_cluster`` (+ ``fold, loss_ref_heldout,
davir_heldout, rho_heldout`` with ``--heldout-folds``; + ``loss_ref_r1..rN, davir_r1..rN,
rho_r1..rN, davir_sd, rho_sd`` and ``stability.json`` with ``--stability-runs N``), reference token losses
(``token_losses_ref``), ``train/`` (trajectory checkpoints and the resume state) and ``folds/``.

On sources of preference pairs it is the pair learn run (:mod:`curation.runs.pair_learn`: a DPO
reference, every pair scored under it); the settings that apply to one kind of data only are
refused, in one line, for the other.

Re-running the same command resumes: training continues from its last saved state, finished
checkpoints are not retrained, and every scoring pass reads the score cache (:mod:`curation.scoring.passes`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from curation.config import check_at_most, check_positive, field_info, option, project, result_key
from curation.progress import Progress, Reporter, Timings
from curation.runs.dpo import beta_option, check_dpo_settings, dpo_loss_option
from curation.runs.formulas import assign_folds
from curation.runs.pair_learn import PAIR_ONLY, refuse_unused_settings, run_pair_learn
from curation.runs.steps import RunConfig
from curation.runs.training import TrainConfig
from curation.scores import HELDOUT_COLUMNS, LEARN_COLUMNS, stability_columns, trajectory_columns


@dataclass(kw_only=True)
class LearnConfig(TrainConfig, RunConfig):
    """Settings of a learnability run: the pool and model (RunConfig), the reference training
    (TrainConfig) and the trajectory (the CLI, the job store and the Score page build this)."""

    checkpoints: int = option(4, "K: score at K+1 evenly spaced points of the reference training (0 = base)")
    reference: str | None = option(None, "attach this fine-tuned model (folder, .gguf or LoRA adapter folder) "
                                         "instead of training (a 2-point trajectory)")
    heldout_folds: int = option(0, "N >= 2: also train N models, each without one fold, for held-out reference losses")
    n_clusters: int = option(100, "S2L K-means clusters (capped so clusters average >= 10 examples)",
                             flag="--clusters")
    ifd: bool = option(True, "the extra response-only pass for IFD", negate="--no-ifd")
    stability_runs: int = option(1, "N >= 2: train N-1 extra references that differ by seed (and --stability-vary) "
                                    "and score each once, to show how stable the scores' rankings are")
    stability_vary: str | None = option(None, "a training setting the extra references vary, e.g. lr=2e-5,5e-5 "
                                              "(values used in turn)", metavar="SETTING=V1,V2")
    # Preference pairs (runs/pair_learn.py): the reference is trained with DPO, not SFT.
    dpo_loss: str = dpo_loss_option("preference pairs: ")
    beta: float = beta_option("preference pairs: ")

    def __post_init__(self):
        RunConfig.__post_init__(self)
        TrainConfig.__post_init__(self)
        check_positive(self, "checkpoints", "n_clusters", "stability_runs")
        check_at_most(self, checkpoints=100, n_clusters=100_000, stability_runs=20, heldout_folds=100)
        if self.heldout_folds == 1 or self.heldout_folds < 0:
            raise ValueError(f"heldout-folds must be 0 (off) or at least 2, got {self.heldout_folds}")
        if self.stability_runs > 1 and self.reference is not None:
            raise ValueError("stability-runs trains extra references; it does not apply to an attached --reference")
        if self.stability_vary is not None:
            if self.stability_runs < 2:
                raise ValueError("stability-vary needs --stability-runs 2 or more")
            self.stability_settings()  # validates
        check_dpo_settings(self)

    def stability_settings(self) -> list[TrainConfig]:
        """The training settings of the extra references 2..N: the main run's, with seed + r - 1
        (data order, adapter initialisation), and the varied setting's values in turn."""
        name, values = None, [None]
        if self.stability_vary:
            name, _, text = self.stability_vary.partition("=")
            name = name.strip().replace("-", "_")
            train_fields = {f.name: f for f in fields(TrainConfig) if f.metadata.get("result", True)}
            if name not in train_fields or not text.strip():
                raise ValueError(f"stability-vary {self.stability_vary!r}: expected SETTING=V1,V2,... with a training "
                                 f"setting ({', '.join(sorted(train_fields))})")
            kind = field_info(TrainConfig, name)["type"]
            try:
                values = [(kind(v) if kind is not bool else v.strip().lower() in ("1", "true", "yes"))
                          for v in text.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"stability-vary {self.stability_vary!r}: {name} takes {kind.__name__} values") from None
        out = []
        for r in range(2, self.stability_runs + 1):
            changes = {"seed": self.seed + r - 1}
            if name is not None:
                changes[name] = values[(r - 2) % len(values)]
            out.append(replace(self.train_config(), **changes))
        return out

    def train_config(self) -> TrainConfig:
        return project(self, TrainConfig)

    @property
    def n_points(self) -> int:
        """K: the index of the last trajectory point."""
        return 1 if self.reference is not None else self.checkpoints

    def result_key(self) -> dict:
        """Settings that change results; an attached reference makes the training settings moot
        (except the seed, which still seeds K-means)."""
        train_fields = {f.name for f in fields(TrainConfig)} | set(PAIR_ONLY)
        d = {k: v for k, v in result_key(self).items() if k not in train_fields}
        if self.reference is None or self.heldout_folds:
            d.update(self.train_config().result_key())
        d["seed"] = self.seed
        return d


def run_learn(cfg: LearnConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a learnability run and return its output folder.

    ``progress`` receives dicts with ``phase, done, total`` and, where known, ``tokens,
    tokens_per_s, eta_s`` (and ``train_loss, lr`` while training).
    """
    from curation.scoring.engine import open_engine
    from curation.data.load import RecordError
    from curation.runs.steps import claim, data_kind, load_inputs, tokenise, write_tables
    from curation.scoring.passes import PassSettings, score_pass
    from curation.data.templates import encode_response_only

    kind = data_kind(cfg)
    refuse_unused_settings(cfg, kind)
    if kind == "pairs":  # a DPO reference, every pair scored under it (runs/pair_learn.py)
        return run_pair_learn(cfg, progress)
    report, timings, K = Reporter(progress), Timings(), cfg.n_points
    with timings("load"):
        data, lm, template, max_length = load_inputs(cfg, report)
        ref = attach_reference(cfg.reference, lm) if cfg.reference is not None else None
    settings = PassSettings.of(cfg, lm, template, max_length)
    run, meta = claim("learn", cfg, data, lm, template, settings, reference=ref, extra={
        "reference": ref.describe() if ref is not None else None,
        "training": None if ref is not None else cfg.train_config().result_key(),
        "checkpoints": K, "seed": cfg.seed})
    with timings("tokenise"):
        examples, encoded, rejected, table = tokenise(run, data, lm.tokenizer, template, max_length, report)
    ids = [e.example_id for e in examples]

    with open_engine(cfg) as settings.engine:  # this process, or Ray workers (--engine ray)
        with timings("score_base"):  # step 0: the base model
            passes = [score_pass(lm.source(), lm.fingerprint, ids, encoded, settings, report,
                                 f"scoring checkpoint 0/{K} (base model)", embed=True)]
        alone, alone_rows = None, {}
        if cfg.ifd:
            with timings("score_ifd"):
                alone = encode_response_only(lm.tokenizer, template, [e.messages for e in examples], max_length)
                ok = [i for i, a in enumerate(alone) if not isinstance(a, RecordError)]  # no IFD for those
                alone_rows = score_pass(lm.source(), lm.fingerprint, [ids[i] for i in ok], [alone[i] for i in ok],
                                        settings, report, "scoring responses alone (IFD)", variant="response_only")

        train_info, fingerprints = None, [lm.fingerprint]
        if ref is not None:
            with timings("score_checkpoints"):
                passes.append(score_pass(ref.source(), ref.fingerprint, ids, encoded, settings, report,
                                         "scoring checkpoint 1/1 (reference)"))
            fingerprints.append(ref.fingerprint)
            del ref
        else:
            from curation.runs.training import checkpoint_model, train

            with timings("train_session"):
                res = train(lm.path, lm.tokenizer, encoded, cfg.train_config(), run.path / "train", K,
                            device=lm.device, progress=report, phase="training reference model",
                            engine=settings.engine)
            train_info = res.summary()
            with timings("score_checkpoints"):
                for k, ckpt in enumerate(res.checkpoints, start=1):
                    fp, model = checkpoint_model(lm, ckpt, report)
                    passes.append(score_pass(model, fp, ids, encoded, settings, report, f"scoring checkpoint {k}/{K}"))
                    fingerprints.append(fp)

        extra_refs = []  # losses of the extra references 2..N (stability)
        if cfg.stability_runs > 1:
            with timings("stability"):
                extra_refs = stability_losses(cfg, lm, ids, encoded, settings, run.path / "stability", report)

        folds = heldout = None
        if cfg.heldout_folds:
            with timings("heldout"):
                folds, heldout = heldout_losses(cfg, lm, ids, encoded, settings, run.path / "folds", report)

        with timings("cluster_and_assemble"):
            report(phase="clustering trajectories (S2L)", done=0, total=None)
            columns, clusters, mismatches, found = assemble_columns(
                cfg, ids, encoded, passes, (alone, alone_rows), table.column("domain").to_pylist(),
                folds, heldout, extra_refs)
            meta.update(found)
            if "stability" in found:
                run.write_stability(found["stability"])
        report(phase="writing tables")
        scores = write_tables(run, table, encoded, passes[0], rejected, ref_rows=passes[-1],
                              extra_columns=arrow_columns(columns, clusters))
        run.write_embeddings(ids, passes[0])
        meta.update({
            "checkpoint_fingerprints": fingerprints, "train": train_info, "heldout_folds": cfg.heldout_folds,
            "n_scored": int(sum(scores.column("scored").to_pylist())), "n_rejected": len(rejected),
            "n_clusters": int(clusters.max()) + 1 if (clusters >= 0).any() else 0,
            "ifd_token_mismatches": mismatches, "score_cache": str(settings.cache.root),
            "timings_s": timings.total(),
        })
        run.finish(meta)
        report(phase="done", done=len(examples), total=len(examples))
    return run.path


def assemble_columns(cfg: LearnConfig, ids, encoded, passes, ifd_passes, domains, folds, heldout, extra_refs):
    """The columns a learn run adds to its table, from its passes: the trajectory
    ``loss_ckpt_0..K`` (one pass per checkpoint), davir/rho/ppl (:func:`derived_columns`), ifd (the
    base pass and the responses alone, ``ifd_passes``), the folds' held-out scores and the
    stability runs' columns.  Returns ``(columns, s2l clusters, ifd token mismatches, meta)``, where
    ``meta`` holds the held-out agreement and the stability summary when there are folds or runs."""
    from curation.runs.formulas import (derived_columns, heldout_agreement, heldout_columns, s2l_clusters,
                                        stability_columns, stability_summary)

    K = len(passes) - 1
    L = np.stack([losses_of(p, ids) for p in passes], axis=1)  # (n_examples, K+1)
    columns = {f"loss_ckpt_{k}": L[:, k] for k in range(K + 1)}
    columns.update(derived_columns(L))
    columns["ifd"], mismatches = ifd_column(ids, encoded, passes[0], *ifd_passes)
    clusters = s2l_clusters(L, cfg.n_clusters, cfg.seed)
    meta = {}
    if folds is not None:
        columns["fold"] = folds
        columns.update(heldout_columns(L[:, 0], heldout))
        meta["heldout_agreement"] = heldout_agreement(columns, domains)
    if extra_refs:
        columns.update(stability_columns(L[:, 0], [L[:, -1], *extra_refs]))
        meta["stability"] = stability_summary(columns, domains, runs=cfg.stability_runs, settings=[
            cfg.train_config().result_key(), *[t.result_key() for t in cfg.stability_settings()]])
    return columns, clusters, mismatches, meta


# ----------------------------------------------------------------------------------------------
# Stages


def attach_reference(spec: str, lm):
    """A fine-tuned reference model (``--reference``) on the base model's device and dtype."""
    from curation.scoring.losses import check_head_path
    from curation.scoring.models import load_reference

    ref = load_reference(spec, lm)
    if ref.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
        raise ValueError(f"--reference {spec}: its tokenizer differs from the base model's, "
                         "so its losses are not comparable")
    check_head_path(ref.model)
    return ref


def heldout_losses(cfg: LearnConfig, lm, ids, encoded, settings, folder: Path, report):
    """``(fold of each example, its loss under the model trained without its fold)``."""
    from curation.scoring.passes import score_pass
    from curation.runs.training import checkpoint_model, train

    folds = assign_folds(len(ids), cfg.heldout_folds, cfg.seed)
    rows: dict[str, dict] = {}
    for f in range(cfg.heldout_folds):
        keep, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        res = train(lm.path, lm.tokenizer, [encoded[i] for i in keep], cfg.train_config(), folder / f"fold-{f}", 1,
                    device=lm.device, progress=report,
                    phase=f"training held-out model {f + 1}/{cfg.heldout_folds}", engine=settings.engine)
        fp, model = checkpoint_model(lm, res.checkpoints[-1], report)
        rows.update(score_pass(model, fp, [ids[i] for i in held], [encoded[i] for i in held], settings, report,
                               f"scoring held-out fold {f + 1}/{cfg.heldout_folds}"))
    return folds, losses_of(rows, ids)


def stability_losses(cfg: LearnConfig, lm, ids, encoded, settings, folder: Path, report) -> list[np.ndarray]:
    """Train the extra references 2..N (:meth:`LearnConfig.stability_settings`) on the whole pool
    and score each once: their reference losses, for the stability of the rankings."""
    from curation.scoring.passes import score_pass
    from curation.runs.training import checkpoint_model, train

    out = []
    n = cfg.stability_runs
    for r, tcfg in enumerate(cfg.stability_settings(), start=2):
        res = train(lm.path, lm.tokenizer, encoded, tcfg, folder / f"run-{r}", 1, device=lm.device,
                    progress=report, phase=f"training reference {r}/{n} (stability)",
                    engine=settings.engine)
        fp, model = checkpoint_model(lm, res.checkpoints[-1], report)
        out.append(losses_of(score_pass(model, fp, ids, encoded, settings, report,
                                        f"scoring reference {r}/{n} (stability)"), ids))
    return out


def losses_of(rows: dict[str, dict], ids) -> np.ndarray:
    """Mean loss per example of a pass (NaN where the example kept no assistant token)."""
    n = np.array([rows[i]["n_tokens"] for i in ids], dtype=np.float64)
    s = np.array([rows[i]["loss_sum"] for i in ids], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, s / n, np.nan)


def ifd_column(ids, encoded, full_rows, alone, alone_rows) -> tuple[np.ndarray, int]:
    """IFD of every example (NaN without a response-only pass) and how many examples'
    response-only tokens differed from the full rendering's (see :func:`curation.runs.formulas.ifd_score`)."""
    from curation.runs.formulas import ifd_score

    out, mismatches = np.full(len(ids), np.nan), 0
    for i, eid in enumerate(ids):
        if eid not in alone_rows:
            continue
        f, a = full_rows[eid], alone_rows[eid]
        fpos, apos = np.asarray(f["positions"], dtype=np.int64), np.asarray(a["positions"], dtype=np.int64)
        out[i], matched = ifd_score(encoded[i].input_ids[fpos], np.asarray(f["token_losses"]),
                                    alone[i].input_ids[apos], np.asarray(a["token_losses"]))
        mismatches += not matched
    return out, mismatches


def arrow_columns(columns: dict[str, np.ndarray], clusters: np.ndarray) -> dict:
    """The learn run's score columns as Arrow arrays, in the registry's table order
    (:mod:`curation.scores`): the trajectory, the learn columns, the S2L cluster, the held-out
    columns, then the stability columns.  NaN (no assistant token) is stored as null."""
    import pyarrow as pa

    def f64(x):
        return pa.array(np.asarray(x, dtype=np.float64), pa.float64(), from_pandas=True)

    out = {c: f64(columns[c]) for c in trajectory_columns(columns)}
    out.update({c: f64(columns[c]) for c in LEARN_COLUMNS})
    out["s2l_cluster"] = pa.array(clusters, pa.int32())
    if "fold" in columns:
        out["fold"] = pa.array(columns["fold"], pa.int32())
        out.update({c: f64(columns[c]) for c in HELDOUT_COLUMNS})
    out.update({c: f64(columns[c]) for c in stability_columns(columns)})
    return out

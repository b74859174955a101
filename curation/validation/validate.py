"""The ``validate`` run: does a selection train a better model than random, at equal examples
and at equal tokens?

    read selections -> build the candidates (each selection + its baselines) -> load the eval sets
    (refusing overlap with the pool) -> score the base model on them -> for every (candidate,
    seed): fine-tune the proxy, score it on the eval sets -> statistics -> report

Candidates, all trained from the same start with the project's own training code
(:func:`curation.runs.training.train`) and one set of hyper-parameters, once per seed:

==================  ===============================================================================
the selection       its examples; only the training order changes with the seed
``random``          per domain, as many examples as the selection, drawn from the same eligible
                    rows (the recipe's thresholds), a new sample per seed
``random-tokens``   per domain, a random sample with as many assistant tokens as the selection (the
                    fair comparison when a score prefers short or long answers), a new sample per seed
``longest``         per domain, the examples with the longest responses, as many as the selection
``full``            every eligible example (one seed): the ceiling
``natural``         as many examples as the selection, a random sample at the pool's natural domain
                    proportions (whatever the selection's mix), a new sample per seed: what a mix
                    change is judged against
==================  ===============================================================================

Besides each eval domain, every comparison is also made on the ``--objective`` (the mean of the
domains' NLL by default; ``worst``: the largest; or weights), so a mix that trades one domain
for another gets one verdict too.

Evaluation: the mean assistant-token NLL of every held-out eval example (``--eval DOMAIN=PATH``)
under the base model and each trained model, through the score cache.  An eval example that is
also in the pool (same content hash) is refused.  :mod:`curation.validation.verdicts` turns the per-example
table into means, seed spreads, paired differences with 95% intervals and verdicts.

VAL_DIR::

    results.parquet   candidate, seed, domain, example_id, nll, n_tokens (the base model: seed -1)
    curves.parquet    candidate, seed, step, loss, lr, tokens (each training's loss curve)
    report.json       every number: config, provenance, candidates, statistics, verdicts, lengths
    report.md         a short human summary
    study.json, parts/, train/   the study folder (:mod:`curation.validation.study`): a folder
                      holds one validation (other settings are refused); a resumed job skips the
                      committed parts

A selection of a *pair run* is validated the same way with DPO: each candidate's training is a DPO
training from the base model (``--dpo-loss``, ``--beta``; both objectives side by side with
``--dpo-loss sigmoid,davir``), the eval sets are held-out preference pairs, and the statistics are
:mod:`curation.validation.pair_eval`'s measures (reward accuracy the primary one), each with the
verdicts above in its own direction.

The trainings are run by :mod:`curation.validation.study` (the runner the mix study uses too): a
(candidate, seed) whose training set, seed, model and settings were trained before, by this or
another validation or a mix study, is not trained again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curation.config import check_at_most, check_choices, check_positive, option, parse_pairs
from curation.progress import Progress, Reporter, count_text
from curation.selection.baselines import BASELINES
from curation.selection.recipe import Recipe
from curation.validation.mixing_law import MixError, parse_objective
from curation.validation.candidates import DRAWS, build_candidates, comparison_pairs
from curation.validation.pair_eval import DEFAULT_ACCURACY_MARGIN
from curation.validation.proxy import MAX_SEEDS, PairTrainingConfig, ProxyConfig, Training, ValidationError
from curation.validation.sequential import MAX_SEEDS_AUTO, SeedPlan, sequential_report, undecided
from curation.validation.verdicts import DEFAULT_MARGIN, comparison_line
from curation.validation.pair_eval import (PRIMARY, length_bias_comparisons, length_correlation, pair_metric_rows,
                                          pair_statistics)
from curation.validation.study import NUMBER, NUMBER_OR_NULL, TEXT, TEXT_OR_NULL, WHOLE, StudyReader, each, items, obj


@dataclass(kw_only=True)
class ValidateConfig(ProxyConfig, PairTrainingConfig):
    """Settings of a validation (the CLI, the job store and the Validate page build this); the
    proxy and its training settings are ProxyConfig's (one set for every candidate)."""

    selections: list[str] = option(help="selection folders written by `select` (all from the same run)",
                                   positional=True, metavar="SEL_DIR")
    baselines: str = option("random,random-tokens", f"comma-separated baselines: {', '.join(BASELINES)}")
    seeds: int | str = option(3, "trainings per candidate (seeds 0..N-1 added to --seed), or auto: one more seed for "
                                 "the candidates of every comparison not decided yet (better, worse or equivalent) "
                                 "until all are or --max-seeds is reached, with error rates that hold although it "
                                 "looks after every seed; the full pool trains once", metavar="N|auto")
    max_seeds: int = option(8, "--seeds auto: the most seeds per candidate")
    margin: float = option(DEFAULT_MARGIN, "nats of held-out NLL within which a difference is practically none: a "
                                           "comparison whose interval lies inside [-M, +M] is called equivalent",
                           result=False)
    objective_margin: float | None = option(None, "the objective's equivalence margin (default: --margin)",
                                            result=False)
    draws: str = option("coupled", "a random selection (--method random) at each seed: coupled (drawn again from its "
                                   "baselines' stream: per domain the smaller sample is part of the larger, so the "
                                   "difference varies less), independent (drawn again from its own stream) or fixed "
                                   "(its own examples at every seed)", choices=DRAWS)
    generate: dict[str, str] = option(help="DOMAIN=N: also greedy-decode the first N eval problems of a math domain "
                                           "and compare final answers (slow on a CPU); repeatable",
                                      default_factory=dict, metavar="DOMAIN=N")
    max_new_tokens: int = option(384, "--generate: the most tokens generated per problem")
    allow_contaminated: bool = option(False, "train on pool examples that share an --ngram-word sequence with "
                                             "an eval example (refused by default: they measure memorisation)")
    ngram: int = option(Recipe.ngram, "contamination check: consecutive words shared with an eval example that flag a "
                            "training example")
    objective: str = option("mean", "also compare on one number over the eval domains: mean (of their NLL), "
                                    "worst (the largest), or DOMAIN=W,... (a weight for every eval set)")
    accuracy_margin: float = option(DEFAULT_ACCURACY_MARGIN, "pairs: the share of eval pairs within which a "
                                    "difference of reward accuracy is practically none (0.05: 5 points)", result=False)

    def __post_init__(self):
        if isinstance(self.selections, str):
            self.selections = [self.selections]
        if not self.selections:
            raise ValueError("give at least one selection folder (SEL_DIR)")
        ProxyConfig.__post_init__(self)
        PairTrainingConfig.__post_init__(self)
        if isinstance(self.accuracy_margin, bool) or not 0 < self.accuracy_margin < 1:
            raise ValueError(f"accuracy-margin {self.accuracy_margin!r}: a share of eval pairs between 0 and 1, e.g. "
                             f"{DEFAULT_ACCURACY_MARGIN}")
        try:
            self.generate = {k: int(v) for k, v in parse_pairs(self.generate, "DOMAIN=N").items()}
        except ValueError:
            raise ValueError(f"generate {self.generate!r}: expected DOMAIN=N with a whole number N") from None
        unknown = [b for b in self.baseline_list() if b not in BASELINES]
        if unknown:
            raise ValueError(f"baselines {unknown}: expected some of {', '.join(BASELINES)}")
        if str(self.seeds).strip().lower() == "auto":
            self.seeds = "auto"
        else:
            try:
                self.seeds = int(self.seeds)
            except (TypeError, ValueError):
                raise ValueError(f"seeds {self.seeds!r}: give a number of seeds (e.g. 3) or auto") from None
            check_positive(self, "seeds")
        check_positive(self, "max_seeds", "max_new_tokens", "ngram")
        check_at_most(self, max_new_tokens=8192, ngram=1000, max_seeds=MAX_SEEDS_AUTO,
                      **({} if self.seeds == "auto" else {"seeds": MAX_SEEDS}))
        self.seed_plan()  # validates --max-seeds against the first look
        check_choices(self, "draws")
        for name in ("margin", "objective_margin"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not v > 0 or v == float("inf")):
                raise ValueError(f"{name.replace('_', '-')} {v!r}: a margin is a positive number of nats, e.g. "
                                 f"{DEFAULT_MARGIN}")
        if any(n < 1 or n > 100_000 for n in self.generate.values()):
            raise ValueError(f"generate {self.generate}: N must be between 1 and 100,000 problems")
        missing = [d for d in self.generate if d not in self.eval]
        if missing:
            raise ValueError(f"generate {missing}: no --eval set of that domain")
        try:
            parse_objective(self.objective, sorted(self.eval))
        except MixError as e:
            raise ValueError(str(e)) from None

    def baseline_list(self) -> list[str]:
        return [b.strip() for b in self.baselines.split(",") if b.strip()]

    def seed_plan(self) -> SeedPlan:
        """How seeds are spent: a fixed number (one look at 95%), or seeds until decided."""
        if self.seeds == "auto":
            return SeedPlan(self.max_seeds, auto=True)
        return SeedPlan(self.seeds)


def run_validate(cfg: ValidateConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a validation and return its folder (see the module docstring)."""
    from curation.validation.study import claim_study, run_study, study_identity, study_key, study_settings

    report, t0, plan = Reporter(progress), time.time(), cfg.seed_plan()
    report(phase="reading selections", done=0, total=None)
    run, sels = read_selections(cfg.selections)
    meta, table, pairs = run.require_finished(), run.scores(), run.holds_pairs
    if pairs:
        if cfg.generate:
            raise ValidationError("--generate decodes math answers of SFT eval sets; a pair validation evaluates "
                                  "held-out pairs: leave --generate out")
        # random-tokens matches what DPO trains on: the prompt and both responses
        table = table.assign(n_response_tokens=table["n_prompt_tokens"].astype("int64") + table["n_response_tokens"])
    candidates = build_candidates(cfg, sels, table, meta.get("kind"), run)
    candidates, objectives = with_objectives(candidates, cfg.dpo_losses() if pairs else [])
    for c in candidates:
        c.grow(1, cfg.seed)
    first = [t for c in candidates for t in c.trainings()]
    # The key holds every setting but the seed count and each candidate's first training: a study
    # that adds seeds (--seeds auto, or a larger --seeds into the same folder) stays one study.
    skip = ("seeds", "max_seeds") if pairs else ("seeds", "max_seeds", "dpo_loss", "beta")
    settings = {**study_settings(cfg, skip), "selections": [str(s.path.resolve()) for s in sels]}
    key = study_key(settings, meta.get("run_key"), [(t.name, t.seed, t.ids) for t in first])
    identity = study_identity(meta.get("run_key"), first)
    claim_study(Path(cfg.out), "validate", key, settings, identity, check_only=True)  # claimed once every check passed
    for c in candidates:
        c.grow(plan.looks[0], cfg.seed)
    check_targets(sels, cfg.eval, cfg.ngram)
    # pairs: an eval pair or prompt in the pool is refused when the eval sets load (proxy.load_pair_evals)
    recheck = not pairs and not cfg.allow_contaminated and not all(
        already_decontaminated(sel.recipe(), cfg.eval, cfg.ngram) for sel in sels)
    if recheck:
        report(phase="checking contamination")
        check_contamination(run, candidates, cfg.eval, cfg.ngram)
    compared = comparison_pairs(candidates) + objectives
    look = lambda results, metrics=("token",): statistics(results, cfg, compared, pairs, metrics)  # noqa: E731

    def rounds(study):
        """The first look's seeds; then, with --seeds auto, one more seed for the candidates of every
        comparison the looks so far left undecided (the statistics decide, the parts are the state)."""
        yield [t for c in candidates for t in c.trainings()]
        n = plan.looks[0]
        while plan.auto and n < plan.max_seeds:
            results, _ = study.assemble()
            rep = look(results)["token"]  # held-out NLL, or a pair validation's primary measure
            arms = {c[k] for c in undecided(rep) for k in ("candidate", "baseline")}
            if not arms:
                return
            n += 1
            report(phase=f"{len(undecided(rep))} comparison(s) undecided at {n - 1} seeds: one more seed", done=None,
                   total=None)
            for c in candidates:
                if c.name in arms:
                    c.grow(n, cfg.seed)
            if recheck:  # the new seeds' draws are checked as the first ones were
                check_contamination(run, candidates, cfg.eval, cfg.ngram)
            yield [t for c in candidates for t in c.trainings()]

    study = run_study(cfg, "validate", key, settings, identity, run, meta, table, rounds, report)
    n_trainings = len(study.parts)
    report(phase="statistics", done=n_trainings, total=n_trainings)
    stats = look(study.results, ("token", "example"))
    for st in (stats["pairs"].values() if pairs else stats.values()):
        add_costs(st["comparisons"], candidates, study)
    lm, template = study.proxy.lm, study.proxy.template
    rep = {
        "kind": "validate", "config": asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": run.provenance(), "model": lm.describe(), "template": {"name": template.name, "fingerprint": template.fingerprint},
        "selections": [{"name": s.name, "dir": str(s.path.resolve()), "recipe": s.recipe().to_dict()} for s in sels],
        "eval": study.proxy.evals.provenance, "candidates": describe_candidates(candidates, table),
        "statistics": stats, "lengths": length_report(sels, candidates, table),
        "notes": [n for c in candidates for n in c.notes()],
        "seconds": round(time.time() - t0, 1), "trainings": study.seconds(),
    }
    if cfg.generate:
        rep["generation"] = generation_eval(cfg, study, candidates, report)
    if pairs:
        rows = pair_metric_rows(study.results, cfg.beta)
        rep["pairs"] = {"primary": PRIMARY, "beta": cfg.beta, "dpo_losses": cfg.dpo_losses(),
                        "length_correlation": length_correlation(rows, seed=cfg.seed),
                        "length_bias_comparisons": length_bias_comparisons(rows, objectives, seed=cfg.seed)}
    study.write(rep, report_markdown(rep))
    report(phase="done", done=n_trainings, total=n_trainings)
    return study.out


def statistics(results, cfg: ValidateConfig, compared: list[tuple[str, str]], pairs: bool,
               metrics: tuple[str, ...] = ("token", "example")) -> dict:
    """The comparisons' reports at every look (:func:`curation.validation.sequential.sequential_report`):
    held-out NLL per ``metrics`` (token-weighted, example mean), or for a pair validation every
    measure of :mod:`curation.validation.pair_eval` under ``pairs`` with the primary one as ``token``
    (what the stopping rule and the SFT readers look at first)."""
    plan, objective = cfg.seed_plan(), parse_objective(cfg.objective, sorted(cfg.eval))
    if pairs:
        by_measure = pair_statistics(results, plan, compared, cfg.beta, cfg.margin, cfg.accuracy_margin,
                                     seed=cfg.seed, objective=objective)
        return {"token": by_measure[PRIMARY], "pairs": by_measure}
    return {m: sequential_report(results, plan, metric=m, pairs=compared, seed=cfg.seed, objective=objective,
                                 margin=cfg.margin, objective_margin=cfg.objective_margin) for m in metrics}


def with_objectives(candidates: list, losses: list[str]) -> tuple[list, list[tuple[str, str]]]:
    """A pair validation's candidates, each trained with every DPO objective of ``losses``: one
    objective keeps the names; two name each copy ``NAME [LOSS]`` (the same draws, so the same data
    at each seed) and compare the objectives on each candidate (``NAME [davir]`` vs ``NAME [sigmoid]``).
    Returns ``(candidates, objective comparisons)``; SFT (no losses): as given."""
    from dataclasses import replace

    if len(losses) <= 1:
        for c in candidates:
            c.dpo_loss = losses[0] if losses else None
        return candidates, []
    named = lambda n, loss: f"{n} [{loss}]"  # noqa: E731
    out = [replace(c, name=named(c.name, loss), selection=named(c.selection, loss), dpo_loss=loss, seeds=[], ids={},
                   skipped=[]) for loss in losses for c in candidates]
    ref = "sigmoid" if "sigmoid" in losses else losses[0]  # davir vs sigmoid: is the normalised objective better?
    return out, [(named(c.name, a), named(c.name, ref)) for a in losses if a != ref for c in candidates]


def add_costs(comparisons: list[dict], candidates, study) -> None:
    """Each comparison's ``cost``: the trainings its verdict took (each arm's seeds up to the look
    that decided it, or all of them) and their own wall seconds (or that they came from the cache)."""
    import json

    by_name = {c.name: c for c in candidates}
    for comp in comparisons:
        trainings, seconds, reused = 0, 0.0, 0
        for arm, n in ((comp["candidate"], comp["n_seeds_candidate"]), (comp["baseline"], comp["n_seeds_baseline"])):
            for t in by_name[arm].trainings()[:n]:
                f = study.part_path(t).with_suffix(".time.json")
                info = json.loads(f.read_text()) if f.is_file() else {}
                trainings += 1
                reused += bool(info.get("reused"))
                seconds += float(info.get("seconds") or 0.0) if not info.get("reused") else 0.0
        comp["cost"] = {"trainings": trainings, "seconds": round(seconds, 1), "reused": reused}


class Validation(StudyReader):
    """A finished validation's folder (the Validate page and the CLI read it): its report, loss
    curves and summary."""

    KIND = "validate"
    SCHEMA = obj(
        optional={"notes": items(TEXT)}, config=obj(epochs=WHOLE, seeds={"type": ["integer", "string"]}),
        model=obj(spec=TEXT),
        selections=items(obj(name=TEXT)),
        seconds=NUMBER,
        statistics=obj(token=obj(
            metric_text=TEXT,
            comparisons=items(obj(candidate=TEXT, baseline=TEXT, domain=TEXT, verdict_text=TEXT, diff=NUMBER, lo=NUMBER,
                                  hi=NUMBER, candidate_mean=NUMBER, baseline_mean=NUMBER)),
            rows=items(obj(candidate=TEXT, domain=TEXT, mean=NUMBER, sd=NUMBER_OR_NULL)))),
        lengths=each(obj(score=TEXT_OR_NULL, by_domain=each(obj(selection_mean_response_tokens=NUMBER_OR_NULL,
                                                                pool_mean_response_tokens=NUMBER)))),
        candidates=items(obj(name=TEXT, seeds=items(WHOLE),
                             per_seed=items(obj(examples=WHOLE, response_tokens=WHOLE)))))

    def inconsistency(self, rep: dict) -> str | None:
        for c in rep["candidates"]:
            if len(c["per_seed"]) != len(c["seeds"]):
                return f"candidate {c['name']} has {len(c['per_seed'])} training sets for {len(c['seeds'])} seeds"
        return None


# ----------------------------------------------------------------------------------------------
# Selections and candidates


def read_selections(folders: list[str]):
    """``(Run, [Selection])``: every folder must be a selection of one and the same run."""
    from curation.runs.folder import Run
    from curation.selection.folder import Selection

    sels = [Selection(f).require() for f in folders]
    runs = {str(s.provenance().get("dir")) for s in sels}
    if len(runs) != 1 or "None" in runs:
        raise ValidationError(f"validate compares selections of one run; these come from {sorted(runs)}")
    names = [s.name for s in sels]
    if len(set(names)) != len(names):
        raise ValidationError(f"two selections have the same folder name ({names}); rename one")
    return Run(next(iter(runs))), sels


def check_targets(sels, eval_paths: dict[str, str], ngram: int) -> None:
    """Refuse a selection made toward targets that overlap the eval sets (the same example, or
    ``ngram`` shared consecutive words): it would be tuned to the test, and its verdict meaningless."""
    from pathlib import Path

    from curation.data.load import SourceSpec, load_sources
    from curation.data.overlap import contaminated
    from curation.data.textnorm import conversation_text

    targeted = [(s, s.recipe().target) for s in sels if s.recipe().target]
    if not targeted:
        return
    ev = load_sources([SourceSpec(path=p, domain=d) for d, p in eval_paths.items()]).examples
    ev_ids = {e.example_id: e for e in ev}
    ev_texts = [conversation_text(e.messages) for e in ev]
    for sel, target in targeted:
        paths = [p for ps in target.values() for p in ps]
        same = sorted({str(Path(p).resolve()) for p in paths} & {str(Path(p).resolve()) for p in eval_paths.values()})
        if same:
            raise ValidationError(f"{sel.name} was selected toward {same[0]}, which is also an eval set here; targets "
                                  "must never be the evaluation (the default workspace keeps them apart: dev/ and eval/)")
        tg = load_sources([SourceSpec(path=p) for p in paths]).examples
        for e in tg:
            if e.example_id in ev_ids:
                x = ev_ids[e.example_id]
                raise ValidationError(f"{sel.name} was selected toward {e.source} #{e.source_index}, which is also eval "
                                      f"example {x.source} #{x.source_index}; targets must never be the evaluation")
        hit = contaminated([conversation_text(e.messages) for e in tg], ev_texts, ngram)
        if hit.flags.any():
            k = int(np.flatnonzero(hit.flags)[0])
            x = ev[int(hit.eval_index[k])]
            raise ValidationError(f"{sel.name} was selected toward {tg[k].source} #{tg[k].source_index}, which shares "
                                  f"{ngram} consecutive words with eval example {x.source} #{x.source_index} "
                                  f"({int(hit.flags.sum())} target example(s) in all); targets must never be the "
                                  "evaluation: choose targets apart from the eval sets")


def already_decontaminated(recipe, eval_paths: dict[str, str], ngram: int) -> bool:
    """The selection (and so its baselines, which apply its recipe's filters) already left out every
    pool example sharing ``ngram`` words with these eval files: no need to flag the pool again."""
    mine = {str(Path(p).resolve()) for p in recipe.decontaminate}
    return (not recipe.keep_contaminated and recipe.ngram <= ngram
            and {str(Path(p).resolve()) for p in eval_paths.values()} <= mine)


def check_contamination(run, candidates, eval_paths: dict[str, str], ngram: int) -> None:
    """Refuse a validation whose candidates train on pool examples that share ``ngram`` consecutive
    words with an eval example (curation.selection.contamination's rule): the eval would measure memorisation.
    The content-hash check of :func:`load_evals` catches exact copies only."""
    from curation.selection.contamination import flag_run

    used: dict[str, list[str]] = {}
    for c in candidates:
        for ids in c.ids.values():
            for i in ids:
                names = used.setdefault(str(i), [])
                if c.name not in names:
                    names.append(c.name)
    ids = sorted(used)
    texts = run.texts()
    missing = [i for i in ids if i not in texts]
    if missing:
        raise ValidationError(f"{len(missing)} training example(s) (e.g. {missing[0]}) are no longer in the run's "
                              "sources; score the current files again")
    flags = flag_run(ids, [texts[i] for i in ids], list(eval_paths.values()), ngram)
    hit = flags[flags["contaminated"]]
    if len(hit):
        first = hit.iloc[0]
        names = sorted({n for i in hit["example_id"] for n in used[i]})
        paths = " ".join(eval_paths.values())
        raise ValidationError(
            f"{len(hit)} training example(s) of {', '.join(names)} share {ngram} consecutive words with the eval "
            f"sets (e.g. {first['example_id']} with {first['contaminated_by']}), so the eval would measure "
            f"memorisation; select again with --decontaminate {paths} (its baselines leave them out too), "
            "or pass --allow-contaminated")


def describe_candidates(candidates, table) -> list[dict]:
    """Examples and assistant tokens per candidate (mean over seeds) and per domain."""
    by_id = table.set_index("example_id")
    out = []
    for c in candidates:
        per_seed = []
        for s in c.seeds:
            t = by_id.loc[c.ids[s]]
            per_seed.append({"examples": len(t), "response_tokens": int(t["n_response_tokens"].sum()),
                             "by_domain": {str(d): {"examples": int(len(g)), "response_tokens": int(g["n_response_tokens"].sum()),
                                                    "mean_response_tokens": float(g["n_response_tokens"].mean())}
                                           for d, g in t.groupby("domain")}})
        out.append({"name": c.name, "kind": c.kind, "selection": c.selection, "seeds": c.seeds, "per_seed": per_seed})
    return out


def length_report(sels, candidates, table) -> dict:
    """Per selection and domain: its mean response length beside the pool's, and the Spearman
    correlation of its score with response length over the pool, so a length effect is visible."""
    from curation.runs.formulas import rank_agreement

    out = {}
    for sel in sels:
        col = sel.summary().get("score", {}).get("column")
        chosen = table[table["example_id"].isin(set(sel.rows()["example_id"]))]
        doms = {}
        for d, g in table.groupby("domain"):
            entry = {"pool_mean_response_tokens": float(g["n_response_tokens"].mean()),
                     "selection_mean_response_tokens": float(chosen.loc[chosen.domain == d, "n_response_tokens"].mean())
                     if (chosen.domain == d).any() else None}
            if col and col in g.columns and col != "s2l_cluster":
                entry["score_length_spearman"] = rank_agreement(g[col], g["n_response_tokens"])["spearman"]
            doms[str(d)] = entry
        out[sel.name] = {"score": col, "by_domain": doms}
    return out


# ----------------------------------------------------------------------------------------------
# Optional: generation accuracy on math


def generation_eval(cfg: ValidateConfig, study, candidates, report) -> dict:
    """Greedy decoding of the first N eval problems of each ``--generate`` domain, under the base
    model and (if kept) the trained models; final answers compared exactly (curation.validation.answers)."""
    from curation.validation.answers import answers_match, extract_answer

    lm, evals = study.proxy.lm, study.proxy.evals
    result = {}
    for domain, n in cfg.generate.items():
        probs = [(e, x) for e, x in zip(evals.examples, evals.encoded) if e.domain == domain][:n]
        golds = [extract_answer(next(m["content"] for m in reversed(e.messages) if m["role"] == "assistant"))
                 for e, _ in probs]
        report(phase=f"generating answers ({domain}, base model)", done=0, total=len(probs))
        preds = greedy_answers(lm, [e.messages for e, _ in probs], cfg.max_new_tokens)
        correct = sum(answers_match(extract_answer(p), g) for p, g in zip(preds, golds))
        result[domain] = {"base": {"correct": int(correct), "n": len(probs), "accuracy": correct / max(len(probs), 1)},
                          "note": "trained models are generated from only with --keep-models"}
        if cfg.keep_models:
            from curation.scoring.models import load_checkpoint

            for c in candidates:
                for s in c.seeds:
                    ckpt = study.train_folder(Training(c.name, s, c.ids[s])) / "ckpt-1"
                    if not ckpt.is_dir():
                        continue
                    model = load_checkpoint(lm.path, ckpt, lm.device, lm.dtype)
                    preds = greedy_answers(lm, [e.messages for e, _ in probs], cfg.max_new_tokens, model=model)
                    ok = sum(answers_match(extract_answer(p), g) for p, g in zip(preds, golds))
                    result[domain].setdefault(c.name, []).append({"seed": s, "correct": int(ok), "n": len(probs)})
    return result


def greedy_answers(lm, conversations, max_new_tokens: int, model=None) -> list[str]:
    """The model's greedy continuation after each conversation's prompt (its turns before the last
    assistant turn)."""
    import torch

    model = model or lm.model
    out = []
    with torch.inference_mode():
        for msgs in conversations:
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            ids = lm.tokenizer.apply_chat_template(msgs[:last], add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)["input_ids"].to(lm.device)
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id)
            out.append(lm.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


# ----------------------------------------------------------------------------------------------
# The human summary


def objective_note(objective: dict | None) -> str:
    if not objective:
        return ""
    if objective["kind"] == "worst":
        return " The objective rows compare the largest of the domains' NLL."
    w = ", ".join(f"{d} {v:.2f}" for d, v in objective["weights"].items())
    return f" The objective rows compare the domains' NLL averaged with weights {w}."


def report_markdown(rep: dict) -> str:
    """report.md: the verdicts per domain in words, with the numbers behind them."""
    if "pairs" in rep:
        from curation.validation.pair_eval import pair_markdown

        return pair_markdown(rep)
    st = rep["statistics"]["token"]
    cfg, margin = rep["config"], st.get("margin") or {}
    seeds = (f"seeds until decided (at most {cfg['max_seeds']}, looks at "
             + ", ".join(str(x["seeds"]) for x in st.get("looks", [])) + ")") if cfg["seeds"] == "auto" else f"{cfg['seeds']} seeds"
    lines = [f"# Validation of {', '.join(s['name'] for s in rep['selections'])}", "",
             f"Proxy model `{rep['model']['spec']}`, {count_text(cfg['epochs'], 'epoch')}, {seeds}; "
             "eval sets: " + ", ".join(f"{e['domain']} ({e['n_evaluated']} examples)" for e in rep["eval"]) + ".", "",
             f"Metric: {st['metric_text']} (lower is better); differences are candidate - baseline with their "
             "interval; better or worse when it excludes 0, equivalent when it lies inside the margin "
             f"(±{margin.get('domains')} nats; the objective ±{margin.get('objective')}), else undecided."
             + objective_note(st.get("objective")), "", "## Verdicts", ""]
    for c in st["comparisons"]:
        lines.append(f"- {comparison_line(c)}; {c['candidate_mean']:.4f} vs {c['baseline_mean']:.4f}")
    if not st["comparisons"]:
        lines.append("- none: no baseline could be compared (see the notes)")
    if rep.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in rep["notes"]]
    lines += ["", "## Held-out NLL per candidate", "", "| candidate | domain | mean | sd over seeds | vs base |",
              "|---|---|---|---|---|"]
    for r in st["rows"]:
        sd = "" if r["sd"] is None else f"{r['sd']:.4f}"
        vs = "" if r["vs_base"] is None else f"{r['vs_base']:+.4f}"
        lines.append(f"| {r['candidate']} | {r['domain']} | {r['mean']:.4f} | {sd} | {vs} |")
    lines += ["", "## Response length (a length effect shows here)", ""]
    for name, v in rep["lengths"].items():
        for d, e in v["by_domain"].items():
            corr = e.get("score_length_spearman")
            sel_len = e["selection_mean_response_tokens"]
            lines.append(f"- {name}, {d}: selected responses average "
                         f"{'n/a' if sel_len is None else f'{sel_len:.0f}'} tokens vs {e['pool_mean_response_tokens']:.0f} "
                         f"in the pool" + (f"; Spearman({v['score']}, length) = {corr:.2f}" if corr is not None else ""))
    return "\n".join(lines) + "\n"




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

The trainings are run by :mod:`curation.validation.study` (the runner the mix study uses too): a
(candidate, seed) whose training set, seed, model and settings were trained before, by this or
another validation or a mix study, is not trained again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from curation.config import check_at_most, check_positive, option, parse_pairs, result_key
from curation.progress import Progress, Reporter
from curation.selection.baselines import BASELINES
from curation.selection.recipe import Recipe
from curation.validation.mixing_law import MixError, parse_objective
from curation.validation.proxy import MAX_SEEDS, ProxyConfig, Training, ValidationError
from curation.validation.study import NUMBER, NUMBER_OR_NULL, TEXT, TEXT_OR_NULL, WHOLE, StudyReader, each, items, obj


@dataclass(kw_only=True)
class ValidateConfig(ProxyConfig):
    """Settings of a validation (the CLI, the job store and the Validate page build this); the
    proxy and its training settings are ProxyConfig's (one set for every candidate)."""

    selections: list[str] = option(help="selection folders written by `select` (all from the same run)",
                                   positional=True, metavar="SEL_DIR")
    baselines: str = option("random,random-tokens", f"comma-separated baselines: {', '.join(BASELINES)}")
    seeds: int = option(3, "trainings per candidate (seeds 0..N-1 added to --seed); the full pool trains once")
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

    def __post_init__(self):
        if isinstance(self.selections, str):
            self.selections = [self.selections]
        if not self.selections:
            raise ValueError("give at least one selection folder (SEL_DIR)")
        ProxyConfig.__post_init__(self)
        try:
            self.generate = {k: int(v) for k, v in parse_pairs(self.generate, "DOMAIN=N").items()}
        except ValueError:
            raise ValueError(f"generate {self.generate!r}: expected DOMAIN=N with a whole number N") from None
        unknown = [b for b in self.baseline_list() if b not in BASELINES]
        if unknown:
            raise ValueError(f"baselines {unknown}: expected some of {', '.join(BASELINES)}")
        check_positive(self, "seeds", "max_new_tokens", "ngram")
        check_at_most(self, seeds=MAX_SEEDS, max_new_tokens=8192, ngram=1000)
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


MAX_REDRAWS = 20  # seeds a random baseline tries beyond its own when its draws are the selection itself


@dataclass
class Candidate:
    """A training set to validate: a selection or a baseline, with its examples per seed."""

    name: str
    kind: str  # "selection" | a baseline name
    selection: str  # the selection it belongs to (its own name for a selection)
    seeds: list[int]
    ids: dict[int, list[str]] = field(default_factory=dict)  # seed -> training example ids
    note: str | None = None  # what the report must say about it (seeds drawn again, no comparison)


def run_validate(cfg: ValidateConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a validation and return its folder (see the module docstring)."""
    from curation.validation.study import claim_study, file_fingerprints, run_study, study_identity, study_key
    from curation.validation.verdicts import build_report

    report, t0 = Reporter(progress), time.time()
    report(phase="reading selections", done=0, total=None)
    run, sels = read_selections(cfg.selections)
    meta, table = run.require_finished(), run.scores()
    candidates = build_candidates(cfg, sels, table, meta.get("kind"), run)
    trainings = [Training(c.name, s, c.ids[s]) for c in candidates for s in c.seeds]
    settings = {**result_key(cfg), "selections": [str(s.path.resolve()) for s in sels],
                "eval_files": file_fingerprints(cfg.eval)}
    key = study_key(settings, meta.get("run_key"), [(t.name, t.seed, t.ids) for t in trainings])
    identity = study_identity(meta.get("run_key"), trainings)
    claim_study(Path(cfg.out), "validate", key, settings, identity, check_only=True)  # claimed once every check passed
    check_targets(sels, cfg.eval, cfg.ngram)
    if not cfg.allow_contaminated and not all(already_decontaminated(sel.recipe(), cfg.eval, cfg.ngram) for sel in sels):
        report(phase="checking contamination")
        check_contamination(run, candidates, cfg.eval, cfg.ngram)
    study = run_study(cfg, "validate", key, settings, identity, run, meta, table, lambda study: [trainings], report)

    report(phase="statistics", done=len(trainings), total=len(trainings))
    objective = parse_objective(cfg.objective, sorted(cfg.eval))
    stats = {m: build_report(study.results, metric=m, pairs=comparison_pairs(candidates), seed=cfg.seed,
                             objective=objective) for m in ("token", "example")}
    lm, template = study.proxy.lm, study.proxy.template
    rep = {
        "kind": "validate", "config": asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": run.provenance(), "model": lm.describe(), "template": {"name": template.name, "fingerprint": template.fingerprint},
        "selections": [{"name": s.name, "dir": str(s.path.resolve()), "recipe": s.recipe().to_dict()} for s in sels],
        "eval": study.proxy.evals.provenance, "candidates": describe_candidates(candidates, table),
        "statistics": stats, "lengths": length_report(sels, candidates, table),
        "notes": [c.note for c in candidates if c.note],
        "seconds": round(time.time() - t0, 1), "trainings": study.seconds(),
    }
    if cfg.generate:
        rep["generation"] = generation_eval(cfg, study, candidates, report)
    study.write(rep, report_markdown(rep))
    report(phase="done", done=len(trainings), total=len(trainings))
    return study.out


class Validation(StudyReader):
    """A finished validation's folder (the Validate page and the CLI read it): its report, loss
    curves and summary."""

    KIND = "validate"
    SCHEMA = obj(
        optional={"notes": items(TEXT)}, config=obj(epochs=WHOLE, seeds=WHOLE), model=obj(spec=TEXT),
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


def comparison_pairs(candidates: list[Candidate]) -> list[tuple[str, str]]:
    """``(candidate, baseline)`` pairs the report compares, always with baselines built for the same
    selection: every selection against the random baselines (:data:`curation.validation.verdicts.RANDOM_BASELINES`);
    ``longest`` and ``full`` against ``random`` only (same examples per domain: is "long is more"
    true on this pool, how far is the ceiling?), since ``random-tokens`` matches the selection's
    tokens, not theirs."""
    from curation.validation.verdicts import RANDOM_BASELINES

    against = {"selection": RANDOM_BASELINES, "longest": ("random",), "full": ("random",)}
    return [(c.name, b.name) for c in candidates for b in candidates
            if b.selection == c.selection and b.kind in against.get(c.kind, ()) and b.seeds]


def build_candidates(cfg: ValidateConfig, sels, table, run_kind, run=None) -> list[Candidate]:
    """Each selection and its baselines (:mod:`curation.selection.baselines`), with their training
    examples for every seed (``run``: the run folder, for recipes that leave out near-duplicates or
    contaminated examples)."""
    from curation.selection.annotate import annotate
    from curation.selection.baselines import baseline_ids, random_baseline
    from curation.validation.verdicts import RANDOM_BASELINES

    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    df = table.reset_index(drop=True)
    resp = df.set_index("example_id")["n_response_tokens"].fillna(0).astype(np.int64)
    out: list[Candidate] = []
    single = len(sels) == 1
    for sel in sels:
        rows, recipe = sel.rows_in(df), sel.recipe()
        out.append(Candidate(sel.name, "selection", sel.name, seeds, {s: rows["example_id"].tolist() for s in seeds}))
        # The eligible rows: thresholds, scored, and the recipe's dedup/decontamination if any.
        annotated = annotate(run, df, recipe) if run is not None else df
        base = random_baseline(annotated, recipe, run_kind)
        eligible, kept = base.eligible_mask, base.kept_mask  # the curator's decisions, as the selection applied them
        wanted = {str(d): (len(g), int(resp.loc[g["example_id"]].sum())) for d, g in rows.groupby("domain")}
        for b in cfg.baseline_list():
            name = b if single else f"{b}@{sel.name}"
            draw = lambda s, b=b: baseline_ids(b, df, eligible, wanted, s, kept)  # noqa: E731
            if b in RANDOM_BASELINES:
                c = distinct_draws(Candidate(name, b, sel.name, []), draw, set(rows["example_id"]), seeds)
                if b == "natural":
                    c.note = "; ".join(filter(None, [c.note, natural_note(c, annotated, recipe, eligible, kept,
                                                                          len(rows), run_kind)])) or None
                out.append(c)
            else:
                bseeds = seeds[:1] if b == "full" else seeds
                out.append(Candidate(name, b, sel.name, bseeds, {s: draw(s) for s in bseeds}))
    return out


def natural_note(c: Candidate, table, recipe, eligible, kept, n: int, run_kind) -> str | None:
    """What keeps the ``natural`` baseline ``c`` (``n`` examples) off the pool's natural mix, or
    None: a domain short of eligible examples (and what left them out), kept examples counted
    inside its size."""
    from fractions import Fraction

    from curation.selection.allocation import largest_remainder
    from curation.selection.apply import domain_funnel
    from curation.selection.baselines import natural_quota

    domain = table["domain"].astype(str).to_numpy()
    pool = sorted(set(domain.tolist()))
    want = largest_remainder(n, {d: Fraction(int((domain == d).sum()), len(domain)) for d in pool})
    got = {d: k for d, (k, _) in natural_quota(domain, eligible, n, kept).items()}
    why = []
    for d in pool:
        cap, held = int((eligible & (domain == d)).sum()), int((kept & (domain == d)).sum()) if kept is not None else 0
        if got.get(d, 0) < want[d] and cap < want[d]:
            why.append(f"domain {d} has {cap} eligible examples ({domain_funnel(table, recipe, d, run_kind)}) for its "
                       f"{want[d]}")
        elif got.get(d, 0) > want[d] and held > want[d]:
            why.append(f"the {held} kept {d} examples count inside its {n}")
    if not why:
        return None
    shown = lambda m: ", ".join(f"{d} {m.get(d, 0)}" for d in pool)  # noqa: E731
    return (f"{c.name} is not at the pool's natural mix ({shown(got)} examples instead of {shown(want)}): "
            + "; ".join(why))


def distinct_draws(c: Candidate, draw, own: set[str], seeds: list[int]) -> Candidate:
    """``c`` (a random baseline) with a draw per seed that is not the selection's ``own`` examples:
    a draw that is the selection itself (a random selection is such a draw, of its recipe's seed)
    would compare the selection with itself, so its seed is passed over for the next one.  When no
    draw differs (the eligible rows hold no other sample of the selection's size), the baseline has
    no seed, and its note says that the comparison is empty."""
    tries = len(seeds) + MAX_REDRAWS
    for s in range(seeds[0], seeds[0] + tries):
        if len(c.seeds) == len(seeds):
            break
        ids = draw(s)
        if set(ids) != own:
            c.seeds.append(s)
            c.ids[s] = ids
    if not c.seeds:
        c.note = (f"{c.name}: every draw ({tries} seeds) is {c.selection}'s own examples (its eligible rows hold no "
                  f"other sample of its size), so {c.selection} cannot be compared with it; no comparison is made")
    elif c.seeds != seeds[:len(c.seeds)]:
        c.note = (f"{c.name}: the draw of seed(s) {', '.join(str(s) for s in seeds if s not in c.seeds)} is "
                  f"{c.selection}'s own examples (comparing it with itself), so seeds "
                  f"{', '.join(map(str, c.seeds))} were drawn instead"
                  + (f"; only {len(c.seeds)} draws differ from it" if len(c.seeds) < len(seeds) else ""))
    return c


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
    st = rep["statistics"]["token"]
    lines = [f"# Validation of {', '.join(s['name'] for s in rep['selections'])}", "",
             f"Proxy model `{rep['model']['spec']}`, {rep['config']['epochs']} epochs, {rep['config']['seeds']} seeds; "
             "eval sets: " + ", ".join(f"{e['domain']} ({e['n_evaluated']} examples)" for e in rep["eval"]) + ".", "",
             f"Metric: {st['metric_text']} (lower is better); differences are candidate - baseline with a "
             f"{int(st['interval']['level'] * 100)}% interval." + objective_note(st.get("objective")), "",
             "## Verdicts", ""]
    for c in st["comparisons"]:
        lines.append(f"- **{c['candidate']}** vs {c['baseline']}, {c['domain']}: {c['verdict_text']} "
                     f"({c['diff']:+.4f} nats, interval [{c['lo']:+.4f}, {c['hi']:+.4f}]; "
                     f"{c['candidate_mean']:.4f} vs {c['baseline_mean']:.4f})")
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




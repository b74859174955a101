"""The ``mix`` study: what a chat/math mix does to each eval set, the recommended mix, and the law.

    read the run -> the design (mixes) -> per mix and seed a selection at the budget (random
    inside each domain, or a score's top-k) -> train and evaluate each exactly as validate does
    (curation.validation.study: same runner, trainer, settings and training cache) -> per eval set, fit
    the mixing law (curation.validation.mixing_law) with bootstrap intervals over seeds and eval
    examples -> leave-one-mix-out errors beside linear interpolation -> the mix that minimises the
    objective, its predicted losses, the Pareto front -> report

Designs: two domains, ``--design N`` evenly spaced shares of the first domain over [0, 1] (ends
included); more domains, ``--design simplex`` (vertices, edge midpoints, centroid) or
``dirichlet:N`` (the vertices and N seeded Dirichlet draws), always with the pool's natural mix.
Every mix trains on the same number of examples (``--budget``), drawn from the pool's eligible
rows after leaving out the examples that share an ``--ngram``-word sequence with the eval sets.
A mix is trained at the shares the budget can express (whole examples per domain; the curator's
kept examples counted inside the budget: :class:`BudgetRoom`), the law is fitted at those shares,
and the recommended mix is chosen among the mixes the budget can train; a design point that comes
out at other shares, or as another point, is named in the report's notes.

MIX_DIR::

    results.parquet   candidate (the mix), seed, domain (eval set), example_id, nll, n_tokens
    curves.parquet    every training's loss curve
    report.json       design, measured losses, fitted laws with intervals, leave-one-out errors, what
                      the trainings cost (``trainings``: their own wall seconds summed over resumes),
                      the recommended mix and its predicted losses, the Pareto front, the bootstrap
                      parameters (for predicting any mix: :class:`MixStudy`)
    report.md         the findings in words, and the commands that validate the recommendation
    study.json, parts/, train/   the study folder (curation.validation.study, the runner validate
                      uses too): resumable
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curation.config import check_at_most, check_positive, option
from curation.progress import Progress, Reporter, count_text
from curation.scores import SCORES
from curation.selection.recipe import Recipe
from curation.validation.mixing_law import (Law, MixError, dirichlet_design, distinct_mixes, fit_law, grid,
                                            leave_one_out, objective_values, pareto_front, parse_objective, recommend,
                                            simplex_design, two_domain_design)
from curation.validation.proxy import MAX_SEEDS, ProxyConfig, Training
from curation.validation.verdicts import verdict
from curation.validation.study import NUMBER, NUMBER_OR_NULL, TEXT, WHOLE, StudyReader, each, items, obj

MAX_POINTS = 64


@dataclass(kw_only=True)
class MixConfig(ProxyConfig):
    """Settings of a mix study (the CLI, the job store and the Mix page build this); the proxy and
    its training settings are ProxyConfig's, as validate's: the same trainer, defaults and training
    cache."""

    run: str = option(help="folder of a finished score or learn run (the pool)", positional=True, metavar="RUN_DIR")
    budget: str = option("10%", "examples per training: N, or P% of the pool (the same at every mix)")
    design: str = option("auto", "the mixes: N evenly spaced shares over [0, 1] for two domains (auto: 5); "
                                 "simplex (auto) or dirichlet:N for more domains")
    seeds: int = option(2, "trainings per mix (seeds added to --seed): error bars and the bootstrap over seeds")
    method: str = option("random", "how each mix picks inside a domain: random, or a ranking score (its top-k)")
    objective: str = option("mean", "what the recommended mix minimises over the eval sets' NLL: mean, worst, "
                                    "or NAME=W,... (a weight for every eval set)")
    ngram: int = option(Recipe.ngram, "pool examples sharing this many consecutive words with an eval example are "
                                      "left out of every mix")
    bootstrap: int = option(400, "bootstrap resamples (over seeds and eval examples) for the intervals")
    decisions: str = option(Recipe.decisions, "the curator's decisions every mix honours (excluded examples never "
                                              "trained on, kept ones in every mix, inside its budget): current, none "
                                              "or a decisions JSONL file (what they change shows in the trainings' "
                                              "examples, which the study's key holds)", metavar="none|current|FILE",
                            result=False)

    def __post_init__(self):
        ProxyConfig.__post_init__(self)
        check_positive(self, "seeds", "ngram", "bootstrap")
        check_at_most(self, bootstrap=100_000, ngram=1000)
        if self.seeds > MAX_SEEDS:
            raise ValueError(f"seeds {self.seeds}: at most {MAX_SEEDS} trainings per mix")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap {self.bootstrap}: use at least 100 resamples for a 95% interval")
        if self.method not in SCORES or self.method == "target" or (self.method != "random" and not SCORES[self.method].ranks):
            ranking = [n for n, s in SCORES.items() if s.ranks and n != "target"]
            raise ValueError(f"method {self.method!r}: expected random or a ranking score ({', '.join(ranking)})")
        budget = Recipe(method="random", budget=self.budget).budget_spec
        if budget.kind == "tokens":
            raise ValueError(f"budget {self.budget}: a mix study holds the number of examples fixed; give N or P%")
        try:
            parse_objective(self.objective, sorted(self.eval))
        except MixError as e:
            raise ValueError(str(e)) from None
        parse_design(self.design, 2)  # the form; the domains are checked against the run


# ----------------------------------------------------------------------------------------------
# The study


def run_mix(cfg: MixConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a mix study and return its folder (see the module docstring)."""
    from curation.runs.folder import Run
    from curation.selection.decisions import load_decisions
    from curation.validation.study import run_study, study_identity, study_key, study_settings

    report, t0 = Reporter(progress), time.time()
    report(phase="reading the run", done=0, total=None)
    run = Run(cfg.run)
    meta, table = run.require_finished(), run.scores()
    domains = sorted(table["domain"].astype(str).unique().tolist())
    if len(domains) < 2:
        raise MixError(f"{run.path} has one domain ({domains[0]}); a mix needs two or more")
    counts = table["domain"].astype(str).value_counts()
    natural = np.array([counts[d] / len(table) for d in domains])
    mixes = design_points(cfg.design, domains, natural, cfg.seed)
    if len(mixes) > MAX_POINTS:
        raise MixError(f"design {cfg.design}: {len(mixes)} mixes; at most {MAX_POINTS}")
    decisions = load_decisions(cfg.decisions)  # one snapshot for every mix and seed
    points, trainings, room, notes = selections(cfg, run, table, meta, domains, mixes, report, decisions)

    settings = {**study_settings(cfg), "run": str(run.path.resolve())}
    key = study_key(settings, meta.get("run_key"), [(t.name, t.seed, t.ids) for t in trainings])
    identity = study_identity(meta.get("run_key"), trainings, decisions)
    study = run_study(cfg, "mix", key, settings, identity, run, meta, table, lambda study: [trainings], report)
    trained = time.time()

    report(phase="fitting the mixing law", done=len(trainings), total=len(trainings))
    evals = sorted(cfg.eval)
    objective = parse_objective(cfg.objective, evals)
    fit = analyse(study.results, points, domains, evals, objective, natural, cfg.bootstrap, cfg.seed, room)
    rep = {
        "kind": "mix", "config": asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": run.provenance(), "model": study.proxy.lm.describe(), "eval": study.proxy.evals.provenance,
        "domains": domains, "evals": evals, "natural": dict(zip(domains, natural.tolist())),
        "objective": objective, "points": points, "decisions": decisions.describe(), "notes": notes,
        "budget": {"examples": room.units, "kept": room.floors, "eligible": room.caps}, **fit,
        "commands": commands(cfg, run, fit["recommended"]["mix"], room),
        "seconds": round(time.time() - t0, 1), "training_seconds": round(trained - t0, 1),
        "trainings": study.seconds(),
    }
    study.write(rep, report_markdown(rep))
    report(phase="done", done=len(trainings), total=len(trainings))
    return study.out


def parse_design(text: str, n_domains: int) -> tuple[str, int | None]:
    """``auto`` -> two domains: ("even", 5), more: ("simplex", None); ``N`` -> ("even", N) (two
    domains only); ``simplex``; ``dirichlet:N``."""
    t = str(text).strip().lower()
    if t == "auto":
        return ("even", 5) if n_domains == 2 else ("simplex", None)
    if re.fullmatch(r"\d+", t):
        if n_domains != 2:
            raise MixError(f"design {text}: N evenly spaced shares is a two-domain design; this pool has {n_domains} "
                           "domains: use --design simplex or dirichlet:N")
        if not 3 <= int(t) <= MAX_POINTS:
            raise MixError(f"design {text}: use 3 to {MAX_POINTS} evenly spaced shares (5 is the usual)")
        return "even", int(t)
    if t == "simplex":
        return "simplex", None
    m = re.fullmatch(r"dirichlet:(\d+)", t)
    if m and 1 <= int(m.group(1)) <= MAX_POINTS:
        return "dirichlet", int(m.group(1))
    raise MixError(f"design {text!r}: expected auto, N (two domains), simplex or dirichlet:N")


def design_points(text: str, domains: list[str], natural: np.ndarray, seed: int) -> np.ndarray:
    kind, n = parse_design(text, len(domains))
    if kind == "even":
        if len(domains) != 2:
            raise MixError(f"design {text}: a two-domain design for {len(domains)} domains")
        return two_domain_design(n)
    if kind == "simplex":
        return simplex_design(len(domains), natural)
    return dirichlet_design(len(domains), n, seed, natural)


def mix_label(domains: list[str], shares, digits: int = 4) -> str:
    return ",".join(f"{d}={round(float(s), digits):g}" for d, s in zip(domains, shares))


@dataclass
class BudgetRoom:
    """What a mix can be at the study's budget: ``units`` examples per training, of which each
    domain holds at least its ``floors`` (the curator's kept examples, counted inside the budget)
    and at most its ``caps`` (its eligible examples); ``why`` says what left a domain's other
    examples out (curation.selection.apply.domain_funnel)."""

    domains: list[str]
    units: int
    floors: dict[str, int]
    caps: dict[str, int]
    why: dict[str, str]

    def counts(self, shares, kept: bool = True) -> dict[str, int]:
        """The examples per domain a mix trains on: its shares of the budget split as a selection
        splits them (largest remainder), each domain raised to its kept examples (not without ``kept``)."""
        from fractions import Fraction

        from curation.selection.allocation import with_floors

        split = with_floors(self.units, {d: Fraction(f"{float(v):.12g}") for d, v in zip(self.domains, shares)},
                            self.floors if kept else {})
        if split is None:
            raise MixError(f"the curator keeps {sum(self.floors.values())} examples of this run, more than the budget "
                           f"of {self.units} every mix trains on; raise --budget, or keep fewer (--decisions)")
        return split

    def fits(self, counts: dict[str, int]) -> bool:
        return all(counts[d] <= self.caps[d] for d in self.domains)

    def lattice(self, mixes: np.ndarray) -> np.ndarray:
        """The distinct mixes the budget can train nearest each of ``mixes`` (shares of whole
        examples, kept examples inside), those a domain has the examples for."""
        rows = [c for c in (self.counts(m) for m in mixes) if self.fits(c)]
        shares = np.array([[c[d] for d in self.domains] for c in rows], dtype=np.float64) / self.units
        return distinct_mixes(shares.reshape(-1, len(self.domains)))


def budget_room(cfg: MixConfig, annotated, base: Recipe, domains: list[str], run_kind) -> BudgetRoom:
    """The :class:`BudgetRoom` of the study's recipe on the run's (annotated) table."""
    from curation.selection.apply import apply_recipe, domain_funnel

    probe = apply_recipe(annotated, Recipe(**{**base.to_dict(), "mix": "natural", "fill": True}), run_kind)
    dom = annotated["domain"].astype(str).to_numpy()
    floors = {d: int((probe.kept_mask & (dom == d)).sum()) for d in domains}
    caps = {d: int((probe.eligible_mask & (dom == d)).sum()) for d in domains}
    why = {d: domain_funnel(annotated, base, d, run_kind) for d in domains if caps[d] < int((dom == d).sum())}
    return BudgetRoom(domains, probe.budget_units, floors, caps, why)


def realise(cfg: MixConfig, room: BudgetRoom, mixes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The design's mixes as the budget trains them: ``(counts (n, domains), notes)``.  A mix is
    trained at the shares of whole examples it gets (kept examples counted inside), and the law is
    fitted there; a mix that comes out as another is trained once; a mix a domain lacks the examples
    for is refused, naming what left them out."""
    domains, rows, notes = room.domains, [], []
    for shares in mixes:
        counts = room.counts(shares)
        label = mix_label(domains, shares)
        for d in domains:
            if counts[d] > room.caps[d]:
                cause = f" ({room.why[d]})" if d in room.why else ""  # what left its other examples out
                if room.caps[d] == 0:
                    raise MixError(f"mix {label}: domain {d} has no eligible example{cause}, so no mix that gives "
                                   f"it a share can be trained; use eval sets apart from this domain's pool, or a "
                                   "run without it")
                raise MixError(f"mix {label}: domain {d} has {room.caps[d]} eligible examples{cause} for its "
                               f"{counts[d]} of the budget {cfg.budget}; lower --budget, or use a design without "
                               "that mix")
        got = np.array([counts[d] for d in domains]) / room.units
        if not np.allclose(got, shares, atol=1e-9, rtol=0):
            kept = [f"{room.floors[d]} kept {d}" for d in domains if room.floors[d] and counts[d] == room.floors[d]]
            notes.append(f"mix {label} is trained at {mix_label(domains, got)}: "
                         + (f"the {' and '.join(kept)} examples count inside its {room.units}" if kept else
                            f"the nearest shares {room.units} examples can have"))
        rows.append([counts[d] for d in domains])
    counts = np.array(rows, dtype=np.int64)
    _, first = np.unique(counts, axis=0, return_index=True)
    if len(first) < len(counts):
        notes.append(f"at a budget of {room.units} examples, {len(counts) - len(first)} mix(es) of the design come out "
                     "as another one; each is trained once")
    counts = counts[np.sort(first)]
    if len(counts) < 3:
        raise MixError(f"at a budget of {room.units} examples (with {sum(room.floors.values())} kept), the design "
                       f"{cfg.design} comes down to {len(counts)} distinct mix(es); the law needs 3: raise --budget")
    return counts, notes


def point_labels(domains: list[str], shares: np.ndarray) -> list[str]:
    """A distinct name per mix (more digits where 4 would name two mixes alike)."""
    for digits in range(4, 13):
        labels = [mix_label(domains, r, digits) for r in shares]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{mix_label(domains, r, 12)}#{i}" for i, r in enumerate(shares)]


def selections(cfg: MixConfig, run, table, meta, domains: list[str], mixes: np.ndarray, report, decisions=None):
    """Per mix and seed the selection at the budget, honouring the curator's ``decisions``:
    ``(points, trainings, room, notes)`` (see :func:`realise`)."""
    from curation.selection.annotate import annotate
    from curation.selection.apply import apply_recipe

    report(phase="selecting the mixes' training sets", done=0, total=len(mixes))
    base = Recipe(method=cfg.method, budget=cfg.budget, decontaminate=list(cfg.eval.values()), ngram=cfg.ngram,
                  decisions=cfg.decisions)
    annotated = annotate(run, table, base, decisions=decisions)
    room = budget_room(cfg, annotated, base, domains, meta.get("kind"))
    counts, notes = realise(cfg, room, mixes)
    shares = counts / room.units
    points, trainings = [], []
    for m, (label, mix) in enumerate(zip(point_labels(domains, shares), shares)):
        per_seed = []
        for s in range(cfg.seeds):
            recipe = Recipe(**{**base.to_dict(), "mix": dict(zip(domains, mix.tolist())), "seed": cfg.seed + s})
            sel = apply_recipe(annotated, recipe, meta.get("kind"))
            got = [sel.domains[d].selected if d in sel.domains else 0 for d in domains]
            if got != counts[m].tolist():  # realise() split the budget as apply_recipe does: never expected
                raise MixError(f"mix {label}: the selection took {got} examples per domain, not {counts[m].tolist()}")
            per_seed.append(sel)
            trainings.append(Training(label, cfg.seed + s, sel.rows["example_id"].tolist()))
        first = per_seed[0]
        points.append({"name": label, "mix": dict(zip(domains, mix.tolist())),
                       "examples": {d: p.selected for d, p in first.domains.items()},
                       "kept": {d: p.kept for d, p in first.domains.items()},
                       "tokens": {d: p.tokens for d, p in first.domains.items()},
                       "eligible": {d: p.eligible for d, p in first.domains.items()}})
        report(done=m + 1)
    return points, trainings, room, notes


# ----------------------------------------------------------------------------------------------
# The analysis: measured values, fits, leave-one-out, bootstrap, recommendation


def measured(results, points: list[dict], evals: list[str]) -> dict:
    """``{eval: (n_points, n_seeds) array}`` of the token-weighted NLL of every training."""
    from curation.validation.verdicts import seed_values

    per_seed = seed_values(results[results["candidate"] != "base"], "token")
    out = {}
    for e in evals:
        rows = []
        for p in points:
            v = per_seed[(per_seed["candidate"] == p["name"]) & (per_seed["domain"] == e)].sort_values("seed")
            rows.append(v["value"].to_numpy(dtype=np.float64))
        out[e] = np.array(rows)
    return out


def analyse(results, points: list[dict], domains: list[str], evals: list[str], objective: dict,
            natural: np.ndarray, n_boot: int, seed: int, room: BudgetRoom) -> dict:
    """Fits (at the shares each mix trained), intervals, leave-one-out checks and the recommendation
    (among the mixes the budget can train: ``room``), as a JSON-ready dict."""
    x = np.array([[p["mix"][d] for d in domains] for p in points])
    values = measured(results, points, evals)
    laws = {e: fit_law(x, values[e].mean(axis=1)) for e in evals}
    boot = bootstrap_laws(results, points, evals, x, laws, n_boot, seed)
    cand = room.lattice(grid(len(domains)))
    best, pred = recommend([laws[e] for e in evals], objective, evals, cand)
    rec_mix = cand[best]
    boot_best = [cand[recommend(b, objective, evals, cand)[0]] for b in zip(*(boot[e] for e in evals))]
    front = pareto_front(np.column_stack([laws[e].predict(cand) for e in evals]))
    step = max(1, len(front) // 50)
    plot = grid(len(domains), step=0.01) if len(domains) == 2 else x
    fit = {}
    for e in evals:
        y = values[e].mean(axis=1)
        loo = leave_one_out(x, y)
        spread = float(np.ptp(y))
        seed_sd = float(np.nanmean(values[e].std(axis=1, ddof=1))) if values[e].shape[1] > 1 else None
        fit[e] = {"law": laws[e].as_dict(domains), "interval": param_intervals(boot[e], domains),
                  "measured": [{"point": p["name"], "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1
                                else None, "seeds": v.tolist()} for p, v in zip(points, values[e])],
                  "fitted": laws[e].predict(x).tolist(), "loo": loo, "spread": spread, "seed_sd": seed_sd,
                  "verdict": loo_verdict(e, loo, spread, seed_sd),
                  "curve": {"mixes": plot.tolist(), "fit": laws[e].predict(plot).tolist(),
                            **band([b.predict(plot) for b in boot[e]])}}
    at_natural = {e: {"value": float(laws[e].predict(natural)[0]), **band([b.predict(natural)[0] for b in boot[e]])}
                  for e in evals}
    # What decides between mixes is the paired difference: every bootstrap resample draws the same
    # eval examples for both mixes, so the level of the eval set (wide) cancels and its slope stays.
    at_rec = np.column_stack([[b.predict(rec_mix)[0] for b in boot[e]] for e in evals])  # (B, n_evals)
    at_nat = np.column_stack([[b.predict(natural)[0] for b in boot[e]] for e in evals])
    vs_natural = {e: {"value": float(laws[e].predict(rec_mix)[0] - laws[e].predict(natural)[0]),
                      **band(at_rec[:, i] - at_nat[:, i])} for i, e in enumerate(evals)}
    point = lambda r: np.array([[laws[e].predict(r)[0] for e in evals]])  # noqa: E731
    vs_natural["objective"] = {
        "value": float(objective_values(point(rec_mix), objective, evals)[0]
                       - objective_values(point(natural), objective, evals)[0]),
        **band(objective_values(at_rec, objective, evals) - objective_values(at_nat, objective, evals))}
    for v in vs_natural.values():  # the verdict words of a validation, said of the law's prediction
        v["verdict"], v["verdict_text"] = verdict(v["value"], v["lo"], v["hi"], "the natural mix (predicted)")
    return {
        "fit": fit,
        "recommended": {
            "mix": dict(zip(domains, rec_mix.tolist())),
            "mix_interval": {d: [float(v) for v in np.percentile([b[i] for b in boot_best], [2.5, 97.5])]
                             for i, d in enumerate(domains)},
            "objective": float(objective_values(pred[None, :], objective, evals)[0]),
            "predicted": {e: {"value": float(pred[i]), **band([b.predict(rec_mix)[0] for b in boot[e]])}
                          for i, e in enumerate(evals)},
            "on_front": bool(best in set(front.tolist())),
        },
        "at_natural": at_natural,
        "vs_natural": vs_natural,
        "pareto": [{"mix": dict(zip(domains, cand[i].tolist())),
                    "predicted": {e: float(laws[e].predict(cand[i])[0]) for e in evals}} for i in front[::step]],
        "bootstrap": {"n": n_boot, "params": {e: [[b.c, b.k, *b.t.tolist()] for b in boot[e]] for e in evals}},
    }


def bootstrap_laws(results, points, evals, x, laws, n_boot: int, seed: int) -> dict[str, list[Law]]:
    """Per eval set, the law refitted to ``n_boot`` resamples: eval examples drawn with replacement
    (the same draw at every mix: the comparison across mixes is paired) and each mix's seeds drawn
    with replacement."""
    rng = np.random.default_rng([seed, 2024])
    out = {}
    for e in evals:
        rows = results[(results["domain"] == e) & (results["candidate"] != "base")]
        ids = np.array(sorted(rows["example_id"].unique()))
        counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot).astype(np.float64)  # (B, n)
        boot_values = []
        for p in points:
            r = rows[rows["candidate"] == p["name"]]
            nll = r.pivot(index="seed", columns="example_id", values="nll")[ids].to_numpy()  # (S, n)
            w = r.pivot(index="seed", columns="example_id", values="n_tokens")[ids].to_numpy(dtype=np.float64)
            per_seed = (counts @ (w * nll).T) / (counts @ w.T)  # (B, S)
            pick = rng.integers(0, per_seed.shape[1], size=per_seed.shape)
            boot_values.append(np.take_along_axis(per_seed, pick, axis=1).mean(axis=1))
        y = np.column_stack(boot_values)  # (B, n_points)
        out[e] = [fit_law(x, y[b], start=laws[e].t) for b in range(n_boot)]
    return out


def band(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(v, [2.5, 97.5], axis=0)
    return {"lo": lo.tolist() if np.ndim(lo) else float(lo), "hi": hi.tolist() if np.ndim(hi) else float(hi)}


def param_intervals(laws: list[Law], domains: list[str]) -> dict:
    c = np.percentile([b.c for b in laws], [2.5, 97.5]).tolist()
    k = np.percentile([b.k for b in laws], [2.5, 97.5]).tolist()
    t = np.percentile(np.array([b.t for b in laws]), [2.5, 97.5], axis=0)  # (2, d-1)
    return {"c": c, "k": k, "t": {d: [float(t[0, i]), float(t[1, i])] for i, d in enumerate(domains[:-1])}}


def loo_verdict(e: str, loo: dict, spread: float, seed_sd: float | None) -> str:
    """The leave-one-out check in words: the law beats linear interpolation only by more than the
    seed noise (a smaller gain is not a difference a second study would reproduce)."""
    law, lin = loo["law_mae"], loo["linear_mae"]
    noise = f"; seed sd {seed_sd:.4f}" if seed_sd is not None else ""
    tail = f" (the measured losses span {spread:.4f} nats across the mixes{noise})"
    if law is None:
        return f"{e}: too few mixes for a leave-one-out check of the law" + tail
    if lin is not None and law >= lin - (seed_sd or 0.0):
        return (f"{e}: the mixing law predicts a left-out mix no better than linear interpolation between the "
                f"measured mixes (mean leave-one-out error {law:.4f} vs {lin:.4f} nats)" + tail)
    return (f"{e}: the mixing law predicts a left-out mix better than linear interpolation (mean leave-one-out error "
            f"{law:.4f} vs {lin if lin is not None else float('nan'):.4f} nats)" + tail)


def commands(cfg: MixConfig, run, mix: dict[str, float], room: BudgetRoom) -> dict:
    """The commands that turn the recommendation into a selection and validate it against the
    natural mix (shares rounded to 0.01, or finer where that would select other counts at the
    budget; the last one completing 1)."""
    names = list(mix)
    want = room.counts([mix[d] for d in names])
    for digits in range(2, 10):
        rounded = [round(mix[d], digits) for d in names[:-1]]
        rounded.append(round(1 - sum(rounded), digits))
        if room.counts(rounded, kept=False) == want:
            break
    text = ",".join(f"{d}={v:g}" for d, v in zip(names, rounded))
    evals = " ".join(cfg.eval.values())
    sel = "SEL_DIR"
    return {
        "mix": text,
        "select": (f"python -m curation select {run.path} --method {cfg.method} --budget {cfg.budget} --mix {text} "
                   f"--decontaminate {evals} --out {sel}"),
        "validate": (f"python -m curation validate {sel} " + " ".join(f"--eval {k}={v}" for k, v in cfg.eval.items())
                     + f" --baselines natural --seeds 3 --objective {cfg.objective} --out VAL_DIR"),
    }


def report_markdown(rep: dict) -> str:
    """report.md: the design, the findings in words, the recommendation and what to run next."""
    rec, evals = rep["recommended"], rep["evals"]
    fmt = lambda m: ", ".join(f"{d} {v:.2f}" for d, v in m.items())  # noqa: E731
    lines = [f"# Mix study of {Path(rep['run']['dir']).name}", "",
             f"{len(rep['points'])} mixes x {rep['config']['seeds']} seeds at a budget of {rep['config']['budget']} "
             f"({rep['config']['method']} inside each domain), {count_text(rep['config']['epochs'], 'epoch')}; "
             "eval sets: "
             + ", ".join(evals) + f"; natural mix: {fmt(rep['natural'])}.", ""]
    lines += [f"- {n}" for n in rep.get("notes", [])] + ([""] if rep.get("notes") else [])
    lines += ["## Measured held-out NLL", "",
             "| mix | " + " | ".join(evals) + " |", "|---|" + "---|" * len(evals)]
    for i, p in enumerate(rep["points"]):
        cells = []
        for e in evals:
            m = rep["fit"][e]["measured"][i]
            cells.append(f"{m['mean']:.4f}" + (f" (sd {m['sd']:.4f})" if m["sd"] is not None else ""))
        lines.append(f"| {p['name']} | " + " | ".join(cells) + " |")
    lines += ["", "## The mixing law, L(r) = c + k exp(sum_j t_j r_j)", ""]
    for e in evals:
        f = rep["fit"][e]
        t = ", ".join(f"t_{d} = {v:+.3f} [{f['interval']['t'][d][0]:+.3f}, {f['interval']['t'][d][1]:+.3f}]"
                      for d, v in f["law"]["t"].items())
        lines.append(f"- **{e}**: c = {f['law']['c']:.4f}, k = {f['law']['k']:+.4f}, {t} "
                     f"(t_{next(iter(f['law']['t_fixed']))} = 0)")
        lines.append(f"  - {f['verdict']}.")
    lines += ["", f"## Recommended mix ({rep['objective']['kind']} objective)", "",
              f"**{fmt(rec['mix'])}** (95% interval of each share over the bootstrap: "
              + ", ".join(f"{d} [{lo:.2f}, {hi:.2f}]" for d, (lo, hi) in rec["mix_interval"].items()) + ").", ""]
    for e in evals:
        pr, nat = rec["predicted"][e], rep["at_natural"][e]
        dv = rep.get("vs_natural", {}).get(e)
        lines.append(f"- {e}: predicted {pr['value']:.4f} [{pr['lo']:.4f}, {pr['hi']:.4f}] at the recommended mix, "
                     f"{nat['value']:.4f} [{nat['lo']:.4f}, {nat['hi']:.4f}] at the natural mix"
                     + (f"; the difference {dv['value']:+.4f} [{dv['lo']:+.4f}, {dv['hi']:+.4f}]"
                        + (f": {dv['verdict_text']}" if dv.get("verdict_text") else "") if dv else ""))
    if "objective" in rep.get("vs_natural", {}):
        dv = rep["vs_natural"]["objective"]
        lines.append(f"- the objective: {dv['value']:+.4f} [{dv['lo']:+.4f}, {dv['hi']:+.4f}] against the natural mix"
                     + (f": {dv['verdict_text']}" if dv.get("verdict_text") else ""))
    lines += ["", "Each eval set's level is uncertain (the intervals of the predictions are wide: a resample of "
              "its examples moves every mix alike); the differences are paired over the same resamples, so they "
              "show what the mix changes."]
    lines += ["", "A prediction is not a measurement: validate the recommended mix against the natural mix "
              "(random samples at the pool's proportions, same budget) before trusting it:", "", "```",
              rep["commands"]["select"], rep["commands"]["validate"], "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Reading a study (the Mix page, the Select page's live prediction)


BAND = obj(value=NUMBER, lo=NUMBER, hi=NUMBER)


class MixStudy(StudyReader):
    """A finished mix study's folder: its report, and the law's prediction for any mix."""

    KIND = "mix"
    error = MixError
    SCHEMA = obj(
        optional={"notes": items(TEXT)},
        config=obj(seeds=WHOLE, budget=TEXT, method=TEXT, epochs=WHOLE), run=obj(dir=TEXT), seconds=NUMBER,
        domains=items(TEXT, minItems=2), evals=items(TEXT, minItems=1), natural=each(NUMBER), objective=obj(kind=TEXT),
        points=items(obj(name=TEXT, mix=each(NUMBER), examples=each(WHOLE)), minItems=1),
        fit=each(obj(verdict=TEXT, law=obj(c=NUMBER, k=NUMBER, t=each(NUMBER), rss=NUMBER), spread=NUMBER,
                     seed_sd=NUMBER_OR_NULL, measured=items(obj(mean=NUMBER, sd=NUMBER_OR_NULL)),
                     loo=obj(law_prediction=items(NUMBER_OR_NULL), law_mae=NUMBER_OR_NULL, linear_mae=NUMBER_OR_NULL),
                     curve=obj(mixes=items(items(NUMBER)), fit=items(NUMBER), lo=items(NUMBER), hi=items(NUMBER)))),
        recommended=obj(mix=each(NUMBER), mix_interval=each(items(NUMBER, minItems=2, maxItems=2)),
                        predicted=each(BAND)),
        at_natural=each(BAND), pareto=items(obj(mix=each(NUMBER), predicted=each(NUMBER))),
        commands=obj(mix=TEXT, select=TEXT, validate=TEXT),
        bootstrap=obj(params=each(items(items(NUMBER, minItems=3), minItems=1))))

    def inconsistency(self, rep: dict) -> str | None:
        domains, evals, n = rep["domains"], rep["evals"], len(rep["points"])
        for name, part in (("fit", rep["fit"]), ("recommended.predicted", rep["recommended"]["predicted"]),
                           ("at_natural", rep["at_natural"]), ("bootstrap.params", rep["bootstrap"]["params"])):
            if missing := [e for e in evals if e not in part]:
                return f"{name} lacks the eval set(s) {', '.join(missing)}"
        for e in evals:
            f = rep["fit"][e]
            if len(f["measured"]) != n or len(f["loo"]["law_prediction"]) != n:
                return f"fit.{e} measures {len(f['measured'])} mixes, not the {n} of its design"
            if missing := [d for d in domains[:-1] if d not in f["law"]["t"]]:
                return f"fit.{e}.law.t lacks the domain(s) {', '.join(missing)}"
            if any(len(p) != len(domains) + 1 for p in rep["bootstrap"]["params"][e]):
                return f"bootstrap.params.{e} does not hold c, k and a t per domain"
        for key in ("natural", "recommended.mix"):
            shares = rep["natural"] if key == "natural" else rep["recommended"]["mix"]
            if missing := [d for d in domains if d not in shares]:
                return f"{key} lacks the domain(s) {', '.join(missing)}"
        return None

    def predict(self, mix: dict[str, float]) -> dict[str, dict]:
        """Each eval set's predicted NLL at ``mix`` (``{domain: share}``) with its bootstrap interval."""
        rep = self.report()
        domains = rep["domains"]
        r = np.array([[float(mix.get(d, 0.0)) for d in domains]])
        out = {}
        for e in rep["evals"]:
            law = rep["fit"][e]["law"]
            full = Law(law["c"], law["k"], np.array([law["t"][d] for d in domains[:-1]]), law["rss"])
            boot = [Law(p[0], p[1], np.array(p[2:]), 0.0).predict(r)[0] for p in rep["bootstrap"]["params"][e]]
            out[e] = {"value": float(full.predict(r)[0]), **band(boot)}
        return out


def latest_study(folder: str | Path, run_dir: str | Path) -> MixStudy | None:
    """The newest finished mix study of ``run_dir`` among the sub-folders of ``folder`` (a report that
    does not say which run it studied is passed over; one of the run that cannot be read is found,
    and its reader says what is wrong with it)."""
    found = []
    target = str(Path(run_dir).resolve())
    parent = Path(folder)
    if not parent.is_dir():
        return None
    for p in parent.iterdir():
        f = p / MixStudy.REPORT
        if not f.is_file():
            continue
        try:
            rep = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        of_run = isinstance(rep, dict) and isinstance(rep.get("run"), dict) and rep["run"].get("dir") == target
        if of_run and rep.get("kind") == "mix":
            found.append((f.stat().st_mtime, p))
    return MixStudy(max(found)[1]) if found else None

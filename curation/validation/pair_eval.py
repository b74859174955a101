"""What a pair validation measures on held-out preference pairs, and its verdicts.

Each model (the base, and every (candidate, seed) trained with DPO) gives, per eval pair, the
log-probs of its chosen and rejected responses summed over the response's tokens (the pair pass:
:mod:`curation.validation.proxy`'s ``pairs`` eval).  With the base model as DPO's reference and
``lr(y) = logp_trained(y) - logp_base(y)`` (:mod:`curation.runs.dpo`'s naming), per pair:

==================  =====================================================================  ==========
measure             per eval pair                                                          better
==================  =====================================================================  ==========
``reward_accuracy`` 1 when the implicit reward of chosen beats rejected's: ``lr(w) > lr(l)``   higher
``reward_margin``   ``beta * (lr(w) - lr(l))``                                             higher
``davir_margin``    ``lr(w) / |logp_base(w)| - lr(l) / |logp_base(l)|`` (DavIR's normalised)  higher
``chosen_nll``      the chosen response's NLL, token-weighted over the pairs                 lower
``rejected_nll``    the rejected response's NLL, token-weighted (reported, not judged: a       --
                    lower rejected NLL is neither better nor worse)
==================  =====================================================================  ==========

Every judged measure gets the SFT validation's statistics (:func:`curation.validation.verdicts.build_report`
with its :class:`~curation.validation.verdicts.Measure`): means over seeds, intervals paired over
eval pairs and seeds, the four verdict words, each with the measure's direction.  Equivalence
margins: ``--margin`` (nats) for chosen NLL, ``--accuracy-margin`` for reward accuracy; the reward
and davir margins have no natural unit of "practically none", so they are called better or worse,
never equivalent.

**The primary measure** (the one ``--seeds auto`` adds seeds for) is reward accuracy: it is what
DPO optimises and what a preference-tuned model is for (does it prefer the preferred answer?),
and it is bounded and comparable across objectives and betas, where the reward margin's scale
changes with beta and the objective (davir's margins are normalised).  Chosen NLL is the check
that preference tuning did not wreck the chosen answers; it is judged, not stopped on.

The base model's rewards are 0 by definition (it is its own reference): it has no reward
accuracy or margins, only NLLs.  The length correlation (:func:`length_correlation`) is the Pearson
correlation over eval pairs between a trained model's reward margin and the pair's length
difference (chosen - rejected tokens), the quantity DavIR-DPO is said to lower (0.38 -> 0.07).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from curation.validation.verdicts import BASE, Measure

MEASURES = {
    "reward_accuracy": Measure("reward_correct", None, True, "share",
                               "reward accuracy: the share of eval pairs whose implicit reward (log-ratio to the base "
                               "model, summed over the response) is higher for chosen than for rejected"),
    "reward_margin": Measure("reward_margin", None, True, "reward",
                             "mean reward margin: beta x (log-ratio of chosen - log-ratio of rejected)"),
    "davir_margin": Measure("davir_margin", None, True, "davir",
                            "mean normalised (davir) margin: each log-ratio divided by the base NLL of its response"),
    "chosen_nll": Measure("nll_chosen", "n_chosen_tokens", False, "nats",
                          "token-weighted NLL of the chosen responses"),
    "rejected_nll": Measure("nll_rejected", "n_rejected_tokens", False, "nats",
                            "token-weighted NLL of the rejected responses (reported, not judged)"),
}
PRIMARY = "reward_accuracy"
JUDGED = ("reward_accuracy", "reward_margin", "davir_margin", "chosen_nll")
REWARDS = ("reward_accuracy", "reward_margin", "davir_margin")  # 0 for the base model by definition
DEFAULT_ACCURACY_MARGIN = 0.05  # README ("Validating pair selections") justifies it
RESULT_COLUMNS = ("logp_chosen", "logp_rejected", "n_chosen_tokens", "n_rejected_tokens")


def pair_metric_rows(results: pd.DataFrame, beta: float) -> pd.DataFrame:
    """Every model's eval rows (``candidate, seed, domain, example_id`` + :data:`RESULT_COLUMNS`,
    the base model's seed -1) with each measure's per-pair value and ``len_diff``; the base model's
    rows included (its rewards are 0)."""
    base = results[results["candidate"] == BASE].set_index("example_id")
    if base.empty:
        raise ValueError("the results hold no base model rows: the rewards are relative to the base model")
    df = results.copy()
    ref_c = base.loc[df["example_id"], "logp_chosen"].to_numpy(float)
    ref_r = base.loc[df["example_id"], "logp_rejected"].to_numpy(float)
    lr_c, lr_r = df["logp_chosen"].to_numpy(float) - ref_c, df["logp_rejected"].to_numpy(float) - ref_r
    df["reward_margin"] = beta * (lr_c - lr_r)
    df["reward_correct"] = (lr_c > lr_r).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        df["davir_margin"] = lr_c / np.abs(ref_c) - lr_r / np.abs(ref_r)
    df["nll_chosen"] = -df["logp_chosen"] / df["n_chosen_tokens"]
    df["nll_rejected"] = -df["logp_rejected"] / df["n_rejected_tokens"]
    df["len_diff"] = df["n_chosen_tokens"] - df["n_rejected_tokens"]
    return df


def measure_table(metric_rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows a measure is computed on: every model, but the base model for the rewards."""
    return metric_rows[metric_rows["candidate"] != BASE] if name in REWARDS else metric_rows


def pair_statistics(results: pd.DataFrame, plan, pairs: list[tuple[str, str]], beta: float, margin: float,
                    accuracy_margin: float, **report_args) -> dict:
    """``{measure: report}``: :func:`curation.validation.sequential.sequential_report` of every
    measure (comparisons only for the judged ones), each with its per-seed values."""
    from curation.validation.sequential import sequential_report
    from curation.validation.verdicts import seed_values

    rows = pair_metric_rows(results, beta)
    margins = {"reward_accuracy": accuracy_margin, "chosen_nll": margin, "reward_margin": None, "davir_margin": None}
    out = {}
    for name, m in MEASURES.items():
        table = measure_table(rows, name)
        rep = sequential_report(table, plan, pairs=pairs if name in JUDGED else [], measure=m,
                                margin=margins.get(name), objective_margin=None, **report_args)
        rep["name"] = name
        rep["primary"] = name == PRIMARY
        rep["per_seed"] = seed_values(table, "token", m).to_dict("records")
        for c in rep["comparisons"]:
            c["measure"] = name
        out[name] = rep
    return out


def length_correlation(metric_rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per trained candidate: the Pearson correlation over eval pairs between its models' reward
    margin and the pairs' length difference, the mean over its seeds, with a 95% percentile
    interval from a bootstrap over eval pairs and seeds (both resampled with replacement); None
    where it is not defined (a constant length difference, or margin)."""
    out = []
    for cand in sorted(set(metric_rows["candidate"]) - {BASE}):
        _, y, x = margins_and_lengths(metric_rows, cand)
        k, n = y.shape
        pick_s, pick_e = resamples(k, n, n_boot, seed)  # every candidate the same resamples (the same shape)
        r = float(np.mean(pearson(y, x[None, :])))  # undefined (None) when one seed's is
        boot = np.array([mean_pearson(y[s][:, e], x[e]) for s, e in zip(pick_s, pick_e)])
        lo, hi = percentile_interval(boot)
        out.append({"candidate": cand, "pearson": finite_or_none(r), "lo": finite_or_none(lo),
                    "hi": finite_or_none(hi), "n_pairs": int(n), "n_seeds": int(k)})
    return out


def length_bias_comparisons(metric_rows: pd.DataFrame, compared: list[tuple[str, str]], n_boot: int = 2000,
                            seed: int = 0) -> list[dict]:
    """Does one objective's reward margin follow the length difference less than another's? For
    each ``(candidate, baseline)`` of ``compared`` (``NAME [davir]`` vs ``NAME [sigmoid]``, trained
    on the same data and seeds): ``|r candidate| - |r baseline|`` of :func:`length_correlation`'s
    mean Pearson r, on the seeds and eval pairs both have, with a 95% interval from a bootstrap that
    resamples both arms' seeds and eval pairs together (paired). ``less`` when the interval lies
    below 0 (the candidate's margin is less length-bound), ``more`` above, else ``undecided``."""
    out = []
    for cand, base in compared:
        (seeds_a, ya, x), (seeds_b, yb, xb) = (margins_and_lengths(metric_rows, c) for c in (cand, base))
        seeds = sorted(set(seeds_a) & set(seeds_b))
        if not seeds or not np.array_equal(x, xb):
            continue  # not trained on the same seeds, or not evaluated on the same pairs: not paired
        ya, yb = ya[[seeds_a.index(s) for s in seeds]], yb[[seeds_b.index(s) for s in seeds]]  # [seeds, pairs]
        k, n = ya.shape
        diff = lambda s, e: abs(mean_pearson(ya[s][:, e], x[e])) - abs(mean_pearson(yb[s][:, e], x[e]))  # noqa: E731
        point = abs(np.mean(pearson(ya, x[None, :]))) - abs(np.mean(pearson(yb, x[None, :])))
        lo, hi = percentile_interval(np.array([diff(s, e) for s, e in zip(*resamples(k, n, n_boot, seed))]))
        word = "less" if hi < 0 else "more" if lo > 0 else "undecided"  # NaN bounds compare False: undecided
        out.append({"candidate": cand, "baseline": base, "abs_r_diff": finite_or_none(point),
                    "lo": finite_or_none(lo), "hi": finite_or_none(hi), "verdict": word,
                    "n_pairs": int(n), "n_seeds": int(k)})
    return out


def length_bias_line(c: dict) -> str:
    """One comparison of :func:`length_bias_comparisons` in words."""
    num = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    said = {"less": "its reward margin follows the length difference less",
            "more": "its reward margin follows the length difference more",
            "undecided": "no difference shown at this size"}[c["verdict"]]
    return (f"{c['candidate']} vs {c['baseline']}: |r| {num(c['abs_r_diff'])} [{num(c['lo'])}, {num(c['hi'])}] at 95% "
            f"({said}; {c['n_pairs']} eval pairs, {c['n_seeds']} paired seeds)")


def margins_and_lengths(metric_rows: pd.DataFrame, candidate: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """A trained candidate's seeds (ascending), its reward margins ``[seeds, pairs]`` (pairs by id)
    and the pairs' length differences ``[pairs]``."""
    g = metric_rows[metric_rows["candidate"] == candidate]
    m = g.pivot(index="seed", columns="example_id", values="reward_margin").sort_index().sort_index(axis=1)
    x = g.drop_duplicates("example_id").set_index("example_id").loc[m.columns, "len_diff"].to_numpy(float)
    return [int(s) for s in m.index], m.to_numpy(float), x


def resamples(k: int, n: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_boot`` bootstrap draws of ``k`` seeds and ``n`` eval pairs (indices, with replacement)."""
    rng = np.random.default_rng([seed, 7])
    return rng.integers(0, k, size=(n_boot, k)), rng.integers(0, n, size=(n_boot, n))


def mean_pearson(y: np.ndarray, x: np.ndarray) -> float:
    """The mean over rows of ``y`` [rows, n] of their Pearson r with ``x`` [n] (NaN rows left out:
    a resample of constant lengths has no correlation; NaN when none has one)."""
    import warnings

    r = pearson(y, x[None, :])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def finite_or_none(v) -> float | None:
    """``v`` as a float for report.json, None when it is not a finite number."""
    return float(v) if np.isfinite(v) else None


def percentile_interval(boot: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap values (NaN ones left out; NaN when none is finite)."""
    boot = boot[np.isfinite(boot)]
    return tuple(np.percentile(boot, [2.5, 97.5])) if boot.size else (float("nan"), float("nan"))


def pearson(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of ``y`` [rows, n] with ``x`` [1 or rows, n] (scipy's; NaN when
    either is constant)."""
    import warnings

    import scipy.stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant row: NaN (the report says n/a)
        return scipy.stats.pearsonr(y, np.broadcast_to(x, y.shape), axis=1).statistic


def pair_markdown(rep: dict) -> str:
    """report.md of a pair validation: each judged measure's verdicts in words, the measures per
    candidate side by side, the length correlation."""
    from curation.progress import count_text
    from curation.validation.verdicts import comparison_line

    cfg, by = rep["config"], rep["statistics"]["pairs"]
    seeds = f"seeds until decided (at most {cfg['max_seeds']})" if cfg["seeds"] == "auto" else f"{cfg['seeds']} seeds"
    lines = [f"# Validation of {', '.join(s['name'] for s in rep['selections'])} (preference pairs)", "",
             f"DPO proxy `{rep['model']['spec']}` from the base model, objective(s) "
             f"{', '.join(rep['pairs']['dpo_losses'])}, "
             f"beta {rep['pairs']['beta']}, {count_text(cfg['epochs'], 'epoch')}, {seeds}; eval pairs: "
             + ", ".join(f"{e['domain']} ({e['n_evaluated']} pairs)" for e in rep["eval"]) + ".", "",
             f"Primary measure (seeds until decided stop on it): {by[PRIMARY]['metric_text']}. Differences are "
             "candidate - baseline with their interval (paired over eval pairs and seeds); better or worse in the "
             "measure's direction when the interval excludes 0, equivalent inside its margin, else undecided.", ""]
    for name in JUDGED:
        st = by[name]
        lines += [f"## {name} ({'higher' if not st['lower_is_better'] else 'lower'} is better)", ""]
        lines += [f"- {comparison_line(c)}; {c['candidate_mean']:.4f} vs {c['baseline_mean']:.4f}"
                  for c in st["comparisons"]] or ["- no comparison"]
        lines.append("")
    if rep.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in rep["notes"]] + [""]
    lines += ["## Every measure per candidate (mean over seeds, sd)", "",
              "| candidate | domain | " + " | ".join(MEASURES) + " |", "|---|---|" + "---|" * len(MEASURES)]
    cells: dict = {}
    for name in MEASURES:
        for r in by[name]["rows"]:
            sd = "" if r["sd"] is None else f" ± {r['sd']:.4f}"
            cells.setdefault((r["candidate"], r["domain"]), {})[name] = f"{r['mean']:.4f}{sd}"
    for (cand, dom), v in cells.items():
        lines.append(f"| {cand} | {dom} | " + " | ".join(v.get(n, "") for n in MEASURES) + " |")
    lines += ["", "## Length bias: Pearson(reward margin, chosen - rejected tokens) over eval pairs", "",
              "| candidate | Pearson r | 95% interval (pairs and seeds) |", "|---|---|---|"]
    num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rep["pairs"]["length_correlation"]:
        lines.append(f"| {r['candidate']} | {num(r['pearson'])} | [{num(r['lo'])}, {num(r['hi'])}] |")
    bias = rep["pairs"].get("length_bias_comparisons") or []
    if bias:
        lines += ["", "Objectives compared (|r| of the first - |r| of the second; the interval resamples both arms' "
                      "seeds and eval pairs together):", ""] + [f"- {length_bias_line(c)}" for c in bias]
    return "\n".join(lines) + "\n"

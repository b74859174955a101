"""What a selection is, in numbers: the summary a selection folder keeps and the Select page shows.

Per domain: shares, eligible rows, allocation, shortfall, counts and tokens; score statistics of
the pool, the eligible rows, the selection and the random baseline at the same budget and mix;
response-length quantiles of each (a length-biased score shows as a shift; for preference pairs
``len_diff``, and the mean margins and len_diff beside random's in words); the pick stability
across a learn run's reference trainings; over a canary pool, the planted defects
(:mod:`curation.selection.canaries`).  And the same in words, once for both faces:
:func:`detail_lines` (the filters a selection applied, as the Select page and ``select`` say them)
and :func:`summary_lines` (what ``select`` prints).
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np

from curation.scores import LENGTH_COLUMNS, PAIRS, SCORES, data_of, length_column, run_columns
from curation.selection.apply import SelectionResult, apply_recipe, score_values
from curation.selection.canaries import canary_summary


def stat_columns(columns) -> list[str]:
    """The columns a summary describes: the ranking scores a table has, its loss, its lengths."""
    cols = set(columns)
    ranked = [s.column for s in SCORES.values() if s.ranks and s.column in cols and s.column not in LENGTH_COLUMNS]
    return ranked + [c for c in ("loss", "len_diff", "n_response_tokens", "n_prompt_tokens") if c in cols]


def describe(values) -> dict:
    """count, mean, std, min, quartiles and max of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"count": 0}
    q = np.quantile(v, [0.25, 0.5, 0.75])
    return {"count": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "p25": float(q[0]), "median": float(q[1]), "p75": float(q[2]), "max": float(v.max())}


def summarize(table, selection: SelectionResult, baseline: SelectionResult | None = None) -> dict:
    """Per-domain counts and tokens, and score statistics of the pool, the eligible rows, the
    selection and (if given) the random baseline at the same budget and mix."""
    df = table.reset_index(drop=True)
    cols = []
    if selection.score_column and selection.score_column != "s2l_cluster":
        cols.append(selection.score_column)
    cols += [c for c in stat_columns(df.columns) if c not in cols]
    if selection.score_column and selection.score_column not in df.columns:  # ppl = exp(loss), an ensemble
        df = df.assign(**{selection.score_column: score_values(df, selection.recipe.method, None,
                                                               selection.recipe.aggregate)[1]})
    by_id = df.set_index("example_id")

    def stats(sub) -> dict:
        out = {}
        for c in cols:
            entry = {"all": describe(sub[c])}
            entry["by_domain"] = {str(d): describe(g[c]) for d, g in sub.groupby("domain", sort=True)}
            out[c] = entry
        return out

    def counts(sel: SelectionResult) -> dict:
        return {d: {"examples": p.selected, "tokens": p.tokens} for d, p in sel.domains.items()}

    summary = {
        "data": data_of(df.columns),
        "recipe": selection.recipe.to_dict(),
        "score": score_meta(selection),
        "budget": {"spec": selection.recipe.budget, "unit": selection.unit, "units": selection.budget_units,
                   "pool_examples": len(df)},
        "domains": {d: asdict(p) for d, p in selection.domains.items()},
        "totals": {"examples": int(len(selection.rows)), "tokens": int(selection.rows["n_tokens"].sum()),
                   "eligible": int(selection.eligible_mask.sum()), "unfilled": selection.unfilled},
        "warnings": list(selection.warnings),
        "stats": {
            "pool": stats(df),
            "eligible": stats(df[selection.eligible_mask]),
            "selection": stats(by_id.loc[selection.rows["example_id"]].reset_index()),
        },
    }
    summary["length"] = length_profile(df, selection, baseline)
    summary.update(selection.details)
    if "canary_kind" in df.columns:
        canaries = canary_summary(df, selection, baseline)
        if canaries.get("warning"):  # a truth that does not cover the run: said, never silent
            summary["warnings"].append(canaries["warning"])
        if canaries["covered"]:
            summary["canaries"] = canaries
    stability = pick_stability(table, selection)
    if stability is not None:
        summary["pick_stability"] = stability
    if baseline is not None:
        summary["random_baseline"] = {
            "seed": baseline.recipe.seed, "counts": counts(baseline),
            "totals": {"examples": int(len(baseline.rows)), "tokens": int(baseline.rows["n_tokens"].sum())},
        }
        summary["stats"]["random"] = stats(by_id.loc[baseline.rows["example_id"]].reset_index())
    return summary


LENGTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def length_quantiles(values) -> list[float] | None:
    """The :data:`LENGTH_QUANTILES` of ``values`` (None when empty)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(x) for x in np.quantile(v, LENGTH_QUANTILES)] if len(v) else None


def length_profile(table, selection: SelectionResult, baseline: SelectionResult | None = None) -> dict:
    """Response-length (``n_response_tokens``; a pair's ``len_diff``, :func:`curation.scores.length_column`)
    quantiles of the pool, the eligible rows, the selection and the random baseline, overall and per
    domain: what a length-biased score does to the selection shows as a shift of the selection's
    quantiles from the eligible rows'."""
    df = table.reset_index(drop=True)
    groups = {"pool": np.ones(len(df), dtype=bool), "eligible": np.asarray(selection.eligible_mask, dtype=bool),
              "selection": df["example_id"].isin(set(selection.rows["example_id"])).to_numpy()}
    if baseline is not None:
        groups["random"] = df["example_id"].isin(set(baseline.rows["example_id"])).to_numpy()
    column = length_column(df.columns)
    length = df[column].astype("float64").to_numpy()
    domain = df["domain"].astype(str).to_numpy()
    out: dict = {"column": column, "quantiles": list(LENGTH_QUANTILES)}
    for name, mask in groups.items():
        out[name] = {"all": length_quantiles(length[mask]),
                     "by_domain": {d: length_quantiles(length[mask & (domain == d)]) for d in sorted(set(domain))}}
    return out


def pick_stability(table, selection: SelectionResult, run_kind: str | None = None) -> dict | None:
    """How many picks would survive a rerun of the reference training: for each reference run i of
    a learn run with ``--stability-runs`` (columns ``{score}_r{i}``), apply the same recipe ranking
    by that run's score alone; report per domain the share of the selection that every other run
    also selects, and the Jaccard overlap of the selection with each other run's.  Run 1 is the main
    reference (its columns equal the unsuffixed score), so a selection ranked by the score itself is
    compared with runs 2..N; an ensemble (``aggregate``) with every run.  None when the score has no
    per-run columns (a single reference, or a sampling method)."""
    info = SCORES[selection.recipe.method]
    if not info.ranks:
        return None
    cols = run_columns(table.columns, info.column)
    if len(cols) < 2:
        return None
    df = table.reset_index(drop=True)
    chosen = {d: set(g["example_id"]) for d, g in selection.rows.groupby("domain")}
    per_run = []
    compared = cols if selection.recipe.aggregate else cols[1:]
    recipe = replace(selection.recipe, aggregate=None)
    for c in compared:
        rows = apply_recipe(df.assign(**{info.column: df[c]}), recipe, run_kind).rows
        per_run.append({d: set(g["example_id"]) for d, g in rows.groupby("domain")})
    out = {"runs": len(cols), "columns": cols, "compared_with": compared, "by_domain": {}}
    for d in sorted(chosen):
        mine = chosen[d]
        others = [r.get(d, set()) for r in per_run]
        kept = set.intersection(mine, *others)
        jac = [len(mine & o) / len(mine | o) if mine | o else 1.0 for o in others]
        out["by_domain"][str(d)] = {"selected": len(mine), "kept_by_every_run": len(kept),
                                    "share": len(kept) / len(mine) if mine else None,
                                    "jaccard_mean": float(np.mean(jac)), "jaccard_min": float(np.min(jac))}
    n = sum(v["selected"] for v in out["by_domain"].values())
    k = sum(v["kept_by_every_run"] for v in out["by_domain"].values())
    out["all"] = {"selected": n, "kept_by_every_run": k, "share": k / n if n else None}
    return out


def score_meta(selection: SelectionResult) -> dict:
    info = SCORES[selection.recipe.method]
    return {"method": info.name, "column": selection.score_column, "order": selection.recipe.order,
            "default_order": info.order, "formula": info.formula, "explanation": info.explanation}


def kept_end(score: dict) -> str | None:
    """Which end of its score a selection kept, in words (None for a sampler)."""
    order = score.get("order")
    if order is None or not score.get("column"):
        return None
    default = score.get("default_order")
    return (f"kept the {order}est {score['column']} first ("
            + (f"the score's default; --order {'low' if order == 'high' else 'high'} takes the other end)"
               if order == default or default is None else f"the other end: the score's default is {default}est)"))


PAIR_MEANS = ("len_diff", "margin_sum", "margin_mean", "reward_margin", "davir_margin", "rating_margin")


def pair_means_line(summary: dict) -> str | None:
    """A pair selection's mean len_diff and margins beside the random baseline's (None for SFT)."""
    if summary.get("data") != PAIRS:
        return None
    sel, rnd = summary["stats"]["selection"], summary["stats"].get("random", {})
    parts = []
    for c in PAIR_MEANS:
        mine = sel.get(c, {}).get("all", {})
        if mine.get("count"):
            theirs = rnd.get(c, {}).get("all", {})
            parts.append(f"{c} {mine['mean']:.4g}" + (f" (random {theirs['mean']:.4g})" if theirs.get("count") else ""))
    return "mean per pair: " + ", ".join(parts) if parts else None


# ----------------------------------------------------------------------------------------------
# A selection in words: the lines ``select`` prints and the Select page shows


def detail_lines(details: dict, markup: bool = False) -> dict[str, str]:
    """One line per filter a selection applied (``contamination``, ``diversity``, ``dedup``,
    ``decisions``; the keys of ``details`` or of a summary that holds them).  ``markup``: ids as
    code and eval texts escaped, for Markdown."""
    import html

    code = (lambda x: f"`{x}`") if markup else str  # noqa: E731
    text = html.escape if markup else str
    out = {}
    if details.get("contamination"):
        c = details["contamination"]
        out["contamination"] = (
            f"Decontamination ({c['ngram']}-word n-grams): {c['flagged']} flagged (pool examples that share an n-gram "
            f"with the {len(c['eval_sets'])} eval set(s)), {'excluded' if c['excluded'] else 'kept (report only)'}."
            + (" First: " + ", ".join(f"{code(f['example_id'])} ({text(str(f['eval_example']))})" for f in c["first"])
               if c["first"] else ""))
    if details.get("diversity"):
        dv = details["diversity"]
        out["diversity"] = f"Diversity {dv['method']}: embedding clusters covered " + ", ".join(
            f"{d} {v['coverage']:.0%} of {v['clusters']} (top-k {v['top_k_coverage']:.0%})"
            for d, v in dv["by_domain"].items())
    if details.get("dedup"):
        d = details["dedup"]
        out["dedup"] = (f"Near-duplicates (threshold {d['threshold']:g}): {d['groups_with_duplicates']} group(s) "
                        f"holding {d['rows_in_such_groups']} examples; {d['dropped']} eligible near-duplicates left out "
                        "(the best-ranked of each group stays).")
    if details.get("decisions"):
        dd = details["decisions"]
        out["decisions"] = (
            f"Curator decisions: {dd['excluded']:,} example(s) of this run excluded (never selected), "
            f"{dd['kept_selected']:,} of {dd['kept']:,} kept example(s) selected first"
            + (f"; {len(dd['kept_not_selectable'])} kept example(s) cannot be selected (see the warning)"
               if dd.get("kept_not_selectable") else "") + ".")
    return out


def summary_lines(summary: dict, out) -> list[str]:
    """What ``select`` prints of a written selection's summary (the folder ``out``): its filters,
    totals, per-domain counts and mean score beside the random baseline's, lengths, target
    similarity, canaries, decisions and pick stability."""
    details = detail_lines(summary)
    lines = [details[k] for k in ("contamination", "diversity", "dedup") if k in details]
    t = summary["totals"]
    unit = "pairs" if summary.get("data") == PAIRS else "examples"
    tokens = "prompt + chosen + rejected tokens" if unit == "pairs" else "tokens"
    lines.append(f"selected {t['examples']} of {summary['budget']['pool_examples']} {unit} "
                 f"({t['tokens']} {tokens}; {t['eligible']} eligible) -> {out}/selected.parquet")
    end = kept_end(summary["score"])
    if end:
        lines.append(end)
    col = summary["score"]["column"]
    for d, p in summary["domains"].items():
        line = f"  {d}: {p['selected']} {unit}, {p['tokens']} tokens (share {p['share']:.3g})"
        if col and col in summary["stats"]["selection"] and col != "s2l_cluster":
            sel = summary["stats"]["selection"][col]["by_domain"].get(d, {})
            rnd = summary["stats"].get("random", {}).get(col, {}).get("by_domain", {}).get(d, {})
            if sel.get("count"):
                line += f"; mean {col} {sel['mean']:.4g}"
                if rnd.get("count"):
                    line += f" (random baseline {rnd['mean']:.4g})"
        lines.append(line)
    pair_line = pair_means_line(summary)
    if pair_line:
        lines.append(pair_line)
    lq = summary["length"]
    if lq["selection"]["all"]:
        fmt = lambda q: "/".join(f"{v:.0f}" for v in q)  # noqa: E731
        what = "len_diff (chosen - rejected tokens)" if lq.get("column") == "len_diff" else "response length"
        line = (f"{what} p10/p25/p50/p75/p90: eligible {fmt(lq['eligible']['all'])}, "
                f"selection {fmt(lq['selection']['all'])}")
        if lq.get("random", {}).get("all"):
            line += f", random {fmt(lq['random']['all'])}"
        lines.append(line)
    ts = summary["stats"]["selection"].get("target_sim")
    if ts:
        rnd = summary["stats"].get("random", {}).get("target_sim", {}).get("by_domain", {})
        lines.append("target similarity (RDS+ cosine, max over the domain's targets), mean: " + ", ".join(
            f"{d} {v['mean']:.3f}" + (f" (random {rnd[d]['mean']:.3f})" if rnd.get(d, {}).get("count") else "")
            for d, v in ts["by_domain"].items() if v.get("count")))
    if summary.get("canaries"):
        c = summary["canaries"]
        sc = c["selection"]
        lines.append(f"canaries: {sc['corrupted']} of the {sc['selected']} selected examples are planted defects "
                     f"(random baseline {sc['random_corrupted']}, a uniform sample's expectation "
                     f"{sc['random_expected']:.1f}); AUROC of keeping clean before corrupted: " + ", ".join(
                         f"{k} {v['all']:.3f}" for k, v in c["auroc"].items() if v["all"] is not None))
    dd = summary.get("decisions")
    if dd and (dd["excluded"] or dd["kept"]):
        lines.append(details["decisions"] + f" ({dd.get('source')}; kept with the selection as {out}/decisions.jsonl)")
    if summary.get("pick_stability"):
        ps = summary["pick_stability"]
        parts = [f"{d} {v['share']:.0%} (Jaccard {v['jaccard_mean']:.2f})" for d, v in ps["by_domain"].items()]
        lines.append(f"pick stability over {ps['runs']} reference runs (share of picks every other run makes; "
                     "Jaccard with each): " + ", ".join(parts))
    return lines

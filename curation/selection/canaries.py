"""Canaries measured: how well each score keeps clean examples before the planted defects of a
canary pool (:mod:`curation.data.canary` plants them and writes the truth), and how many of them a
selection holds.

* :func:`canary_report`: per ranking score of the registry, the AUROC of keeping clean before
  corrupted (in the score's own direction), overall, per domain and per kind;
* :func:`selection_counts` / :func:`canary_summary`: the corrupted examples a selection holds,
  beside its random baseline's and a uniform sample's expectation (the selection summary's
  ``canaries`` entry).
"""

from __future__ import annotations

import numpy as np

from curation.scores import SCORES
from curation.selection.apply import SelectionResult


def oriented(values: np.ndarray, order: str) -> np.ndarray:
    """Scores turned so that higher = kept first (``order`` is the score's own: high or low)."""
    return values if order == "high" else -values


def auroc(clean_scores: np.ndarray, bad_scores: np.ndarray) -> float | None:
    """P(a clean example ranks above a corrupted one), ties counting half: 1.0 when the score keeps
    every clean example before every corrupted one, 0.5 for a random ranking (None without both)."""
    from scipy.stats import mannwhitneyu

    c, b = clean_scores[np.isfinite(clean_scores)], bad_scores[np.isfinite(bad_scores)]
    if len(c) == 0 or len(b) == 0:
        return None
    return float(mannwhitneyu(c, b, alternative="two-sided").statistic / (len(c) * len(b)))


def canary_report(table, kind) -> dict:
    """For every ranking score of ``table`` (a run's scores with ``example_id`` and ``domain``):
    the AUROC of keeping clean examples before corrupted ones (in the score's own direction:
    davir high, ppl low, ...), overall, per domain and per kind.  ``kind`` maps example ids to
    ``clean`` or a kind (:func:`curation.data.canary.truth_for`)."""
    k = table["example_id"].astype(str).map(kind)
    known = k.notna().to_numpy()
    coverage = truth_coverage(int(known.sum()), len(table))
    df = table[known].reset_index(drop=True)
    k = k[known].astype(str).to_numpy()
    dom = df["domain"].astype(str).to_numpy()
    bad = k != "clean"
    out = {"examples": int(len(df)), "corrupted": int(bad.sum()),
           "by_domain": {d: {"examples": int((dom == d).sum()), "corrupted": int((bad & (dom == d)).sum())}
                         for d in sorted(set(dom))},
           "by_kind": {x: int((k == x).sum()) for x in sorted(set(k)) if x != "clean"}, "auroc": {}, **coverage}
    for s in SCORES.values():
        col = s.source_column(df.columns)
        if not s.ranks or col is None:
            continue
        v = oriented(s.values(df), s.order)  # ppl = exp(loss) in a score run: the registry's value
        entry = {"column": col, "order": s.order, "all": auroc(v[~bad], v[bad]),
                 "by_domain": {d: auroc(v[~bad & (dom == d)], v[bad & (dom == d)]) for d in sorted(set(dom))},
                 "by_kind": {x: auroc(v[k == "clean"], v[k == x]) for x in sorted(set(k)) if x != "clean"}}
        out["auroc"][s.name] = entry
    return out


def truth_coverage(covered: int, run_examples: int) -> dict:
    """How much of a run the canary truth covers: ``covered``, ``run_examples`` and, when it is not
    all of it, a ``warning`` saying what the numbers then mean."""
    out = {"covered": covered, "run_examples": run_examples}
    if covered == 0:
        out["warning"] = (f"the canary truth beside the run's sources covers none of its {run_examples} examples: it "
                          "is not this run's truth (was the canary pool written again after the run was scored?); "
                          "no canary numbers are reported")
    elif covered < run_examples:
        out["warning"] = (f"the canary truth beside the run's sources covers {covered} of its {run_examples} "
                          "examples; the canary numbers count the covered examples only (score the canary pool "
                          "alone, or plant canaries in the whole pool, to cover them all)")
    return out


def selection_counts(kind_of_selected, kind_of_random, eligible_bad_share: dict[str, float],
                     selected_per_domain: dict[str, int]) -> dict:
    """How many corrupted examples a selection holds, beside its random baseline's and the
    expectation of a uniform sample of the same size per domain from the eligible rows."""
    sel = np.asarray([k not in ("clean", None) for k in kind_of_selected], dtype=bool)  # None: not in the truth
    rnd = np.asarray([k not in ("clean", None) for k in kind_of_random], dtype=bool)
    expected = sum(selected_per_domain[d] * eligible_bad_share.get(d, 0.0) for d in selected_per_domain)
    return {"selected": int(len(sel)), "corrupted": int(sel.sum()),
            "not_covered": int(sum(k is None for k in kind_of_selected)),
            "random_corrupted": int(rnd.sum()) if len(rnd) else None, "random_expected": float(expected)}


def canary_summary(df, selection: SelectionResult, baseline: SelectionResult | None) -> dict:
    """A run over a canary pool: every score's AUROC of keeping clean examples before the planted
    defects (:func:`canary_report`), and the corrupted examples the selection
    holds, beside its random baseline's and a uniform sample's expectation (per domain, from the
    eligible rows the truth covers).  Examples the truth does not cover count as neither (the
    report's ``covered`` and ``warning`` say how many); with none covered, only the report."""
    kind = df.set_index("example_id")["canary_kind"]
    rep = canary_report(df, kind)
    if not rep["covered"]:
        return rep
    dom = df["domain"].astype(str).to_numpy()
    bad = (df["canary_kind"].fillna("clean") != "clean").to_numpy()
    elig = np.asarray(selection.eligible_mask, dtype=bool) & df["canary_kind"].notna().to_numpy()
    share = {d: float(bad[elig & (dom == d)].mean()) if (elig & (dom == d)).any() else 0.0 for d in sorted(set(dom))}
    per_domain = selection.rows["domain"].astype(str).value_counts().to_dict()

    def of(rows) -> list:  # the kind of each row, None where the truth does not cover it
        k = kind.reindex(rows["example_id"])
        return k.astype(object).where(k.notna(), None).tolist()

    rep["selection"] = selection_counts(of(selection.rows), of(baseline.rows) if baseline is not None else [],
                                        share, per_domain)
    rep["selection"]["by_kind"] = {k: int(sum(x == k for x in of(selection.rows))) for k in rep["by_kind"]}
    if baseline is not None:
        rep["selection"]["random_by_kind"] = {k: int(sum(x == k for x in of(baseline.rows))) for k in rep["by_kind"]}
    return rep

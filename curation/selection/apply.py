"""Apply a recipe to a score table: a pure, seeded function of the table's contents and the recipe.

The same rows (in any order) and the same recipe give the same ids.  The steps, in order:

1. **pool**: every row of the run's score table.  ``P%`` budgets and the ``natural`` mix refer to it.
2. **eligible**: rows the curator did not exclude, scored, whose score is known and that pass
   every ``min``/``max`` threshold (thresholds filter *before* ranking, so ``--max ifd=1`` never
   costs budget), then the filters (``--decontaminate``, ``--dedup near``;
   :mod:`curation.selection.annotate`).
2b. **kept**: rows the curator marked ``keep`` (the ``decision`` column that
   :func:`curation.selection.annotate.annotate` adds from :mod:`curation.selection.decisions`) are
   selected first in their domain, whatever the score, thresholds and near-duplicate filter say (a
   curator's decision stands), and count against the domain's part of the budget; only a kept
   row that cannot be trained on (not scored) or that shares words with the eval sets
   (``--decontaminate``) is left out, with a warning.  A table without the column has no decisions.
3. **allocation**: the budget (N examples, P% of the pool, or N tokens of prompt + response) is
   split over domains by the mix with the largest-remainder method, so the parts are exact and
   sum to the budget.  A domain with fewer eligible examples than its part gets them all and the
   result says so; only with ``fill`` is the rest spread over the other domains (by their shares).
4. **picking**, per domain: the recipe's picker (:func:`picker_for`; top-k, random, S2L, Gumbel,
   k-center, clusters), then the budget's cut: ``k`` examples, the longest prefix of the order that
   fits a token budget (so every selected example scores at least as well as every eligible one
   left out), or top-k inside length strata.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from curation.scores import (BOTH, RUN_HELP, SCORES, data_of, length_column, methods_for, run_columns, run_kind,
                             trajectory_columns)
from curation.selection.allocation import allocate, largest_remainder
from curation.selection.annotate import annotation, check_target_domains, drop_contaminated, drop_near_duplicates
from curation.selection.diversity import clusters_k, coverage_report, kcenter_k
from curation.selection.pickers import (DomainRows, Picker, domain_rng, gumbel_k, length_strata, random_k, s2l_k,
                                        take_stratified, top_k)
from curation.selection.recipe import Recipe, SelectionError
from curation.selection.target import target_k

ID_COLUMNS = ["example_id", "source", "source_index", "domain"]
TOKEN_COLUMNS = ["n_prompt_tokens", "n_response_tokens"]
COVERAGE_CLUSTERS = 20  # at most this many k-means clusters per domain measure --diversity kcenter's coverage


@dataclass
class DomainPlan:
    """How one domain fared: its share, pool, eligible rows, allocation and result."""

    share: float
    pool: int
    eligible: int
    quota: int  # units (examples or tokens) the share alone gives
    allocated: int  # after capping at what is eligible (and fill)
    shortfall: int  # quota - what the domain could take
    selected: int = 0
    tokens: int = 0
    kept: int = 0  # of ``selected``: the curator's keep decisions, taken first


@dataclass
class SelectionResult:
    """What applying a recipe gave: the selected rows and how the budget was spent."""

    rows: "object"  # pandas DataFrame: example_id, source, source_index, domain, rank, n_tokens, <score>
    recipe: Recipe
    score_column: str | None  # column of rows holding the score used (None for random)
    unit: str  # "examples" | "tokens"
    budget_units: int  # the budget in ``unit``
    domains: dict[str, DomainPlan]
    unfilled: int  # budget no domain could take
    warnings: list[str]
    eligible_mask: "object"  # numpy bool array over the input table (kept rows included)
    details: dict = field(default_factory=dict)  # per-feature reports (strata, filters, ...) for the summary
    kept_mask: "object" = None  # numpy bool array: the curator's kept rows the selection took first


def select(table, recipe: Recipe):
    """The selected rows of ``table`` (a score table) under ``recipe``, with their ``rank``: the
    1-based position within the row's domain, best first (for random and s2l: the sampling order;
    kept rows first), and ``kept`` (a curator's keep decision put it there)."""
    return apply_recipe(table, recipe).rows


def apply_recipe(table, recipe: Recipe, run_kind: str | None = None) -> SelectionResult:
    """Apply ``recipe`` to a score table (see the module docstring); :class:`SelectionError` when it
    cannot be applied.  ``run_kind`` (from run.json) only improves messages about missing columns."""
    for c in ID_COLUMNS + TOKEN_COLUMNS:
        if c not in table.columns:
            raise SelectionError(f"the run's scores.parquet has no column {c!r}, which selection needs; it is "
                                 f"written by {RUN_HELP['score']}")
    df = table.reset_index(drop=True)
    if len(df) == 0:
        raise SelectionError("empty selection: the run's score table has no rows")
    run_kind = run_kind or run_kind_of(df)
    check_data(df, recipe)
    domain = df["domain"].astype(str).to_numpy()
    ids = df["example_id"].astype(str).to_numpy()
    tokens = (df["n_prompt_tokens"].fillna(0).astype(np.int64)
              + df["n_response_tokens"].fillna(0).astype(np.int64)).to_numpy()
    unit = "tokens" if recipe.budget_spec.kind == "tokens" else "examples"
    shares = mix_shares(recipe, domain, tokens if unit == "tokens" else np.ones(len(df), dtype=np.int64))

    check_target_domains(recipe, domain)
    if recipe.method == "target":
        untargeted = [d for d, s in shares.items() if s > 0 and d not in recipe.target]
        if untargeted:
            d = untargeted[0]
            raise SelectionError(f"--method target: no target examples for domain {d}, which the mix gives a share; "
                                 f"give --target {d}=PATH, or a mix without {d} (e.g. --mix "
                                 + ",".join(f"{x}={1 if x == next(iter(recipe.target)) else 0}" for x in shares) + ")")
    score_col, score = score_values(df, recipe.method, run_kind, recipe.aggregate)
    eligible, details = eligibility(df, recipe, run_kind, score, ids)
    kept, notes = kept_rows(df, recipe, eligible, ids, details)
    pickable = eligible & ~kept  # the recipe's picker chooses among these
    labels = None
    if recipe.method == "s2l":
        labels = s2l_labels(df, recipe, pickable, domain, run_kind)
        pickable &= labels >= 0  # rows without a cluster cannot be sampled
        score = labels.astype(np.float64)
    eligible = pickable | kept

    budget_units = recipe.budget_spec.units(len(df))
    if budget_units < 1:
        raise SelectionError(f"empty selection: a budget of {recipe.budget} of {len(df)} examples rounds to 0")
    weight = tokens if unit == "tokens" else np.ones(len(df), dtype=np.int64)
    capacity = {d: int(weight[eligible & (domain == d)].sum()) for d in shares}
    quota = largest_remainder(budget_units, shares)
    alloc, shortfall, unfilled = allocate(budget_units, shares, capacity, recipe.fill)

    picker = picker_for(recipe)
    embedding = annotation(df, "embedding") if recipe.diversity else None
    sims = annotation(df, "target_sims") if recipe.method == "target" else None
    resp_len = df[length_column(df.columns)].fillna(0).astype(np.int64).to_numpy()  # what length strata follow
    picked_rows, ranks = [], []
    for d in sorted(set(shares) | set(domain[kept].tolist())):
        first = np.flatnonzero(kept & (domain == d))
        first = first[np.argsort(ids[first], kind="stable")]  # kept rows first, by id
        rest = max(int(alloc.get(d, 0)) - int(weight[first].sum()), 0)
        if len(first) and weight[first].sum() > alloc.get(d, 0):
            notes.append(f"domain {d}: {len(first)} kept example(s) take {int(weight[first].sum())} {unit}, more than "
                         f"its part of the budget ({int(alloc.get(d, 0))}); all are selected, "
                         f"{int(weight[first].sum()) - int(alloc.get(d, 0))} {unit} over the budget")
        where = np.flatnonzero(pickable & (domain == d))
        where = where[np.argsort(ids[where], kind="stable")]  # canonical order: by id, not by table row
        positions = np.zeros(0, dtype=np.int64)
        if rest > 0 and len(where):
            rows = DomainRows(d, ids[where], None if score is None else score[where], tokens[where], resp_len[where],
                              labels=None if labels is None else labels[where],
                              embeddings=None if embedding is None else np.stack(embedding[where]).astype(np.float32),
                              target_sims=None if sims is None else np.stack(sims[where]).astype(np.float32))
            positions = take(picker, rows, rest, unit, recipe, details, domain_rng(recipe.seed, d))
        chosen = np.concatenate([first, where[positions]])
        if len(chosen):
            picked_rows.append(chosen)
            ranks.append(np.arange(1, len(chosen) + 1))
    picked = np.concatenate(picked_rows) if picked_rows else np.zeros(0, dtype=np.int64)

    out = df.loc[picked, ID_COLUMNS].reset_index(drop=True)
    out["source_index"] = out["source_index"].astype(np.int64)
    out["rank"] = (np.concatenate(ranks) if ranks else np.zeros(0)).astype(np.int64)
    out["n_tokens"] = tokens[picked].astype(np.int64)
    out["kept"] = kept[picked]
    if score_col is not None:
        out[score_col] = score[picked] if recipe.method != "s2l" else score[picked].astype(np.int64)
    plans, plan_notes = domain_plans(out, shares, domain, eligible, quota, alloc, shortfall, capacity, unit, recipe)
    notes += plan_notes
    if "decisions" in details:
        details["decisions"]["kept_selected"] = int(out["kept"].sum())
    if recipe.fill and unfilled > 0:
        notes.append(f"--fill: no domain had room for the last {unfilled} {unit} of the budget")
    if len(out) == 0:
        raise empty_selection(recipe, eligible, details["eligibility"])
    return SelectionResult(rows=out, recipe=recipe, score_column=score_col, unit=unit, budget_units=budget_units,
                           domains=plans, unfilled=int(unfilled), warnings=notes, eligible_mask=eligible,
                           details=details, kept_mask=kept)


# ----------------------------------------------------------------------------------------------
# The steps


def run_kind_of(df) -> str:
    """The kind of run a table comes from (for messages): ``learn`` when it has trajectories."""
    return "learn" if trajectory_columns(df.columns) else run_kind(df.columns)


def check_data(df, recipe: Recipe) -> None:
    """Refuse a method made for the other kind of data (an SFT score on a pair run, a pair score on
    an SFT run), naming the methods that apply."""
    data, info = data_of(df.columns), SCORES[recipe.method]
    if info.data not in (data, BOTH):
        what = "preference pairs" if data == "pairs" else "SFT examples"
        raise SelectionError(f"--method {recipe.method} scores {'SFT examples' if info.data == 'sft' else 'preference pairs'}"
                             f"; this run holds {what}: use one of {', '.join(methods_for(df.columns))}")


def mix_shares(recipe: Recipe, domain: np.ndarray, weight: np.ndarray) -> dict[str, Fraction]:
    """Each domain's exact share of the budget: the recipe's mix, or the pool's proportions by
    ``weight`` (1 per example, or its tokens for a token budget) for ``natural``."""
    pool_domains = sorted(set(domain.tolist()))
    if recipe.mix == "natural":
        total = max(int(weight.sum()), 1)
        return {d: Fraction(int(weight[domain == d].sum()), total) for d in pool_domains}
    missing = [d for d in recipe.mix if d not in pool_domains]
    if missing:
        raise SelectionError(f"impossible mix: domain(s) {missing} have no examples in this run; its domains are "
                             f"{pool_domains}")
    # Decimal fractions as written (12 significant digits drop float noise such as 1 - 0.7 =
    # 0.30000000000000004), normalised to sum to exactly 1.
    raw = {d: Fraction(f"{v:.12g}") for d, v in recipe.mix.items()}
    total = sum(raw.values())
    return {d: v / total for d, v in raw.items()}


def eligibility(df, recipe: Recipe, run_kind: str, score, ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """The rows a recipe may pick (scored, score known, thresholds passed, filters) and the
    filters' reports."""
    eligible = np.ones(len(df), dtype=bool)
    steps = [{"step": "in the pool", "left": len(df)}]  # how many rows each step leaves (the summary's funnel)
    excluded, _ = decision_masks(df)
    if "decision" in df.columns:
        eligible &= ~excluded
        steps.append({"step": "not excluded by the curator", "left": int(eligible.sum())})
    if "scored" in df.columns:
        eligible &= df["scored"].fillna(False).astype(bool).to_numpy()
    if score is not None:
        eligible &= ~np.isnan(score)
    steps.append({"step": "scored, with the method's score", "left": int(eligible.sum())})
    for which, bounds in (("min", recipe.min), ("max", recipe.max)):
        for name, bound in bounds.items():
            values = threshold_values(df, name, which, run_kind)
            with np.errstate(invalid="ignore"):
                ok = values >= bound if which == "min" else values <= bound
            eligible &= ok & ~np.isnan(values)
            steps.append({"step": f"{name} {'>=' if which == 'min' else '<='} {bound:g}", "left": int(eligible.sum())})
    details: dict = {"eligibility": steps}
    if recipe.decontaminate:
        details["contamination"] = drop_contaminated(df, recipe, eligible)
        steps.append({"step": f"decontamination ({recipe.ngram}-word n-grams)", "left": int(eligible.sum())})
    if recipe.dedup:
        details["dedup"] = drop_near_duplicates(df, recipe, eligible, score, ids)
        steps.append({"step": f"near-duplicates (threshold {recipe.near_dup_threshold:g})", "left": int(eligible.sum())})
    if recipe.diversity:
        embedding = annotation(df, "embedding")
        known = np.array([e is not None and bool(np.isfinite(e).all()) for e in embedding], dtype=bool)
        details["diversity"] = {"method": recipe.diversity, "eligible_without_embedding": int((eligible & ~known).sum()),
                                "by_domain": {}}
        eligible &= known
        steps.append({"step": "with an embedding", "left": int(eligible.sum())})
    return eligible, details


def domain_funnel(df, recipe: Recipe, domain: str, run_kind: str | None = None) -> str:
    """Why ``domain`` has fewer eligible rows under ``recipe`` than it holds, in words: the
    eligibility steps (:func:`eligibility`) counted inside the domain, those that left some out
    (e.g. "of its 30 examples, decontamination (13-word n-grams) left 0")."""
    rows = df[df["domain"].astype(str).to_numpy() == domain].reset_index(drop=True)
    run_kind = run_kind or run_kind_of(rows)
    _, score = score_values(rows, recipe.method, run_kind, recipe.aggregate)
    _, details = eligibility(rows, recipe, run_kind, score, rows["example_id"].astype(str).to_numpy())
    steps = details["eligibility"]
    drops = [f"{s['step']} left {s['left']}" for prev, s in zip(steps, steps[1:]) if s["left"] < prev["left"]]
    return f"of its {len(rows)} examples, " + ", ".join(drops) if drops else f"{len(rows)} examples"


def decision_masks(df) -> tuple[np.ndarray, np.ndarray]:
    """``(excluded, kept)`` masks of the curator's decisions (the ``decision`` column; none without it)."""
    if "decision" not in df.columns:
        return np.zeros(len(df), dtype=bool), np.zeros(len(df), dtype=bool)
    d = df["decision"].astype(object).to_numpy()
    return d == "exclude", d == "keep"


def kept_rows(df, recipe: Recipe, eligible: np.ndarray, ids: np.ndarray, details: dict) -> tuple[np.ndarray, list[str]]:
    """The kept rows the selection takes first (see the module docstring), their report in
    ``details["decisions"]`` and the warnings about kept rows it cannot take.  With ``--dedup
    near``, eligible rows in a kept row's near-duplicate group are left out (the kept one stands for
    the group)."""
    excluded, kept = decision_masks(df)
    notes: list[str] = []
    if "decision" not in df.columns:
        return kept, notes
    blocked: dict[str, np.ndarray] = {}
    if "scored" in df.columns:
        blocked["not scored (no assistant token within the max length)"] = ~df["scored"].fillna(False).astype(bool).to_numpy()
    if recipe.decontaminate and not recipe.keep_contaminated:
        blocked["shares words with the eval sets (--decontaminate)"] = annotation(df, "contaminated").astype(bool)
    out = kept.copy()
    left_out = []
    for reason, mask in blocked.items():
        for i in np.flatnonzero(out & mask):
            left_out.append({"example_id": str(ids[i]), "domain": str(df["domain"].iat[i]), "reason": reason})
        out &= ~mask
    if left_out:
        notes.append(f"{len(left_out)} kept example(s) cannot be selected (e.g. {left_out[0]['example_id']}: "
                     f"{left_out[0]['reason']})")
    if recipe.dedup and out.any():
        groups = annotation(df, "near_dup_group")
        taken = set(groups[out].tolist())
        same = eligible & ~out & np.isin(groups, list(taken))
        eligible &= ~same
        if same.any():
            details.setdefault("dedup", {})["dropped_for_kept"] = int(same.sum())
    dom = df["domain"].astype(str).to_numpy()
    details["decisions"] = {
        "excluded": int(excluded.sum()), "kept": int(kept.sum()), "kept_selectable": int(out.sum()),
        "kept_not_selectable": left_out[:20],
        "by_domain": {d: {"excluded": int((excluded & (dom == d)).sum()), "kept": int((kept & (dom == d)).sum())}
                      for d in sorted(set(dom.tolist()))}}
    return out, notes


def picker_for(recipe: Recipe) -> Picker:
    """The picker a recipe asks for (:mod:`curation.selection.pickers`)."""
    if recipe.method == "random":
        return random_k
    if recipe.method == "s2l":
        return s2l_k
    if recipe.method == "target":
        return target_k
    if recipe.diversity == "kcenter":
        return kcenter_k(recipe.order)
    if recipe.diversity is not None:
        return clusters_k(recipe.order, recipe.diversity_clusters, recipe.seed)
    if recipe.temperature is not None:
        return gumbel_k(recipe.order, recipe.temperature)
    return top_k(recipe.order)


def take(picker: Picker, rows: DomainRows, budget: int, unit: str, recipe: Recipe, details: dict,
         rng: np.random.Generator) -> np.ndarray:
    """Positions of ``rows`` that one domain's ``budget`` (examples or tokens) takes, preferred
    first: ``budget`` examples, the longest prefix of the order that fits a token budget, or the
    best of each length stratum (``--stratify``).  Adds the domain's strata and diversity reports
    to ``details``."""
    if recipe.strata is not None:
        order = picker(rows, len(rows), rng)
        strata = length_strata(rows.lengths, rows.ids, recipe.strata)
        picked = take_stratified(order, strata, budget, rows.tokens if unit == "tokens" else None)
        n = int(strata.max()) + 1
        details.setdefault("strata", {})[rows.domain] = {
            "edges": [float(rows.lengths[strata == s].max()) for s in range(n)],
            "eligible": np.bincount(strata, minlength=n).tolist(),
            "selected": np.bincount(strata[picked], minlength=n).tolist()}
        return picked
    if unit == "tokens":
        order = picker(rows, len(rows), rng)
        cum = np.cumsum(rows.tokens[order])  # never exceeds the budget; keeps the top-k law
        return order[: int(np.searchsorted(cum, budget, side="right"))]
    picked = picker(rows, budget, rng)
    if recipe.diversity is not None:
        n_clusters = recipe.diversity_clusters or max(1, min(len(picked), COVERAGE_CLUSTERS))
        details["diversity"]["by_domain"][rows.domain] = coverage_report(rows, picked, n_clusters, recipe.seed,
                                                                         recipe.order)
    return picked


def domain_plans(out, shares, domain, eligible, quota, alloc, shortfall, capacity, unit: str, recipe: Recipe):
    """``({domain: DomainPlan}, warnings)``: how each domain's share was spent (a domain outside
    the mix appears when the curator kept some of its examples)."""
    plans, notes = {}, []
    for d in sorted(set(shares) | set(out["domain"].astype(str))):
        sel = out["domain"] == d
        short = int(shortfall.get(d, 0))
        plans[d] = DomainPlan(
            share=float(shares.get(d, 0)), pool=int((domain == d).sum()), eligible=int((eligible & (domain == d)).sum()),
            quota=int(quota.get(d, 0)), allocated=int(alloc.get(d, 0)), shortfall=short,
            selected=int(sel.sum()), tokens=int(out.loc[sel, "n_tokens"].sum()), kept=int(out.loc[sel, "kept"].sum()))
        if short > 0:
            notes.append(f"domain {d}: {plans[d].eligible} eligible example(s) ({capacity[d]} {unit}) for a share "
                         f"of {quota[d]} {unit}; {short} {unit} short"
                         + ("" if recipe.fill else "; use --fill to spread them over the other domains"))
    return plans, notes


def empty_selection(recipe: Recipe, eligible: np.ndarray, steps: list[dict]) -> SelectionError:
    """The error for a recipe that selects nothing, saying which step left nothing."""
    n = int(eligible.sum())
    if n:
        return SelectionError(f"empty selection: {n} example(s) are eligible but none fits the budget of "
                              f"{recipe.budget} per the mix {recipe.mix}")
    funnel = "; ".join(f"{s['step']}: {s['left']}" for s in steps)
    emptied = next((s["step"] for s in steps if s["left"] == 0), steps[-1]["step"])
    return SelectionError(f"empty selection: no example is eligible, the step that left none is {emptied} ({funnel})")


# ----------------------------------------------------------------------------------------------
# Score values


def missing_column(column: str, what: str, produced_by: str, run_kind: str | None) -> SelectionError:
    return SelectionError(f"{what} needs the column {column!r}, which this {run_kind + ' ' if run_kind else ''}"
                          f"run's scores.parquet does not have; {column!r} is written by {produced_by}")


def score_values(df, method: str, run_kind: str | None, aggregate: str | None = None):
    """``(column name, float array)`` of the score a method ranks by; ``(None, None)`` for random
    (and the column alone for s2l, whose labels :func:`s2l_labels` resolves).  With ``aggregate``,
    the mean or median of the score over the run's reference runs."""
    info = SCORES[method]
    if info.column is None:
        return None, None
    if method == "s2l":
        return info.column, None
    if aggregate is not None:
        cols = run_columns(df.columns, info.column)
        if len(cols) < 2:
            raise missing_column(f"{info.column}_r1..{info.column}_rN", f"--aggregate {aggregate}",
                                 "a learnability run with --stability-runs N (N >= 2)", run_kind)
        m = df[cols].astype("float64").to_numpy()  # (n, N)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN (not eligible)
            values = np.nanmean(m, axis=1) if aggregate == "mean" else np.nanmedian(m, axis=1)
        return f"{info.column}_{aggregate}", values
    values = info.values(df)  # the registry's value: the column, or ppl = exp(loss) in a score run
    if values is not None:
        return info.value_column(df.columns), values
    raise missing_column(info.column, f"--method {method}", RUN_HELP[info.written_by], run_kind)


def threshold_values(df, name: str, which: str, run_kind: str | None) -> np.ndarray:
    """The values a ``--min``/``--max`` threshold compares: a ranking score's or any numeric column's."""
    if name in SCORES and SCORES[name].ranks:
        return score_values(df, name, run_kind)[1]
    if name in df.columns:
        try:
            return df[name].astype("float64").to_numpy()
        except (TypeError, ValueError):
            raise SelectionError(f"--{which} {name}: column {name!r} is not numeric") from None
    import pandas as pd

    numeric = [c for c in df.columns if c not in ID_COLUMNS
               and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    raise SelectionError(f"--{which} {name}: unknown score or column {name!r}; scores: "
                         f"{', '.join(n for n, s in SCORES.items() if s.ranks)}; numeric columns of this run: "
                         f"{', '.join(numeric)}")


def s2l_labels(df, recipe: Recipe, eligible: np.ndarray, domain: np.ndarray, run_kind) -> np.ndarray:
    """Cluster label per row (-1: none): the run's ``s2l_cluster`` or, with ``s2l_clusters``,
    K-means over each domain's eligible trajectories."""
    if recipe.s2l_clusters is None:
        if "s2l_cluster" not in df.columns:
            raise missing_column("s2l_cluster", "--method s2l", RUN_HELP["learn"], run_kind)
        labels = df["s2l_cluster"].astype("float64").to_numpy()
        return np.where(np.isnan(labels) | (labels < 0), -1, np.nan_to_num(labels)).astype(np.int64)
    from curation.runs.formulas import s2l_clusters

    traj_cols = trajectory_columns(df.columns)
    if len(traj_cols) < 2:
        raise missing_column("loss_ckpt_0..loss_ckpt_K", "--method s2l with s2l_clusters", RUN_HELP["learn"], run_kind)
    traj = df[traj_cols].astype("float64").to_numpy()
    labels = np.full(len(df), -1, dtype=np.int64)
    ids = df["example_id"].astype(str).to_numpy()
    for d in sorted(set(domain)):
        rows = np.flatnonzero(eligible & (domain == d))
        rows = rows[np.argsort(ids[rows], kind="stable")]  # canonical order: independent of row order
        if len(rows):
            labels[rows] = s2l_clusters(traj[rows], recipe.s2l_clusters, recipe.seed)  # NaN rows: -1
    return labels

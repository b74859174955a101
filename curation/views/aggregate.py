"""Aggregations the dashboard plots, computed here so pages stay thin and the browser gets small data.

Everything works on a pandas DataFrame of scores (one row per example) and returns small tables:
histogram bins, a bounded random sample for scatter plots, correlations, per-domain summaries,
mean S2L trajectories, rank disagreements, the examples around a cut-off.  With 1,000,000 rows
each call returns at most a few thousand values.  Pure functions: no HTML (see
:mod:`curation.views.render`), no files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from curation.scores import LENGTH_COLUMNS, keeps_high, score_columns, trajectory_columns

def numeric_columns(df: pd.DataFrame) -> list[str]:
    """Score columns plus token lengths: everything a threshold or axis can use."""
    return score_columns(df.columns) + [c for c in LENGTH_COLUMNS if c in df.columns]


def _finite(s: pd.Series) -> np.ndarray:
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def histogram(df: pd.DataFrame, column: str, by: str | None = "domain", bins: int = 50,
              clip_quantiles: tuple[float, float] | None = (0.001, 0.999)) -> pd.DataFrame:
    """Counts of ``column`` in shared bins, per group of ``by``.

    Returns one row per (group, bin): ``group, left, right, mid, count``.  Bins cover the finite
    values between the given quantiles (so a few outliers do not squash the plot); values outside
    fall into the outer bins.  Same edges for every group, so the groups can be overlaid.
    """
    if column not in df.columns:
        raise KeyError(f"no column {column!r}; available: {', '.join(df.columns)}")
    allv = _finite(df[column])
    if len(allv) == 0:
        return pd.DataFrame(columns=["group", "left", "right", "mid", "count"])
    lo, hi = (np.quantile(allv, clip_quantiles) if clip_quantiles else (allv.min(), allv.max()))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    groups = [("all", df)] if by is None or by not in df.columns else list(df.groupby(by, sort=True))
    rows = []
    for name, g in groups:
        v = np.clip(_finite(g[column]), lo, hi)
        counts, _ = np.histogram(v, bins=edges)
        rows.append(pd.DataFrame({"group": str(name), "left": edges[:-1], "right": edges[1:],
                                  "mid": (edges[:-1] + edges[1:]) / 2, "count": counts}))
    return pd.concat(rows, ignore_index=True)


def sample_rows(df: pd.DataFrame, n: int = 4000, seed: int = 0, columns: list[str] | None = None) -> pd.DataFrame:
    """At most ``n`` rows, drawn at random (seeded) in proportion to each domain's size."""
    part = df if columns is None else df[[c for c in columns if c in df.columns]]
    if len(part) <= n:
        return part
    return part.sample(n=n, random_state=seed)


def correlation(df: pd.DataFrame, x: str, y: str, by: str | None = "domain") -> pd.DataFrame:
    """Pearson and Spearman correlation of ``x`` and ``y``, overall and per group (finite pairs only)."""
    def one(name, g):
        xy = g[[x, y]].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
        if len(xy) < 3 or xy[x].nunique() < 2 or xy[y].nunique() < 2:
            return {"group": name, "n": len(xy), "pearson": np.nan, "spearman": np.nan}
        return {"group": name, "n": len(xy), "pearson": float(xy[x].corr(xy[y])),
                "spearman": float(xy[x].rank().corr(xy[y].rank()))}

    rows = [one("all", df)]
    if by and by in df.columns:
        rows += [one(str(k), g) for k, g in df.groupby(by, sort=True)]
    return pd.DataFrame(rows)


def rank_agreement_by_domain(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Spearman and Kendall correlation of two score columns (two reference runs), overall and per domain."""
    from curation.runs.formulas import rank_agreement

    groups = [("all", df)] + ([(str(k), g) for k, g in df.groupby("domain", sort=True)] if "domain" in df else [])
    return pd.DataFrame([{"group": name, **rank_agreement(g[a], g[b])} for name, g in groups])


def domain_summary(df: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Per domain (and in total): examples, tokens, truncated and unscored counts, mean and median
    of each score column."""
    columns = [c for c in (columns or score_columns(df.columns)) if c in df.columns]

    def one(g):
        row = {"examples": len(g)}
        if "n_tokens_full" in g:
            row["tokens"] = int(g["n_tokens_full"].sum())
        if "n_response_tokens" in g:
            row["response tokens"] = int(g["n_response_tokens"].sum())
        if "truncated" in g:
            row["truncated"] = int(g["truncated"].sum())
        if "scored" in g:
            row["unscored"] = int((~g["scored"].astype(bool)).sum())
        for c in columns:
            v = pd.to_numeric(g[c], errors="coerce")
            row[f"{c} mean"] = float(v.mean())
            row[f"{c} median"] = float(v.median())
        return row

    rows = {}
    if "domain" in df.columns:
        for k, g in df.groupby("domain", sort=True):
            rows[str(k)] = one(g)
    rows["all"] = one(df)
    return pd.DataFrame.from_dict(rows, orient="index")


def cluster_means(df: pd.DataFrame, cluster_col: str = "s2l_cluster") -> tuple[pd.DataFrame, pd.DataFrame]:
    """S2L view: the mean loss trajectory of each cluster (long format: ``cluster, checkpoint,
    loss``) and the cluster sizes (``cluster, size, domain mix``), largest first."""
    ckpts = trajectory_columns(df.columns)
    if cluster_col not in df.columns or not ckpts:
        raise KeyError("this run has no S2L clusters (run a learnability run with checkpoints)")
    d = df.dropna(subset=[cluster_col])
    means = d.groupby(cluster_col)[ckpts].mean()
    long = means.reset_index().melt(id_vars=cluster_col, var_name="checkpoint", value_name="loss")
    long["checkpoint"] = long["checkpoint"].str.rsplit("_", n=1).str[1].astype(int)
    long = long.rename(columns={cluster_col: "cluster"})
    sizes = d.groupby(cluster_col).size().rename("size").reset_index().rename(columns={cluster_col: "cluster"})
    if "domain" in d.columns:
        mix = d.groupby([cluster_col, "domain"]).size().unstack(fill_value=0)
        sizes = sizes.merge(mix, left_on="cluster", right_index=True)
    return long, sizes.sort_values("size", ascending=False, ignore_index=True)


def percentile_rank(s: pd.Series, higher_is_better: bool) -> pd.Series:
    """0 = best, 1 = worst, ties averaged; NaN stays NaN."""
    r = pd.to_numeric(s, errors="coerce").rank(pct=True, ascending=not higher_is_better)
    return r


def disagreement(df: pd.DataFrame, a: str, b: str, n: int = 20) -> pd.DataFrame:
    """The ``n`` examples whose rank under score ``a`` differs most from their rank under ``b``.

    Ranks are percentiles within the table (0 = most learnable/best under that score's direction),
    so scores on different scales compare.  ``rank_diff = rank_a - rank_b``: negative means ``a``
    likes the example more than ``b`` does.
    """
    for c in (a, b):
        if c not in df.columns:
            raise KeyError(f"no score column {c!r}")
    ra = percentile_rank(df[a], keeps_high(a))
    rb = percentile_rank(df[b], keeps_high(b))
    diff = (ra - rb)
    keep = diff.abs().dropna().nlargest(n).index
    cols = [c for c in ("example_id", "domain", a, b, "n_response_tokens") if c in df.columns]
    out = df.loc[keep, cols].copy()
    out[f"rank {a}"] = ra[keep].round(3)
    out[f"rank {b}"] = rb[keep].round(3)
    out["rank_diff"] = diff[keep].round(3)
    return out.reset_index(drop=True)


def filter_table(df: pd.DataFrame, ranges: dict[str, tuple[float, float]] | None = None,
                 domains: list[str] | None = None, ids: set[str] | None = None) -> pd.DataFrame:
    """Rows within every ``column: (low, high)`` range (inclusive), in ``domains``, with ids in ``ids``."""
    mask = np.ones(len(df), dtype=bool)
    for c, (lo, hi) in (ranges or {}).items():
        v = pd.to_numeric(df[c], errors="coerce")
        mask &= ((v >= lo) & (v <= hi)).to_numpy()
    if domains is not None and "domain" in df.columns:
        mask &= df["domain"].isin(domains).to_numpy()
    if ids is not None:
        mask &= df["example_id"].isin(ids).to_numpy()
    return df[mask]


# ----------------------------------------------------------------------------------------------
# Pool vs selection


def compare_histograms(df: pd.DataFrame, column: str, groups: dict[str, pd.Series], bins: int = 40) -> pd.DataFrame:
    """Histograms of ``column`` for several row subsets (``{label: boolean mask}``) on shared bins,
    normalised to shares so a 10% selection and the pool compare: ``group, mid, count, share``."""
    frames = [df.loc[mask.to_numpy() if hasattr(mask, "to_numpy") else mask, [column]].assign(_g=label)
              for label, mask in groups.items()]
    h = histogram(pd.concat(frames, ignore_index=True), column, by="_g", bins=bins)
    totals = h.groupby("group")["count"].transform("sum").replace(0, 1)
    h["share"] = h["count"] / totals
    order = {k: i for i, k in enumerate(groups)}
    return h.sort_values("group", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def cutoff_examples(df: pd.DataFrame, eligible: np.ndarray, selected_ids, column: str, higher_first: bool,
                    n: int = 5) -> pd.DataFrame:
    """Per domain, the ``n`` lowest-ranked selected examples ("just inside") and the ``n``
    best-ranked eligible examples left out ("just outside") under ``column``'s ranking."""
    d = df.loc[np.asarray(eligible, dtype=bool)]
    d = d.assign(_in=d["example_id"].isin(set(selected_ids)))
    out = []
    for dom, g in d.groupby("domain", sort=True):
        g = g.sort_values([column, "example_id"], ascending=[not higher_first, True])
        inside = g[g["_in"]].tail(n).assign(side="just inside")
        outside = g[~g["_in"]].head(n).assign(side="just outside")
        out += [inside, outside]
    cols = ["side", "domain", "example_id", column] + [c for c in ("n_response_tokens",) if c in df.columns and c != column]
    if not out:
        return pd.DataFrame(columns=cols)
    return pd.concat(out, ignore_index=True)[cols]

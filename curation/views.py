"""Aggregations the dashboard shows, computed here so pages stay thin and the browser gets small data.

Everything works on a pandas DataFrame of scores (one row per example) and returns small tables:
histogram bins, a bounded random sample for scatter plots, correlations, per-domain summaries,
mean S2L trajectories, rank disagreements.  With 1,000,000 rows each call returns at most a few
thousand values.  Conversation text is turned into HTML only by :func:`conversation_html`, which
escapes every piece of dataset text with :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

# Score columns in the order the dashboard offers them (those present in a table are shown).
KNOWN_SCORES = ["davir", "rho", "ifd", "loss", "loss_base", "loss_ref", "ppl_base"]
LENGTH_COLUMNS = ["n_response_tokens", "n_prompt_tokens", "n_tokens_full"]


def keeps_high(column: str) -> bool:
    """Whether the selection method that ranks by ``column`` keeps its high end by default.

    Taken from :data:`curation.selection.SCORES`, so the Inspect sort, the disagreement ranks and
    the Select page agree on every score's direction (davir, rho, ifd, loss: high; ppl: low).
    Columns no method ranks by (loss_ref, loss_ckpt_*, lengths) default to high.
    """
    from curation.selection import SCORES

    info = SCORES.get(column)  # a method's name (loss, ...) first, then the column a method ranks
    if info is None or info.default_order is None:
        info = next((i for i in SCORES.values() if i.column == column and i.default_order), None)
    return info is None or info.default_order == "high"


def score_columns(df: pd.DataFrame) -> list[str]:
    """Numeric score columns of ``df``: known scores first, then ``loss_ckpt_*`` in order."""
    known = [c for c in KNOWN_SCORES if c in df.columns]
    ckpts = sorted((c for c in df.columns if re.fullmatch(r"loss_ckpt_\d+", c)), key=lambda c: int(c.rsplit("_", 1)[1]))
    return known + ckpts


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """Score columns plus token lengths: everything a threshold or axis can use."""
    return score_columns(df) + [c for c in LENGTH_COLUMNS if c in df.columns]


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


def domain_summary(df: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Per domain (and in total): examples, tokens, truncated and unscored counts, mean and median
    of each score column."""
    columns = [c for c in (columns or score_columns(df)) if c in df.columns]

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


def cluster_trajectories(df: pd.DataFrame, cluster_col: str = "s2l_cluster") -> tuple[pd.DataFrame, pd.DataFrame]:
    """S2L view: the mean loss trajectory of each cluster (long format: ``cluster, checkpoint,
    loss``) and the cluster sizes (``cluster, size, domain mix``), largest first."""
    ckpts = [c for c in score_columns(df) if c.startswith("loss_ckpt_")]
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
# Conversations and per-token losses


def run_sources(run: dict) -> dict[str, dict]:
    """The sources of a run (from run.json), by source name."""
    return {s["source"]: s for s in run.get("sources", [])}


def example_messages(run: dict, source: str, source_index: int) -> list[dict]:
    """Re-read one example's normalised messages from its source file (as recorded in run.json)."""
    from curation.load import SourceSpec, normalise, read_record

    src = run_sources(run).get(source)
    if src is None:
        raise KeyError(f"source {source!r} is not in this run's run.json")
    cfg = run.get("config", {})
    spec = SourceSpec(path=src["path"], domain=src.get("domain"), columns=cfg.get("columns") or {},
                      format=src.get("format"))
    record = read_record(spec, int(source_index))
    return normalise(record, src.get("format") or "messages", cfg.get("columns") or {})


def search_ids(run: dict, df: pd.DataFrame, text: str, limit_sources_bytes: int = 200_000_000) -> set[str]:
    """Example ids whose normalised messages contain ``text`` (case-insensitive).

    Scans the run's sources once; used by the Inspect page's text search.
    """
    from curation.load import SourceSpec, load_sources

    cfg = run.get("config", {})
    specs = []
    for s in run.get("sources", []):
        p = Path(s["path"])
        if p.is_file() and p.stat().st_size > limit_sources_bytes:
            raise ValueError(f"{p} is larger than {limit_sources_bytes // 1_000_000} MB; text search is off for it")
        specs.append(SourceSpec(path=s["path"], domain=s.get("domain"), columns=cfg.get("columns") or {},
                                format=s.get("format")))
    needle = text.lower()
    data = load_sources(specs, limit=cfg.get("limit"))
    return {e.example_id for e in data.examples
            if any(needle in m["content"].lower() for m in e.messages)}


def read_token_losses(run_dir: str | Path, example_id: str, file: str = "token_losses.parquet") -> dict | None:
    """The per-token record of one example (``positions, token_ids, token_losses`` and any other
    list columns such as reference losses), or None when the run has none for it."""
    import pyarrow.dataset as ds

    path = Path(run_dir) / file
    if not path.is_file():
        return None
    t = ds.dataset(path).to_table(filter=ds.field("example_id") == example_id)
    if t.num_rows == 0:
        return None
    row = t.slice(0, 1).to_pylist()[0]
    return row


def token_pieces(tokenizer, token_ids: list[int]) -> list[str]:
    """The text of each token, such that ``"".join(pieces)`` is the decoded text.

    Byte-level BPE tokens can split a multi-byte character; the character is given to the token
    that completes it (earlier ones get ""), so nothing is shown twice.
    """
    out, prev = [], ""
    # Decoding growing prefixes is exact for every tokenizer; windows keep it linear in practice.
    start = 0
    for i in range(len(token_ids)):
        if i - start > 32:
            start = i - 16
            prev = tokenizer.decode(token_ids[start:i])
        cur = tokenizer.decode(token_ids[start:i + 1])
        if cur.startswith(prev) and not cur.endswith("\ufffd"):
            out.append(cur[len(prev):])
            prev = cur
        else:
            out.append("")
            if not cur.endswith("\ufffd"):
                prev = cur
    return out


def loss_colour(value: float, vmax: float) -> str:
    """White (loss 0) to red (loss >= vmax) for a loss; blue to white to red for a signed drop."""
    if value is None or not np.isfinite(value):
        return "#e0e0e0"
    t = float(np.clip(abs(value) / vmax, 0, 1)) if vmax > 0 else 0.0
    if value >= 0:
        r, g, b = 255, int(255 - 180 * t), int(255 - 180 * t)
    else:
        r, g, b = int(255 - 180 * t), int(255 - 120 * t), 255
    return f"#{r:02x}{g:02x}{b:02x}"


def colour_scale_html(vmax: float, signed: bool = False, label: str = "loss (nats)") -> str:
    """A small legend for :func:`loss_colour`."""
    stops = np.linspace(-vmax if signed else 0, vmax, 7)
    cells = "".join(
        f'<span style="background:{loss_colour(v, vmax)};padding:2px 8px;border:1px solid #ddd">'
        f"{v:.1f}</span>" for v in stops)
    return f'<div style="font-size:0.8em">{html.escape(label)}: {cells}</div>'


def conversation_html(messages: list[dict], pieces: list[str] | None = None,
                      values: list[float] | None = None, positions: list[int] | None = None,
                      vmax: float = 5.0, signed: bool = False) -> str:
    """HTML of a conversation; assistant turns coloured token by token when losses are given.

    Every piece of dataset text goes through :func:`html.escape`, so a record containing HTML or
    script shows as text.  ``positions`` split the tokens into assistant turns: a gap in the
    positions starts the next assistant turn (the scorer's targets are contiguous per turn).
    """
    turns_tokens: list[list[int]] = []
    if pieces is not None and positions is not None:
        for k, p in enumerate(positions):
            if k == 0 or p != positions[k - 1] + 1:
                turns_tokens.append([])
            turns_tokens[-1].append(k)
    style = {"user": "#f3f6fa", "system": "#f7f7f0", "assistant": "#ffffff"}
    parts = ['<div style="font-family:ui-monospace,monospace;font-size:0.85em;line-height:1.6">']
    a = 0
    for m in messages:
        role = m["role"]
        body = html.escape(m["content"])
        if role == "assistant" and a < len(turns_tokens):
            spans = []
            for k in turns_tokens[a]:
                v = values[k]
                tip = "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"
                spans.append(f'<span title="{tip}" style="background:{loss_colour(v, vmax)}">'
                             f"{html.escape(pieces[k])}</span>")
            body = "".join(spans)
            a += 1
        elif role == "assistant" and pieces is not None:
            body += ' <em style="color:#888">(not scored: cut off by max length)</em>'
        parts.append(
            f'<div style="background:{style.get(role, "#fff")};border:1px solid #e3e3e3;border-radius:6px;'
            f'padding:6px 10px;margin:6px 0;white-space:pre-wrap;word-break:break-word">'
            f'<b style="color:#2a6f97">{html.escape(role)}</b>\n{body}</div>')
    parts.append("</div>")
    return "".join(parts)


def load_tokenizer(run: dict):
    """The tokenizer of a run's model (for showing tokens); light: no model weights are loaded."""
    from transformers import AutoTokenizer

    path = run.get("model", {}).get("path")
    if not path or not Path(path).exists():
        raise FileNotFoundError(f"the run's model folder {path!r} is not available on this machine")
    return AutoTokenizer.from_pretrained(path)


def rejected_rows(path: str | Path) -> pd.DataFrame:
    """A run's rejected.jsonl as a table."""
    p = Path(path)
    if not p.is_file():
        return pd.DataFrame(columns=["source", "source_index", "line", "reason"])
    return pd.DataFrame([json.loads(x) for x in p.read_text().splitlines() if x.strip()])


# ----------------------------------------------------------------------------------------------
# The Data page: what a set of sources holds before any scoring


def inspect_sources(sources: list[tuple[str, str]], limit: int | None = None):
    """Load ``[(path, domain)]`` with the same rules as a score run; returns the LoadResult.

    Raises :class:`curation.load.SourceError` naming the file when a source is unusable.
    """
    from curation.load import SourceSpec, load_sources

    return load_sources([SourceSpec(path=p, domain=d) for p, d in sources], limit=limit)


def token_lengths(examples, model: str = "default", template: str = "auto", max_examples: int = 5000,
                  seed: int = 0) -> pd.DataFrame:
    """Token lengths of (a seeded sample of at most ``max_examples``) examples under ``model``'s
    tokenizer and chat template: ``example_id, domain, n_prompt_tokens, n_response_tokens,
    n_tokens_full``.  Only the tokenizer is loaded, not the weights."""
    from transformers import AutoTokenizer

    from curation.load import RecordError
    from curation.models import resolve_model
    from curation.templates import encode_many, resolve_template

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    tpl = resolve_template(tok, template)
    exs = list(examples)
    if len(exs) > max_examples:
        rng = np.random.default_rng(seed)
        exs = [exs[i] for i in sorted(rng.choice(len(exs), max_examples, replace=False))]
    enc = encode_many(tok, tpl, [e.messages for e in exs], max_length=10**9)
    rows = [{"example_id": e.example_id, "domain": e.domain, "n_prompt_tokens": x.n_prompt_tokens,
             "n_response_tokens": x.n_response_tokens, "n_tokens_full": x.n_tokens_full}
            for e, x in zip(exs, enc) if not isinstance(x, RecordError)]
    return pd.DataFrame(rows, columns=["example_id", "domain", "n_prompt_tokens", "n_response_tokens", "n_tokens_full"])


# ----------------------------------------------------------------------------------------------
# The Select page


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
    cols = ["side", "domain", "example_id", column] + [c for c in ("n_response_tokens",) if c in df.columns]
    if not out:
        return pd.DataFrame(columns=cols)
    return pd.concat(out, ignore_index=True)[cols]

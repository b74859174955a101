"""What the pages draw for a run over preference pairs: the margins, their length bias, who the
base model already prefers, a selection's means beside the random baseline's.  Pure functions over
a pair run's score table (:meth:`curation.runs.folder.Run.scores`), returning small tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from curation.views.aggregate import correlation

MARGINS = ("margin_sum", "margin_mean", "reward_margin", "davir_margin", "reward_margin_heldout",
           "davir_margin_heldout")  # the implicit margins a run may have (the held-out ones with --heldout-folds)


def margin_columns(df: pd.DataFrame) -> list[str]:
    """The implicit margins of a pair table, in :data:`MARGINS` order."""
    return [c for c in MARGINS if c in df.columns]


def length_bias(df: pd.DataFrame) -> pd.DataFrame:
    """Pearson and Spearman correlation of every margin with ``len_diff`` (chosen - rejected
    tokens), overall and per domain: ``margin, group, n, pearson, spearman``.  The bias DavIR-DPO
    targets (reported 0.38 for vanilla DPO's margin, 0.07 for its own)."""
    frames = [correlation(df, "len_diff", m).assign(margin=m) for m in margin_columns(df)]
    if not frames:
        return pd.DataFrame(columns=["margin", "group", "n", "pearson", "spearman"])
    return pd.concat(frames, ignore_index=True)[["margin", "group", "n", "pearson", "spearman"]]


def prefers_chosen(df: pd.DataFrame) -> pd.DataFrame:
    """Per domain and overall: pairs, the share where the base model already prefers the chosen
    response (``margin_sum > 0``: higher log-probability), and with a pair learn run the share
    where the trained reference's implicit reward does (``reward_margin > 0``, DPO's reward accuracy)."""
    def one(name, g):
        row = {"group": name, "pairs": len(g)}
        for col, label in (("margin_sum", "base prefers chosen"), ("reward_margin", "reward prefers chosen")):
            if col in g.columns:
                v = pd.to_numeric(g[col], errors="coerce").dropna()
                row[label] = float((v > 0).mean()) if len(v) else np.nan
        return row

    return pd.DataFrame([one("all", df)] + [one(str(k), g) for k, g in df.groupby("domain", sort=True)])


def means_beside(df: pd.DataFrame, groups: dict[str, object], columns) -> pd.DataFrame:
    """The mean of each of ``columns`` (those ``df`` has) over each group of rows (``{label: ids}``,
    ids of ``example_id``): one row per group, e.g. the selection and the random baseline."""
    cols = [c for c in columns if c in df.columns]
    keyed = df.set_index("example_id")[cols].apply(pd.to_numeric, errors="coerce")
    return pd.DataFrame([{"rows": label, "pairs": len(ids), **keyed.reindex(list(ids)).mean().to_dict()}
                         for label, ids in groups.items()])

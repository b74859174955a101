"""A pair run's tables: their columns, and how they are built from the pair pass's cache rows.

A pair run (run.json ``"data": "pairs"``) scores each response as the SFT example prompt +
response (:meth:`curation.data.pairs.Pair.sft_messages`), so its cache row is that SFT example's
row: every assistant token of the conversation, a multi-turn prompt's earlier assistant turns
included.  The response is the final assistant turn, the *last* ``n_chosen_tokens`` (or
``n_rejected_tokens``) targets of its row (truncation only cuts the end), and its log-prob is
minus their summed NLL (:func:`response_loss`); for a one-turn prompt that is the row itself.

    examples.parquet      PAIR_EXAMPLE_COLUMNS (+ RATING_COLUMNS when the sources rate pairs)
    scores.parquet        PAIR_SCORE_COLUMNS (+ RATING_COLUMNS)
    token_losses.parquet  one row per response: PAIR_TOKEN_COLUMNS (its final-turn tokens)

:meth:`curation.runs.folder.Run.scores` adds the generic columns the rest of the library keys on
(:func:`with_generic_columns`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curation.data.pair_formats import SIDES
from curation.scores import PAIR_COLUMNS

PAIR_EXAMPLE_COLUMNS = ["pair_id", "source", "source_index", "domain", "n_prompt_tokens", "n_chosen_tokens",
                        "n_rejected_tokens", "truncated_chosen", "truncated_rejected", "chosen_id", "rejected_id"]
RATING_COLUMNS = ["rating_chosen", "rating_rejected", "rating_margin"]
PAIR_SCORE_COLUMNS = ["pair_id", "source", "source_index", "domain", "n_prompt_tokens", "n_chosen_tokens",
                      "n_rejected_tokens", *PAIR_COLUMNS, "truncated", "scored"]
PAIR_TOKEN_COLUMNS = ["example_id", "pair_id", "side", "positions", "token_ids", "token_losses"]


def response_tokens(enc, n_prompt_turns: int) -> int:
    """How many target tokens of ``enc`` (a response scored as prompt + response) are the
    response's: those of its final run of targets, when the encoding holds ``n_prompt_turns``
    earlier assistant turns and then the response; 0 when nothing of the response is left."""
    t = enc.target.astype(np.int8)
    n_runs = int((np.diff(t, prepend=0) == 1).sum())
    return int(t[enc.response_start:].sum()) if n_runs == n_prompt_turns + 1 else 0


def response_loss(row: dict, n: int) -> float:
    """The summed NLL of a response's ``n`` tokens: the last ``n`` of its cache row (all of them,
    the row's own sum, for a one-turn prompt)."""
    if n == row["n_tokens"]:
        return float(row["loss_sum"])
    return float(np.asarray(row["token_losses"][len(row["token_losses"]) - n:], np.float32).astype(np.float64).sum())


def pair_example_table(pairs, encoded: dict, n_tokens: dict):
    """examples.parquet of a pair run: one row per pair (``encoded``/``n_tokens``: each response
    id's encoding and its response's token count); the ratings when any pair has them."""
    import pyarrow as pa

    ids = {s: [p.sft_id(s) for p in pairs] for s in SIDES}
    cols = {
        "pair_id": pa.array([p.pair_id for p in pairs], pa.string()),
        "source": pa.array([p.source for p in pairs], pa.string()),
        "source_index": pa.array([p.source_index for p in pairs], pa.int64()),
        "domain": pa.array([p.domain for p in pairs], pa.string()),
        "n_prompt_tokens": pa.array([encoded[i].response_start for i in ids["chosen"]], pa.int32()),
        **{f"n_{s}_tokens": pa.array([n_tokens[i] for i in ids[s]], pa.int32()) for s in SIDES},
        **{f"truncated_{s}": pa.array([encoded[i].truncated for i in ids[s]], pa.bool_()) for s in SIDES},
        **{f"{s}_id": pa.array(ids[s], pa.string()) for s in SIDES},
    }
    if any(p.rating_margin is not None for p in pairs):
        for name in RATING_COLUMNS:
            cols[name] = pa.array([getattr(p, name) for p in pairs], pa.float64())
    return pa.table(cols)


def pair_score_table(examples, rows: dict[str, dict]):
    """scores.parquet of a pair run: PAIR_SCORE_COLUMNS (+ ratings) for the pairs of ``examples``
    (a pair example table) whose two responses have cache rows, in its order."""
    import pyarrow as pa

    ex = examples.to_pydict()
    keep = [k for k, (c, r) in enumerate(zip(ex["chosen_id"], ex["rejected_id"])) if c in rows and r in rows]
    n = {s: np.array([ex[f"n_{s}_tokens"][k] for k in keep], dtype=np.int64) for s in SIDES}
    sums = {s: np.array([response_loss(rows[ex[f"{s}_id"][k]], int(n[s][j])) for j, k in enumerate(keep)],
                        dtype=np.float64) for s in SIDES}
    scored = (n["chosen"] > 0) & (n["rejected"] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = {s: sums[s] / np.maximum(n[s], 1) for s in SIDES}
    values = {"margin_sum": sums["rejected"] - sums["chosen"],  # log p(chosen) - log p(rejected)
              "margin_mean": loss["rejected"] - loss["chosen"],
              "loss_chosen": loss["chosen"], "loss_rejected": loss["rejected"]}
    cols = {c: pa.array([ex[c][k] for k in keep], examples.schema.field(c).type) for c in PAIR_SCORE_COLUMNS[:7]}
    cols.update({c: pa.array(v, pa.float64(), mask=~scored) for c, v in values.items()})
    cols["len_diff"] = pa.array(n["chosen"] - n["rejected"], pa.int32())
    cols["truncated"] = pa.array([ex["truncated_chosen"][k] or ex["truncated_rejected"][k] for k in keep], pa.bool_())
    cols["scored"] = pa.array(scored, pa.bool_())
    for c in RATING_COLUMNS:
        if c in ex:
            cols[c] = pa.array([ex[c][k] for k in keep], pa.float64())
    return pa.table(cols)


def pair_token_table(examples, encoded: dict, rows: dict[str, dict], ref_rows: dict[str, dict] | None = None):
    """token_losses.parquet of a pair run: per pair, its chosen then its rejected response's
    positions, token ids and float16 losses (the response's own tokens, PAIR_TOKEN_COLUMNS), and
    with ``ref_rows`` (a pair learn run's pass under its reference) ``token_losses_ref``."""
    import pyarrow as pa

    ex = examples.to_pydict()
    out = {c: [] for c in PAIR_TOKEN_COLUMNS + (["token_losses_ref"] if ref_rows is not None else [])}
    for k, pid in enumerate(ex["pair_id"]):
        for s in SIDES:
            rid, n = ex[f"{s}_id"][k], ex[f"n_{s}_tokens"][k]
            row = rows[rid]
            pos = np.asarray(row["positions"], dtype=np.int32)[len(row["positions"]) - n:]
            out["example_id"].append(rid)
            out["pair_id"].append(pid)
            out["side"].append(s)
            out["positions"].append(pos.tolist())
            out["token_ids"].append(encoded[rid].input_ids[pos].tolist())
            for col, r in (("token_losses", row), ("token_losses_ref", (ref_rows or {}).get(rid))):
                if col in out:
                    out[col].append(np.asarray(r["token_losses"][len(r["token_losses"]) - n:], np.float16).tolist())
    types = {"positions": pa.list_(pa.int32()), "token_ids": pa.list_(pa.int32()),
             "token_losses": pa.list_(pa.float16()), "token_losses_ref": pa.list_(pa.float16())}
    return pa.table({c: pa.array(v, types.get(c, pa.string())) for c, v in out.items()})


def with_generic_columns(df):
    """A pair run's score table with the two generic columns the rest of the library keys on:
    ``example_id`` (= ``pair_id``: selection, decisions, canaries and evidence treat a pair as the
    row) and ``n_response_tokens`` (= ``n_chosen_tokens + n_rejected_tokens``: token budgets and the
    random-tokens baseline count both responses).  Columns already there are left as they are."""
    df = df.copy()
    if "example_id" not in df.columns and "pair_id" in df.columns:
        df["example_id"] = df["pair_id"]
    if "n_response_tokens" not in df.columns and {"n_chosen_tokens", "n_rejected_tokens"} <= set(df.columns):
        df["n_response_tokens"] = (df["n_chosen_tokens"].astype("int64") + df["n_rejected_tokens"].astype("int64"))
    return df


# A pair learn run's DPO training curve, one row per optimizer step (``step, loss, reward_accuracy,
# reward_chosen, reward_rejected, reward_margin[, davir_margin], lr, tokens``: means over the step's
# pairs), beside train/train.json, for the Explore page to plot.
TRAIN_CURVE = "train_curve.parquet"


def write_train_curve(folder, loss_curve: list[dict]) -> None:
    """``train_curve.parquet`` of a run folder from a training's loss curve (atomically)."""
    import pandas as pd

    from curation.atomic import write_parquet

    write_parquet(Path(folder) / TRAIN_CURVE, pd.DataFrame(loss_curve))


def read_train_curve(folder):
    """A run's DPO training curve (a DataFrame, one row per step), or None when it has none."""
    import pandas as pd

    p = Path(folder) / TRAIN_CURVE
    return pd.read_parquet(p) if p.is_file() else None

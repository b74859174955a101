"""Synthetic run folders for selection tests: real source files and example ids, synthetic scores
consistent with their formulas (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from curation.runs.folder import LAYOUT
from curation.runs.formulas import derived_columns
from curation.scores import LEARN_COLUMNS, SCORES

TRAJECTORY = ["loss_ckpt_0", "loss_ckpt_1", "loss_ckpt_2"]  # a 3-point trajectory L_0, L_1, L_2
# The columns a synthetic learn run has beyond a score run's, in a learn run's table order.
SYNTHETIC_LEARN_COLUMNS = [*TRAJECTORY, *LEARN_COLUMNS, SCORES["s2l"].column]


def synthetic_scores(examples, seed: int = 0, learn: bool = True) -> pd.DataFrame:
    """A score table over loaded ``examples`` with the learn run's columns, scores drawn from a
    seeded RNG but consistent with their formulas (davir = (L0 - LK) / L0, ...)."""
    rng = np.random.default_rng(seed)
    n = len(examples)
    rows = pd.DataFrame({
        "example_id": [e.example_id for e in examples],
        "source": [e.source for e in examples],
        "source_index": np.array([e.source_index for e in examples], dtype=np.int64),
        "domain": [e.domain for e in examples],
        "n_prompt_tokens": rng.integers(5, 60, n).astype(np.int32),
        "n_response_tokens": rng.integers(1, 200, n).astype(np.int32),
    })
    rows["n_tokens_full"] = rows["n_prompt_tokens"] + rows["n_response_tokens"]
    rows["truncated"] = False
    rows["scored"] = True
    l0 = rng.uniform(0.5, 3.0, n)
    rows["loss"] = l0
    rows["loss_sum"] = l0 * rows["n_response_tokens"]
    if learn:
        lk = l0 * rng.uniform(0.2, 1.0, n)
        trajectory = np.column_stack([l0, (l0 + lk) / 2, lk])  # (n, 3)
        for k, c in enumerate(TRAJECTORY):
            rows[c] = trajectory[:, k]
        derived = derived_columns(trajectory)  # the library's formulas: davir = (L_0 - L_K) / L_0, ...
        ifd = rng.uniform(0.3, 1.3, n)  # IFD has its own pass: no trajectory formula
        for c in LEARN_COLUMNS:
            rows[c] = ifd if c == SCORES["ifd"].column else derived[c]
        rows[SCORES["s2l"].column] = rng.integers(0, 6, n)
    return rows


def make_run(folder: Path, sources: list[str], seed: int = 0, learn: bool = True, table_fn=None,
             limit: int | None = None) -> Path:
    """Write ``folder/scores.parquet`` + ``run.json`` for ``sources`` ("DOMAIN=PATH")."""
    from dataclasses import asdict

    from curation.data.load import load_sources, parse_source_arg

    data = load_sources([parse_source_arg(s) for s in sources], limit=limit)
    table = synthetic_scores(data.examples, seed, learn)
    if table_fn is not None:
        table = table_fn(table)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "scores.parquet", index=False)
    run = {
        "kind": "learn" if learn else "score", "code_version": "test", "finished": True,
        "config": {"sources": sources, "columns": {}, "format": None, "limit": limit},
        "sources": [asdict(s) for s in data.sources],
        "model": {"path": "synthetic", "fingerprint": "sha256:synthetic"},
        "template": {"name": "chat", "fingerprint": "sha256:t"}, "max_length": 2048, "run_key": "synthetic",
        "layout": LAYOUT,
    }
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def table_of(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "scores.parquet")


# ----------------------------------------------------------------------------------------------
# Pair runs: the layout of /work/notes/pairs-design.md ("A pair run"), synthetic scores consistent
# with their formulas, until the pair score run writes real ones.

PAIR_SCORE_COLUMNS = ["pair_id", "source", "source_index", "domain", "n_prompt_tokens", "n_chosen_tokens",
                      "n_rejected_tokens", "margin_sum", "margin_mean", "loss_chosen", "loss_rejected", "len_diff",
                      "truncated", "scored"]
PAIR_LEARN_COLUMNS = ["reward_chosen", "reward_rejected", "reward_margin", "davir_chosen", "davir_rejected",
                      "davir_margin"]
RATING_COLUMNS = ["rating_chosen", "rating_rejected", "rating_margin"]
BETA = 0.1


def _token_ids(text: str, rng, tokenizer) -> list[int]:
    if tokenizer is not None:
        return tokenizer.encode(text, add_special_tokens=False) or [0]
    return rng.integers(3, 250, max(1, len(text.split()))).tolist()


def synthetic_pair_tables(pairs, seed: int = 0, learn: bool = True, tokenizer=None):
    """``(examples, scores, token_losses)`` DataFrames of a pair run over ``pairs`` (loaded
    :class:`curation.data.pairs.Pair`): token counts from ``tokenizer`` (random without one),
    per-token losses drawn from a seeded RNG, every score consistent with its formula (loss_x =
    the mean of the response's token losses, margin_sum = log p(chosen) - log p(rejected), ...)."""
    from curation.data.textnorm import conversation_text

    rng = np.random.default_rng(seed)
    rows, tokens = [], []
    for p in pairs:
        row = {"pair_id": p.pair_id, "source": p.source, "source_index": p.source_index, "domain": p.domain,
               "n_prompt_tokens": len(_token_ids(conversation_text(p.prompt), rng, tokenizer))}
        for side in ("chosen", "rejected"):
            ids = _token_ids(p.response(side), rng, tokenizer)
            base = rng.uniform(0.2, 4.0, len(ids)).astype(np.float16)
            ref = (base.astype(np.float64) * rng.uniform(0.2, 1.0, len(ids))).astype(np.float16)
            start = row["n_prompt_tokens"] + 3  # after the prompt and the assistant header
            tok = {"example_id": p.sft_id(side), "pair_id": p.pair_id, "side": side,
                   "positions": list(range(start, start + len(ids))), "token_ids": ids, "token_losses": base.tolist()}
            if learn:
                tok["token_losses_ref"] = ref.tolist()
            tokens.append(tok)
            base_sum, ref_sum = float(base.astype(np.float64).sum()), float(ref.astype(np.float64).sum())
            row.update({f"n_{side}_tokens": len(ids), f"loss_{side}": base_sum / len(ids), f"_sum_{side}": base_sum,
                        f"_ref_{side}": ref_sum, f"{side}_id": p.sft_id(side)})
            if learn:
                row[f"reward_{side}"] = BETA * (base_sum - ref_sum)  # beta * (logp_ref - logp_base)
                row[f"davir_{side}"] = (base_sum - ref_sum) / base_sum
        if p.rating_margin is not None:
            row.update(rating_chosen=p.rating_chosen, rating_rejected=p.rating_rejected, rating_margin=p.rating_margin)
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("n_prompt_tokens", "n_chosen_tokens", "n_rejected_tokens"):
        df[c] = df[c].astype(np.int32)
    df["source_index"] = df["source_index"].astype(np.int64)
    df["margin_sum"] = df["_sum_rejected"] - df["_sum_chosen"]  # log p(chosen) - log p(rejected)
    df["margin_mean"] = df["loss_rejected"] - df["loss_chosen"]
    df["len_diff"] = (df["n_chosen_tokens"] - df["n_rejected_tokens"]).astype(np.int32)
    df["truncated"], df["scored"] = False, True
    df["truncated_chosen"], df["truncated_rejected"] = False, False
    ratings = [c for c in RATING_COLUMNS if c in df.columns]
    examples = df[["pair_id", "source", "source_index", "domain", "n_prompt_tokens", "n_chosen_tokens",
                   "n_rejected_tokens", "truncated_chosen", "truncated_rejected", "chosen_id", "rejected_id",
                   *ratings]]
    if learn:
        df["reward_margin"] = df["reward_chosen"] - df["reward_rejected"]
        df["davir_margin"] = df["davir_chosen"] - df["davir_rejected"]
    scores = df[PAIR_SCORE_COLUMNS + ratings + (PAIR_LEARN_COLUMNS if learn else [])]
    return examples, scores, pd.DataFrame(tokens)


def make_pair_run(folder: Path, sources: list[str], seed: int = 0, learn: bool = True, model_dir=None,
                  limit: int | None = None, table_fn=None, embed_dim: int = 8) -> Path:
    """A finished pair run folder for ``sources`` ("DOMAIN=PATH" files of preference pairs), in the
    design's layout: run.json (``"data": "pairs"``), examples.parquet, scores.parquet,
    token_losses.parquet (one row per response), the prompts' embeddings.  ``model_dir``: a model
    folder whose tokenizer counts the tokens (the Inspect page shows them); ``table_fn`` edits the
    score table before it is written."""
    from curation.data.load import parse_source_arg
    from curation.data.pairs import load_pairs
    from curation.runs.folder import Run, source_entries

    data = load_pairs([parse_source_arg(s) for s in sources], limit=limit)
    tokenizer = None
    if model_dir is not None:
        from curation.scoring.models import load_tokenizer

        tokenizer = load_tokenizer(str(model_dir))
    examples, scores, tokens = synthetic_pair_tables(data.pairs, seed, learn, tokenizer)
    if table_fn is not None:
        scores = table_fn(scores)
    folder.mkdir(parents=True, exist_ok=True)
    examples.to_parquet(folder / Run.EXAMPLES, index=False)
    scores.to_parquet(folder / Run.SCORES, index=False)
    tokens.to_parquet(folder / Run.TOKENS, index=False)
    (folder / Run.REJECTED).write_text("".join(json.dumps(r) + "\n" for r in data.rejected_rows()))
    rng = np.random.default_rng(seed + 1)
    centres = {d: rng.normal(0, 1, embed_dim) for d in sorted(set(examples["domain"]))}
    emb = np.stack([centres[d] + rng.normal(0, 0.3, embed_dim) for d in examples["domain"]]).astype(np.float16)
    np.save(folder / Run.EMBEDDINGS, emb)
    np.save(folder / Run.RDS, (emb / np.linalg.norm(emb.astype(np.float32), axis=1, keepdims=True)).astype(np.float16))
    pd.DataFrame({"example_id": examples["pair_id"]}).to_parquet(folder / Run.EMBEDDING_IDS, index=False)
    run = {
        "kind": "learn" if learn else "score", "data": "pairs", "code_version": "test", "finished": True,
        "config": {"sources": sources, "columns": {}, "format": None, "limit": limit},
        "sources": source_entries(data.sources),
        "model": {"path": str(model_dir) if model_dir else "synthetic", "fingerprint": "sha256:synthetic"},
        "template": {"name": "chat", "fingerprint": "sha256:t"}, "max_length": 2048, "run_key": "synthetic-pairs",
        "layout": LAYOUT,
    }
    (folder / Run.META).write_text(json.dumps(run))
    return folder


XSS = '<img src=x onerror="document.title=\'XSS-EXECUTED\'"><script>document.title="XSS-EXECUTED"</script>'


def write_pair_sources(folder: Path, n_chat: int = 30, n_math: int = 24) -> list[str]:
    """Two pair sources as "DOMAIN=PATH": chat in TRL's conversational shape with ratings
    (UltraFeedback-binarized's score_chosen / score_rejected) and an XSS probe in one pair's prompt
    and responses; math in the Alpaca ranking shape (instruction, chosen, rejected).  Prompts 0 and
    1 of chat are near-duplicates; responses of varied lengths, so len_diff varies."""
    folder.mkdir(parents=True, exist_ok=True)
    chat = []
    for k in range(n_chat):
        prompt = f"Tell me about the quick brown fox number {k} and what it likes to eat in the forest"
        if k == 1:
            prompt = "Tell me about the quick brown fox number 0 and what it likes to eat in the forest!"
        good, bad = f"The fox {k} eats berries. " * (1 + k % 5), f"Foxes {k} are blue. " * (1 + (k * 3) % 4)
        if k == 2:
            prompt, good, bad = "Is this safe? " + XSS, "It is shown as text: " + XSS, "Run it: " + XSS
        chat.append({"prompt": [{"role": "user", "content": prompt}],
                     "chosen": [{"role": "assistant", "content": good}],
                     "rejected": [{"role": "assistant", "content": bad}],
                     "score_chosen": float(6 + k % 5), "score_rejected": float(1 + k % 4)})
    math = [{"instruction": f"What is {k} + {k + 1}? Show the steps.",
             "chosen": f"{k} + {k + 1} = {2 * k + 1}. " + "Check: adding again. " * (k % 3) + f"#### {2 * k + 1}",
             "rejected": f"{k} + {k + 1} = {2 * k}. #### {2 * k}"} for k in range(n_math)]
    paths = {"chat": folder / "chat_pairs.jsonl", "math": folder / "math_pairs.jsonl"}
    for d, rows in (("chat", chat), ("math", math)):
        paths[d].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"{d}={p}" for d, p in paths.items()]


def make_selection(folder: Path) -> tuple[Path, Path]:
    """A synthetic run of 20 math + 20 chat records in ``folder`` and a saved 10-example davir
    selection of it: ``(run, selection folder)``."""
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from tests.conftest import write_jsonl

    math = write_jsonl(folder / "gsm.jsonl", [{"question": f"What is {k} + {k}?", "answer": f"{2 * k}"}
                                              for k in range(20)])
    chat = write_jsonl(folder / "chat.jsonl", [{"instruction": f"Say {k}.", "input": "", "output": f"{k}."}
                                               for k in range(20)])
    run = make_run(folder / "run", [f"math={math}", f"chat={chat}"])
    return run, select_run(run, Recipe("davir", budget="10"), folder / "sel")

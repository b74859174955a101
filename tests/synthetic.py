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

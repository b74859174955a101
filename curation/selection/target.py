"""Target-aware selection ("find me more data like these examples"): RDS+ similarity to targets.

RDS+ (Ivison et al., arXiv 2503.01807) embeds each whole example (prompt and response, every turn,
as the run's template renders it) with the model that will be fine-tuned: the position-weighted
mean of its final hidden states (position t weighted by t), L2-normalised
(:func:`curation.scoring.losses.position_weighted_means`; the scoring pass keeps it for every pool
example, ``rds_embeddings.npy``).  Here:

* :func:`embed_targets`: the target examples (``--target DOMAIN=PATH``, several files per domain,
  any format the loader reads) embedded with the run's model, template, max length, dtype and
  device, through the score cache (the model is loaded only for targets it has not seen);
  targets that are pool examples are refused (they would select themselves);
* :func:`target_columns`: per pool row, the cosine to each of its domain's targets
  (``target_sims``, for the picker) and the largest (``target_sim``: a score, a threshold
  ``--min target_sim=...``, a colour on the map);
* :func:`target_k`: the picker, round-robin over the domain's target examples, each taking its
  most similar pool example not taken yet (the paper's selection; its several target tasks are
  our domains, whose quotas the mix already sets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curation.selection.pickers import DomainRows
from curation.selection.recipe import SelectionError

MAX_TARGETS = 10_000  # target examples per selection: each adds a column of similarities


@dataclass
class Targets:
    """One domain's target examples: their labels (``FILE#INDEX``), ids and embeddings."""

    domain: str
    labels: list[str]
    ids: list[str]
    rds: np.ndarray  # (m, H) float32, unit rows: what similarity is measured with
    embedding: np.ndarray  # (m, H) float32: the assistant-token mean (the map places them with it)


def load_targets(target: dict[str, list[str]], pool_ids: set[str]) -> dict[str, object]:
    """The target examples of each domain, loaded like any source: ``{domain: LoadResult}``;
    refused when one is also in the pool."""
    from pathlib import Path

    from curation.data.load import SourceSpec, load_sources

    out = {}
    for domain, paths in target.items():
        for p in paths:
            if not Path(p).exists():
                raise SelectionError(f"--target {domain}={p}: no such file or folder")
        data = load_sources([SourceSpec(path=p, domain=domain) for p in paths])
        inside = [e for e in data.examples if e.example_id in pool_ids]
        if inside:
            e = inside[0]
            raise SelectionError(f"--target {domain}: {len(inside)} target example(s) are pool examples too (e.g. "
                                 f"{e.source} #{e.source_index}, id {e.example_id}); a target selects itself. Use "
                                 "examples outside the pool (the default workspace's dev/ files are)")
        out[domain] = data
    n = sum(len(d.examples) for d in out.values())
    if n > MAX_TARGETS:
        raise SelectionError(f"--target: {n:,} target examples; at most {MAX_TARGETS:,} (a sample of them works as well)")
    return out


def embed_targets(run, target: dict[str, list[str]], pool_ids: set[str], progress=None) -> dict[str, Targets]:
    """Embed each domain's target examples with the run's model and settings (see the module doc)."""
    from curation.progress import Reporter
    from curation.runs.steps import reopen
    from curation.scoring.models import ModelSource, load_tokenizer
    from curation.scoring.passes import embedding_of, score_pass

    report = Reporter(progress)
    meta = run.require_finished()
    model, base = meta["model"], meta.get("base_pass") or {}
    loaded = load_targets(target, pool_ids)
    ctx = reopen(meta, load_tokenizer(model["path"]), model["dtype"], model["device"],
                 "score the data again to select toward targets", cache=base.get("cache"))
    if base and ctx.settings.key(model["fingerprint"]) != base.get("key"):
        raise SelectionError("the run's score cache settings cannot be rebuilt on this machine (another device?); "
                             "score the data again here to select toward targets")
    out = {}
    for domain, data in loaded.items():
        examples, encoded, _ = ctx.encode(data)  # a target the template cannot render is not one to select toward
        if not examples:
            raise SelectionError(f"--target {domain}: no usable target example in {', '.join(target[domain])}")
        ids = [e.example_id for e in examples]
        source = ModelSource(model["path"], model["device"], model["dtype"])  # loaded only if the cache lacks one
        rows = score_pass(source, model["fingerprint"], ids, encoded, ctx.settings, report,
                          f"embedding the {domain} targets", embed=True)
        rds = np.stack([embedding_of(rows[i], "rds").astype(np.float32) for i in ids])
        width = rds.shape[1]
        emb = np.stack([embedding_of(rows[i]).astype(np.float32) if embedding_of(rows[i]) is not None
                        else np.full(width, np.nan, np.float32) for i in ids])
        out[domain] = Targets(domain, [f"{e.source}#{e.source_index}" for e in examples], ids, unit(rds), emb)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32; the stored float16 vectors are only nearly unit)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def target_columns(run, table, targets: dict[str, Targets]):
    """``table`` with ``target_sims`` (per row, the cosine to each target of its domain; None for a
    domain without targets or a row without an embedding) and ``target_sim`` (their largest)."""
    got = run.embeddings("rds")
    if got is None:
        raise SelectionError(f"selecting toward targets needs the run's RDS+ embeddings, and {run.path} has no "
                             "rds_embeddings.npy; score the data again into a new folder")
    row_of = {i: j for j, i in enumerate(got[0])}
    matrix = got[1]
    df = table.drop(columns=[c for c in ("target_sims", "target_sim") if c in table.columns]).reset_index(drop=True)
    sims = np.full(len(df), None, dtype=object)
    best = np.full(len(df), np.nan)
    ids = df["example_id"].astype(str).to_numpy()
    domain = df["domain"].astype(str).to_numpy()
    for d, t in targets.items():
        rows = np.flatnonzero(domain == d)
        have = np.array([ids[r] in row_of for r in rows], dtype=bool)
        rows = rows[have]
        if not len(rows):
            continue
        pool = matrix[[row_of[ids[r]] for r in rows]].astype(np.float32)  # (n, H)
        ok = np.isfinite(pool).all(axis=1)
        s = unit(np.nan_to_num(pool)) @ t.rds.T  # (n, m): cosines
        for k, r in enumerate(rows):
            if ok[k]:
                sims[r] = s[k]
                best[r] = float(s[k].max())
    return df.assign(target_sims=sims, target_sim=best)


def target_k(rows: DomainRows, k: int, rng: np.random.Generator) -> np.ndarray:
    """Round-robin over the domain's target examples (columns of ``rows.target_sims``): target 0
    takes its most similar row, then target 1 its most similar row not taken, ..., around again
    until ``k`` rows are taken.  Ties go to the smaller example id (rows are in id order)."""
    sims = rows.target_sims  # (n, m)
    n, m = sims.shape
    k = min(int(k), n)
    order = np.argsort(-sims, axis=0, kind="stable")  # (n, m): each target's rows, most similar first
    taken = np.zeros(n, dtype=bool)
    nxt = np.zeros(m, dtype=np.int64)
    out: list[int] = []
    while len(out) < k:
        for j in range(m):
            while nxt[j] < n and taken[order[nxt[j], j]]:
                nxt[j] += 1
            if nxt[j] < n:
                r = int(order[nxt[j], j])
                taken[r] = True
                out.append(r)
                if len(out) == k:
                    break
    return np.array(out, dtype=np.int64)

"""The score formulas: everything derived from losses, as pure functions of arrays.

A trajectory is one example's loss at K+1 evenly spaced points of the reference training run:
``L[:, 0]`` under the base model, ..., ``L[:, K]`` under the final (reference) model.  Everything
here is a pure function of that matrix (plus a seed for clustering), so it is cheap to test on
hand-computed toy trajectories.

Formulas (L = mean NLL in nats over assistant tokens):

==============  ================================================================================
``loss_base``   ``L_0``
``loss_ref``    ``L_K``
``ppl_base``    ``exp(L_0)``
``davir``       ``(L_0 - L_K) / L_0`` (LoBaSS v1 "learnability", DavIR in v2); higher = more learnable
``rho``         ``L_0 - L_K`` (RHO-LOSS-like absolute drop; correlates with length)
``ifd``         ``L(response | prompt) / L(response alone)`` under the base model (Cherry IFD)
``*_heldout``   ``loss_ref_heldout`` = L under a model trained without the example's fold;
                ``davir_heldout``, ``rho_heldout`` as above with it
``s2l_cluster``  K-means cluster of the trajectory (S2L), :func:`s2l_clusters`
``davir_r{i}``  davir (likewise rho, loss_ref) with the i-th of N reference runs (``--stability-runs``);
                ``davir_sd`` its spread across the runs per example
``reward_x``    pairs (x = chosen, rejected; L summed over the response's tokens, logp = -L):
                ``beta * (logp_trained - logp_base)``; ``davir_x`` = ``(L_base - L_trained) / L_base``;
                ``*_margin`` = chosen's - rejected's (:func:`pair_learn_columns`)
==============  ================================================================================

Rows with a missing loss (no assistant token survived truncation) get NaN scores and cluster -1.
"""

from __future__ import annotations


import numpy as np

from curation.scores import LEARN_COLUMNS, PAIR_HELDOUT_COLUMNS, PAIR_LEARN_COLUMNS, STABILITY_SCORES

# The trajectory's scores (the learn run's columns of the registry but ifd, which needs its own pass).
DERIVED_COLUMNS = [c for c in LEARN_COLUMNS if c != "ifd"]

# S2L (arXiv 2403.07384) uses 100 clusters; on small pools that leaves clusters of one or two
# examples, which the balanced sampler then treats as noise.  We keep the average cluster at
# least this large.
MIN_AVG_CLUSTER_SIZE = 10


def derived_columns(trajectories: np.ndarray) -> dict[str, np.ndarray]:
    """The per-example scores of a ``(n_examples, K+1)`` trajectory matrix, K >= 1.

    Returns float64 arrays keyed by :data:`DERIVED_COLUMNS`.
    """
    L = _check_matrix(trajectories)
    base, ref = L[:, 0], L[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        davir = (base - ref) / base
    return {
        "loss_base": base.copy(),
        "loss_ref": ref.copy(),
        "davir": davir,
        "rho": base - ref,
        "ppl_base": np.exp(base),
    }


def assign_folds(n: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each example (or pair): a seeded permutation dealt round-robin (sizes differ by at most 1)."""
    perm = np.random.default_rng([seed, 1009]).permutation(n)
    folds = np.empty(n, dtype=np.int64)
    folds[perm] = np.arange(n) % n_folds
    return folds


def heldout_columns(loss_base: np.ndarray, loss_ref_heldout: np.ndarray) -> dict[str, np.ndarray]:
    """davir and rho with a held-out reference loss (a model that never trained on the example)."""
    base = np.asarray(loss_base, dtype=np.float64)
    ref = np.asarray(loss_ref_heldout, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"loss_ref_heldout": ref, "davir_heldout": (base - ref) / base, "rho_heldout": base - ref}


def pair_learn_columns(base: dict[str, np.ndarray], trained: dict[str, np.ndarray], beta: float) -> dict:
    """The pair learn run's columns (:data:`curation.scores.PAIR_LEARN_COLUMNS`, in order) from each
    response's summed NLL (``L = -logp``) under the base and the trained model, ``{side: (n_pairs,)}``:
    ``reward_x = beta * (logp_trained - logp_base) = beta * (L_base - L_trained)``,
    ``davir_x = (L_base - L_trained) / L_base``, and each one's margin (chosen - rejected)."""
    out = {}
    for name, f in (("reward", lambda b, t: beta * (b - t)), ("davir", lambda b, t: (b - t) / b)):
        with np.errstate(divide="ignore", invalid="ignore"):
            for side in ("chosen", "rejected"):
                out[f"{name}_{side}"] = f(np.asarray(base[side], np.float64), np.asarray(trained[side], np.float64))
        out[f"{name}_margin"] = out[f"{name}_chosen"] - out[f"{name}_rejected"]
    return {c: out[c] for c in PAIR_LEARN_COLUMNS}


def pair_heldout_columns(base: dict[str, np.ndarray], heldout: dict[str, np.ndarray], beta: float) -> dict:
    """``reward_margin_heldout, davir_margin_heldout``: the margins with each pair's summed NLLs
    under the model trained without its fold (:func:`pair_learn_columns`)."""
    cols = pair_learn_columns(base, heldout, beta)
    return {c: cols[c.removesuffix("_heldout")] for c in PAIR_HELDOUT_COLUMNS}


def ifd_score(full_ids: np.ndarray, full_losses: np.ndarray, alone_ids: np.ndarray,
              alone_losses: np.ndarray) -> tuple[float, bool]:
    """IFD = mean loss of the response given the prompt / mean loss of the response alone.

    Both means run over the same assistant tokens: the alone side is cut to the tokens the full
    side scored (truncation can keep more of them when the prompt is gone).  Returns ``(ifd,
    matched)``; when the token ids differ (a template that tokenises the turn differently), all
    alone tokens are used and ``matched`` is False.  NaN when either side has no token.
    """
    n = len(full_ids)
    if n == 0 or len(alone_ids) == 0:
        return float("nan"), True
    matched = len(alone_ids) >= n and np.array_equal(alone_ids[:n], full_ids)
    denom = alone_losses[:n] if matched else alone_losses
    d = float(np.asarray(denom, dtype=np.float64).mean())
    num = float(np.asarray(full_losses, dtype=np.float64).mean())
    return (num / d if d > 0 else float("nan")), matched


def n_clusters_for(n_examples: int, requested: int) -> int:
    """The number of S2L clusters: ``requested``, capped so clusters average at least
    :data:`MIN_AVG_CLUSTER_SIZE` examples (and at least 1 cluster)."""
    if requested < 1:
        raise ValueError(f"n_clusters must be positive, got {requested}")
    return max(1, min(requested, n_examples // MIN_AVG_CLUSTER_SIZE))


def s2l_clusters(trajectories: np.ndarray, n_clusters: int, seed: int,
                 cap: bool = True) -> np.ndarray:
    """K-means cluster label of each trajectory (S2L), ``-1`` for rows containing NaN.

    As in the S2L paper the features are the raw loss trajectories (no normalisation), so
    examples that start and end at similar losses *and* fall at similar speeds group together.
    ``n_clusters`` is capped by :func:`n_clusters_for` unless ``cap=False``.  Labels are renumbered
    by cluster size (0 = largest, ties by first member) so they do not depend on K-means' internal
    order.  Deterministic for a seed.

    Large inputs (over 200,000 rows) use mini-batch K-means, linear in the number of rows
    (`make bench-cluster` measures it).  This is the one S2L clusterer: the learn run and the
    selection's re-clustering (``--s2l-clusters``) both call it.
    """
    L = _check_matrix(trajectories, min_points=1)
    ok = np.isfinite(L).all(axis=1)
    labels = np.full(len(L), -1, dtype=np.int64)
    X = np.ascontiguousarray(L[ok], dtype=np.float64)
    if len(X) == 0:
        return labels
    k = n_clusters_for(len(X), n_clusters) if cap else min(n_clusters, len(X))
    if k < 1:
        raise ValueError(f"n_clusters must be positive, got {n_clusters}")
    if k == 1:
        labels[ok] = 0
        return labels
    raw = _kmeans(X, k, seed)
    labels[ok] = _renumber_by_size(raw)
    return labels


# ----------------------------------------------------------------------------------------------


def _check_matrix(trajectories, min_points: int = 2) -> np.ndarray:
    L = np.asarray(trajectories, dtype=np.float64)
    if L.ndim != 2 or L.shape[1] < min_points:
        raise ValueError(
            f"trajectories: expected a matrix (n_examples, K+1) with K+1 >= {min_points}, "
            f"got shape {L.shape}"
        )
    return L


def _kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    # Identical rows (common on tiny pools) can leave fewer distinct points than clusters.
    n_distinct = len(np.unique(X, axis=0)) if len(X) <= 200_000 else len(X)
    k = min(k, n_distinct)
    if k <= 1:
        return np.zeros(len(X), dtype=np.int64)
    if len(X) <= 200_000:
        # Exact Lloyd iterations; a few k-means++ restarts are cheap at this size.
        km = KMeans(n_clusters=k, n_init=3, random_state=seed, max_iter=300)
    else:
        # Mini-batches of 16k rows: each step costs ~16k x k x d, and k-means++ is seeded on a
        # 100k sample (init_size), so the whole fit is linear in n with a small constant.
        km = MiniBatchKMeans(n_clusters=k, n_init=3, random_state=seed, batch_size=16_384,
                             init_size=100_000, max_iter=100, max_no_improvement=10,
                             reassignment_ratio=0.001)
    return km.fit_predict(X).astype(np.int64)


def _renumber_by_size(raw: np.ndarray) -> np.ndarray:
    ids, first, counts = np.unique(raw, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda j: (-counts[j], first[j]))
    mapping = np.empty(ids.max() + 1, dtype=np.int64)
    for new, j in enumerate(order):
        mapping[ids[j]] = new
    return mapping[raw]


# ----------------------------------------------------------------------------------------------
# Stability across reference runs

def stability_columns(loss_base, refs: list) -> dict[str, np.ndarray]:
    """``loss_ref_r{i}, davir_r{i}, rho_r{i}`` for reference runs i = 1..N (run 1 = the main
    reference) and the per-example spread across runs ``davir_sd, rho_sd`` (sd, ddof=1)."""
    base = np.asarray(loss_base, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for i, ref in enumerate(refs, start=1):
        ref = np.asarray(ref, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"loss_ref_r{i}"], out[f"davir_r{i}"], out[f"rho_r{i}"] = ref, (base - ref) / base, base - ref
    for s in STABILITY_SCORES:
        m = np.stack([out[f"{s}_r{i}"] for i in range(1, len(refs) + 1)], axis=1)  # (n, N)
        with np.errstate(invalid="ignore"):
            out[f"{s}_sd"] = np.std(m, axis=1, ddof=1) if m.shape[1] > 1 else np.zeros(len(m))
    return out


def rank_agreement(a, b) -> dict:
    """Spearman and Kendall correlation of two score vectors over the examples where both are known."""
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        identical = ok.sum() > 0 and np.array_equal(a[ok], b[ok])
        return {"n": int(ok.sum()), "spearman": 1.0 if identical else None, "kendall": 1.0 if identical else None}
    return {"n": int(ok.sum()), "spearman": float(spearmanr(a[ok], b[ok]).statistic),
            "kendall": float(kendalltau(a[ok], b[ok]).statistic)}


def stability_summary(columns: dict, domains, runs: int, settings: list | None = None) -> dict:
    """Per domain and score: the rank agreement of every pair of reference runs, its mean, and the
    per-example spread across runs (mean and median sd)."""
    domains = np.asarray(domains)
    out = {"runs": runs, "settings": settings, "domains": {}}
    for d in sorted(set(domains.tolist())):
        rows = domains == d
        per = {}
        for s in STABILITY_SCORES:
            cols = [f"{s}_r{i}" for i in range(1, runs + 1)]
            pairs = []
            for i in range(runs):
                for j in range(i + 1, runs):
                    agr = rank_agreement(columns[cols[i]][rows], columns[cols[j]][rows])
                    pairs.append({"runs": [i + 1, j + 1], **agr})
            sd = np.asarray(columns[f"{s}_sd"], dtype=np.float64)[rows]
            sd = sd[np.isfinite(sd)]
            sp = [p["spearman"] for p in pairs if p["spearman"] is not None]
            kt = [p["kendall"] for p in pairs if p["kendall"] is not None]
            per[s] = {"pairs": pairs, "spearman_mean": float(np.mean(sp)) if sp else None,
                      "kendall_mean": float(np.mean(kt)) if kt else None,
                      "sd_mean": float(sd.mean()) if len(sd) else None,
                      "sd_median": float(np.median(sd)) if len(sd) else None}
        out["domains"][str(d)] = {"n": int(rows.sum()), **per}
    return out


def heldout_agreement(columns: dict, domains, scores=STABILITY_SCORES) -> dict:
    """Per domain: how well the in-sample ``scores`` (reference trained on every example) rank like
    their held-out ``{score}_heldout`` (each example scored by a fold model that never saw it):
    ``--heldout-folds``' stability figure (a pair learn run's: its reward and davir margins)."""
    domains = np.asarray(domains)
    return {str(d): {s: rank_agreement(np.asarray(columns[s])[domains == d], np.asarray(columns[f"{s}_heldout"])[domains == d])
                     for s in scores}
            for d in sorted(set(domains.tolist()))}

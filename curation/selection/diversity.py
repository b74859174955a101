"""Diversity-aware picking over the scoring pass's embeddings (``select --diversity``).

Every picker works on the eligible rows of one domain (the arrays it is given, all of one length
``n``) and returns **positions into those arrays**, best/first first, like
:func:`curation.selection.pickers.rank_order`.  They are pure and deterministic: the same rows (in any
order) and the same seed give the same example ids.  Ranking ties are broken by example id.

* :func:`kcenter`: greedy k-center (farthest-first traversal) over embeddings, seeded by the
  top-scored example, optionally score-weighted: covers the embedding space (``--diversity kcenter``).
* :func:`cluster_balanced`: k-means clusters of the embeddings, the budget water-filled over
  clusters smallest first, top-scored inside each (``--diversity clusters:N``; S2L's balancing
  with a deterministic pick).
* :func:`coverage`: the share of clusters a selection touches (the summary's diversity measure).

:func:`kcenter_k` and :func:`clusters_k` wrap the first two as pickers
(:mod:`curation.selection.pickers`: ``picker(rows, k, rng) -> positions``).

Embeddings are compared by **cosine** distance: rows are L2-normalised, and on unit vectors the
Euclidean distance is ``sqrt(2 - 2 cos)``, a monotone function of cosine distance, so distances
come from dot products (BLAS matmuls).  The norm of a language-model embedding mostly reflects
length and token frequency, not meaning; cosine is how such embeddings are compared.
"""

from __future__ import annotations

import numpy as np

from curation.scores import ORDERS
from curation.selection.pickers import DomainRows, Picker, rank_order


class DiversityError(ValueError):
    """A picker cannot run on its inputs (the message says what to change)."""


# ----------------------------------------------------------------------------------------------
# Validation


def _ids(ids, n: int | None = None) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DiversityError(f"ids must be a 1-D array of example ids, got shape {ids.shape}")
    if n is not None and len(ids) != n:
        raise DiversityError(f"ids has {len(ids)} entries but the other inputs have {n} rows; pass one id per row")
    if len(np.unique(ids)) != len(ids):
        raise DiversityError("ids must be unique (ties are broken by example id); deduplicate the rows first")
    return ids


def _vector(name: str, values, n: int | None = None, finite: bool = True) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise DiversityError(f"{name} must be a 1-D array (one value per row), got shape {v.shape}")
    if n is not None and len(v) != n:
        raise DiversityError(f"{name} has {len(v)} values but there are {n} rows; pass one value per row")
    if finite and not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).sum())
        raise DiversityError(f"{name} has {bad} NaN/inf value(s); drop those rows first (the recipe's "
                             "eligibility step drops rows whose score is unknown)")
    return v


def _order(order: str) -> str:
    if order not in ORDERS:
        raise DiversityError(f"order {order!r}: expected 'high' (largest score is best) or 'low'")
    return order


def _budget(k, n: int, what: str = "k") -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise DiversityError(f"{what} must be a non-negative whole number, got {k!r}")
    return int(min(int(k), n))


def _embeddings(embeddings, n: int | None = None) -> np.ndarray:
    """Rows L2-normalised to float32 (zero rows stay zero): ``(n, d)``."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise DiversityError(f"embeddings must be a 2-D array (rows x dims), got shape {x.shape}")
    if n is not None and len(x) != n:
        raise DiversityError(f"embeddings has {len(x)} rows but scores/ids have {n}; pass one row per example")
    x = x.astype(np.float32, copy=True)  # (n, d); also float16 -> float32 for BLAS
    if not np.isfinite(x).all():
        raise DiversityError("embeddings contain NaN/inf; recompute or drop those rows")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # (n,)
    norms[norms == 0] = 1.0
    x /= norms[:, None]
    return x


def _rank_unit(scores: np.ndarray, order: str) -> np.ndarray:
    """Score as a rank percentile in [0, 1], 1 = best (tied scores share their average rank).

    Rank-based so that a score weight means the same for every score and outliers do not matter.
    """
    from scipy.stats import rankdata

    n = len(scores)
    if n == 1:
        return np.ones(1)
    r = rankdata(scores if order == "high" else -scores, method="average")  # 1 = worst
    return (r - 1) / (n - 1)


# ----------------------------------------------------------------------------------------------
# k-center


def kcenter(embeddings, scores, ids, k: int, weight: float = 0.0, order: str = "high",
            candidates: int = 2048, max_batch: int = 512, chunk: int = 8192) -> np.ndarray:
    """Greedy k-center (farthest-first traversal) over cosine geometry, seeded by the best score.

    The first pick is the top-scored row (ties by id); each next pick is the row farthest from
    everything picked so far, where "far" is ``dist * (1 + weight * s)``: ``dist`` is the Euclidean
    distance between L2-normalised embeddings (sqrt(2 - 2 cos)) to the nearest picked row and ``s``
    the row's score as a rank percentile in [0, 1] (1 = best).  ``weight = 0`` is pure k-center
    (a 2-approximation of the minimax cover); ``weight = 1`` lets the best row count twice as far
    as the worst.  Ties (e.g. exact duplicates once everything is covered) go to the better
    score, then the smaller id.  Returns positions in pick order.

    Exact (a test compares it with the textbook loop), but fast: each round takes the
    ``candidates`` rows with the largest values and keeps picking among them, updating only their
    distances, while the best candidate still beats the largest value outside them (which the
    round's picks can only lower); then all rows are updated against the round's picks with one
    chunked matmul, skipping rows whose nearest center is provably too far from the new ones
    (triangle inequality).  Cost: at most n * k * d multiply-adds (unstructured data), far fewer
    on clustered embeddings (the README gives measured times).
    """
    order = _order(order)
    scores = _vector("scores", scores)
    n = len(scores)
    ids = _ids(ids, n)
    k = _budget(k, n)
    w = float(weight)
    if not np.isfinite(w) or w < 0:
        raise DiversityError(f"weight must be a finite number >= 0 (0 = pure k-center), got {weight!r}")
    x_in = np.asarray(embeddings)
    if x_in.ndim != 2 or len(x_in) != n:
        raise DiversityError(f"embeddings must be (rows x dims) with one row per score; got shape "
                             f"{x_in.shape} for {n} scores")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    canon = rank_order(scores, ids, order)  # (n,) canonical order: best first, ties by id
    x = _embeddings(x_in[canon])  # (n, d) unit rows in canonical order
    mult = (1.0 + w * _rank_unit(scores[canon], order)).astype(np.float32)  # (n,)
    picked = _farthest_first(x, mult, k, candidates, max_batch, chunk)
    return canon[picked].astype(np.int64)


def _farthest_first(x: np.ndarray, mult: np.ndarray, k: int, candidates: int, max_batch: int,
                    chunk: int) -> np.ndarray:
    """Farthest-first traversal of unit rows ``x`` (n, d) from row 0; value = dist * mult.

    Argmax ties go to the smallest position (the caller orders rows by preference).
    """
    n = len(x)
    dist = np.full(n, np.inf, dtype=np.float32)  # (n,) distance to the nearest picked row
    near = np.zeros(n, dtype=np.int64)  # (n,) index into `centers` of that row
    taken = np.zeros(n, dtype=bool)
    centers: list[int] = []

    def update(batch: list[int]) -> None:
        """Lower ``dist`` of every row by the new centers ``batch`` (positions)."""
        cb = x[batch]  # (b, d)
        first = len(centers)
        if first == 0:
            rows = np.arange(n)
        else:
            # Triangle inequality: a row x with nearest center a can only get closer to new center c
            # if |a - c| < 2 |x - a|.  First per center (its farthest member), then per row.
            cc = np.sqrt(np.maximum(2 - 2 * (x[centers] @ cb.T), 0))  # (m, b) old-new center distances
            radius = np.zeros(first, dtype=np.float32)  # (m,) farthest member of each center
            np.maximum.at(radius, near, dist)
            live_c = (cc < 2 * radius[:, None] + 1e-5).any(axis=1)  # (m,)
            rows = np.flatnonzero(live_c[near] & (dist > 0))
            if len(rows):
                rows = rows[(cc[near[rows]] < 2 * dist[rows, None] + 1e-5).any(axis=1)]
        centers.extend(batch)
        for s in range(0, len(rows), chunk):
            r = rows[s:s + chunk]  # (c,)
            d = np.sqrt(np.maximum(2 - 2 * (x[r] @ cb.T), 0))  # (c, b)
            j = d.argmin(axis=1)  # (c,)
            dj = d[np.arange(len(r)), j]
            closer = dj < dist[r]
            dist[r[closer]] = dj[closer]
            near[r[closer]] = first + j[closer]
        dist[batch] = 0
        near[batch] = first + np.arange(len(batch))
        taken[batch] = True

    update([0])
    while len(centers) < k:
        value = np.where(taken, -1.0, dist * mult)  # (n,) exact values of the rows not taken
        best = int(np.argmax(value))  # the global argmax: exact, first position on ties
        batch = [best]
        value[best] = -1.0
        m = min(candidates, n - len(centers) - 1)
        limit = min(max_batch, k - len(centers))
        if m > 0 and limit > 1:
            cand = np.sort(np.argpartition(-value, m - 1)[:m])  # (m,) ascending: argmax = first on ties
            rest = np.ones(n, dtype=bool)
            rest[cand] = False
            rest[taken] = False
            rest[best] = False
            tau = value[rest].max() if rest.any() else -1.0  # no row outside `cand` can exceed this
            xc = x[cand]  # (m, d)
            cdist = dist[cand].copy()  # (m,) kept exact as the round's picks accumulate
            cval = value[cand].copy()  # (m,); -1 = taken
            cmult = mult[cand]
            newest = best
            with _one_blas_thread():  # a (m, d) @ (d,) product: threads only add sync cost
                _grow_batch(batch, newest, cand, xc, cdist, cval, cmult, tau, limit, x)
        update(batch)
    return np.asarray(centers[:k], dtype=np.int64)


def _grow_batch(batch: list[int], newest: int, cand, xc, cdist, cval, cmult, tau: float, limit: int, x) -> None:
    """Extend ``batch`` with exact farthest-first picks among the candidates ``cand`` (see kcenter).

    ``cdist``/``cval`` (m,) are the candidates' exact distances/values, updated in place by each
    pick; a pick is exact while its value beats ``tau``, the largest value outside the candidates.
    """
    while True:
        d = np.sqrt(np.maximum(2 - 2 * (xc @ x[newest]), 0))  # (m,) distance to the newest pick
        np.minimum(cdist, d, out=cdist)
        live = cval >= 0
        cval[live] = (cdist * cmult)[live]
        if len(batch) >= limit:
            return
        j = int(np.argmax(cval))
        if not cval[j] > tau:  # a row outside the candidates might be as far: update all first
            return
        newest = int(cand[j])
        cval[j] = -1.0
        batch.append(newest)


_CONTROLLER = None


def _controller():
    """threadpoolctl's controller, built once (it scans the loaded libraries: ~1 ms)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _one_blas_thread():
    """Context: BLAS on one thread (small matrix-vector products on shared cores: 2 threads made
    them ~10x slower under load)."""
    return _controller().limit(limits=1, user_api="blas")


def _single_threaded():
    """Context: BLAS and OpenMP on one thread.  sklearn's k-means on 2 shared cores: 25.6k x 576
    rows, 100 clusters took 89 s wall / 53 s CPU with 2 threads against a busy neighbour and
    11 s / 5.6 s on one thread (OpenMP threads spin while they wait); on an idle machine one
    thread costs at most 2x."""
    return _controller().limit(limits=1)


# ----------------------------------------------------------------------------------------------
# Cluster-balanced top-k


POINTS_PER_CENTROID = 256  # k-means is fitted on at most this many rows per cluster (FAISS's rule)
LLOYD_MAX_WORK = 20_000_000  # fit rows x clusters above which MiniBatchKMeans replaces full Lloyd


def kmeans_labels(embeddings, ids, n_clusters: int, seed: int, minibatch_above: int = 200_000) -> np.ndarray:
    """K-means cluster label per row of L2-normalised embeddings (cosine geometry).

    The centroids are fitted on a seeded sample of at most ``POINTS_PER_CENTROID * n_clusters``
    rows (more rows barely move centroids; FAISS uses the same cap), with sklearn ``KMeans``, or
    ``MiniBatchKMeans`` when the sample has more than ``minibatch_above`` rows or sample rows x
    clusters exceeds ``LLOYD_MAX_WORK`` (full Lloyd on 100k x 576 rows and 100 clusters took
    2.5 minutes on 2 cores).  The fit runs on one thread (see :func:`_single_threaded`).  Every
    row then gets its nearest centroid.  Rows are taken in
    example-id order, so the labels do not depend on the row order; ``n_clusters`` is capped at
    the row count.  Labels are renumbered by cluster size, largest first (ties by smallest id).
    """
    ids = _ids(ids)
    x = _embeddings(embeddings, len(ids))
    n = len(ids)
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise DiversityError(f"n_clusters must be a positive whole number, got {n_clusters!r}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    c = min(int(n_clusters), n)
    if c == 1:
        return np.zeros(n, dtype=np.int64)
    x = x[np.argsort(ids, kind="stable")]  # (n, d) in id order
    m = min(n, POINTS_PER_CENTROID * c)
    fit = x if m == n else x[np.sort(np.random.default_rng(seed).choice(n, m, replace=False))]
    if m > minibatch_above or m * c > LLOYD_MAX_WORK:
        from sklearn.cluster import MiniBatchKMeans

        model = MiniBatchKMeans(n_clusters=c, random_state=seed, n_init=1, batch_size=4096, max_iter=20)
    else:
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=c, random_state=seed, n_init=1, max_iter=100)
    with _single_threaded():
        model.fit(fit)
    raw_by_id = _nearest_centroid(x, model.cluster_centers_.astype(np.float32))  # (n,)
    # Renumber: largest cluster first, ties by the smallest id (rows are in id order).
    uniq, first, counts = np.unique(raw_by_id, return_index=True, return_counts=True)
    rank = np.empty(c, dtype=np.int64)
    rank[uniq[np.lexsort((first, -counts))]] = np.arange(len(uniq))
    raw = np.empty(n, dtype=np.int64)
    raw[np.argsort(ids, kind="stable")] = rank[raw_by_id]
    return raw


def _nearest_centroid(x: np.ndarray, centres: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Index of the nearest (Euclidean) centre for each row of ``x`` (n, d): ``(n,) int64``."""
    half_sq = 0.5 * np.einsum("ij,ij->i", centres, centres)  # (c,)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk):
        # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
        out[s:s + chunk] = (x[s:s + chunk] @ centres.T - half_sq).argmax(axis=1)
    return out


def water_fill(sizes, k: int) -> np.ndarray:
    """How many to take from each group: smallest group first, each gets (budget left) // (groups
    left), the whole group if it is not larger.  Places all of ``k`` when k <= sum(sizes)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros(len(sizes), dtype=np.int64)
    left = int(min(k, sizes.sum()))
    by_size = np.lexsort((np.arange(len(sizes)), sizes))  # smallest first, ties by index
    for i, g in enumerate(by_size):
        share = left // (len(sizes) - i)
        take[g] = min(int(sizes[g]), share)
        left -= take[g]
    return take


def balanced_topk(labels, scores, ids, k: int, order: str = "high") -> np.ndarray:
    """Top-scored rows inside groups ``labels``, with the budget water-filled over the groups
    (:func:`water_fill`).  Returns positions sorted best score first (ties by id)."""
    order = _order(order)
    scores = _vector("scores", scores)
    n = len(scores)
    ids = _ids(ids, n)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DiversityError(f"labels must have one entry per row ({n}), got shape {labels.shape}")
    k = _budget(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    groups, inverse = np.unique(labels, return_inverse=True)
    take = water_fill(np.bincount(inverse, minlength=len(groups)), k)
    picked = []
    for g in np.flatnonzero(take):
        rows = np.flatnonzero(inverse == g)
        picked.append(rows[rank_order(scores[rows], ids[rows], order)[: take[g]]])
    picked = np.concatenate(picked)
    return picked[rank_order(scores[picked], ids[picked], order)].astype(np.int64)


def cluster_balanced(embeddings, scores, ids, k: int, n_clusters: int, seed: int,
                     order: str = "high") -> np.ndarray:
    """K-means the embeddings into ``n_clusters``, spread ``k`` over the clusters smallest first
    (water-filling), and take the top-scored rows inside each.  Positions, best score first.

    Use :func:`kmeans_labels` + :func:`coverage` to report how many clusters a selection touches.
    """
    scores = _vector("scores", scores)
    labels = kmeans_labels(embeddings, ids, n_clusters, seed)
    return balanced_topk(labels, scores, ids, k, order)


def coverage(selected_labels, all_labels) -> float:
    """Share of the pool's clusters (``all_labels``; negative = no cluster, ignored) that the
    selection's labels touch: 1.0 = every cluster has at least one selected example."""
    all_set = {x for x in np.unique(np.asarray(all_labels)).tolist() if not (isinstance(x, (int, float)) and x < 0)}
    if not all_set:
        raise DiversityError("all_labels has no cluster (every label is negative or the array is empty)")
    sel = set(np.unique(np.asarray(selected_labels)).tolist())
    return len(sel & all_set) / len(all_set)


def kcenter_k(order: str) -> Picker:
    """``--diversity kcenter`` as a picker over a domain's rows (their embeddings and scores)."""
    return lambda rows, k, rng: kcenter(rows.embeddings, rows.scores, rows.ids, k, order=order)


def clusters_k(order: str, n_clusters: int, seed: int) -> Picker:
    """``--diversity clusters:N`` as a picker: k-means the rows' embeddings (seeded), water-fill
    ``k`` over the clusters, top-scored inside each."""
    return lambda rows, k, rng: cluster_balanced(rows.embeddings, rows.scores, rows.ids, k, n_clusters, seed, order)


def coverage_report(rows: DomainRows, picked: np.ndarray, n_clusters: int, seed: int, order: str) -> dict:
    """The share of a domain's embedding clusters (k-means, ``n_clusters``) that the ``picked``
    positions touch, beside plain top-k's at the same size: what ``--diversity`` bought."""
    labels = kmeans_labels(rows.embeddings, rows.ids, n_clusters, seed)
    top = rank_order(rows.scores, rows.ids, order)[: len(picked)]
    return {"clusters": int(labels.max()) + 1, "coverage": coverage(labels[picked], labels),
            "top_k_coverage": coverage(labels[top], labels)}

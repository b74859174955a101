"""A 2-D map of the pool for the Explore page: embeddings -> (x, y), cached in the run folder.

* :func:`layout_2d`: L2-normalise (cosine geometry, as :mod:`curation.selection.diversity`), PCA to
  ``pca_dims`` (sklearn), then UMAP (umap-learn) to 2-D when there are at most
  :data:`UMAP_MAX_ROWS` rows, else the first two principal components.  UMAP keeps local
  neighbourhoods (clusters show as islands); PCA-2 is linear and shows only the two largest
  directions of variance, but it costs seconds at 10^6 rows where UMAP costs many minutes.
* :func:`run_layout`: a run's layout from its ``embeddings.npy``, cached atomically in the run
  folder (``map-{method}-s{seed}.parquet``), recomputed when the embeddings change.
* :func:`density_grid` / :func:`cell_means`: a server-side 2-D histogram (and per-cell means of a
  value), so above :data:`POINTS_MAX_ROWS` rows a browser draws a ``bins x bins`` heatmap instead
  of every point.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

# Above this many rows layout_2d uses PCA-2 instead of UMAP (UMAP's time grows to minutes, PCA-2
# stays at seconds; the README gives the measurements).
UMAP_MAX_ROWS = 50_000
POINTS_MAX_ROWS = 50_000  # the Explore page draws every point up to this many rows, a density grid above
METHODS = ("auto", "umap", "pca")
PCA_FIT_ROWS = 200_000  # PCA axes are fitted on at most this many (seeded) rows, then applied to all


class PoolMapError(ValueError):
    """A map cannot be computed from the inputs (the message says what to change)."""


@dataclass
class Layout:
    """2-D coordinates per row and how they were made."""

    xy: np.ndarray  # (n, 2) float32
    method: str  # "umap" | "pca"
    seconds: float
    explained_variance: float  # share of variance in the PCA components used (pca_dims or 2)


def _check(embeddings) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0:
        raise PoolMapError(f"embeddings must be a non-empty 2-D array (rows x dims), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise PoolMapError(f"embeddings must be numeric, got dtype {x.dtype}")
    return x


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows as float32, L2-normalised (zero rows stay zero): ``(n, d)``."""
    x = x.astype(np.float32, copy=True)  # (n, d)
    if not np.isfinite(x).all():
        raise PoolMapError("embeddings contain NaN/inf; recompute or drop those rows")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0] = 1.0
    x /= norms[:, None]
    return x


def pca_project(x: np.ndarray, dims: int, seed: int = 0, fit_rows: int = PCA_FIT_ROWS,
                chunk: int = 50_000) -> tuple[np.ndarray, float]:
    """Project the L2-normalised rows of ``x`` (n, d), any float dtype, on their top ``dims``
    principal axes: ``((n, dims) float32, explained variance share)``.

    The axes come from at most ``fit_rows`` seeded rows (randomized SVD); then rows are normalised
    and projected chunk by chunk, so memory stays ~ the input plus the fit sample (PCA-2 of 10^6 x
    576 float16 rows: +1 GB instead of +3.4 GB with a whole float32 copy).
    """
    from sklearn.decomposition import PCA

    x = _check(x)
    n, d = x.shape
    dims = int(min(dims, d, n))
    rng = np.random.default_rng(seed)
    fit = _unit_rows(x if n <= fit_rows else x[np.sort(rng.choice(n, fit_rows, replace=False))])
    pca = PCA(n_components=dims, svd_solver="randomized" if dims < min(fit.shape) // 2 else "full",
              random_state=seed).fit(fit)
    del fit
    out = np.empty((n, dims), dtype=np.float32)
    comps = pca.components_.astype(np.float32).T  # (d, dims)
    mean = pca.mean_.astype(np.float32)  # (d,)
    for s in range(0, n, chunk):
        out[s:s + chunk] = (_unit_rows(x[s:s + chunk]) - mean) @ comps
    return out, float(pca.explained_variance_ratio_.sum())


def layout_2d(embeddings, method: str = "auto", umap_max_rows: int = UMAP_MAX_ROWS, pca_dims: int = 50,
              seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> Layout:
    """2-D coordinates of the rows of ``embeddings`` (see the module docstring).

    ``method``: ``auto`` (UMAP up to ``umap_max_rows`` rows, else PCA), ``umap`` or ``pca``.
    UMAP runs with ``random_state=seed``: reproducible, but single-threaded (umap-learn's rule).
    """
    if method not in METHODS:
        raise PoolMapError(f"method {method!r}: expected auto, umap or pca")
    t0 = time.perf_counter()
    x = _check(embeddings)
    n = len(x)
    use_umap = method == "umap" or (method == "auto" and n <= umap_max_rows)
    if not use_umap or n < 4:
        xy, var = pca_project(x, 2, seed)
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
        return Layout(xy.astype(np.float32), "pca", time.perf_counter() - t0, var)
    try:
        import umap
    except ImportError:
        raise PoolMapError("method 'umap' needs the umap-learn package (pip install umap-learn); "
                           "or use method='pca'") from None
    reduced, var = pca_project(x, pca_dims, seed)
    model = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist,
                      metric="euclidean", random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # seeded UMAP is single-threaded
        xy = model.fit_transform(reduced)
    return Layout(np.asarray(xy, dtype=np.float32), "umap", time.perf_counter() - t0, var)


def density_grid(x, y, bins: int | tuple[int, int] = 256, ranges=None, weights=None):
    """Counts of points per cell of a regular grid: ``(counts (by, bx) int64, xedges (bx + 1,),
    yedges (by + 1,))``; ``counts[j, i]`` is the cell of y-bin j and x-bin i, the layout
    ``plotly.graph_objects.Heatmap(z=counts, x=x centres, y=y centres)`` expects.

    Same cells as ``numpy.histogram2d(x, y, bins, range)`` (transposed), computed with one
    ``bincount``.  ``ranges`` = ((xmin, xmax), (ymin, ymax)); default: the finite data's extent.
    Non-finite points and points outside ``ranges`` are not counted.  With ``weights`` (one per
    point), the cells hold the float sums of the weights instead of counts.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise PoolMapError(f"x and y must be 1-D arrays of equal length, got shapes {x.shape} and {y.shape}")
    bx, by = (bins, bins) if np.isscalar(bins) else bins
    if int(bx) < 1 or int(by) < 1:
        raise PoolMapError(f"bins must be positive, got {bins!r}")
    bx, by = int(bx), int(by)
    ok = np.isfinite(x) & np.isfinite(y)
    if ranges is None:
        if not ok.any():
            raise PoolMapError("no finite point to grid; pass ranges explicitly")
        ranges = ((x[ok].min(), x[ok].max()), (y[ok].min(), y[ok].max()))
    (x0, x1), (y0, y1) = ranges
    if not (np.isfinite([x0, x1, y0, y1]).all() and x1 >= x0 and y1 >= y0):
        raise PoolMapError(f"ranges must be ((xmin, xmax), (ymin, ymax)) with min <= max, got {ranges!r}")
    if x1 == x0:  # numpy's rule for a degenerate range
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    xedges = np.linspace(x0, x1, bx + 1)
    yedges = np.linspace(y0, y1, by + 1)
    ok &= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    xs, ys = x[ok], y[ok]
    # Bin index as numpy computes it for uniform bins; the right edge belongs to the last bin.
    ix = ((xs - x0) * (bx / (x1 - x0))).astype(np.int64)
    iy = ((ys - y0) * (by / (y1 - y0))).astype(np.int64)
    # Floating-point: correct the index against the exact edges (as histogramdd does).
    ix -= xs < xedges[ix.clip(0, bx)]
    ix += (ix < bx - 1) & (xs >= xedges[(ix + 1).clip(0, bx)])
    iy -= ys < yedges[iy.clip(0, by)]
    iy += (iy < by - 1) & (ys >= yedges[(iy + 1).clip(0, by)])
    ix = ix.clip(0, bx - 1)
    iy = iy.clip(0, by - 1)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[ok]
    counts = np.bincount(iy * bx + ix, weights=w, minlength=bx * by).reshape(by, bx)
    return (counts.astype(np.int64) if w is None else counts), xedges, yedges


def cell_means(x, y, values, bins: int = 128, ranges=None):
    """Mean of ``values`` per :func:`density_grid` cell (NaN where a cell has no finite value):
    ``(means (by, bx), counts (by, bx), xedges, yedges)``; e.g. the mean score per cell, or the
    share of the selection with 0/1 values."""
    x, y, v = (np.asarray(a, dtype=np.float64) for a in (x, y, values))
    counts, xe, ye = density_grid(x, y, bins, ranges)
    ok = np.isfinite(v)
    box = ((xe[0], xe[-1]), (ye[0], ye[-1]))
    n, _, _ = density_grid(x[ok], y[ok], bins, box)
    sums, _, _ = density_grid(x[ok], y[ok], bins, box, weights=v[ok])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sums / np.maximum(n, 1), np.nan), counts, xe, ye


def cache_path(run_dir, method: str = "auto", seed: int = 0):
    from pathlib import Path

    if method not in METHODS:
        raise PoolMapError(f"method {method!r}: expected auto, umap or pca")
    return Path(run_dir) / f"map-{method}-s{int(seed)}.parquet"


def run_layout(run, method: str = "auto", seed: int = 0):
    """The run's 2-D map: a DataFrame ``example_id, x, y`` (examples with an embedding), with
    ``attrs["method"]`` (umap or pca).  Computed from ``embeddings.npy`` on first use and cached
    atomically in the run folder per method and seed; a cache older than the embeddings is
    recomputed.  ``run``: a :class:`curation.runs.folder.Run` or its folder."""
    import pandas as pd
    import pyarrow.parquet as pq

    from curation.atomic import write_parquet
    from curation.runs.folder import Run

    run = run if isinstance(run, Run) else Run(run)
    path = cache_path(run.path, method, seed)
    emb_file = run.path / Run.EMBEDDINGS
    if path.is_file() and (not emb_file.is_file() or path.stat().st_mtime_ns >= emb_file.stat().st_mtime_ns):
        t = pq.read_table(path)
        out = t.to_pandas()
        out.attrs["method"] = (t.schema.metadata or {}).get(b"method", b"").decode() or method
        return out
    got = run.embeddings()
    if got is None:
        raise PoolMapError(f"{run.path} has no embeddings.npy; score the data again into a new folder for a map")
    ids, matrix = got
    ok = np.isfinite(matrix).all(axis=1) if matrix.size else np.zeros(len(ids), dtype=bool)
    if not ok.any():
        raise PoolMapError(f"{run.path}: no example has an embedding (none has an assistant token)")
    lay = layout_2d(matrix[ok], method=method, seed=seed)
    out = pd.DataFrame({"example_id": np.asarray(ids, dtype=object)[ok], "x": lay.xy[:, 0], "y": lay.xy[:, 1]})
    import pyarrow as pa

    table = pa.Table.from_pandas(out, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"method": lay.method.encode(),
                                           b"seconds": f"{lay.seconds:.3f}".encode()})
    write_parquet(path, table)
    out.attrs["method"] = lay.method
    return out


def place_nearby(layout, run, vectors: np.ndarray, k: int = 5) -> np.ndarray:
    """2-D positions ``(m, 2)`` for examples outside the pool (targets) in a pool's ``layout``: the
    mean position of each one's ``k`` nearest pool examples by cosine of the same embedding (the
    layout is not refitted, so the pool's map stays where it was)."""
    ids, matrix = run.embeddings()
    row_of = {i: j for j, i in enumerate(ids)}
    keep = [row_of[i] for i in layout["example_id"]]
    pool = _unit_rows(np.nan_to_num(matrix[keep].astype(np.float32)))  # (n, d) in the layout's row order
    v = _unit_rows(np.nan_to_num(np.asarray(vectors, dtype=np.float32)))  # (m, d)
    k = max(1, min(k, len(pool)))
    near = np.argpartition(-(v @ pool.T), k - 1, axis=1)[:, :k]  # (m, k): the k most similar pool rows
    xy = layout[["x", "y"]].to_numpy(dtype=np.float64)
    return xy[near].mean(axis=1)

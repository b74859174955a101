"""Pool map: PCA/UMAP layout, server-side density grid and cell means, the run layout cache."""

from __future__ import annotations

import numpy as np
import pytest

from curation.views.pool_map import PoolMapError, cell_means, density_grid, layout_2d, pca_project, run_layout


def planted(n_clusters: int, per: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)) * 3
    labels = np.repeat(np.arange(n_clusters), per)
    return (centres[labels] + 0.3 * rng.standard_normal((len(labels), d))).astype(np.float16), labels


def knn_purity(xy: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of each point's k nearest 2-D neighbours that carry its label."""
    from sklearn.neighbors import NearestNeighbors

    _, nb = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    return float((labels[nb[:, 1:]] == labels[:, None]).mean())


# ----------------------------------------------------------------------------------------------
# Density grid


def test_density_grid_equals_histogram2d():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(50_000), rng.standard_normal(50_000) * 3 + 1
    edges = np.linspace(-2, 2, 65)
    x[:200] = edges[rng.integers(0, 65, 200)]  # points exactly on bin edges
    x[200:210] = x.max()
    for ranges in (None, ((-2, 2), (-5, 5))):
        counts, xe, ye = density_grid(x, y, 64, ranges)
        h, hx, hy = np.histogram2d(x, y, 64, range=ranges)
        assert counts.shape == (64, 64) and (counts == h.T).all()
        assert np.allclose(xe, hx) and np.allclose(ye, hy)
    counts, _, _ = density_grid(x, y, (10, 20))
    assert counts.shape == (20, 10) and counts.sum() == len(x)


def test_density_grid_drops_nan_and_handles_degenerate_ranges():
    x = np.array([0.0, 1.0, np.nan, 2.0, np.inf])
    y = np.array([1.0, 1.0, 1.0, np.nan, 1.0])
    counts, xe, ye = density_grid(x, y, 4)
    assert counts.sum() == 2 and ye[0] == 0.5 and ye[-1] == 1.5  # all y equal: widened like numpy
    with pytest.raises(PoolMapError, match="no finite point"):
        density_grid([np.nan], [np.nan])
    with pytest.raises(PoolMapError, match="equal length"):
        density_grid([1, 2], [1])
    with pytest.raises(PoolMapError, match="ranges"):
        density_grid([1, 2], [1, 2], 4, ((2, 1), (0, 1)))


def test_cell_means_are_per_cell_averages():
    x = np.array([0.1, 0.2, 0.9, 0.9, 0.5])
    y = np.array([0.1, 0.1, 0.9, 0.9, 0.5])
    v = np.array([1.0, 3.0, 10.0, np.nan, 0.0])
    means, counts, _, _ = cell_means(x, y, v, bins=2, ranges=((0, 1), (0, 1)))
    assert counts.tolist() == [[2, 0], [0, 3]]  # (y-bin, x-bin); 0.5 falls in the upper bins
    assert means[0, 0] == 2.0 and means[1, 1] == 5.0 and np.isnan(means[0, 1])  # NaN values skipped
    sums, _, _ = density_grid(x, y, 2, ((0, 1), (0, 1)), weights=np.nan_to_num(v))
    assert sums.tolist() == [[4.0, 0.0], [0.0, 10.0]]


# ----------------------------------------------------------------------------------------------
# Layout


def test_pca_layout_above_the_umap_threshold_keeps_clusters_apart():
    emb, labels = planted(6, 500, 64)
    lay = layout_2d(emb, umap_max_rows=1000)
    assert lay.method == "pca" and lay.xy.shape == (3000, 2) and lay.xy.dtype == np.float32
    assert 0 < lay.explained_variance <= 1
    assert knn_purity(lay.xy, labels) > 0.6  # two linear axes separate most of 6 clusters


def test_pca_fitted_on_a_sample_matches_the_full_fit():
    emb, _ = planted(8, 400, 48, seed=1)
    x = emb.astype(np.float32)
    full, var_full = pca_project(x, 2, fit_rows=10_000)
    sampled, var_s = pca_project(x, 2, fit_rows=800)
    assert abs(var_full - var_s) < 0.05
    for c in range(2):
        assert abs(np.corrcoef(full[:, c], sampled[:, c])[0, 1]) > 0.98


def test_layout_validation():
    with pytest.raises(PoolMapError, match="2-D"):
        layout_2d(np.zeros(5))
    with pytest.raises(PoolMapError, match="NaN"):
        layout_2d(np.full((5, 3), np.nan))
    with pytest.raises(PoolMapError, match="method"):
        layout_2d(np.zeros((5, 3)), method="tsne")
    assert layout_2d(np.eye(3), method="umap").method == "pca"  # too few rows for UMAP


@pytest.mark.integration  # numba compiles UMAP on first use: ~20-30 s on 2 cores
def test_umap_layout_separates_planted_clusters_and_is_seeded():
    pytest.importorskip("umap", reason="umap-learn is not installed")
    emb, labels = planted(6, 100, 64, seed=2)
    a = layout_2d(emb, method="auto", seed=3)
    assert a.method == "umap" and a.xy.shape == (600, 2)
    assert knn_purity(a.xy, labels) > 0.95
    assert np.array_equal(a.xy, layout_2d(emb, seed=3).xy)


def test_run_layout_is_cached_in_the_run_folder(tmp_path):
    from curation.views.pool_map import cache_path
    from curation.runs.folder import Run

    emb, labels = planted(4, 30, 16, seed=4)
    ids = [f"ex{i:04d}" for i in range(len(labels))]
    emb[5] = np.nan  # an example without assistant tokens: no point on the map
    run = Run(tmp_path / "run")
    run.path.mkdir()
    run.write_embeddings(ids, {i: {"embedding": None if j == 5 else emb[j].astype(np.float16).tobytes()}
                               for j, i in enumerate(ids)})
    lay = run_layout(run.path, method="pca")
    assert lay.attrs["method"] == "pca" and len(lay) == len(ids) - 1 and ids[5] not in set(lay["example_id"])
    assert cache_path(run.path, "pca").is_file()
    again = run_layout(run.path, method="pca")
    assert again.attrs["method"] == "pca" and again.equals(lay)
    assert knn_purity(lay[["x", "y"]].to_numpy(), np.delete(labels, 5)) > 0.9
    (run.path / "embeddings.npy").unlink()
    assert run_layout(run.path, method="pca").equals(lay)  # the cache answers
    cache_path(run.path, "pca").unlink()
    with pytest.raises(PoolMapError, match="score the data again into a new folder"):
        run_layout(run.path, method="pca")

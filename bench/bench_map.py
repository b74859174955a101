"""Pool map benchmark: a synthetic run folder of N examples (default 1,000,000) with 576-d float16
embeddings in 100 clusters; times the layout (curation.views.pool_map.run_layout: PCA above the UMAP
threshold), its cached re-read, and what the Explore page computes per redraw above the points
threshold (the 128 x 128 density grid and the per-cell mean of a score, and the plotly heatmap).

    .venv/bin/python bench/bench_map.py [--rows 1000000] [--dims 576] [--method auto|pca|umap]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=576)
    ap.add_argument("--method", default="auto", choices=("auto", "pca", "umap"))
    args = ap.parse_args()

    import pandas as pd
    import plotly.graph_objects as go

    from curation.views import pool_map
    from curation.runs.folder import Run

    rng = np.random.default_rng(0)
    n, d = args.rows, args.dims
    centres = rng.standard_normal((100, d)).astype(np.float32)
    ids = [f"{i:016x}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-map-") as tmp:
        run = Run(Path(tmp) / "run")
        run.path.mkdir()
        emb = np.empty((n, d), dtype=np.float16)
        for s in range(0, n, 100_000):  # clusters + noise, written in blocks to bound memory
            k = min(100_000, n - s)
            emb[s:s + k] = centres[rng.integers(0, 100, k)] + 0.5 * rng.standard_normal((k, d), dtype=np.float32)
        with open(run.path / Run.EMBEDDINGS, "wb") as f:
            np.save(f, emb)
        pd.DataFrame({"example_id": ids}).to_parquet(run.path / Run.EMBEDDING_IDS, index=False)
        del emb
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        t0 = time.perf_counter()
        lay = pool_map.run_layout(run, args.method)
        t_layout = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        t0 = time.perf_counter()
        lay = pool_map.run_layout(run, args.method)
        t_cached = time.perf_counter() - t0
        score = rng.standard_normal(len(lay))
        t0 = time.perf_counter()
        counts, xe, ye = pool_map.density_grid(lay["x"], lay["y"], 128)
        t_density = time.perf_counter() - t0
        t0 = time.perf_counter()
        means, counts, xe, ye = pool_map.cell_means(lay["x"], lay["y"], score, bins=128)
        t_means = time.perf_counter() - t0
        t0 = time.perf_counter()
        spec = go.Figure(go.Heatmap(z=means, x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2,
                                    customdata=counts)).to_json()
        t_fig = time.perf_counter() - t0
    print(json.dumps({
        "rows": n, "dims": d, "method": lay.attrs["method"], "layout_s": round(t_layout, 2),
        "cached_read_s": round(t_cached, 3), "density_grid_s": round(t_density, 3),
        "cell_means_s": round(t_means, 3), "heatmap_figure_s": round(t_fig, 3), "figure_kb": len(spec) // 1024,
        "peak_rss_gb_before_layout": round(rss0, 2), "peak_rss_gb": round(rss1, 2),
    }))


if __name__ == "__main__":
    main()

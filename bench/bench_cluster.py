"""S2L clustering benchmark: 1,000,000 synthetic loss trajectories of 12 points into 100 clusters.

The target is under 2 minutes on a 2-core machine.  Trajectories are drawn from 100 decay shapes
(start loss, floor, speed) plus noise, so the script also reports how well the clusters recover
the shapes (adjusted Rand index) and the spread of cluster sizes.  Run it under the heavy-work lock:

    flock /tmp/heavy.lock .venv/bin/python bench/bench_cluster.py [--rows 1000000] [--points 12]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic(n: int, points: int, shapes: int = 100, seed: int = 0):
    """``n`` trajectories L_k = floor + (start - floor) * exp(-speed * k / K) + noise."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.5, 3.0, shapes)
    floor = start * rng.uniform(0.1, 0.9, shapes)
    speed = rng.uniform(0.5, 6.0, shapes)
    truth = rng.integers(0, shapes, n)
    k = np.linspace(0, 1, points)
    X = floor[truth, None] + (start - floor)[truth, None] * np.exp(-speed[truth, None] * k[None, :])
    X += rng.normal(0, 0.05, X.shape)
    return X, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--points", type=int, default=12)
    ap.add_argument("--clusters", type=int, default=100)
    args = ap.parse_args()

    from sklearn.metrics import adjusted_rand_score

    from curation.runs.formulas import s2l_clusters

    X, truth = synthetic(args.rows, args.points)
    t = time.perf_counter()
    labels = s2l_clusters(X, n_clusters=args.clusters, seed=0)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    again = s2l_clusters(X, n_clusters=args.clusters, seed=0)
    seconds_2 = time.perf_counter() - t
    sizes = np.bincount(labels)
    result = {
        "rows": args.rows, "points": args.points, "clusters": int(len(sizes)),
        "seconds": round(seconds, 2), "seconds_second_run": round(seconds_2, 2),
        "deterministic": bool((labels == again).all()),
        "adjusted_rand_vs_shapes": round(float(adjusted_rand_score(truth, labels)), 4),
        "cluster_size_min_median_max": [int(sizes.min()), int(np.median(sizes)), int(sizes.max())],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "target_s": 120, "ok": seconds < 120,
    }
    print(f"clustered {args.rows:,} x {args.points} trajectories into {len(sizes)} clusters in "
          f"{seconds:.1f}s (second run {seconds_2:.1f}s; target < 120s: {'ok' if seconds < 120 else 'MISSED'})")
    print(f"deterministic: {result['deterministic']}; ARI vs the 100 generating shapes: "
          f"{result['adjusted_rand_vs_shapes']}; sizes min/median/max {result['cluster_size_min_median_max']}; "
          f"peak RSS {result['peak_rss_mb']} MB")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cluster.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

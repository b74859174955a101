"""Ray benchmark: the default pool scored by the local engine and by Ray with 1 and 2 workers.

Each phase is a real ``run_score`` (the CLI's code path) in its own process, with a fresh score
cache, on the embedded default pool (workspace/data, ``--limit`` rows of each source), small
chunks so there are many of them.  Printed per phase: the scoring wall time, Ray's start-up (the
instance, then the actors' model loading until the first chunk comes back), the steady time per
chunk (first to last committed chunk), the per-chunk overhead of Ray against the local scorer
with the same threads, and the largest loss difference against the local table.

    python bench/bench_ray.py [--limit 60] [--chunk-examples 8] [--phases local-1,ray-1,ray-2,local-2]

``local-1`` is the local engine on one torch thread (what one Ray worker gets here), ``local-2``
on two; ``ray-N`` is N workers of one thread each.  On a 2-core machine expect no speed-up from 2
workers over local-2: the point is the overhead per chunk and that throughput follows the workers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def phase(name: str, limit: int, chunk_examples: int, out: Path) -> dict:
    import os

    import torch

    from curation.runs.score import ScoreConfig, run_score

    engine, n = name.split("-")
    torch.set_num_threads(int(n) if engine == "local" else 1)
    ticks: list[tuple[float, int]] = []
    first: dict = {}

    def progress(**p) -> None:
        if p.get("phase") != "scoring":
            if not ticks:
                first["before_scoring"] = time.time()  # the last moment of tokenising: the engine opens next
            return
        if p.get("committed") and (not ticks or p["committed"] != ticks[-1][1]):
            ticks.append((time.time(), int(p["committed"])))  # one tick per committed chunk

    ws = ROOT / "workspace"
    cfg = ScoreConfig(sources=[f"chat={ws / 'data' / 'chat.jsonl'}", f"math={ws / 'data' / 'math.jsonl'}"],
                      model="default", limit=limit, chunk_examples=chunk_examples, out=str(out / name),
                      cache=str(out / f"cache-{name}"), device="cpu", dtype="float32",
                      **({"engine": "ray", "workers": int(n)} if engine == "ray" else {}))
    t0 = time.time()
    run_score(cfg, progress)
    wall = time.time() - t0
    meta = json.loads((out / name / "run.json").read_text())
    t_start = first["before_scoring"]
    done_ticks = ticks
    steady = ((done_ticks[-1][0] - done_ticks[0][0]) / (len(done_ticks) - 1)) if len(done_ticks) > 1 else None
    return {"phase": name, "wall_s": wall, "score_s": meta["timings_s"]["score"],
            "startup_s": done_ticks[0][0] - t_start if done_ticks else None,  # Ray: instance + actors + first chunk
            "steady_chunk_s": steady, "chunks": len(done_ticks), "threads": os.environ.get("OMP_NUM_THREADS")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=60, help="records of each default source")
    ap.add_argument("--chunk-examples", type=int, default=8, help="examples per chunk (many chunks: the overhead shows)")
    ap.add_argument("--phases", default="local-1,ray-1,ray-2,local-2")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.limit, args.chunk_examples, Path(args.tmp))))
        return

    import numpy as np
    import pandas as pd

    res = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for name in args.phases.split(","):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            env = {**__import__("os").environ, "OMP_NUM_THREADS": name.split("-")[1] if name.startswith("local") else "1"}
            out = subprocess.run([sys.executable, __file__, "--phase", name, "--limit", str(args.limit),
                                  "--chunk-examples", str(args.chunk_examples), "--tmp", tmp],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            res[name] = json.loads(out.stdout.strip().splitlines()[-1])
        base = next((n for n in res if n.startswith("local")), None)
        table = {n: pd.read_parquet(Path(tmp) / n / "scores.parquet") for n in res}
        tokens = int(next(iter(table.values()))["n_tokens_full"].sum())
        for n, t in table.items():
            r = res[n]
            r["tokens_per_s"] = tokens / r["score_s"]
            if base:
                ok = (t["example_id"].tolist() == table[base]["example_id"].tolist())
                r["same_rows"] = ok
                r["max_loss_diff"] = float(np.nanmax(np.abs(t["loss"].to_numpy() - table[base]["loss"].to_numpy()))) \
                    if ok else None
            r["examples"] = len(t)
    any_phase = res[base or next(iter(res))]
    print(f"\ndata: default pool, first {args.limit} records per source: {any_phase['examples']} examples, "
          f"{tokens} tokens, {args.chunk_examples} examples per chunk ({any_phase['chunks']} chunks)\n")
    print(f"{'phase':<9}{'score s':>9}{'tokens/s':>10}{'start-up s':>12}{'s/chunk':>9}{'overhead ms/chunk':>19}"
          f"{'max |dloss|':>13}")
    ref = res.get("local-1")
    for n, r in res.items():
        over = ""
        if n.startswith("ray") and ref and r["steady_chunk_s"] and ref["steady_chunk_s"]:
            # Per worker: N workers return N chunks per steady period, so the cost per chunk is N x.
            per = r["steady_chunk_s"] * int(n.split("-")[1]) - ref["steady_chunk_s"]
            r["overhead_ms_per_chunk"] = 1000 * per
            over = f"{1000 * per:.0f}"
        print(f"{n:<9}{r['score_s']:>9.1f}{r.get('tokens_per_s', 0):>10.1f}{r['startup_s']:>12.1f}"
              f"{r['steady_chunk_s'] or 0:>9.2f}{over:>19}{r.get('max_loss_diff', float('nan')):>13.1e}")
    print("\nstart-up: from the scoring phase to the first committed chunk (Ray: the instance, the actors "
          "loading the model, one chunk). overhead: a Ray worker's steady time per chunk minus local-1's "
          "(negative = within noise).")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_ray.json").write_text(json.dumps({"args": vars(args), "tokens": tokens, **res}, indent=2))


if __name__ == "__main__":
    main()

"""Mix-study benchmark: the default pool's mix study, locally and with its trainings as Ray tasks.

Each phase is a real ``run_mix`` (the CLI's code path) in its own process with an empty score cache
(so nothing is reused between phases), on a score run of the embedded default pool.  Printed per
phase: the study's wall time, the time until the last training was committed, the trainings per
hour, the speed-up over the local phase, the largest difference of the measured losses against
the local phase, and per eval set the fit's leave-one-mix-out error beside linear interpolation's,
the spread of the measured losses across the mixes, and the recommended mix.

    python bench/bench_mix.py [--run RUN_DIR] [--phases local,ray-2] [--budget 10%] [--design 5] [--seeds 2]
    python bench/bench_mix.py --report MIX_DIR      # the same numbers for a study that ran elsewhere

Without ``--run`` the pool is scored first (its time is not part of a phase).  ``local`` trains one
model after another on every core; ``ray-N`` runs N trainings side by side, each a Ray task with
one core.  The done measurement of the mix issue takes about 2 x 10 trainings: hours on 2 CPU cores.
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


def score_default_pool(out: Path) -> Path:
    from curation.runs.score import ScoreConfig, run_score

    ws = ROOT / "workspace"
    return run_score(ScoreConfig(sources=[f"chat={ws / 'data' / 'chat.jsonl'}", f"math={ws / 'data' / 'math.jsonl'}"],
                                 out=str(out), cache=str(out.parent / "cache-score"), device="cpu", dtype="float32"))


def phase(name: str, run: str, args, tmp: Path) -> dict:
    from curation.validation.mix import MixConfig, run_mix

    ws = ROOT / "workspace"
    engine = {"engine": "ray", "workers": int(name.split("-")[1])} if name.startswith("ray") else {}
    cfg = MixConfig(run=run, out=str(tmp / name), cache=str(tmp / f"cache-{name}"), budget=args.budget,
                    design=args.design, seeds=args.seeds, epochs=args.epochs, device="cpu", dtype="float32",
                    eval={"chat": str(ws / "eval" / "chat.jsonl"), "math": str(ws / "eval" / "math.jsonl")}, **engine)
    t0 = time.time()
    out = run_mix(cfg)
    return {"phase": name, "wall_s": time.time() - t0, "dir": str(out)}


def summary(study: Path) -> dict:
    rep = json.loads((study / "report.json").read_text())
    n = len(rep["points"]) * rep["config"]["seeds"]
    return {"trainings": n, "study_s": rep["seconds"], "training_s": rep["training_seconds"],
            "fit": {e: {"law_mae": f["loo"]["law_mae"], "linear_mae": f["loo"]["linear_mae"], "spread": f["spread"],
                        "seed_sd": f["seed_sd"], "law": f["law"]} for e, f in rep["fit"].items()},
            "recommended": rep["recommended"]["mix"], "predicted": rep["recommended"]["predicted"],
            "natural": rep["natural"], "at_natural": rep["at_natural"], "vs_natural": rep.get("vs_natural", {})}


def print_study(name: str, s: dict) -> None:
    print(f"\n{name}: {s['trainings']} trainings, study {s['study_s'] / 60:.1f} min "
          f"(trainings done after {s['training_s'] / 60:.1f} min)")
    for e, f in s["fit"].items():
        t = ", ".join(f"t_{d} {v:+.3f}" for d, v in f["law"]["t"].items())
        law = "n/a" if f["law_mae"] is None else f"{f['law_mae']:.4f}"
        lin = "n/a" if f["linear_mae"] is None else f"{f['linear_mae']:.4f}"
        print(f"  {e}: law c {f['law']['c']:.4f} k {f['law']['k']:+.4f} {t}; leave-one-out error law {law} vs linear "
              f"{lin} nats; spread across mixes {f['spread']:.4f}; seed sd {f['seed_sd'] or 0:.4f}")
    rec = ", ".join(f"{d} {v:.3f}" for d, v in s["recommended"].items())
    pred = ", ".join(f"{e} {v['value']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}]" for e, v in s["predicted"].items())
    nat = ", ".join(f"{e} {v['value']:.4f}" for e, v in s["at_natural"].items())
    print(f"  recommended mix {rec}: predicted {pred}; at the natural mix {nat}")
    if s["vs_natural"]:
        print("  recommended - natural, paired: " + ", ".join(
            f"{e} {v['value']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]" for e, v in s["vs_natural"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished score run of the default pool (default: score one first)")
    ap.add_argument("--phases", default="local,ray-2")
    ap.add_argument("--budget", default="10%")
    ap.add_argument("--design", default="5")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--report", help="print the numbers of this finished study and stop")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        print_study(Path(args.report).name, summary(Path(args.report)))
        return
    if args.phase:
        print(json.dumps(phase(args.phase, args.run, args, Path(args.tmp))))
        return

    import numpy as np
    import pandas as pd

    tmp = Path(tempfile.mkdtemp(prefix="bench-mix-"))
    run = args.run
    if run is None:
        t0 = time.time()
        run = str(score_default_pool(tmp / "run"))
        print(f"scored the default pool in {time.time() - t0:.0f} s -> {run}")
    results = []
    for name in args.phases.split(","):
        cmd = [sys.executable, __file__, "--phase", name, "--run", run, "--tmp", str(tmp), "--budget", args.budget,
               "--design", args.design, "--seeds", str(args.seeds), "--epochs", str(args.epochs)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"phase {name}: {results[-1]['wall_s']:.0f} s", flush=True)
    base = next((r for r in results if r["phase"] == "local"), results[0])
    ref = pd.read_parquet(Path(base["dir"]) / "results.parquet").sort_values(["candidate", "seed", "example_id"])
    print(f"\n{'phase':<8} {'wall min':>9} {'trainings/h':>12} {'speed-up':>9} {'max |NLL diff| vs ' + base['phase']:>24}")
    for r in results:
        s = summary(Path(r["dir"]))
        got = pd.read_parquet(Path(r["dir"]) / "results.parquet").sort_values(["candidate", "seed", "example_id"])
        diff = float(np.abs(got["nll"].to_numpy() - ref["nll"].to_numpy()).max())
        print(f"{r['phase']:<8} {r['wall_s'] / 60:>9.1f} {s['trainings'] / (s['training_s'] / 3600):>12.2f} "
              f"{base['wall_s'] / r['wall_s']:>8.2f}x {diff:>24.2e}")
    for r in results:
        print_study(r["phase"], summary(Path(r["dir"])))


if __name__ == "__main__":
    main()

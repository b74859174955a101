"""How often validate's verdicts are right, by simulation: fixed seeds and seeds until decided.

Two arms ("sel" vs "random"), ``n_ex`` eval examples with a shared difficulty; each (arm, seed) a
training-luck offset of sd ``sd_seed`` (with correlation ``rho`` between the arms at one seed: coupled
draws share part of it); each (arm, seed, example) noise of sd ``sd_ex``; ``delta`` is the true
difference sel - random in nats (positive: sel is worse).  Each trial is one domain of one table, so one
report per look runs them all.  For true differences 0, M/2, M and 2M (M: the equivalence margin) it
prints the share of trials called better / worse / equivalent / undecided and the seeds per arm used,
for a fixed number of seeds (2..N, one look at 95%) and for ``--seeds auto --max-seeds N``.

Errors to check: at delta = 0, better + worse at most 5% (each side 2.5%); at delta > 0, "better" at
most 2.5%; at delta >= M, "equivalent" at most 2.5%.

    OMP_NUM_THREADS=1 python bench/verdicts_sim.py [--trials 400] [--max-seeds 8] [--spending obrien-fleming]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curation.validation.sequential import SPENDING, SeedPlan, sequential_report  # noqa: E402
from curation.validation.verdicts import DEFAULT_MARGIN, VERDICTS  # noqa: E402


def table(rng, delta: float, trials: int, seeds: int, sd_seed: float, sd_ex: float, n_ex: int, rho: float):
    """The results of ``trials`` simulated validations (one domain each) with ``seeds`` seeds per arm."""
    parts = []
    for i in range(trials):
        ids = [f"e{j}" for j in range(n_ex)]
        difficulty = rng.normal(1.6, 0.5, n_ex)
        ntok = np.maximum(5, rng.lognormal(np.log(150), 0.7, n_ex)).round()
        shared = rng.normal(0, sd_seed, seeds)  # the part of a seed's luck both arms share (coupled draws)
        for arm in ("sel", "random"):
            own = rng.normal(0, sd_seed, seeds)
            for s in range(seeds):
                luck = np.sqrt(rho) * shared[s] + np.sqrt(1 - rho) * own[s]
                nll = difficulty + luck + rng.normal(0, sd_ex, n_ex) + (delta if arm == "sel" else 0.0)
                parts.append(pd.DataFrame(dict(candidate=arm, seed=s, domain=f"t{i:04d}", example_id=ids, nll=nll,
                                               n_tokens=ntok)))
    return pd.concat(parts, ignore_index=True)


def rates(rep: dict) -> dict:
    comps = rep["comparisons"]
    out = {v: sum(c["verdict"] == v for c in comps) / len(comps) for v in VERDICTS}
    used = [c["decided_at"] or rep["seed_plan"]["max_seeds"] for c in comps]
    out["seeds"] = float(np.mean(used))
    out["detectable"] = float(np.median([c["detectable"] for c in comps]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--max-seeds", type=int, default=8)
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    ap.add_argument("--spending", default="obrien-fleming", choices=SPENDING)
    ap.add_argument("--sd-seed", type=float, default=0.005, help="sd of a training's luck (nats)")
    ap.add_argument("--sd-ex", type=float, default=0.05, help="sd of an eval example's noise per training (nats)")
    ap.add_argument("--n-ex", type=int, default=100, help="eval examples")
    ap.add_argument("--rho", type=float, default=0.0, help="correlation of the arms' luck at one seed")
    ap.add_argument("--fixed", default="2,3,5,8", help="fixed seed counts to simulate")
    args = ap.parse_args()
    m, n_max = args.margin, args.max_seeds
    print(f"margin {m} nats; sd_seed {args.sd_seed}, sd_ex {args.sd_ex}, {args.n_ex} eval examples, rho {args.rho}; "
          f"{args.trials} trials per cell; seeds auto: looks at {SeedPlan(n_max, auto=True).looks}, "
          f"{args.spending} spending")
    print(f"{'delta':>7} {'seeds':>9} | {'better':>7} {'worse':>7} {'equiv':>7} {'undec':>7} | "
          f"{'seeds used':>10} {'detectable':>10}")
    t0 = time.time()
    for k, delta in enumerate((0.0, m / 2, m, 2 * m)):
        rng = np.random.default_rng([2026, k])
        results = table(rng, delta, args.trials, n_max, args.sd_seed, args.sd_ex, args.n_ex, args.rho)
        plans = [(str(s), SeedPlan(s)) for s in map(int, args.fixed.split(","))]
        plans.append((f"auto<={n_max}", SeedPlan(n_max, auto=True, spending=args.spending)))
        for name, plan in plans:
            sub = results if plan.auto else results[results["seed"] < plan.max_seeds]
            r = rates(sequential_report(sub, plan, baselines=("random",), n_boot=1000, margin=m))
            print(f"{delta:>7.3f} {name:>9} | {r['better']:>7.3f} {r['worse']:>7.3f} {r['equivalent']:>7.3f} "
                  f"{r['undecided']:>7.3f} | {r['seeds']:>10.2f} {r['detectable']:>10.4f}", flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()

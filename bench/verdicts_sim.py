"""False-positive rate and power of curation.validation.verdicts' intervals on simulated validate results.

Two arms ("sel" vs "random"), each eval example has a shared difficulty; each (arm, seed) a
training-luck offset of sd ``sds``; each (arm, seed, example) noise of sd ``sd_ex``; ``shift`` is
the true effect of "sel".  Each trial is one domain of one table, so one report runs them all.

    OMP_NUM_THREADS=1 python bench/verdicts_sim.py [trials]     # 400 trials: ~5 minutes on 2 busy cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curation.validation.verdicts import build_report  # noqa: E402


def table(rng, sds, shift=0.0, trials=200, seeds=(3, 3), sd_ex=0.08, n_ex=300):
    parts = []
    for i in range(trials):
        ids = [f"e{j}" for j in range(n_ex)]
        difficulty = rng.normal(1.6, 0.5, n_ex)
        ntok = np.maximum(5, rng.lognormal(np.log(150), 0.7, n_ex)).round()
        for arm, sd, n_seeds in zip(("sel", "random"), sds, seeds):
            for s in range(n_seeds):
                nll = difficulty + rng.normal(0, sd) + rng.normal(0, sd_ex, n_ex) + (shift if arm == "sel" else 0)
                parts.append(pd.DataFrame(dict(candidate=arm, seed=s, domain=f"t{i}", example_id=ids,
                                               nll=nll, n_tokens=ntok)))
    return pd.concat(parts, ignore_index=True)


def rate(t, method):
    comps = build_report(t, n_boot=1000, method=method)["comparisons"]
    return sum(c["verdict"] != "none" for c in comps) / len(comps)


SCENARIOS = [
    dict(sds=(0, 0)), dict(sds=(0.01, 0.01)), dict(sds=(0.02, 0.02)), dict(sds=(0.04, 0.04)),
    dict(sds=(0.005, 0.03)), dict(sds=(0.01, 0.03)), dict(sds=(0.02, 0.02), seeds=(2, 2)),
    dict(sds=(0.02, 0.02), seeds=(5, 5)), dict(sds=(0.02, 0.02), seeds=(1, 3)),
    dict(sds=(0.02, 0.02), sd_ex=0.15),
    # power
    dict(sds=(0.02, 0.02), shift=-0.03), dict(sds=(0.02, 0.02), shift=-0.05),
    dict(sds=(0.02, 0.02), shift=-0.08), dict(sds=(0.005, 0.03), shift=-0.05),
    dict(sds=(0.02, 0.02), shift=-0.05, seeds=(5, 5)),
]

if __name__ == "__main__":
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    rng = np.random.default_rng(2024)
    print(f"share of {trials} trials called different (false positives when shift=0, power otherwise)")
    for kw in SCENARIOS:
        t0 = time.time()
        t = table(rng, trials=trials, **kw)
        print(kw, {m: rate(t, m) for m in ("hybrid-t", "bootstrap")}, f"{time.time() - t0:.0f}s", flush=True)

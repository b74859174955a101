"""Validation benchmark: the default pool, a 10% selection, baselines random and random-tokens,
3 seeds, on this machine; wall time per phase and in total, peak RSS, and the verdicts.

    .venv/bin/python bench/bench_validate.py [--run RUN_DIR] [--method loss|davir|s2l] [--threads N]

Without ``--run`` it scores the embedded default pool with the default model first (a plain-loss
run; the score cache makes a repeat instant) and selects by ``loss``; with the folder of a learn run
it can select by ``davir`` or ``s2l``.  The held-out eval sets are the default pool's
(``make setup`` writes them).  Results go to bench/results/validate-<method>/ and the numbers are
printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished score or learn run of the default pool (default: score it now)")
    ap.add_argument("--method", default=None, help="selection method (default: davir for a learn run, else loss)")
    ap.add_argument("--budget", default="10%")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--baselines", default="random,random-tokens")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--workspace", default=str(OUT / "validate-ws"), help="where the default pool is written")
    args = ap.parse_args()

    import torch

    from curation.data.default_data import prepare_default_data
    from curation.runs.folder import Run
    from curation.runs.score import ScoreConfig, run_score
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from curation.validation.validate import ValidateConfig, run_validate

    if args.threads:
        torch.set_num_threads(args.threads)
    ws = Path(args.workspace)
    prepare_default_data(ws)
    t0 = time.time()
    run = Path(args.run) if args.run else run_score(ScoreConfig(
        sources=[f"chat={ws / 'data' / 'chat.jsonl'}", f"math={ws / 'data' / 'math.jsonl'}"],
        out=str(ws / "runs" / "default-score")))
    t_score = time.time() - t0
    method = args.method or ("davir" if Run(run).kind == "learn" else "loss")
    sel = select_run(run, Recipe(method, budget=args.budget), OUT / f"selection-{method}")

    phases: list[tuple[str, float]] = []

    def progress(**p) -> None:
        phase = str(p.get("phase"))
        kind = phase.split(" seed")[0].split(" (")[0]  # "training random-tokens", "evaluating base model", ...
        if not phases or phases[-1][0] != kind:
            phases.append((kind, time.time()))

    out = OUT / f"validate-{method}"
    t1 = time.time()
    run_validate(ValidateConfig(selections=[str(sel)], out=str(out), seeds=args.seeds, baselines=args.baselines,
                                eval={"chat": str(ws / "eval" / "chat.jsonl"), "math": str(ws / "eval" / "math.jsonl")}),
                 progress=progress)
    t_end = time.time()
    per_phase: dict[str, float] = {}
    for (kind, start), nxt in zip(phases, [t for _, t in phases[1:]] + [t_end]):
        key = kind.split(" ")[0]  # training | evaluating | reading | loading | statistics ...
        per_phase[key] = round(per_phase.get(key, 0.0) + nxt - start, 1)
    rep = json.loads((out / "report.json").read_text())
    cands = {c["name"]: c for c in rep["candidates"]}
    print(json.dumps({
        "run": str(run), "method": method, "budget": args.budget, "seeds": args.seeds, "threads": torch.get_num_threads(),
        "score_run_s": round(t_score, 1), "validate_wall_s": round(t_end - t1, 1), "phases_s": per_phase,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "training_sets": {n: {"examples": c["per_seed"][0]["examples"], "response_tokens": c["per_seed"][0]["response_tokens"]}
                          for n, c in cands.items()},
        "nll": [{k: r[k] for k in ("candidate", "domain", "mean", "sd", "vs_base")} for r in rep["statistics"]["token"]["rows"]],
        "verdicts": [{k: c[k] for k in ("candidate", "baseline", "domain", "diff", "lo", "hi", "verdict_text")}
                     for c in rep["statistics"]["token"]["comparisons"]],
        "lengths": rep["lengths"],
    }, indent=2))


if __name__ == "__main__":
    main()

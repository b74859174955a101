"""Learn benchmark: reference training + trajectory scoring with the default model on CPU.

Runs ``python -m curation learn`` on --rows GSM8K + --rows Alpaca rows from ../shared/data, once
with full fine-tuning and once with LoRA, each in its own process with its own empty score cache
(so every phase is measured), and prints the wall time of each phase, training and scoring
tokens/s and the peak RSS.  It is long (tens of minutes per mode on 2 cores); run it under the
heavy-work lock:

    flock /tmp/heavy.lock .venv/bin/python bench/bench_learn.py [--rows 200] [--checkpoints 4] [--modes full,lora]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def run_mode(mode: str, rows: int, checkpoints: int, work: Path) -> dict:
    out, cache = work / f"run-{mode}", work / f"cache-{mode}"
    rss_file = work / f"rss-{mode}.txt"
    # Each mode runs in its own process, which records its own peak RSS when it finishes.
    wrapper = ("import resource, sys; from curation.cli import main; rc = main(sys.argv[2:]); "
               "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
               "sys.exit(rc)")
    cmd = [sys.executable, "-c", wrapper, str(rss_file), "learn", f"math={DATA / 'gsm8k' / 'train.jsonl'}",
           f"chat={DATA / 'alpaca_gpt4_demo' / 'alpaca_en_demo.json'}", "--limit", str(rows),
           "--model", "default", "--checkpoints", str(checkpoints), "--out", str(out), "--cache", str(cache)]
    if mode == "lora":
        cmd.append("--lora")
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: learn failed:\n{proc.stderr[-3000:]}")
    peak = int(rss_file.read_text())
    run = json.loads((out / "run.json").read_text())
    import pandas as pd

    df = pd.read_parquet(out / "scores.parquet")
    tokens = int(df["n_tokens_full"].clip(upper=run["max_length"]).sum())
    t_ = run["timings_s"]
    passes = checkpoints  # checkpoint passes after training
    return {
        "mode": mode, "rows": len(df), "tokens_per_pass": tokens, "wall_s": round(wall, 1),
        "phases_s": t_,
        "train_tokens_per_s": round(run["train"]["tokens_trained"] / max(run["train"]["seconds"], 1e-9), 1),
        "train_steps": run["train"]["total_steps"],
        "score_tokens_per_s": round(tokens * (1 + passes) / max(t_["score_base"] + t_["score_checkpoints"], 1e-9), 1),
        "peak_rss_mb": round(peak / 1024),
        "loss_ref_lt_base": round(float((df["loss_ref"] < df["loss_base"]).mean()), 3),
        "davir_median_by_domain": df.groupby("domain")["davir"].median().round(4).to_dict(),
        "final_train_loss": run["train"]["loss_curve"][-1]["loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200, help="rows of each source")
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--keep", help="keep the run folders here instead of a temp folder")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-learn-"))
    results = []
    try:
        for mode in args.modes.split(","):
            r = run_mode(mode, args.rows, args.checkpoints, work)
            results.append(r)
            print(json.dumps(r, indent=2), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'mode':<6}{'rows':>6}{'wall s':>9}{'train s':>9}{'train tok/s':>13}{'score tok/s':>13}{'peak RSS MB':>13}")
    for r in results:
        print(f"{r['mode']:<6}{r['rows']:>6}{r['wall_s']:>9.0f}{r['phases_s'].get('train_session', 0):>9.0f}"
              f"{r['train_tokens_per_s']:>13.1f}{r['score_tokens_per_s']:>13.1f}{r['peak_rss_mb']:>13}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_learn.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

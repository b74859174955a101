"""Learn benchmark: reference training + trajectory scoring with the default model on CPU.

Runs ``python -m curation learn`` on --rows GSM8K + --rows Alpaca rows from ../shared/data, once
with full fine-tuning and once with LoRA, each in its own process with its own empty score cache
(so every phase is measured), and prints the wall time of each phase, training and scoring
tokens/s and the peak RSS.  It is long (tens of minutes per mode on 2 cores); run it under the
heavy-work lock:

    flock /tmp/heavy.lock .venv/bin/python bench/bench_learn.py [--rows 200] [--checkpoints 4] [--modes full,lora]

With ``--pairs N`` it runs ``learn`` on the first N default pairs instead (workspace/pairs/math.jsonl,
written by ``make setup``, or prepared in the work folder when missing; 0 = all of them: about an
hour of CPU in full mode): a DPO reference, every pair scored under it (``make bench-learn-pairs``).
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
sys.path.insert(0, str(ROOT))


def learn(mode: str, args: list[str], work: Path) -> tuple[Path, float, int]:
    """``python -m curation learn ARGS`` in its own process with an empty score cache: ``(run
    folder, wall seconds, peak RSS in KiB)`` (the process records its own peak when it finishes)."""
    out, cache = work / f"run-{mode}", work / f"cache-{mode}"
    rss_file = work / f"rss-{mode}.txt"
    wrapper = ("import resource, sys; from curation.cli import main; rc = main(sys.argv[2:]); "
               "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
               "sys.exit(rc)")
    cmd = [sys.executable, "-c", wrapper, str(rss_file), "learn", *args, "--model", "default", "--out", str(out),
           "--cache", str(cache)] + (["--lora"] if mode == "lora" else [])
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: learn failed:\n{proc.stderr[-3000:]}")
    return out, wall, int(rss_file.read_text())


def run_pairs_mode(mode: str, n_pairs: int, work: Path) -> dict:
    """``learn`` on the first ``n_pairs`` default pairs (0 = all): wall time, phases, peak RSS and
    what the DPO reference learned."""
    import pandas as pd

    from curation.system import workspace_root

    source = workspace_root() / "pairs" / "math.jsonl"
    if not source.is_file():
        from curation.data.default_data import prepare_default_data

        prepare_default_data(work / "ws")
        source = work / "ws" / "pairs" / "math.jsonl"
    out, wall, peak = learn(mode, [str(source), *(["--limit", str(n_pairs)] if n_pairs else [])], work)
    run = json.loads((out / "run.json").read_text())
    df = pd.read_parquet(out / "scores.parquet")
    last = run["train"]["loss_curve"][-1]
    return {
        "mode": mode, "pairs": len(df), "source": str(source), "wall_s": round(wall, 1), "phases_s": run["timings_s"],
        "tokens_per_pass": int((df["n_prompt_tokens"] + df["n_chosen_tokens"] + df["n_rejected_tokens"]).sum()),
        "train_steps": run["train"]["total_steps"], "dpo": run["dpo"],
        "train_tokens_per_s": round(run["train"]["tokens_trained"] / max(run["train"]["seconds"], 1e-9), 1),
        "peak_rss_mb": round(peak / 1024), "final_dpo_loss": last["loss"],
        "final_reward_accuracy": last["reward_accuracy"],
        "base_prefers_chosen": round(float((df["margin_sum"] > 0).mean()), 3),
        "reward_margin_gt_0": round(float((df["reward_margin"] > 0).mean()), 3),
        "median": df[["reward_margin", "davir_margin"]].median().round(5).to_dict(),
        "spearman_with_len_diff": {c: round(float(df[c].corr(df["len_diff"], method="spearman")), 3)
                                   for c in ("margin_sum", "reward_margin", "davir_margin")},
    }


def run_mode(mode: str, rows: int, checkpoints: int, work: Path) -> dict:
    out, wall, peak = learn(mode, [f"math={DATA / 'gsm8k' / 'train.jsonl'}",
                                   f"chat={DATA / 'alpaca_gpt4_demo' / 'alpaca_en_demo.json'}", "--limit", str(rows),
                                   "--checkpoints", str(checkpoints)], work)
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
    ap.add_argument("--pairs", type=int, default=None, metavar="N",
                    help="learn on the first N default pairs instead (0 = all): a DPO reference")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-learn-"))
    results = []
    try:
        for mode in args.modes.split(","):
            r = (run_mode(mode, args.rows, args.checkpoints, work) if args.pairs is None
                 else run_pairs_mode(mode, args.pairs, work))
            results.append(r)
            print(json.dumps(r, indent=2), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.pairs is not None:
        print(f"\n{'mode':<6}{'pairs':>6}{'wall s':>9}{'train s':>9}{'train tok/s':>13}{'peak RSS MB':>13}")
        for r in results:
            print(f"{r['mode']:<6}{r['pairs']:>6}{r['wall_s']:>9.0f}{r['phases_s'].get('train_session', 0):>9.0f}"
                  f"{r['train_tokens_per_s']:>13.1f}{r['peak_rss_mb']:>13}")
        (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        (ROOT / "bench" / "results" / "bench_learn_pairs.json").write_text(json.dumps(results, indent=2) + "\n")
        return
    print(f"\n{'mode':<6}{'rows':>6}{'wall s':>9}{'train s':>9}{'train tok/s':>13}{'score tok/s':>13}{'peak RSS MB':>13}")
    for r in results:
        print(f"{r['mode']:<6}{r['rows']:>6}{r['wall_s']:>9.0f}{r['phases_s'].get('train_session', 0):>9.0f}"
              f"{r['train_tokens_per_s']:>13.1f}{r['score_tokens_per_s']:>13.1f}{r['peak_rss_mb']:>13}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_learn.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

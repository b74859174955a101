"""Scoring benchmark: the batched scorer vs a plain one-example-at-a-time HF loop.

Prints tokens/s, effective GFLOP/s (2 x parameters x tokens / s), that as a share of this
machine's own fp32 matmul rate measured in the same run, the speed-up over the plain loop, the
largest loss difference between the two, and the peak RSS of each (each runs in its own process).
tokens/s counts every token of every example, including a shared prefix that the batched scorer
computes once per batch instead of once per example (that saving is exact and is part of the
speed-up; the no-prefix phase shows the scorer without it).

    python bench/bench_score.py [--rows 100] [--batch-tokens 1024] [--max-length 2048] [--repeats 2]

Each phase times ``--repeats`` passes over the rows and keeps the fastest: on a shared 2-core
machine single passes of the same scorer vary by about 4%.

Uses ../shared/data (GSM8K test + Alpaca-GPT4 demo), --rows rows of each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


# batched: the scorer as the CLI runs it; no-prefix: the same without running a batch's shared
# prefix (the chat template's system prompt) once; compiled: with --compile; plain: HF, one by one.
PHASES = ("batched", "no-prefix", "compiled", "plain")


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` fp32 matmul rate on this machine, in GFLOP/s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def phase(name: str, rows: int, batch_tokens: int, max_length: int, repeats: int) -> dict:
    """Run one scorer over the rows in this process; return timings, losses and peak RSS."""
    import numpy as np

    from curation.data.load import SourceSpec, load_sources
    from curation.scoring.models import load_model
    from curation.scoring.losses import reference_loss, score_examples
    from curation.data.templates import encode_many, resolve_template

    lm = load_model("default", device="cpu", dtype="float32")
    data = load_sources([SourceSpec(str(DATA / "gsm8k/test.jsonl"), "math"),
                         SourceSpec(str(DATA / "alpaca_gpt4_demo/alpaca_en_demo.json"), "chat")], limit=rows)
    enc = encode_many(lm.tokenizer, resolve_template(lm.tokenizer), [e.messages for e in data.examples], max_length)
    tokens = sum(len(e.input_ids) for e in enc)
    compile = name == "compiled"
    # The embedding step (each example's mean hidden state over its targets) is timed where it
    # runs, so its share of a pass is measured within the pass, not across noisy runs.
    from curation.scoring import losses as losses_mod

    embed_s = [0.0]
    target_means = losses_mod.target_means

    def timed_target_means(*a, **kw):
        t0 = time.perf_counter()
        try:
            return target_means(*a, **kw)
        finally:
            embed_s[0] += time.perf_counter() - t0

    losses_mod.target_means = timed_target_means
    t = time.perf_counter()
    # Warm-up (kernels, allocator; for "compiled" this is the one-off compilation).
    score_examples(lm.model, enc[:4], batch_tokens=batch_tokens, compile=compile)
    warmup = time.perf_counter() - t
    seconds, embed_share = float("inf"), 0.0
    for _ in range(repeats):
        embed_s[0] = 0.0
        t = time.perf_counter()
        if name != "plain":
            losses = [r.loss for r in score_examples(lm.model, enc, batch_tokens=batch_tokens, compile=compile,
                                                     share_prefix=name != "no-prefix")]
        else:
            losses = [reference_loss(lm.model, e) for e in enc]
        took = time.perf_counter() - t
        if took < seconds:
            seconds, embed_share = took, embed_s[0] / took
    return {
        "phase": name, "examples": len(enc), "tokens": tokens, "seconds": seconds, "warmup_s": warmup,
        "embedding_share": embed_share,
        "n_parameters": lm.n_parameters, "losses": [float(x) if x is not None else None for x in losses],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "response_tokens": int(sum(e.n_response_tokens for e in enc)),
        "mean_loss": float(np.nanmean([x for x in losses if x is not None])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100, help="rows of each source")
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per scorer; the fastest counts")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.rows, args.batch_tokens, args.max_length, args.repeats)))
        return

    import torch

    peak = matmul_gflops()
    res = {}
    for name in PHASES:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--phase", name, "--rows", str(args.rows),
                              "--batch-tokens", str(args.batch_tokens), "--max-length", str(args.max_length),
                              "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
    diff = max(abs(a - b) for a, b in zip(res["batched"]["losses"], res["plain"]["losses"]) if a is not None)
    print(f"\nmachine: {torch.get_num_threads()} threads, fp32 matmul {peak:.1f} GFLOP/s (2048^3, best of 5)")
    print(f"data: {res['batched']['examples']} examples, {res['batched']['tokens']} tokens "
          f"({res['batched']['response_tokens']} assistant), batch budget {args.batch_tokens} tokens, "
          f"fastest of {args.repeats} passes\n")
    print(f"{'scorer':<10}{'seconds':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'% matmul':>10}{'peak RSS MB':>13}"
          f"{'warm-up s':>11}")
    for name, r in res.items():
        tps = r["tokens"] / r["seconds"]
        gf = 2 * r["n_parameters"] * tps / 1e9
        r.update(tokens_per_s=tps, gflops=gf, pct_matmul=100 * gf / peak)
        print(f"{name:<10}{r['seconds']:>9.1f}{tps:>10.1f}{gf:>9.1f}{r['pct_matmul']:>9.0f}%{r['peak_rss_mb']:>13.0f}"
              f"{r['warmup_s']:>11.1f}")
    speedup = res["batched"]["tokens_per_s"] / res["plain"]["tokens_per_s"]
    for name in ("batched", "no-prefix", "compiled"):
        r = res[name]
        su = r["tokens_per_s"] / res["plain"]["tokens_per_s"]
        print(f"{name:<9}: {su:.2f}x the plain loop ({'ok' if su >= 1.2 else 'MISSED'} >= 1.2x), "
              f"{r['pct_matmul']:.0f}% of matmul ({'ok' if r['pct_matmul'] >= 80 else 'MISSED'} >= 80%), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB ({'ok' if r['peak_rss_mb'] < 2500 else 'MISSED'} < 2500)")
    print(f"max |loss difference| batched vs plain: {diff:.2e}")
    print(f"embeddings (mean hidden state over the targets, in the same pass): "
          f"{100 * res['batched']['embedding_share']:.2f}% of the batched pass's time")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    for r in res.values():
        r.pop("losses")
    (out / "bench_score.json").write_text(json.dumps(
        {"matmul_gflops": peak, "speedup": speedup, "max_loss_diff": diff, "args": vars(args), **res}, indent=2))


if __name__ == "__main__":
    main()

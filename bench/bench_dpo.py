"""DPO benchmark: the product's DPO trainer on the default model, one training per learning rate.

Reads preference pairs as TRL conversational JSONL rows (what ``export --style dpo`` writes and
``workspace/pairs/``, ``workspace/pairs-eval/`` hold), takes the base model's log-probs of every
response from the exact scorer (the base pass), trains the default model with DPO at each learning
rate, and prints per learning rate: training tokens/s (chosen + rejected) and seconds, the training
curve's last step, then on the held-out pairs (and with ``--eval-train`` the training pairs) the
reward accuracy (share of pairs whose implicit reward margin is > 0), the mean reward and davir
margins, and the chosen / rejected NLL per token before and after (does DPO keep the chosen answers
likely?).  Peak RSS at the end.  It is long (minutes per
learning rate on 2 cores); run it under the heavy-work lock:

    flock /tmp/heavy.lock .venv/bin/python bench/bench_dpo.py --pairs workspace/pairs/math.jsonl \\
        --eval workspace/pairs-eval/math.jsonl [--n 64] [--lrs 1e-6,5e-6,2e-5] [--lora] [--dpo-loss davir]
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


def read_pairs(path: str, n: int | None) -> list[tuple[list, str, str]]:
    """``(prompt messages, chosen text, rejected text)`` of the first ``n`` TRL conversational rows."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out.append((r["prompt"], r["chosen"][-1]["content"], r["rejected"][-1]["content"]))
            if n is not None and len(out) == n:
                break
    return out


def encode_pairs(lm, rows, max_length: int, dpo_loss: str, what: str):
    """The pairs as DPOPairs with the base model's log-probs (the exact scorer); pairs that cannot
    be trained on are left out with their reason counted."""
    from collections import Counter

    from curation.data.templates import encode_many, resolve_template
    from curation.runs.dpo import pair_problem, with_reference_logps

    t = resolve_template(lm.tokenizer)
    chosen = encode_many(lm.tokenizer, t, [p + [{"role": "assistant", "content": c}] for p, c, _ in rows], max_length)
    rejected = encode_many(lm.tokenizer, t, [p + [{"role": "assistant", "content": r}] for p, _, r in rows], max_length)
    t0 = time.perf_counter()
    pairs = with_reference_logps(lm.model, chosen, rejected)
    reasons = Counter(why for p in pairs if (why := pair_problem(p, dpo_loss)))
    pairs = [p for p in pairs if pair_problem(p, dpo_loss) is None]
    n_tok = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
    print(f"{what}: {len(pairs)} pairs, {n_tok} tokens (chosen + rejected), base pass {time.perf_counter() - t0:.0f} s"
          + "".join(f"; left out {n}: {why}" for why, n in reasons.items()))
    return pairs


def evaluate(model, pairs, dpo_loss: str, beta: float) -> dict:
    """Reward accuracy and margins of ``model`` against the base, and the chosen / rejected NLL per token."""
    from curation.runs.dpo import score_pairs

    s = score_pairs(model, pairs, dpo_loss, beta)
    m = s.metrics()
    nc = np.array([p.chosen.n_response_tokens for p in pairs])
    nr = np.array([p.rejected.n_response_tokens for p in pairs])
    return {"reward_accuracy": round(m["reward_accuracy"], 3), "reward_margin": round(m["reward_margin"], 4),
            "davir_margin": round(float(np.mean(s.davir_margin)), 5),
            "nll_chosen": round(float(np.mean(-s.logp_chosen / nc)), 4),
            "nll_rejected": round(float(np.mean(-s.logp_rejected / nr)), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True, help="training pairs (TRL conversational JSONL)")
    ap.add_argument("--eval", required=True, help="held-out pairs (TRL conversational JSONL)")
    ap.add_argument("--n", type=int, default=64, help="training pairs used (the first N)")
    ap.add_argument("--n-eval", type=int, default=None, help="held-out pairs used (default: all)")
    ap.add_argument("--lrs", default="1e-6,5e-6,2e-5", help="learning rates, comma-separated")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dpo-loss", default="davir")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--eval-train", action="store_true", help="also score the training pairs after training")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from curation.runs.dpo import DPOConfig
    from curation.runs.training import train
    from curation.scoring.models import load_checkpoint, load_model

    lm = load_model("default", device="cpu", dtype="float32")
    train_pairs = encode_pairs(lm, read_pairs(args.pairs, args.n), args.max_length, args.dpo_loss, "training pairs")
    eval_pairs = encode_pairs(lm, read_pairs(args.eval, args.n_eval), args.max_length, args.dpo_loss, "held-out pairs")
    splits = {"eval": eval_pairs, **({"train": train_pairs} if args.eval_train else {})}
    results = [{"lr": 0.0, **{k: evaluate(lm.model, v, args.dpo_loss, args.beta) for k, v in splits.items()}}]
    print(json.dumps(results[0]))
    with tempfile.TemporaryDirectory() as work:
        for lr in (float(x) for x in args.lrs.split(",")):
            cfg = DPOConfig(lr=lr, epochs=args.epochs, dpo_loss=args.dpo_loss, beta=args.beta, lora=args.lora)
            res = train(lm.path, lm.tokenizer, train_pairs, cfg, Path(work) / f"lr-{lr:g}", 1)
            model = load_checkpoint(lm.path, res.checkpoints[-1])
            row = {"lr": lr, "steps": res.total_steps, "seconds": res.seconds,
                   "train_tokens_per_s": round(res.tokens_trained / max(res.seconds, 1e-9), 1),
                   "curve_last": {k: round(v, 4) for k, v in res.loss_curve[-1].items() if k not in ("step", "tokens")},
                   **{k: evaluate(model, v, args.dpo_loss, args.beta) for k, v in splits.items()}}
            results.append(row)
            print(json.dumps(row), flush=True)
            del model
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "peak_rss_mb": round(peak_mb)},
                                              indent=1))


if __name__ == "__main__":
    main()

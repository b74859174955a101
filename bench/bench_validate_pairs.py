"""Pair validation benchmark (issue 32's measurement) on the default pairs, on this machine.

    .venv/bin/python bench/bench_validate_pairs.py [--run PAIR_RUN] [--budget 64] [--seeds 3] [--epochs 2]
        [--limit N] [--eval-limit N] [--engine ray --workers 2] [--skip canary,objectives,selections,speed]
        [--activation-checkpointing auto|on|off]

1. **selections vs random**: ``reward_margin`` highest and lowest and ``davir_margin`` highest (these
   need a pair *learn* run: ``--run``), and ``margin_mean`` (a score run is enough: scored here when
   ``--run`` is not given), each a ``--budget``-pair selection, validated in one study against
   ``random`` (equal pairs) with ``--seeds`` seeds, DPO (davir) from the base model, the pair eval
   set (workspace/pairs-eval/math.jsonl): reward accuracy, margins, chosen / rejected NLL, verdicts;
2. **DavIR-DPO vs vanilla DPO** on the same random selection (``--dpo-loss sigmoid,davir``), with
   each objective's length correlation;
3. **canaries**: 20% of the default pairs with chosen and rejected swapped, scored, every pair
   score's AUROC at keeping clean pairs before swapped ones;
4. **speed**: one DPO proxy training of ``--budget`` pairs alone: tokens/s counting both rows
   (prompt + chosen, prompt + rejected) and the process's peak RSS.

Everything is written under bench/results/validate-pairs/ and printed as JSON at the end.  The
trainings are full fine-tunings of the default model: on 2 CPU cores hours, so run it in the
background when the machine is quiet (``nohup make bench-validate-pairs > bench-pairs.log &``);
``--limit 40 --eval-limit 8 --budget 8 --seeds 2 --epochs 1`` checks the whole path (a quarter of an
hour on a busy 2-core machine: the default model scores about 100 pair tokens a second there).
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
OUT = ROOT / "bench" / "results" / "validate-pairs"
STEPS = ("selections", "objectives", "canary", "speed")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mb() -> dict:
    """Peak resident memory of this process and of its waited-for children (Ray workers), MB."""
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def with_bars(step, cfg):
    """``step(cfg)`` (run_score, run_validate) with the CLI's progress bars on stderr."""
    from curation.cli import TqdmProgress

    progress = TqdmProgress()
    try:
        return step(cfg, progress=progress)
    finally:
        progress.close()


def engine(args) -> dict:
    """The compute settings of ``--engine`` (workers only on Ray)."""
    return {"engine": "ray", "workers": args.workers} if args.engine == "ray" else {}


def verdicts(out: Path) -> dict:
    """The validation's judged comparisons in words, per measure, and its length correlations."""
    from curation.validation.verdicts import comparison_line

    rep = json.loads((out / "report.json").read_text())
    return {"comparisons": {m: [comparison_line(c) for c in st["comparisons"]]
                            for m, st in rep["statistics"]["pairs"].items() if st["comparisons"]},
            "length_correlation": rep["pairs"]["length_correlation"], "trainings": rep["trainings"]}


def validate(sels: list[Path], out: Path, args, **kw) -> dict:
    from curation.validation.validate import ValidateConfig, run_validate

    t0 = time.time()
    cfg = ValidateConfig(selections=[str(s) for s in sels], out=str(out), seeds=args.seeds, epochs=args.epochs,
                         eval={"math": str(args.eval)}, **engine(args), **kw)
    with_bars(run_validate, cfg)
    return {**verdicts(out), "seconds": round(time.time() - t0, 1)}


def canaries(args) -> dict:
    """20% of the default pairs swapped, scored, each pair score's AUROC (overall)."""
    from curation.data.canary import CanaryConfig, plant, truth_for
    from curation.runs.folder import Run
    from curation.runs.score import ScoreConfig, run_score
    from curation.selection.canaries import canary_report

    pool = plant(CanaryConfig(sources=[f"math={args.ws / 'pairs' / 'math.jsonl'}"], out=str(OUT / "canary-pool"),
                              rate=0.2, limit=args.limit))
    src = json.loads((pool / "canary.json").read_text())["learn_with"].split()[4:]
    run = with_bars(run_score, ScoreConfig(sources=src, out=str(OUT / "canary-run"), max_length=args.max_length,
                                           **engine(args)))
    rep = canary_report(Run(run).scores(), truth_for(Run(run).provenance()))
    return {"pairs": rep["examples"], "swapped": rep["corrupted"],
            "auroc": {name: a["all"] for name, a in rep["auroc"].items()}}


def speed(run: Path, args) -> dict:
    """One DPO training of the first ``--budget`` pairs of the run, alone: tokens/s (both rows of
    each pair: prompt + chosen and prompt + rejected) and peak RSS."""
    from curation.progress import Reporter
    from curation.runs.folder import Run
    from curation.runs.training import train
    from curation.validation.proxy import open_proxy, train_config
    from curation.validation.validate import ValidateConfig

    r = Run(run)
    cfg = ValidateConfig(selections=["unused"], out=str(OUT / "speed"), epochs=1, eval={"math": str(args.eval)},
                         activation_checkpointing=args.activation_checkpointing)
    table = r.scores()
    proxy = open_proxy(cfg, r, r.require_finished(), table, Reporter(None))
    ids = table["example_id"].tolist()[:args.budget]
    proxy.encode(set(ids), Reporter(None))
    items = [proxy.pool[i] for i in ids]
    t0 = time.time()
    tcfg = train_config(cfg, 0, "davir")
    res = train(proxy.lm.path, proxy.lm.tokenizer, items, tcfg, OUT / "speed" / "train", 1, device=proxy.lm.device)
    secs = time.time() - t0
    return {"pairs": len(items), "activations_recomputed": tcfg.checkpoints_activations,
            "tokens_trained": res.tokens_trained, "seconds": round(secs, 1),
            "tokens_per_s": round(res.tokens_trained / secs, 1), "peak_rss_mb": peak_rss_mb(),
            "max_length": proxy.context.max_length}


def main() -> None:
    global OUT
    from curation.runs.training import ACTIVATION_CHECKPOINTING

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished pair run of the default pairs (a pair learn run adds reward_margin and "
                                  "davir_margin); default: score the pairs now")
    ap.add_argument("--budget", type=int, default=64, help="pairs per selection")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="the first N pairs only (a quick check)")
    ap.add_argument("--max-length", type=int, default=1024, help="tokens per response row when the pairs are scored "
                                                                   "here (the issue's peak RSS bound is at 1024)")
    ap.add_argument("--eval-limit", type=int, default=None, help="the first N eval pairs only (a quick check)")
    ap.add_argument("--activation-checkpointing", default="auto", choices=ACTIVATION_CHECKPOINTING,
                    help="the speed step's training (auto: on, as for every DPO training)")
    ap.add_argument("--engine", default="local", choices=("local", "ray"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip", default="", help=f"steps to leave out: {', '.join(STEPS)}")
    ap.add_argument("--workspace", default=str(OUT / "ws"), help="where the default pairs are written")
    ap.add_argument("--out", default=str(OUT), help="the results folder")
    args = ap.parse_args()
    OUT = Path(args.out)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from curation.data.default_data import prepare_default_data
    from curation.runs.folder import Run
    from curation.runs.score import ScoreConfig, run_score
    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe

    args.ws = Path(args.workspace)
    prepare_default_data(args.ws)
    args.eval = args.ws / "pairs-eval" / "math.jsonl"
    if args.eval_limit:  # the first N eval pairs, as their own file
        lines = args.eval.read_text().splitlines(keepends=True)[:args.eval_limit]
        args.eval = OUT / f"eval-first-{args.eval_limit}.jsonl"
        args.eval.parent.mkdir(parents=True, exist_ok=True)
        args.eval.write_text("".join(lines))
    out: dict = {"budget": args.budget, "seeds": args.seeds, "epochs": args.epochs, "limit": args.limit,
                 "eval": str(args.eval), "engine": args.engine}
    t0 = time.time()
    run = Path(args.run) if args.run else with_bars(run_score, ScoreConfig(
        sources=[f"math={args.ws / 'pairs' / 'math.jsonl'}"], out=str(OUT / "pair-run"), limit=args.limit,
        max_length=args.max_length, **engine(args)))
    out["run"], out["score_seconds"] = str(run), round(time.time() - t0, 1)
    columns = set(Run(run).scores().columns)
    wanted = [("reward_margin", None), ("reward_margin", "low"), ("davir_margin", None), ("margin_mean", None)]
    have = [(m, o) for m, o in wanted if m in columns]
    out["not_measured"] = [f"{m} ({o or 'default'} end): needs a pair learn run (--run)" for m, o in wanted
                           if m not in columns]
    if "selections" not in skip:
        log(f"selections {have} vs random, {args.seeds} seeds")
        sels = [select_run(run, Recipe(m, budget=str(args.budget), order=o), OUT / f"sel-{m}-{o or 'default'}")
                for m, o in have]
        out["selections"] = validate(sels, OUT / "val-selections", args, baselines="random")
    if "objectives" not in skip:
        log("DavIR-DPO vs vanilla DPO on one random selection")
        rnd = select_run(run, Recipe("random", budget=str(args.budget)), OUT / "sel-random")
        out["objectives"] = validate([rnd], OUT / "val-objectives", args, baselines="", dpo_loss="sigmoid,davir",
                                     draws="fixed")
    if "canary" not in skip:
        log("canaries: 20% swapped pairs")
        out["canary"] = canaries(args)
    if "speed" not in skip:
        log("speed: one DPO proxy training")
        out["speed"] = speed(run, args)
    out["peak_rss_mb"], out["seconds"] = peak_rss_mb(), round(time.time() - t0, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

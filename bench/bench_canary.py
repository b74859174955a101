"""Canary benchmark: which score finds planted defects, and does removing them train better?

    .venv/bin/python bench/bench_canary.py [--rate 0.2] [--seed 0] [--out DIR] [--run RUN_DIR] [--seeds 3]
                                           [--no-validate] [--engine ray --workers 2]

1. ``canary``: the embedded default pool (workspace/data) with ``--rate`` of each domain's examples
   corrupted (swap, truncate, wrong-number, refusal, shuffle-words), truth beside it;
2. ``learn`` over it (the default settings, a fresh score cache), unless ``--run`` names one (a
   plain ``score`` run over the canary pool gives the table for loss and ppl only);
3. the AUROC of keeping clean examples before corrupted ones for loss, ppl, ifd, davir and rho
   (overall, per domain, per kind), and for every method (s2l and random included) the corrupted
   examples in a 10% selection beside a uniform sample's expectation;
4. one ``validate`` of a 10% davir and a 10% rho selection (decontaminated against the eval sets)
   against random at equal examples and at equal tokens, ``--seeds`` seeds, the default eval sets,
   in this process or on Ray workers (``--engine ray``).

Printed as tables and JSON; the AUROC plot is written as an SVG (``--plot``, default
docs/canary-auroc.svg) for the README.  Steps 2 and 4 are full fine-tunings of the default model:
about 40 minutes and 1.5-2 hours on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCORES = ("loss", "ppl", "ifd", "davir", "rho")
METHODS = ("davir", "rho", "ifd", "loss", "ppl", "longest", "s2l", "random")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def svg_plot(rep: dict, path: Path) -> None:
    """Grouped bars: AUROC per score, overall and per kind, with the 0.5 line (plain SVG, no plotting
    library needed to render it on GitHub)."""
    kinds = ["all", *rep["by_kind"]]
    colours = ["#3d405b", "#e07a5f", "#81b29a", "#f2cc8f", "#2a6f97", "#6d597a", "#b56576"]
    scores = [s for s in SCORES if s in rep["auroc"]]
    w, h, left, bottom, top = 760, 320, 50, 40, 20
    group = (w - left - 20) / len(scores)
    bar = group * 0.8 / len(kinds)
    y = lambda v: top + (1 - v) * (h - top - bottom)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 30}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h + 30}" fill="white"/>']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{"#999" if t == 0.5 else "#eee"}"'
                   + (' stroke-dasharray="4 3"' if t == 0.5 else "") + "/>")
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for i, s in enumerate(scores):
        x0 = left + i * group + group * 0.1
        a = rep["auroc"][s]
        for j, k in enumerate(kinds):
            v = a["all"] if k == "all" else a["by_kind"].get(k)
            if v is None:
                continue
            out.append(f'<rect x="{x0 + j * bar:.1f}" y="{y(v):.1f}" width="{bar - 1:.1f}" height="{y(0) - y(v):.1f}" '
                       f'fill="{colours[j % len(colours)]}"><title>{s} {k}: {v:.3f}</title></rect>')
        label = f"{s} (keeps {a['order']})"
        out.append(f'<text x="{x0 + group * 0.4:.1f}" y="{h - bottom + 16}" text-anchor="middle">{html.escape(label)}</text>')
    for j, k in enumerate(kinds):
        out.append(f'<rect x="{left + j * 105}" y="{h + 8}" width="10" height="10" fill="{colours[j % len(colours)]}"/>'
                   f'<text x="{left + j * 105 + 14}" y="{h + 17}">{html.escape(k)}</text>')
    out.append(f'<text x="{w - 20}" y="12" text-anchor="end" fill="#555">AUROC of keeping clean examples before planted '
               "defects (0.5: random)</text></svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="trainings per validation candidate")
    ap.add_argument("--budget", default="10%")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "canary"))
    ap.add_argument("--run", help="a finished learn run over the canary pool (skips steps 1-2)")
    ap.add_argument("--no-validate", action="store_true", help="stop after the AUROC table")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "canary-auroc.svg"))
    ap.add_argument("--engine", default="local", choices=("local", "ray"), help="where the validation trains")
    ap.add_argument("--workers", type=int, help="--engine ray: how many workers (default: one per CPU)")
    args = ap.parse_args()

    from curation.data.canary import CanaryConfig, plant, truth_for
    from curation.runs.folder import Run
    from curation.runs.learn import LearnConfig, run_learn
    from curation.selection.canaries import canary_report
    from curation.scores import available_methods
    from curation.selection.folder import Selection, select_run
    from curation.selection.recipe import Recipe
    from curation.validation.validate import ValidateConfig, run_validate

    out = Path(args.out)
    ws = ROOT / "workspace"
    evals = {"chat": str(ws / "eval" / "chat.jsonl"), "math": str(ws / "eval" / "math.jsonl")}
    result: dict = {"rate": args.rate, "seed": args.seed}
    if args.run:
        run = Path(args.run)
    else:
        log("planting canaries in the default pool")
        pool = plant(CanaryConfig(sources=[f"chat={ws / 'data' / 'chat.jsonl'}", f"math={ws / 'data' / 'math.jsonl'}"],
                                  out=str(out / "pool"), rate=args.rate, seed=args.seed))
        result["canaries"] = json.loads((pool / "canary.json").read_text())["counts"]
        log(f"learn run over {pool} (fresh cache)")
        t0 = time.time()
        run = run_learn(LearnConfig(sources=[f"chat={pool / 'chat.jsonl'}", f"math={pool / 'math.jsonl'}"],
                                    out=str(out / "learn"), cache=str(out / "cache")))
        result["learn_s"] = round(time.time() - t0, 1)
        log(f"learn run done in {result['learn_s']:.0f} s")
    r = Run(run)
    table = r.scores()
    truth = truth_for(r.provenance())
    if truth is None:
        raise SystemExit(f"{run} was not scored over a canary pool (no canary_truth.jsonl beside its sources)")
    rep = canary_report(table, truth)
    result["auroc"] = {s: rep["auroc"][s] for s in SCORES if s in rep["auroc"]}
    print(f"\ncanary pool: {rep['corrupted']} of {rep['examples']} examples corrupted; by kind {rep['by_kind']}")
    kinds = list(rep["by_kind"])
    doms = list(rep["by_domain"])
    print(f"\n{'score':<7} {'keeps':<5} {'all':>6} " + " ".join(f"{d:>6}" for d in doms) + " "
          + " ".join(f"{k[:13]:>13}" for k in kinds))
    for s in SCORES:
        a = rep["auroc"].get(s)
        if a is None:
            continue
        f = lambda v: f"{v:.3f}" if v is not None else "  -  "  # noqa: E731
        print(f"{s:<7} {a['order']:<5} {f(a['all']):>6} " + " ".join(f"{f(a['by_domain'][d]):>6}" for d in doms) + " "
              + " ".join(f"{f(a['by_kind'].get(k)):>13}" for k in kinds))
    svg_plot(rep, Path(args.plot))
    log(f"plot: {args.plot}")

    print(f"\ncorrupted examples in a {args.budget} selection (decontaminated), beside a uniform sample's expectation:")
    counts = {}
    why_not = available_methods(table.columns)
    for m in METHODS:
        if why_not.get(m):
            print(f"  {m:<8} not in this run: {why_not[m]}")
            continue
        sel = select_run(run, Recipe(method=m, budget=args.budget, decontaminate=list(evals.values()), decisions="none"),
                         out / "selections" / f"{m}-{args.budget.replace('%', 'pct')}")
        c = Selection(sel).summary()["canaries"]["selection"]
        counts[m] = c
        print(f"  {m:<8} {c['corrupted']:>3} of {c['selected']} (random baseline {c['random_corrupted']}, expected "
              f"{c['random_expected']:.1f}); by kind {c['by_kind']}")
    result["selections"] = counts
    if args.no_validate:
        print(json.dumps(result, indent=2))
        return

    sels = []
    for m in ("davir", "rho"):
        if why_not.get(m):
            print(f"  no validation of {m}: {why_not[m]}")
        else:
            sels.append(str(out / "selections" / f"{m}-{args.budget.replace('%', 'pct')}"))
    if sels:
        # One validation of both: they share their random baseline (the same examples per domain),
        # which is trained once.
        log(f"validating {', '.join(Path(s).name for s in sels)} against random and random-tokens, {args.seeds} seeds"
            + (f", {args.workers or 'all'} Ray workers" if args.engine == "ray" else ""))
        t0 = time.time()
        vdir = run_validate(ValidateConfig(selections=sels, out=str(out / "validation"), eval=evals,
                                           baselines="random,random-tokens", seeds=args.seeds, cache=str(out / "cache"),
                                           engine=args.engine, workers=args.workers))
        vrep = json.loads((vdir / "report.json").read_text())
        result["validate_s"] = round(time.time() - t0, 1)
        result["trainings"] = vrep["trainings"]
        result["verdicts"] = [{k: c[k] for k in ("candidate", "baseline", "domain", "diff", "lo", "hi", "verdict_text")}
                              for c in vrep["statistics"]["token"]["comparisons"]]
        result["nll"] = [{k: x[k] for k in ("candidate", "domain", "mean", "sd")}
                         for x in vrep["statistics"]["token"]["rows"]]
        for c in result["verdicts"]:
            print(f"  {c['candidate']} vs {c['baseline']}, {c['domain']}: {c['diff']:+.4f} [{c['lo']:+.4f}, "
                  f"{c['hi']:+.4f}] {c['verdict_text']}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

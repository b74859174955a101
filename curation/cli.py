"""Command line: ``python -m curation COMMAND ...``.

Every command builds the same config object the dashboard and the job worker build, then calls
the library.  Errors the user can fix are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from curation import __version__


def _columns(text: str) -> dict[str, str]:
    """Parse ``canonical=column,...`` (e.g. ``question=problem,answer=solution``)."""
    out = {}
    for pair in filter(None, text.split(",")):
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN pairs, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="[DOMAIN=]PATH",
                   help="data files, datasets folders or hub ids; DOMAIN= tags their examples (e.g. math=gsm8k.jsonl)")
    p.add_argument("--limit", type=int, help="use the first N records of each source")
    p.add_argument("--columns", type=_columns, default={},
                   help="map canonical fields to your columns, e.g. question=problem,answer=solution")
    p.add_argument("--format", choices=["messages", "sharegpt", "alpaca", "gsm8k", "prompt"],
                   help="force the record shape instead of detecting it")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="`default` (SmolLM2-135M-Instruct), a model folder, a .gguf file or a hub id")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per example; longer ones are cut and flagged")
    p.add_argument("--batch-tokens", type=int, default=1024, help="padded tokens per forward pass")
    p.add_argument("--template", default="auto", help="auto | chat | alpaca | path to a Jinja chat template")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m curation", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"curation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="assistant-token losses of a model over SFT data")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--out", required=True, help="output folder (scores.parquet, token_losses.parquet, run.json)")
    p.add_argument("--chunk-examples", type=int, default=256, help="examples per committed chunk")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoder (one-off ~1 min compilation; measured 0.96-1.05x the default on 2 CPU cores)")

    add_learn_parser(sub)

    p = sub.add_parser("prepare-model", help="convert the default (or a .gguf) model once into the cache")
    p.add_argument("--model", default="default")
    add_jobs_parser(sub)
    add_select_export_parsers(sub)
    return parser


def score_config(args) -> "ScoreConfig":  # noqa: F821
    from curation.scores import ScoreConfig

    return ScoreConfig(
        sources=args.sources, out=args.out, model=args.model, max_length=args.max_length,
        batch_tokens=args.batch_tokens, limit=args.limit, template=args.template, device=args.device,
        dtype=args.dtype, columns=args.columns, format=args.format, chunk_examples=args.chunk_examples,
        compile=args.compile,
    )


def add_learn_parser(sub) -> None:
    """The ``learn`` command: reference training + trajectory scores (see curation.learn)."""
    p = sub.add_parser("learn", help="train a reference model on the pool; DavIR, RHO, IFD, S2L scores")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--out", required=True, help="output folder (scores.parquet, token_losses.parquet, run.json)")
    p.add_argument("--checkpoints", type=int, default=4, help="K: score at K+1 evenly spaced points (0 = base)")
    p.add_argument("--reference", help="attach this fine-tuned model (folder, .gguf or LoRA adapter folder) instead of training (2-point trajectory)")
    p.add_argument("--heldout-folds", type=int, default=0,
                   help="N >= 2: also train N models, each without one fold, for held-out reference losses")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-5 full, 3e-4 LoRA)")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--train-batch-tokens", type=int, default=1024, help="padded tokens per training micro-batch")
    p.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clusters", type=int, default=100, help="S2L K-means clusters (capped on small pools)")
    p.add_argument("--no-ifd", action="store_true", help="skip the response-only pass (no ifd column values)")
    p.add_argument("--cache", help="score cache folder (default: .cache/score-cache)")
    p.add_argument("--chunk-examples", type=int, default=256, help="examples per committed scoring chunk")


def learn_config(args) -> "LearnConfig":  # noqa: F821
    from curation.learn import LearnConfig

    return LearnConfig(
        sources=args.sources, out=args.out, model=args.model, max_length=args.max_length,
        batch_tokens=args.batch_tokens, limit=args.limit, template=args.template, device=args.device,
        dtype=args.dtype, columns=args.columns, format=args.format, checkpoints=args.checkpoints,
        reference=args.reference, heldout_folds=args.heldout_folds, epochs=args.epochs, lr=args.lr,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        train_batch_tokens=args.train_batch_tokens, grad_accum=args.grad_accum, lora=args.lora,
        lora_r=args.lora_r, lora_alpha=2 * args.lora_r, seed=args.seed, n_clusters=args.clusters,
        ifd=not args.no_ifd, cache=args.cache, chunk_examples=args.chunk_examples,
    )


class TqdmProgress:
    """Shows a run's progress dicts as a tqdm bar (examples, tokens/s, ETA) plus phase lines."""

    def __init__(self):
        self.bar = None
        self.phase = None

    def __call__(self, p: dict) -> None:
        from tqdm import tqdm

        if p.get("phase") != self.phase:
            self.phase = p.get("phase")
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if self.phase in ("scoring",) or self.phase.startswith("scoring"):
                self.bar = tqdm(total=p.get("total"), initial=p.get("done", 0), unit="ex",
                                desc=self.phase, file=sys.stderr, dynamic_ncols=True)
            else:
                print(f"[{self.phase}]", file=sys.stderr, flush=True)
        if self.bar is not None and p.get("done") is not None:
            self.bar.n = p["done"]
            if p.get("tokens_per_s"):
                self.bar.set_postfix_str(f"{p['tokens_per_s']:.0f} tok/s", refresh=False)
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _with_progress(run, cfg, progress):
    """Run ``run(cfg, progress=...)`` with a terminal progress display that is always closed."""
    try:
        return run(cfg, progress=progress)
    finally:
        progress.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from curation.load import SourceError
    from curation.models import ModelError
    from curation.scores import RunMismatch

    try:
        if args.command == "score":
            from curation.scores import run_score

            _summary(_with_progress(run_score, score_config(args), TqdmProgress()))
        elif args.command == "jobs":
            return jobs_command(args)
        elif args.command == "learn":
            from curation.learn import run_learn

            _learn_summary(_with_progress(run_learn, learn_config(args), _LearnProgress()))
        elif args.command in ("select", "export"):
            return select_export_command(args)
        elif args.command == "prepare-model":
            from curation.models import resolve_model

            print(resolve_model(args.model))
    except (SourceError, ModelError, RunMismatch, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _summary(out) -> None:
    from curation.scores import read_run, read_scores

    df = read_scores(out)
    run = read_run(out)
    n_rej = sum(1 for _ in open(f"{out}/rejected.jsonl"))
    print(f"wrote {out}/scores.parquet ({len(df)} examples, {int(df['truncated'].sum())} truncated, "
          f"{int((~df['scored']).sum())} without assistant tokens), {out}/token_losses.parquet, "
          f"{out}/run.json; {n_rej} rejected rows in {out}/rejected.jsonl")
    by = df.groupby("domain")["loss"].agg(["count", "mean", "median"])
    print(by.to_string(float_format=lambda x: f"{x:.4f}"))
    print(f"model {run['model']['path']} on {run['model']['device']} ({run['model']['dtype']}), "
          f"{run['timings_s']['total']:.1f}s")


# ---------------------------------------------------------------------------------------------
# python -m curation jobs submit|list|status|cancel|resume|logs  (background jobs, curation.jobs)


def add_jobs_parser(sub) -> None:
    """The ``jobs`` command group."""
    p = sub.add_parser("jobs", help="run score/learn in a background worker: submit, list, status, cancel, resume, logs")
    jobs_sub = p.add_subparsers(dest="jobs_command", required=True)
    ws = argparse.ArgumentParser(add_help=False)
    ws.add_argument("--workspace", default=None,
                    help="workspace folder holding jobs.sqlite (default: $CURATION_WORKSPACE or ./workspace)")
    s = jobs_sub.add_parser(
        "submit", parents=[ws], help="start a job in a detached worker and print its id",
        description="Start `python -m curation KIND ARGS...` as a background job and print its id. "
                    "--out is optional (default WORKSPACE/runs/JOB_ID). "
                    "See `python -m curation jobs submit KIND --help` for the arguments.")
    s.add_argument("kind", help="score | learn")
    s.add_argument("args", nargs=argparse.REMAINDER, help="the same arguments as `python -m curation KIND`")
    jobs_sub.add_parser("list", parents=[ws], help="all jobs, newest first")
    q = jobs_sub.add_parser("status", parents=[ws], help="state and progress of a job")
    q.add_argument("job_id")
    q.add_argument("--json", action="store_true", help="print the status as JSON")
    q = jobs_sub.add_parser("cancel", parents=[ws], help="stop a queued or running job (committed work stays)")
    q.add_argument("job_id")
    q.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the worker before killing it")
    q = jobs_sub.add_parser("resume", parents=[ws], help="run an interrupted, failed or cancelled job again, "
                                                         "skipping its committed work")
    q.add_argument("job_id")
    q = jobs_sub.add_parser("logs", parents=[ws], help="print a job's log")
    q.add_argument("job_id")
    q.add_argument("--tail", type=int, default=None, help="only the last N lines")


def _job_kind_parser(kind: str):
    """The parser of the command ``kind`` (same arguments), with --out optional, and the function
    that builds its config from the parsed arguments (``score_config`` ...)."""
    from curation.jobs import KINDS, JobError

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    p, builder = commands.choices.get(kind), globals().get(f"{kind}_config")
    if kind not in KINDS or p is None or builder is None:
        known = [k for k in KINDS if k in commands.choices and f"{k}_config" in globals()]
        raise JobError(f"jobs submit: unknown kind {kind!r}; expected one of {', '.join(known)}")
    p.prog = f"python -m curation jobs submit {kind}"
    for a in p._actions:
        if a.dest == "out":
            a.required, a.default = False, ""
            a.help = "output folder (default: WORKSPACE/runs/JOB_ID)"
    p.add_argument("--workspace", default=None, help="workspace folder (default: $CURATION_WORKSPACE or ./workspace)")
    return p, builder


def jobs_command(args) -> int:
    from curation import jobs

    ws = args.workspace
    ws_flag = f" --workspace {ws}" if ws else ""
    if args.jobs_command == "submit":
        p, builder = _job_kind_parser(args.kind)
        kargs = p.parse_args(args.args)
        ws = kargs.workspace or ws
        ws_flag = f" --workspace {ws}" if ws else ""
        job_id = jobs.submit(args.kind, builder(kargs), workspace=ws)
        st = jobs.status(job_id, workspace=ws)
        print(job_id)
        where = (f"running (worker pid {st['pid']})" if st["state"] == "running"
                 else f"{st['state']} (position {st['queue_position']} in the {st['device']} queue)"
                 if st["state"] == "queued" else st["state"])
        print(f"job {job_id} {where} on {st['device']}; output {st['out']}\n"
              f"watch: python -m curation jobs status {job_id}{ws_flag}", file=sys.stderr)
    elif args.jobs_command == "list":
        _print_job_table(jobs.list_jobs(workspace=ws))
    elif args.jobs_command == "status":
        st = jobs.status(args.job_id, workspace=ws)
        if args.json:
            import json

            print(json.dumps(st, indent=2, default=str))
        else:
            _print_job(st, ws_flag)
    elif args.jobs_command == "cancel":
        st = jobs.cancel(args.job_id, workspace=ws, wait=args.wait)
        print(f"{st['id']} {st['state']}" + (f": {st['error']}" if st["error"] else ""))
    elif args.jobs_command == "resume":
        st = jobs.resume(args.job_id, workspace=ws)
        print(f"{st['id']} {st['state']}" + (f" (worker pid {st['pid']})" if st["state"] == "running" else ""))
    elif args.jobs_command == "logs":
        sys.stdout.write(jobs.logs(args.job_id, workspace=ws, tail=args.tail))
    return 0


def _fmt_time(ts) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _fmt_duration(s) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _fmt_progress(st: dict) -> str:
    if st["total"] is None:
        return "-"
    done = st["done"] or 0
    return f"{done}/{st['total']} ({100 * done / st['total']:.0f}%)" if st["total"] else f"{done}/0"


def _print_job(st: dict, ws_flag: str = "") -> None:
    print(f"{st['id']}  {st['kind']}  {st['state']}")
    line = f"  progress  {_fmt_progress(st)}, phase: {st['phase'] or '-'}"
    if st["tokens"]:
        line += f", {st['tokens']:,} tokens"
    if st["tokens_per_s"]:
        line += f", {st['tokens_per_s']:.0f} tok/s"
    if st["eta_s"] is not None and st["state"] == "running":
        line += f", ETA {_fmt_duration(st['eta_s'])}"
    print(line)
    print(f"  device    {st['device']}, worker pid {st['pid'] or '-'}, attempt {st['attempts']}"
          + (f", heartbeat {st['heartbeat_age_s']:.0f}s ago" if st["heartbeat_age_s"] is not None else "")
          + (f", position {st['queue_position']} in queue" if st["queue_position"] else ""))
    print(f"  times     created {_fmt_time(st['created'])}, started {_fmt_time(st['started'])}, "
          f"finished {_fmt_time(st['finished'])}, elapsed {_fmt_duration(st['elapsed_s'])}")
    print(f"  out       {st['out']}")
    print(f"  log       {st['log']}")
    if st["error"]:
        print(f"  error     {st['error']}")
    if st["state"] in ("interrupted", "failed", "cancelled"):
        print(f"  resume:   python -m curation jobs resume {st['id']}{ws_flag}")


def _print_job_table(rows: list[dict]) -> None:
    if not rows:
        print("no jobs")
        return
    cols = [("ID", lambda r: r["id"]), ("KIND", lambda r: r["kind"]), ("STATE", lambda r: r["state"]),
            ("PROGRESS", _fmt_progress), ("PHASE", lambda r: r["phase"] or "-"),
            ("DEVICE", lambda r: r["device"]), ("CREATED", lambda r: _fmt_time(r["created"])),
            ("ELAPSED", lambda r: _fmt_duration(r["elapsed_s"]))]
    table = [[h for h, _ in cols]] + [[str(f(r)) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


class _LearnProgress(TqdmProgress):
    """TqdmProgress plus a bar for training steps showing the training loss."""

    def __call__(self, p: dict) -> None:
        from tqdm import tqdm

        if not str(p.get("phase", "")).startswith("training"):
            return super().__call__(p)
        if p.get("phase") != self.phase:
            self.phase = p.get("phase")
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=p.get("total"), initial=p.get("done", 0), unit="step",
                            desc=self.phase, file=sys.stderr, dynamic_ncols=True)
        self.bar.n = p.get("done", 0)
        if p.get("train_loss") is not None:
            self.bar.set_postfix_str(f"loss {p['train_loss']:.4f} {p.get('tokens_per_s', 0):.0f} tok/s",
                                     refresh=False)
        self.bar.refresh()


def _learn_summary(out) -> None:
    from curation.scores import read_run, read_scores

    df = read_scores(out)
    run = read_run(out)
    print(f"wrote {out}/scores.parquet ({len(df)} examples, {int(df['scored'].sum())} scored, "
          f"{run['n_clusters']} S2L clusters), {out}/token_losses.parquet, {out}/run.json; "
          f"{run['n_rejected']} rejected rows in {out}/rejected.jsonl")
    cols = ["loss_base", "loss_ref", "davir", "rho", "ifd"]
    print(df.groupby("domain")[cols].median().to_string(float_format=lambda x: f"{x:.4f}"))
    better = (df["loss_ref"] < df["loss_base"]).mean()
    print(f"loss_ref < loss_base on {better:.1%} of rows; timings (s): {run['timings_s']}")


# ---------------------------------------------------------------------------------------------
# python -m curation select | export  (curation.selection, curation.export)


def _pairs(text: str) -> list[str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected SCORE=VALUE, got {text!r}")
    return text


def add_select_export_parsers(sub) -> None:
    """``select`` (a recipe applied to a run folder) and ``export`` (a selection to a training file)."""
    p = sub.add_parser("select", help="apply a selection recipe (method, budget, mix, thresholds) to a run folder")
    p.add_argument("run", metavar="RUN_DIR", help="folder of a score or learn run (scores.parquet, run.json)")
    p.add_argument("--recipe", help="recipe.yaml with the fields below; flags given here override it")
    p.add_argument("--method", help="davir | rho | ifd | ppl | loss | s2l | random (| davir_heldout | rho_heldout)")
    p.add_argument("--order", choices=["high", "low"], help="keep the highest or lowest scores (default per method)")
    p.add_argument("--budget", help="N examples, P%% of the pool, or Ntok (prompt + response tokens); default 10%%")
    p.add_argument("--mix", help="DOMAIN=SHARE,... summing to 1 (e.g. chat=0.5,math=0.5), or natural (default)")
    p.add_argument("--min", action="append", type=_pairs, metavar="SCORE=VALUE",
                   help="keep rows with SCORE >= VALUE (a score or any numeric column); repeatable")
    p.add_argument("--max", action="append", type=_pairs, metavar="SCORE=VALUE",
                   help="keep rows with SCORE <= VALUE, e.g. --max ifd=1; repeatable")
    p.add_argument("--fill", action="store_true", default=None,
                   help="spread a domain's shortfall over the other domains of the mix")
    p.add_argument("--seed", type=int, help="seed of random and s2l sampling (default 0)")
    p.add_argument("--s2l-clusters", type=int, help="s2l: re-cluster each domain's trajectories into N clusters")
    p.add_argument("--out", required=True, help="selection folder (recipe.yaml, selected.parquet, summary.json)")

    p = sub.add_parser("export", help="write a selection as a training file with a manifest")
    p.add_argument("selection", metavar="SEL_DIR", help="folder written by `select`")
    p.add_argument("--format", default="jsonl", choices=["jsonl", "parquet", "hf"])
    p.add_argument("--style", default="messages", choices=["original", "messages"],
                   help="original: records as in their sources; messages: {'messages': [...]} for TRL / LLaMA-Factory")
    p.add_argument("--out", required=True, help="export folder (data file + manifest.json)")


def select_recipe(args) -> "Recipe":  # noqa: F821
    """The recipe from ``--recipe`` (if any) with the flags given on the command line on top."""
    from curation.selection import Recipe, SelectionError, read_recipe

    fields = read_recipe(args.recipe).to_dict() if args.recipe else {}
    flags = {"method": args.method, "order": args.order, "budget": args.budget, "mix": args.mix,
             "min": args.min, "max": args.max, "fill": args.fill, "seed": args.seed,
             "s2l_clusters": args.s2l_clusters}
    if args.method and args.method != fields.get("method"):
        fields.pop("order", None)  # the old method's default order must not carry over
    fields.update({k: v for k, v in flags.items() if v is not None})
    if "method" not in fields:
        raise SelectionError("give --method (davir, rho, ifd, ppl, loss, s2l or random) or --recipe")
    return Recipe.from_dict(fields)


def select_export_command(args) -> int:
    if args.command == "select":
        from curation.selection import select_run

        out = select_run(args.run, select_recipe(args), args.out)
        summary = json.loads((out / "summary.json").read_text())
        for w in summary["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        t = summary["totals"]
        print(f"selected {t['examples']} of {summary['budget']['pool_examples']} examples "
              f"({t['tokens']} tokens; {t['eligible']} eligible) -> {out}/selected.parquet")
        col = summary["score"]["column"]
        for d, p in summary["domains"].items():
            line = f"  {d}: {p['selected']} examples, {p['tokens']} tokens (share {p['share']:.3g})"
            if col and col in summary["stats"]["selection"] and col != "s2l_cluster":
                sel = summary["stats"]["selection"][col]["by_domain"].get(d, {})
                rnd = summary["stats"].get("random", {}).get(col, {}).get("by_domain", {}).get(d, {})
                if sel.get("count"):
                    line += f"; mean {col} {sel['mean']:.4g}"
                    if rnd.get("count"):
                        line += f" (random baseline {rnd['mean']:.4g})"
            print(line)
    else:
        from curation.export import ExportConfig, export_selection

        cfg = ExportConfig(selection=args.selection, out=args.out, format=args.format, style=args.style)
        out = export_selection(cfg)
        m = json.loads((out / "manifest.json").read_text())
        by = ", ".join(f"{d} {c['examples']}" for d, c in m["counts"]["by_domain"].items())
        print(f"exported {m['counts']['examples']} examples ({by}) as {args.format}/{args.style} -> "
              f"{out}/{m['files']['data']}; manifest {out}/manifest.json")
    return 0

"""Command line: ``python -m curation COMMAND ...``.

Every command builds the same config object the dashboard and the job worker build, then calls
the library.  Errors the user can fix are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from curation import __version__
from curation.config import add_arguments, from_arguments
from curation.progress import format_duration


def build_parser() -> argparse.ArgumentParser:
    from curation.jobs.store import KINDS

    parser = argparse.ArgumentParser(prog="python -m curation", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"curation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for kind, (_, _, _, help_text) in KINDS.items():  # score, learn: one command per job kind
        add_arguments(sub.add_parser(kind, help=help_text), config_class(kind))
    p = sub.add_parser("prepare-model", help="convert the default (or a .gguf) model once into the cache")
    p.add_argument("--model", default="default")
    p = sub.add_parser("prepare-data", help="write the embedded default pool and its eval sets into the workspace")
    p.add_argument("--workspace", default=None, help="workspace folder (default: $CURATION_WORKSPACE or ./workspace)")
    p.add_argument("--force", action="store_true", help="rewrite the files even if they exist")
    add_jobs_parser(sub)
    add_select_export_parsers(sub)
    add_decisions_parser(sub)
    from curation.data.canary import CanaryConfig

    add_arguments(sub.add_parser("canary", help="write a copy of a pool with a share of known-bad examples (and the "
                                                "truth beside it), to measure which score finds them"), CanaryConfig)
    return parser


def config_class(kind: str):
    """The config dataclass of a job kind (imported without torch)."""
    from curation.jobs.store import kind_entry

    return kind_entry(kind)[0]


class TqdmProgress:
    """Shows a run's progress reports (:mod:`curation.progress`) as tqdm bars: a bar for every phase
    that counts done of a total in a unit (examples while scoring or evaluating, optimizer steps,
    with the training loss, while training, ...), and a line for every other phase."""

    SHORT = {"examples": "ex", "steps": "step"}  # tqdm shows the unit per second: ex/s, step/s

    def __init__(self):
        self.bar = None
        self.phase = None

    def __call__(self, **p) -> None:
        from tqdm import tqdm

        phase = str(p.get("phase") or "")
        if phase != self.phase:
            self.phase = phase
            self.close()
            if not p.get("unit"):
                print(f"[{phase}]", file=sys.stderr, flush=True)
        if self.bar is None and p.get("unit") and p.get("total") is not None:  # a unit is reported with the work
            unit = str(p["unit"])
            self.bar = tqdm(total=p["total"], initial=p.get("done") or 0, unit=self.SHORT.get(unit, unit),
                            desc=phase, file=sys.stderr, dynamic_ncols=True)
        if self.bar is None or p.get("done") is None:
            return
        self.bar.n = p["done"]
        if p.get("running"):  # trainings side by side on Ray workers: each one's steps done/total
            self.bar.set_postfix_str(str(p["running"])[:80], refresh=False)
        elif p.get("train_loss") is not None:
            self.bar.set_postfix_str(f"loss {p['train_loss']:.4f} {p.get('tokens_per_s') or 0:.0f} tok/s",
                                     refresh=False)
        elif p.get("tokens_per_s"):
            workers = f", {p['workers']} Ray workers" if p.get("workers") is not None else ""
            self.bar.set_postfix_str(f"{p['tokens_per_s']:.0f} tok/s{workers}", refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from curation.atomic import AtomicError
    from curation.jobs.store import KINDS, JobError, kind_entry
    from curation.data.load import SourceError
    from curation.scoring.models import ModelError

    try:
        if args.command in KINDS:
            cls, run = kind_entry(args.command)
            progress = TqdmProgress()
            try:
                out = run(from_arguments(cls, args), progress=progress)
            finally:
                progress.close()
            {"validate": validate_summary, "mix": mix_summary}.get(args.command, run_summary)(out)
        elif args.command == "jobs":
            return jobs_command(args)
        elif args.command in ("select", "export"):
            return select_export_command(args)
        elif args.command == "decisions":
            return decisions_command(args)
        elif args.command == "canary":
            return canary_command(args)
        elif args.command == "prepare-data":
            from curation.data.default_data import PAIR_FOLDERS, prepare_default_data
            from curation.system import workspace_root

            for path in prepare_default_data(workspace_root(args.workspace), force=args.force):
                unit = "pairs" if path.parent.name in PAIR_FOLDERS else "records"
                print(f"default data: {path} ({sum(1 for _ in path.open())} {unit})")
        elif args.command == "prepare-model":
            from curation.scoring.models import resolve_model

            print(resolve_model(args.model))
    except (SourceError, ModelError, JobError, AtomicError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (| head): __main__ ends quietly
        raise
    except OSError as e:  # a folder that cannot be written, a file that cannot be read: one line, no traceback
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    return 0


def os_error_line(e: OSError) -> str:
    """``PATH: what the system said`` (and what to do for the usual causes)."""
    where = e.filename or ""
    what = e.strerror or str(e)
    hint = {PermissionError: "; choose a folder you can write to", FileExistsError: "; choose another name",
            IsADirectoryError: "; give a file", NotADirectoryError: "; a part of the path is a file"}.get(type(e), "")
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"


def run_summary(out) -> None:
    """What a finished score or learn run wrote, with its scores' medians per domain."""
    from curation.runs.folder import Run

    run = Run(out)
    df, meta = run.scores(), run.meta()
    learn = meta.get("kind") == "learn"
    from curation.scores import LEARN_COLUMNS, PAIR_COLUMNS

    if run.holds_pairs and learn:
        pair_learn_summary(out, run, df, meta)
        return
    if run.holds_pairs and not learn:
        print(f"wrote {out}/scores.parquet ({len(df)} pairs, {int(df['truncated'].sum())} with a truncated response), "
              f"{out}/token_losses.parquet, {out}/run.json; {len(run.rejected())} rejected rows in {out}/rejected.jsonl")
        print(df.groupby("domain")[list(PAIR_COLUMNS)].median().to_string(float_format=lambda x: f"{x:.4f}"))
        print(f"the base model prefers chosen (margin_sum > 0) in {(df['margin_sum'] > 0).mean():.1%} of pairs; "
              f"model {meta['model']['path']} on {meta['model']['device']}, {meta['timings_s']['total']:.1f}s")
        return
    what = (f"{int(df['scored'].sum())} scored, {meta['n_clusters']} S2L clusters" if learn else
            f"{int(df['truncated'].sum())} truncated, {int((~df['scored']).sum())} without assistant tokens")
    print(f"wrote {out}/scores.parquet ({len(df)} examples, {what}), {out}/token_losses.parquet, {out}/run.json; "
          f"{len(run.rejected())} rejected rows in {out}/rejected.jsonl")
    cols = [c for c in LEARN_COLUMNS if c != "ppl_base"] if learn else ["loss"]
    print(df.groupby("domain")[cols].agg(["count", "mean", "median"] if not learn else "median")
          .to_string(float_format=lambda x: f"{x:.4f}"))
    if learn:
        print(f"loss_ref < loss_base on {(df['loss_ref'] < df['loss_base']).mean():.1%} of rows; "
              f"timings (s): {meta['timings_s']}")
        for d, v in (meta.get("stability") or {}).get("domains", {}).items():
            print(f"stability over {meta['stability']['runs']} reference runs, {d}: " + ", ".join(
                f"{s} Spearman {v[s]['spearman_mean']:.3f} Kendall {v[s]['kendall_mean']:.3f}"
                for s in ("davir", "rho") if v[s]["spearman_mean"] is not None))
    else:
        print(f"model {meta['model']['path']} on {meta['model']['device']} ({meta['model']['dtype']}), "
              f"{meta['timings_s']['total']:.1f}s")


def pair_learn_summary(out, run, df, meta) -> None:
    """What a finished pair learn run wrote: the learn columns' medians per domain, how often the
    trained reference prefers chosen, the pairs left out of training and the DPO curve's last step."""
    from curation.scores import PAIR_HELDOUT_COLUMNS, PAIR_LEARN_COLUMNS

    print(f"wrote {out}/scores.parquet ({len(df)} pairs, {int(df['scored'].sum())} scored), "
          f"{out}/token_losses.parquet, {out}/train_curve.parquet, {out}/run.json; {len(run.rejected())} rejected "
          f"rows in {out}/rejected.jsonl")
    cols = [c for c in (*PAIR_LEARN_COLUMNS, *PAIR_HELDOUT_COLUMNS) if c in df.columns]
    print(df.groupby("domain")[cols].median().to_string(float_format=lambda x: f"{x:.4f}"))
    last = meta["train"]["loss_curve"][-1] if meta["train"]["loss_curve"] else {}
    print(f"DPO ({meta['dpo']['loss']}, beta {meta['dpo']['beta']:g}, lr {meta['dpo']['lr']:g}): "
          f"{meta['train']['total_steps']} steps, last loss {last.get('loss', float('nan')):.4f}, reward accuracy "
          f"{last.get('reward_accuracy', float('nan')):.2f}; the trained reference raises chosen over rejected "
          f"(reward_margin > 0) in {(df['reward_margin'] > 0).mean():.1%} of pairs; {len(meta['not_trained'])} "
          f"pair(s) left out of training (run.json not_trained); timings (s): {meta['timings_s']}")
    for d, v in (meta.get("heldout_agreement") or {}).items():
        print(f"held-out vs in-sample ranking, {d}: " + ", ".join(
            f"{s} Spearman {a['spearman']:.3f}" for s, a in v.items() if a.get("spearman") is not None))


def validate_summary(out) -> None:
    """The verdicts of a finished validation, one line per comparison, and where the report is."""
    from curation.validation.validate import Validation

    from curation.validation.verdicts import comparison_line

    rep = Validation(out).report()
    by_measure = rep["statistics"].get("pairs")  # a pair validation: every judged measure, the primary first
    for c in ([c for st in by_measure.values() for c in st["comparisons"]] if by_measure
              else rep["statistics"]["token"]["comparisons"]):
        print(f"{c['measure']}: {comparison_line(c)}" if by_measure else comparison_line(c))
    for r in (rep.get("pairs") or {}).get("length_correlation", []):
        num = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
        print(f"{r['candidate']}: Pearson(reward margin, length difference) = {num(r['pearson'])} "
              f"[{num(r['lo'])}, {num(r['hi'])}] over {r['n_pairs']} eval pairs and {r['n_seeds']} seed(s)")
    if (rep.get("pairs") or {}).get("length_bias_comparisons"):
        from curation.validation.pair_eval import length_bias_line

        for c in rep["pairs"]["length_bias_comparisons"]:
            print(f"length bias: {length_bias_line(c)}")
    for note in rep.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {out}/report.md, {out}/report.json, {out}/results.parquet, {out}/curves.parquet "
          f"({rep['seconds']:.0f} s)")


def mix_summary(out) -> None:
    """A finished mix study: the law's check per eval set, the recommended mix, what to run next."""
    from curation.validation.mix import MixStudy

    rep = MixStudy(out).report()
    for note in rep.get("notes", []):
        print(f"note: {note}")
    for e in rep["evals"]:
        print(rep["fit"][e]["verdict"])
    rec = rep["recommended"]
    print(f"recommended mix ({rep['objective']['kind']}): {rep['commands']['mix']}; predicted "
          + ", ".join(f"{e} {v['value']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}]" for e, v in rec["predicted"].items())
          + "; at the natural mix " + ", ".join(f"{e} {v['value']:.4f}" for e, v in rep["at_natural"].items()))
    if rep.get("vs_natural"):
        print("recommended - natural (paired over the bootstrap): " + ", ".join(
            f"{e} {v['value']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]" + (f" {v['verdict']}" if v.get("verdict") else "")
            for e, v in rep["vs_natural"].items()))
    print(f"validate it against the natural mix:\n  {rep['commands']['select']}\n  {rep['commands']['validate']}")
    print(f"wrote {out}/report.md, {out}/report.json, {out}/results.parquet, {out}/curves.parquet "
          f"({rep['seconds']:.0f} s)")


# ---------------------------------------------------------------------------------------------
# python -m curation jobs submit|list|status|cancel|resume|logs  (background jobs, curation.jobs.store)


def add_jobs_parser(sub) -> None:
    """The ``jobs`` command group."""
    from curation.jobs.store import KINDS

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
    s.add_argument("kind", help=" | ".join(KINDS))
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
    q.add_argument("--tail", type=positive_int, default=None, help="only the last N lines")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return v


def job_kind_parser(kind: str) -> argparse.ArgumentParser:
    """The parser of ``python -m curation KIND`` (same arguments, built from the same config
    class), with --out optional and --workspace, for ``jobs submit KIND``."""
    from curation.jobs.store import KINDS, JobError

    if kind not in KINDS:
        raise JobError(f"jobs submit: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    p = argparse.ArgumentParser(prog=f"python -m curation jobs submit {kind}", description=KINDS[kind][3])
    add_arguments(p, config_class(kind), optional_out=True)
    p.add_argument("--workspace", default=None, help="workspace folder (default: $CURATION_WORKSPACE or ./workspace)")
    return p


def jobs_command(args) -> int:
    from curation.jobs import store as jobs

    ws = args.workspace
    ws_flag = f" --workspace {ws}" if ws else ""
    if args.jobs_command == "submit":
        kargs = job_kind_parser(args.kind).parse_args(args.args)
        ws = kargs.workspace or ws
        ws_flag = f" --workspace {ws}" if ws else ""
        cfg = from_arguments(config_class(args.kind), kargs, out=getattr(kargs, "out", ""))
        job_id = jobs.submit(args.kind, cfg, workspace=ws)
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
        line += f", ETA {format_duration(st['eta_s'])}"
    print(line)
    print(f"  device    {st['device']}, worker pid {st['pid'] or '-'}, attempt {st['attempts']}"
          + (f", heartbeat {st['heartbeat_age_s']:.0f}s ago" if st["heartbeat_age_s"] is not None else "")
          + (f", position {st['queue_position']} in queue" if st["queue_position"] else ""))
    print(f"  times     created {_fmt_time(st['created'])}, started {_fmt_time(st['started'])}, "
          f"finished {_fmt_time(st['finished'])}, elapsed {format_duration(st['elapsed_s'])}")
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
            ("ELAPSED", lambda r: format_duration(r["elapsed_s"]))]
    table = [[h for h, _ in cols]] + [[str(f(r)) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


# ---------------------------------------------------------------------------------------------
# python -m curation select | export  (curation.selection, curation.export)


def add_select_export_parsers(sub) -> None:
    """``select`` (a recipe applied to a run folder) and ``export`` (a selection to a training file)."""
    from curation.export.writer import ExportConfig
    from curation.selection.recipe import Recipe

    p = sub.add_parser("select", help="apply a selection recipe (method, budget, mix, thresholds) to a run folder")
    p.add_argument("run", metavar="RUN_DIR", help="folder of a score or learn run (scores.parquet, run.json)")
    p.add_argument("--recipe", help="recipe.yaml with the fields below; flags given here override it")
    add_arguments(p, Recipe, all_optional=True)
    p.add_argument("--out", required=True, help="selection folder (recipe.yaml, selected.parquet, summary.json)")
    add_arguments(sub.add_parser("export", help="write a selection as a training file with a manifest"), ExportConfig)


def select_recipe(args) -> "Recipe":  # noqa: F821
    """The recipe from ``--recipe`` (if any) with the flags given on the command line on top."""
    from dataclasses import fields

    from curation.scores import METHODS
    from curation.selection.recipe import Recipe, SelectionError

    values = {}
    if args.recipe:
        try:
            values = Recipe.read(args.recipe).to_dict()
        except SelectionError as e:
            raise SelectionError(f"--recipe {e}") from None
    flags = {f.name: getattr(args, f.name) for f in fields(Recipe) if f.init and hasattr(args, f.name)}
    if flags.get("method") and flags["method"] != values.get("method"):
        values.pop("order", None)  # the old method's default order must not carry over
    values.update(flags)
    if "method" not in values:
        raise SelectionError(f"give --method ({', '.join(METHODS)}) or --recipe")
    if values["method"] == "target" and not values.get("target"):
        values["target"] = default_targets()
    return Recipe.from_dict(values)


def default_targets() -> dict[str, list[str]]:
    """The workspace's dev sets as targets (``dev/DOMAIN.jsonl``...), when ``--target`` is not given."""
    from curation.jobs.workspace import dev_targets

    targets = dev_targets()
    if targets:
        print("targets: " + ", ".join(f"{d}={p}" for d, paths in targets.items() for p in paths)
              + " (the workspace's dev sets)", file=sys.stderr)
    return targets


def select_export_command(args) -> int:
    if args.command == "select":
        from curation.runs.folder import Run
        from curation.selection.folder import Selection, select_run
        from curation.selection.summary import summary_lines
        from curation.validation.evidence import evidence_lines, selection_evidence

        recipe = select_recipe(args)
        run = Run(args.run)
        run.require_finished()
        out = select_run(args.run, recipe, args.out, evidence=selection_evidence(run, recipe))
        summary = Selection(out).summary()
        for w in summary["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        for line in summary_lines(summary, out):
            print(line)
        for line in evidence_lines(summary.get("evidence")):
            print(line)
    else:
        from curation.export.writer import ExportConfig, export_selection

        cfg = from_arguments(ExportConfig, args)
        notes: list[str] = []
        out = export_selection(cfg, notes=notes)
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
        m = json.loads((out / "manifest.json").read_text())
        by = ", ".join(f"{d} {c['examples']}" for d, c in m["counts"]["by_domain"].items())
        unit = "pairs" if m.get("data") == "pairs" else "examples"
        print(f"exported {m['counts']['examples']} {unit} ({by}) as {cfg.format}/{m['style']} -> "
              f"{out}/{m['files']['data']}; manifest {out}/manifest.json")
        for line in (m.get("evidence") or {}).get("validated") or ["not validated: no validation of this selection in "
                                                                    "the workspace"]:
            print(f"evidence: {line}")
    return 0


# ---------------------------------------------------------------------------------------------
# python -m curation decisions add|remove|list|export|import|undo  (curation.selection.decisions)


def add_decisions_parser(sub) -> None:
    """The ``decisions`` command group: the curator's exclude / keep / tag decisions per example."""
    p = sub.add_parser("decisions", help="exclude, keep or tag examples by id; every selection honours the decisions; "
                                         "share them as a JSONL file")
    dsub = p.add_subparsers(dest="decisions_command", required=True)
    ws = argparse.ArgumentParser(add_help=False)
    ws.add_argument("--workspace", default=None,
                    help="workspace folder holding decisions.sqlite (default: $CURATION_WORKSPACE or ./workspace)")
    a = dsub.add_parser("add", parents=[ws], help="record a decision, tags or a note for examples")
    a.add_argument("ids", nargs="*", metavar="EXAMPLE_ID", help="example ids (as in a run's tables)")
    a.add_argument("--ids-from", metavar="FILE", help="also the ids in FILE, one a line")
    kind = a.add_mutually_exclusive_group()
    kind.add_argument("--exclude", action="store_const", const="exclude", dest="decision",
                      help="never select these examples")
    kind.add_argument("--keep", action="store_const", const="keep", dest="decision",
                      help="always select these examples (first in their domain, counted against its budget)")
    kind.add_argument("--clear", action="store_const", const=None, dest="decision",
                      help="remove the exclude/keep decision (tags and note stay)")
    a.set_defaults(decision="")
    a.add_argument("--tag", action="append", default=[], help="add a tag (repeatable)")
    a.add_argument("--untag", action="append", default=[], help="remove a tag (repeatable)")
    a.add_argument("--note", default=None, help="a note (replaces the example's note)")
    a.add_argument("--allow-unknown", action="store_true",
                   help="record ids that are in no run of the workspace (e.g. for a pool not scored yet)")
    r = dsub.add_parser("remove", parents=[ws], help="forget every decision, tag and note of examples")
    r.add_argument("ids", nargs="+", metavar="EXAMPLE_ID")
    ls = dsub.add_parser("list", parents=[ws], help="the decisions, newest first")
    ls.add_argument("--kind", choices=("exclude", "keep", "tagged", "all"), default="all")
    ls.add_argument("--tag", default=None, help="only examples with this tag")
    ls.add_argument("--run", metavar="RUN_DIR", default=None, help="say for each example whether this run holds it")
    ls.add_argument("--json", action="store_true", help="one JSON object a line")
    e = dsub.add_parser("export", parents=[ws], help="write every decision to a JSONL file (the import format)")
    e.add_argument("file")
    i = dsub.add_parser("import", parents=[ws], help="add the decisions of a JSONL file (a later line for an "
                                                     "example replaces an earlier one)")
    i.add_argument("file")
    dsub.add_parser("undo", parents=[ws], help="undo the last change to the decisions")


def decisions_command(args) -> int:
    from curation.jobs.workspace import list_runs
    from curation.runs.folder import Run
    from curation.selection.decisions import DecisionStore, check_ids, filter_decisions, read_ids, where_found

    store = DecisionStore(args.workspace)
    c = args.decisions_command
    if c == "add":
        ids = list(args.ids)
        if args.ids_from:
            try:
                ids += read_ids(args.ids_from)
            except ValueError as e:
                raise ValueError(f"--ids-from {e}") from None
        if not ids:
            raise ValueError("give example ids (or --ids-from FILE)")
        if args.decision == "" and not args.tag and not args.untag and args.note is None:
            raise ValueError("say what to record: --exclude, --keep, --clear, --tag, --untag or --note")
        ids = check_ids(ids)
        if not args.allow_unknown:
            runs = [Run(r.path) for r in list_runs(store.ws)]
            found = where_found(ids, runs)
            unknown = [i for i in ids if not found[i]]
            if unknown:
                raise ValueError(f"example {unknown[0]} is in no run of {store.ws} ({len(runs)} run(s) searched"
                                 + (f", {len(unknown)} unknown id(s) in all" if len(unknown) > 1 else "")
                                 + "); check the id, or give --allow-unknown to record it anyway")
        n = store.set(ids, decision=args.decision, add_tags=args.tag, remove_tags=args.untag, note=args.note,
                      page="cli")
        print(f"recorded for {n} example(s) in {store.path}: {store.can_undo()}")
    elif c == "remove":
        n = store.remove(args.ids, page="cli")
        print(f"removed the decisions of {n} example(s)" + ("" if n == len(set(args.ids)) else
                                                            f" ({len(set(args.ids)) - n} had none)"))
    elif c == "list":
        df = filter_decisions(store.table(), kinds=[args.kind] if args.kind in ("exclude", "keep") else (),
                              tagged=args.kind == "tagged", tags=[args.tag] if args.tag else ())
        if args.run:  # a folder that is not a finished run would mark every decision "not in this run"
            Run(args.run).require_finished()
        found = where_found(df["example_id"].tolist(), [Run(args.run)]) if args.run else None
        for r in df.itertuples(index=False):
            where = None if found is None else (found[r.example_id][0][1] if found[r.example_id] else None)
            if args.json:
                obj = {"example_id": r.example_id, "decision": r.decision, "tags": r.tags, "note": r.note,
                       "page": r.page, "updated": r.updated}
                if found is not None:
                    obj["in_run"], obj["domain"] = where is not None, where
                print(json.dumps(obj, ensure_ascii=False, allow_nan=False))
            else:
                run_part = "" if found is None else ("  " + (f"in run ({where})" if where else "not in this run"))
                print(f"{r.example_id}  {r.decision or '-':<7}  {','.join(r.tags) or '-'}{run_part}"
                      + (f"  note: {r.note}" if r.note else ""))
        if not args.json:
            print(f"{len(df)} decision(s) in {store.path}", file=sys.stderr)
    elif c == "export":
        n = store.export_jsonl(args.file)
        print(f"wrote {n} decision(s) to {args.file}")
    elif c == "import":
        n = store.import_jsonl(args.file, page="import")
        print(f"imported {n} decision(s) from {args.file} into {store.path}")
    elif c == "undo":
        what = store.undo()
        print(f"undid: {what}" if what else "nothing to undo")
    return 0


def canary_command(args) -> int:
    """``python -m curation canary``: the corrupted copy, its counts, and the command that scores it."""
    from curation.data.canary import MANIFEST, CanaryConfig, plant

    out = plant(from_arguments(CanaryConfig, args), progress=TqdmProgress())
    m = json.loads((out / MANIFEST).read_text())
    for w in m["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for s in m["sources"]:
        if s["n_not_copied"]:
            print(f"note: {s['source']}: {s['n_not_copied']} record(s) the loader rejects (or exact duplicates) are "
                  "not in the copy", file=sys.stderr)
    for d, c in m["counts"].items():
        kinds = ", ".join(f"{k} {c[k]}" for k in m["kinds"] if c.get(k))
        print(f"{d}: {c['corrupted']} of {c['examples']} examples corrupted ({kinds})")
    print(f"wrote {out}/ ({', '.join(s['file'] for s in m['sources'] if s['file'])}, canary_truth.jsonl, canary.json); "
          "score it:\n"
          f"  {m['learn_with']} --out RUN_DIR")
    return 0

"""Command line: ``python -m curation COMMAND ...``.

Every command builds the same config object the dashboard and the job worker build, then calls
the library.  Errors the user can fix are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per forward pass")
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

    p = sub.add_parser("prepare-model", help="convert the default (or a .gguf) model once into the cache")
    p.add_argument("--model", default="default")
    return parser


def score_config(args) -> "ScoreConfig":  # noqa: F821
    from curation.scores import ScoreConfig

    return ScoreConfig(
        sources=args.sources, out=args.out, model=args.model, max_length=args.max_length,
        batch_tokens=args.batch_tokens, limit=args.limit, template=args.template, device=args.device,
        dtype=args.dtype, columns=args.columns, format=args.format, chunk_examples=args.chunk_examples,
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from curation.load import SourceError
    from curation.models import ModelError
    from curation.scores import RunMismatch

    try:
        if args.command == "score":
            from curation.scores import run_score

            progress = TqdmProgress()
            try:
                out = run_score(score_config(args), progress=progress)
            finally:
                progress.close()
            _summary(out)
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

"""Pair scoring benchmark: a pair score run against scoring the same pairs as two SFT examples each.

For each data set (the default CHAMP pairs; LLaMA-Factory's dpo_en_demo when ../shared/data holds
it), two ``python -m curation score`` runs on the default model, each in its own process with its
own empty ``--cache``:

* pairs: the pair score run (a pair's two responses form one batch, its prompt runs once);
* sft:   the plain SFT pass over the 2N conversations prompt + response (``Pair.sft_messages``)
         of the pairs the pair run kept (a response two pairs share is one conversation in both).

Both do the same work: what is counted is each pair's prompt + chosen + rejected tokens
(``len(prompt + chosen) + len(prompt + rejected) - len(prompt)``, the template's tokens included),
so tokens/s of the two runs compare directly (the SFT run also computes each prompt a second time;
its own token count is shown beside).  The time is the scoring pass's (run.json ``timings_s.score``:
the model's forward passes and the cache commits; loading is left out); peak RSS is each process's.
Per response, the pair run's loss_chosen / loss_rejected are checked against the SFT run's loss of
that conversation (one-turn prompts: the same tokens).

    python bench/bench_pairs.py [--pairs 300] [--max-length 2048] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO = ROOT.parent / "shared" / "data" / "dpo_en_demo" / "dpo_en_demo.json"
RSS = ("import resource, runpy, sys; f = sys.argv.pop(1); sys.argv[0] = 'curation'\n"
       "try:\n    runpy.run_module('curation', run_name='__main__')\n"
       "finally:\n    open(f, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))")


def score(source: Path, out: Path, cache: Path, limit: int | None, max_length: int) -> dict:
    """One ``score`` run in its own process: the scoring pass's seconds and the peak RSS (MB)."""
    rss = out.with_suffix(".rss")
    cmd = [sys.executable, "-c", RSS, str(rss), "score", str(source), "--out", str(out), "--cache", str(cache),
           "--max-length", str(max_length)] + (["--limit", str(limit)] if limit else [])
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    meta = json.loads((out / "run.json").read_text())
    return {"seconds": meta["timings_s"]["score"], "peak_rss_mb": int(rss.read_text()) / 1024}


def pair_work(pairs, max_length: int) -> tuple[int, int]:
    """``(prompt + chosen + rejected tokens, tokens of the distinct conversations)`` of ``pairs``."""
    from curation.data.templates import encode_many, resolve_template
    from curation.scoring.models import load_tokenizer, resolve_model

    tok = load_tokenizer(str(resolve_model("default")))
    enc = encode_many(tok, resolve_template(tok), [p.sft_messages(s) for p in pairs for s in ("chosen", "rejected")],
                      max_length)
    work = sum(len(enc[2 * k].input_ids) + len(enc[2 * k + 1].input_ids) - enc[2 * k].response_start
               for k in range(len(pairs)))
    ids = [p.sft_id(s) for p in pairs for s in ("chosen", "rejected")]
    return work, sum(len(e.input_ids) for e in {i: e for i, e in zip(ids, enc)}.values())


def bench(name: str, source: Path, limit: int, max_length: int, repeats: int, work_dir: Path) -> dict:
    """The pair run and the SFT run over the same pairs, ``repeats`` times each (fastest kept)."""
    import pandas as pd

    from curation.data.load import SourceSpec
    from curation.data.pairs import load_pairs

    runs: dict[str, dict] = {}
    for r in range(repeats):
        out = work_dir / f"{name}-pairs-{r}"
        got = score(source, out, work_dir / f"cache-{name}-pairs-{r}", limit, max_length)
        if r == 0:  # the SFT file: the 2N conversations of the pairs the pair run kept
            kept = set(pd.read_parquet(out / "scores.parquet")["pair_id"])
            pairs = [p for p in load_pairs([SourceSpec(str(source))], limit=limit).pairs if p.pair_id in kept]
            sft = work_dir / f"{name}-sft.jsonl"
            sft.write_text("".join(json.dumps({"messages": p.sft_messages(s)}) + "\n"
                                   for p in pairs for s in ("chosen", "rejected")))
            pair_scores = pd.read_parquet(out / "scores.parquet").set_index("pair_id")
        runs["pairs"] = min(runs.get("pairs", got), got, key=lambda x: x["seconds"])
        out = work_dir / f"{name}-sft-{r}"
        got = score(sft, out, work_dir / f"cache-{name}-sft-{r}", None, max_length)
        if r == 0:
            sft_loss = pd.read_parquet(out / "scores.parquet").set_index("example_id")["loss"]
        runs["sft"] = min(runs.get("sft", got), got, key=lambda x: x["seconds"])
    work, conv_tokens = pair_work(pairs, max_length)
    one_turn = [p for p in pairs if not any(m["role"] == "assistant" for m in p.prompt)]
    diff = max((abs(pair_scores.loc[p.pair_id, f"loss_{s}"] - sft_loss[p.sft_id(s)])
                for p in one_turn for s in ("chosen", "rejected")), default=float("nan"))
    return {"data": name, "n_pairs": len(pairs), "one_turn": len(one_turn), "work_tokens": work,
            "conversation_tokens": conv_tokens, "max_loss_diff_one_turn": diff, "modes": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=300, help="records of each pair source")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per mode (each with an empty cache); the fastest counts")
    args = ap.parse_args()

    from curation.data.default_data import prepare_default_data

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as tmp:
        work_dir = Path(tmp)
        prepare_default_data(work_dir / "ws")
        sets = [("default pairs", work_dir / "ws" / "pairs" / "math.jsonl")]
        if DEMO.is_file():
            sets.append(("dpo_en_demo", DEMO))
        else:
            print(f"{DEMO} is not next to this clone: the default pairs only", file=sys.stderr)
        for name, source in sets:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.append(bench(name.replace(" ", "-"), source, args.pairs, args.max_length, args.repeats, work_dir))

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_pairs.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"\nmax length {args.max_length}; tokens = each pair's prompt + chosen + rejected (both modes do this "
          f"work; sft also runs each prompt twice: its own tokens in brackets); fastest of {args.repeats}\n")
    print(f"{'data':<15}{'mode':<7}{'pairs':>7}{'tokens':>10}{'seconds':>9}{'tokens/s':>10}{'pairs/s':>9}"
          f"{'peak RSS MB':>13}")
    for r in results:
        for mode in ("pairs", "sft"):
            m = r["modes"][mode]
            own = f" [{r['conversation_tokens'] / m['seconds']:.0f}]" if mode == "sft" else ""
            print(f"{r['data']:<15}{mode:<7}{r['n_pairs']:>7}{r['work_tokens']:>10}{m['seconds']:>9.1f}"
                  f"{r['work_tokens'] / m['seconds']:>10.0f}{r['n_pairs'] / m['seconds']:>9.2f}{m['peak_rss_mb']:>13.0f}"
                  f"{own}")
        print(f"{r['data']}: pair scoring {r['modes']['sft']['seconds'] / r['modes']['pairs']['seconds']:.2f}x the SFT pass's speed; "
              f"the SFT pass computes {r['conversation_tokens'] / r['work_tokens']:.2f}x the tokens; max |loss "
              f"difference| on the {r['one_turn']} one-turn pairs {r['max_loss_diff_one_turn']:.1e}")


if __name__ == "__main__":
    main()

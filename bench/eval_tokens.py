"""Token counts of the default eval sets and pool with the default model's tokenizer and chat
template, and the scoring time they imply (``--rate`` tokens/s; ~600 on 2 CPU cores).

    python bench/eval_tokens.py [--rate 600]      # CURATION_CACHE=... where the model was prepared
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.default_eval import default_eval_records, default_pool_records  # noqa: E402
from curation.load import normalise  # noqa: E402
from curation.models import cache_dir  # noqa: E402
from curation.templates import encode_many, resolve_template  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=600.0, help="scoring tokens per second")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    found = sorted(glob.glob(str(cache_dir() / "models" / "SmolLM2-135M-Instruct*")))
    if not found:
        sys.exit("the default model is not prepared; run `make setup` first")
    tok = AutoTokenizer.from_pretrained(found[0])
    tpl = resolve_template(tok, "auto")
    ev, pool = default_eval_records(), default_pool_records()
    total = 0
    for name, recs, fmt in [("eval chat", ev["chat"], "sharegpt"), ("eval math", ev["math"], "gsm8k"),
                            ("pool chat", pool["chat"], "sharegpt"), ("pool math", pool["math"], "gsm8k")]:
        msgs = [normalise(r, fmt) for r in recs]
        enc = encode_many(tok, tpl, msgs, 10**9)
        full = [e.n_tokens_full for e in enc]
        resp = [e.n_response_tokens for e in enc]
        chars = sum(len(m["content"]) for ms in msgs for m in ms)
        if name.startswith("eval"):
            total += sum(full)
        print(f"{name}: {len(recs)} examples, {sum(full)} tokens with the template (mean {statistics.mean(full):.0f}, "
              f"max {max(full)}), {sum(resp)} assistant tokens, characters/4 = {chars // 4}; "
              f"scoring {sum(full) / args.rate:.0f} s")
    print(f"eval sets together: {total} tokens = {total / args.rate:.0f} s per trained model at {args.rate:.0f} tokens/s")


if __name__ == "__main__":
    main()

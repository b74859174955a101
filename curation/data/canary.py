"""Canaries: known-bad examples planted in a copy of a pool, so a score can be checked against the truth.

    load the pool -> per domain, pick ``rate`` of its examples (seeded) and split them over the kinds
    -> corrupt each one's last answer -> write the copy (one JSONL per source, same record shape)
    + canary_truth.jsonl (every example: clean or its kind) + canary.json (settings, counts)

Kinds (each changes the last assistant turn only, so every corrupted record still loads as a valid
example of its source's format):

==================  ===============================================================================
``swap``            the answer of another corrupted example of the same domain (a cycle over the
                    swapped ones, so none keeps its own)
``truncate``        the answer cut after 20-50% of its words (seeded per example)
``wrong-number``    the numbers of the final answer changed (``#### N``, ``\\boxed{...}`` or "the
                    answer is ..."), so the reasoning no longer matches; math-like answers only
``refusal``         the answer replaced by a refusal or boilerplate
``shuffle-words``   the answer's words in a seeded random order
==================  ===============================================================================

A kind that cannot corrupt an example (no final-answer marker for ``wrong-number``, fewer than five
words to truncate or three to shuffle, an answer another example also has for ``swap``) is not used
on it; when a domain has too few such examples, the rest of that kind's part goes to the other
kinds and ``canary.json`` says so.  The counts per domain are exact: round-half-up of ``rate``
times the domain's examples, split over the kinds by the largest-remainder method.

**Preference pairs.**  On a pool of pairs the one kind is ``swapped``: chosen and rejected exchanged
(the commonest label noise in preference data; the ratings stay in their places, as an annotator's
flipped label would leave them), ``rate`` of each domain's pairs, seeded as above.  The copy holds
every pair as a TRL conversational row (one JSONL per source); a swapped pair has another pair id
(ids are order-sensitive), and the truth maps that new id (``original_example_id``: the pair's id
before).

A run over the copy finds the truth beside its sources (:func:`truth_for`); how well each score
ranks corrupted examples below clean ones (AUROC) and how many a selection holds is measured in
:mod:`curation.selection.canaries`, next to the selection summary that reports it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from curation.config import check_at_most, check_positive, option, parse_pairs
from curation.data.load import DEFAULT_MAX_RECORD_BYTES, FORMATS

KINDS = ("swap", "truncate", "wrong-number", "refusal", "shuffle-words")
PAIR_KINDS = ("swapped",)  # a pool of preference pairs: chosen and rejected exchanged
TRUTH, MANIFEST = "canary_truth.jsonl", "canary.json"
REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot provide an answer to this question.",
    "I am unable to assist with this. Please consult a qualified professional.",
    "Thank you for your question! Unfortunately, I don't have enough information to answer it.",
    "This content is not available. Please try again later.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.",
)
# A number: thousands separators kept together, a sign only where no term precedes it (n-1: 1).
_NUMBER = re.compile(r"(?<![\w.,])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?|(?<=\w)\d+")
_WORD = re.compile(r"\S+")


class CanaryError(ValueError):
    """A canary pool that cannot be written as asked (the message says what to change)."""


@dataclass(kw_only=True)
class CanaryConfig:
    """Settings of ``python -m curation canary`` (the CLI is built from this)."""

    sources: list[str] = option(help="the pool's data files, as for score/learn; DOMAIN= tags their examples",
                                positional=True, metavar="[DOMAIN=]PATH")
    out: str = option(help="folder for the corrupted copy (one JSONL per source), canary_truth.jsonl and canary.json")
    rate: float = option(0.2, "share of each domain's examples to corrupt (0 < rate < 1)")
    kinds: str = option(",".join(KINDS), f"comma-separated kinds of defect: {', '.join(KINDS)} (a pool of preference "
                                         f"pairs: {', '.join(PAIR_KINDS)}, chosen and rejected exchanged)")
    seed: int = option(0, "seed of which examples are corrupted and how")
    limit: int | None = option(None, "use the first N records of each source")
    columns: dict[str, str] = option(help="map canonical fields to your columns, e.g. question=problem,answer=solution",
                                     default_factory=dict)
    format: str | None = option(None, "force the record shape instead of detecting it", choices=FORMATS)
    max_record_bytes: int = option(DEFAULT_MAX_RECORD_BYTES, "a larger record is rejected by name without being read")

    def __post_init__(self):
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if not self.sources:
            raise ValueError("give the pool's files: [DOMAIN=]PATH ...")
        self.columns = parse_pairs(self.columns)
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 < self.rate < 1:
            raise ValueError(f"rate must be a share between 0 and 1 (e.g. 0.2), got {self.rate!r}")
        self.rate = float(self.rate)
        check_positive(self, "limit", "max_record_bytes")
        check_at_most(self, seed=2**63 - 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative whole number, got {self.seed!r}")
        self.kind_list()  # validates

    def kind_list(self) -> list[str]:
        got = [k.strip() for k in str(self.kinds).split(",") if k.strip()]
        unknown = [k for k in got if k not in KINDS + PAIR_KINDS]
        if unknown or not got:
            raise ValueError(f"kinds {self.kinds!r}: expected a comma-separated list of {', '.join(KINDS)} (pairs: "
                             f"{', '.join(PAIR_KINDS)})")
        if len(set(got)) != len(got):
            raise ValueError(f"kinds {self.kinds!r}: a kind is given twice")
        return got

    def source_specs(self):
        from curation.data.load import parse_source_arg

        return [parse_source_arg(s, columns=self.columns, format=self.format, max_record_bytes=self.max_record_bytes)
                for s in self.sources]


# ----------------------------------------------------------------------------------------------
# Corrupting one answer


def final_answer_span(text: str) -> tuple[int, int] | None:
    """Where the final answer of a math-style solution is: after the last ``####``, inside the last
    ``\\boxed{...}``, or after the last "the answer is"; None when there is no such marker."""
    k = text.rfind("####")
    if k >= 0:
        return k + 4, len(text)
    k = text.rfind("\\boxed{")
    if k >= 0:
        depth, i = 0, k + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth < 0:
                return i, j
        return None
    m = list(re.finditer(r"(?i)\bthe (?:final )?answer is\b", text))
    return (m[-1].end(), len(text)) if m else None


def wrong_numbers(text: str, rng: np.random.Generator) -> str | None:
    """``text`` with every number of its final answer moved by a seeded non-zero amount (None when
    the final answer has no number)."""
    span = final_answer_span(text)
    if span is None or not _NUMBER.search(text[span[0]:span[1]]):
        return None

    def moved(m: re.Match) -> str:
        s = m.group(0)
        delta = int(rng.choice([-3, -2, -1, 1, 2, 3, 5, 7]))
        places = len(s.split(".")[1]) if "." in s else 0
        v = float(s.replace(",", ""))
        new = v + delta / 10 ** places
        if v >= 0 > new:  # a positive answer stays positive: it should look plausible, only be wrong
            new = v + abs(delta) / 10 ** places
        return f"{new:,.{places}f}" if "," in s else f"{new:.{places}f}"

    a, b = span
    return text[:a] + _NUMBER.sub(moved, text[a:b]) + text[b:]


def truncated(text: str, rng: np.random.Generator) -> str | None:
    """``text`` cut after 20-50% of its words (None below five words)."""
    words = list(_WORD.finditer(text))
    if len(words) < 5:
        return None
    keep = max(1, int(len(words) * rng.uniform(0.2, 0.5)))
    return text[: words[keep - 1].end()]


def shuffled(text: str, rng: np.random.Generator) -> str | None:
    """The words of ``text`` in a seeded random order, joined by spaces (None below three distinct words)."""
    words = text.split()
    if len(set(words)) < 3:
        return None
    for _ in range(10):
        order = rng.permutation(len(words))
        out = " ".join(words[i] for i in order)
        if out != " ".join(words):
            return out
    return None


def applicable(kind: str, text: str) -> bool:
    """Whether ``kind`` can corrupt an answer (``swap`` is decided over the domain: distinct answers)."""
    if kind == "truncate":
        return len(_WORD.findall(text)) >= 5
    if kind == "wrong-number":
        span = final_answer_span(text)
        return span is not None and bool(_NUMBER.search(text[span[0]:span[1]]))
    if kind == "shuffle-words":
        return len(set(text.split())) >= 3
    return True


# ----------------------------------------------------------------------------------------------
# Planting


def split_counts(n: int, kinds: list[str]) -> dict[str, int]:
    """``n`` split over ``kinds`` as evenly as possible (largest remainder, ties in kind order)."""
    base, rest = divmod(n, len(kinds))
    return {k: base + (1 if i < rest else 0) for i, k in enumerate(kinds)}


def assign_kinds(domain_of: dict[str, str], answer: dict[str, str], kinds: list[str], rate: float,
                 seed: int) -> tuple[dict[str, str], dict[str, dict[str, int]], list[str]]:
    """Which examples get which kind: ``(plan {example_id: kind}, counts per domain, warnings)``.
    Per domain, round-half-up of ``rate`` times its examples, split evenly over the kinds, each
    taking examples it can corrupt in a seeded order (drawn over the domain's ids sorted)."""
    from collections import Counter

    plan: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    for domain in sorted(set(domain_of.values())):
        ids = sorted(i for i, d in domain_of.items() if d == domain)
        rng = np.random.default_rng([seed, *domain.encode()])
        n = int(Fraction(rate).limit_denominator(10**6) * len(ids) + Fraction(1, 2))
        order = [ids[i] for i in rng.permutation(len(ids))]
        seen = Counter(answer[i] for i in ids)
        want = split_counts(n, kinds)
        got = {k: 0 for k in kinds}

        def take(k: str, need: int) -> int:
            """Give kind ``k`` up to ``need`` more examples it can corrupt; returns what it could not take."""
            for i in order:
                if need == 0:
                    break
                if i not in plan and (seen[answer[i]] == 1 if k == "swap" else applicable(k, answer[i])):
                    plan[i] = k
                    got[k] += 1
                    need -= 1
            return need

        short = sum(take(k, want[k]) for k in kinds)
        while short:  # what a kind could not take goes to the others, one at a time in kind order
            gave = 0
            for k in kinds:
                if short and take(k, 1) == 0:
                    short, gave = short - 1, gave + 1
            if not gave:
                break
        if got.get("swap") == 1:  # a swap needs a partner: give the lone one another kind
            lone = next(i for i in order if plan.get(i) == "swap")
            other = next((k for k in kinds if k != "swap" and applicable(k, answer[lone])), None)
            got["swap"] -= 1
            if other is None:
                del plan[lone]
            else:
                plan[lone] = other
                got[other] += 1
        for k in kinds:
            if got[k] < want[k]:
                warnings.append(f"{domain}: {k} could corrupt {got[k]} of its {want[k]} example(s) (too few answers it "
                                "applies to); the other kinds took the rest")
        if sum(got.values()) != n:
            warnings.append(f"{domain}: {sum(got.values())} of the {n} examples asked for could be corrupted")
        counts[domain] = {"examples": len(ids), "corrupted": sum(got.values()), **got}
    return plan, counts, warnings


def corrupt_answers(plan: dict[str, str], answer: dict[str, str], domain_of: dict[str, str],
                    seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """The new answer of every planned example and a line saying what was done (seeded per example)."""
    new_answer: dict[str, str] = {}
    detail: dict[str, str] = {}
    for domain in sorted(set(domain_of.values())):
        swap = [i for i in sorted(plan) if plan[i] == "swap" and domain_of[i] == domain]
        for a, b in zip(swap, swap[1:] + swap[:1]):  # a cycle: nobody keeps its own answer
            new_answer[a], detail[a] = answer[b], f"the answer of example {b}"
    for i, k in sorted(plan.items()):
        rng = np.random.default_rng([seed, *i.encode()])
        text = answer[i]
        if k == "truncate":
            new_answer[i] = truncated(text, rng)
            detail[i] = f"cut after {len(_WORD.findall(new_answer[i]))} of {len(_WORD.findall(text))} words"
        elif k == "wrong-number":
            new_answer[i] = wrong_numbers(text, rng)
            a, b = final_answer_span(text)
            detail[i] = f"final answer {text[a:b].strip()[:60]!r} changed"
        elif k == "refusal":
            new_answer[i] = REFUSALS[int(rng.integers(len(REFUSALS)))]
            detail[i] = "a refusal / boilerplate answer"
        elif k == "shuffle-words":
            new_answer[i] = shuffled(text, rng)
            detail[i] = "words shuffled"
    return new_answer, detail


def plant(cfg: CanaryConfig, progress=None) -> Path:
    """Write the corrupted copy of ``cfg.sources`` into ``cfg.out`` (see the module docstring); the
    folder is written next to its place and renamed into it (complete or absent)."""
    import time

    from curation.atomic import AtomicError, atomic_dir
    from curation.data.load import example_id, load_sources, normalise, with_last_answer
    from curation.data.readers import read_records
    from curation.progress import Reporter

    report = Reporter(progress)
    kinds = cfg.kind_list()
    specs = cfg.source_specs()
    out = Path(cfg.out)
    for s in specs:  # the copy replaces --out as a whole: a source there would be overwritten by its own copy
        src = Path(s.path).resolve()
        if Path(s.path).exists() and (src == out.resolve() or out.resolve() in src.parents):
            raise CanaryError(f"{s.path} is inside --out {cfg.out}: the canary pool would replace its own source "
                              "(and an earlier truth); give another --out")
    from curation.data.pairs import run_kind

    if run_kind(specs) == "pairs":
        return plant_pairs(cfg, specs, out, report)
    if set(kinds) & set(PAIR_KINDS):
        raise CanaryError(f"kind {PAIR_KINDS[0]} swaps the chosen and rejected responses of preference pairs; "
                          f"{specs[0].path} holds SFT examples: choose among {', '.join(KINDS)}")
    report(phase="loading the pool", done=0, total=None)
    data = load_sources(specs, limit=cfg.limit)
    spec_of = {r.source: s for r, s in zip(data.sources, specs)}
    fmt_of = {r.source: r.format for r in data.sources}
    raw: dict[tuple[str, int], dict] = {}
    for name, spec in spec_of.items():
        idx = [e.source_index for e in data.examples if e.source == name]
        raw.update({(name, i): r for i, r in read_records(spec, idx).items()})

    answer = {e.example_id: next(m["content"] for m in reversed(e.messages) if m["role"] == "assistant")
              for e in data.examples}
    domain_of = {e.example_id: e.domain for e in data.examples}
    plan, counts, warnings = assign_kinds(domain_of, answer, kinds, cfg.rate, cfg.seed)
    new_answer, detail = corrupt_answers(plan, answer, domain_of, cfg.seed)

    # Write the copy: every loaded example, in source order, one JSONL per source that has any (a
    # source whose records all duplicate another's, or are rejected, gets no file and no place in learn_with).
    copied = {e.source for e in data.examples}
    for r in data.sources:
        if r.source not in copied:
            warnings.append(f"{r.source}: none of its {r.n_records} record(s) is in the pool (each is rejected or "
                            "duplicates a record of another source), so it has no copy and is left out of the learn "
                            "command")
    names = copy_names(data.sources, copied)
    truth, ids = [], set()
    report(phase="writing the canary pool", done=0, total=len(data.examples))
    try:
        with atomic_dir(out, marker=MANIFEST, what="canary pool", known=(MANIFEST, TRUTH, "*.jsonl")) as tmp:
            files = {name: (tmp / fname).open("w", encoding="utf-8") for name, fname in names.items()}
            index = {name: 0 for name in names}
            try:
                for e in data.examples:
                    rec = raw[(e.source, e.source_index)]
                    kind = plan.get(e.example_id, "clean")
                    if kind != "clean":
                        rec = with_last_answer(rec, fmt_of[e.source], new_answer[e.example_id], cfg.columns)
                    messages = normalise(rec, fmt_of[e.source], cfg.columns)  # it still loads
                    new_id = example_id(messages)
                    if new_id in ids or (kind != "clean" and new_id == e.example_id):
                        raise CanaryError(f"{e.source} #{e.source_index}: the {kind} canary gives a record equal to "
                                          "another one; use another --seed")
                    ids.add(new_id)
                    files[e.source].write(json.dumps(rec, ensure_ascii=False) + "\n")
                    truth.append({"example_id": new_id, "source": names[e.source], "source_index": index[e.source],
                                  "domain": e.domain, "kind": kind, "original_example_id": e.example_id,
                                  **({"detail": detail[e.example_id]} if kind != "clean" else {})})
                    index[e.source] += 1
            finally:
                for f in files.values():
                    f.close()
            (tmp / TRUTH).write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truth), encoding="utf-8")
            not_copied = {r.source: r.n_records - sum(1 for e in data.examples if e.source == r.source)
                          for r in data.sources}
            manifest = {
                "kind": "canary", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rate": cfg.rate, "kinds": kinds, "seed": cfg.seed,
                "sources": [{"source": r.source, "path": r.path, "fingerprint": r.fingerprint, "domain": r.domain,
                             "format": r.format, "file": names.get(r.source), "n_records": r.n_records,
                             "n_copied": index.get(r.source, 0), "n_not_copied": not_copied[r.source]}
                            for r in data.sources],
                "counts": counts, "warnings": warnings,
                "learn_with": "python -m curation learn " + " ".join(
                    f"{r.domain}={out / names[r.source]}" for r in data.sources if r.source in names),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except AtomicError as e:
        raise CanaryError(str(e)) from None
    report(phase="done", done=len(data.examples), total=len(data.examples))
    return out


def copy_names(sources, copied: set[str]) -> dict[str, str]:
    """The copy's file name of each source that has examples in it (``NAME.jsonl``, never the truth's
    or the manifest's name, never twice)."""
    names: dict[str, str] = {}
    for r in sources:
        if r.source not in copied:
            continue
        stem = re.sub(r"\.(jsonl|ndjson|json|parquet|csv)(\.gz)?$", "", r.source) or "data"
        name = f"{stem}.jsonl"
        while name in names.values() or name in (TRUTH, MANIFEST):
            name = f"{stem}-{len(names)}.jsonl"
        names[r.source] = name
    return names


def plant_pairs(cfg: CanaryConfig, specs, out: Path, report) -> Path:
    """:func:`plant` on a pool of preference pairs: ``rate`` of each domain's pairs with chosen and
    rejected swapped, every pair written as a TRL conversational row, the truth keyed by each
    written pair's id (see the module docstring)."""
    import time

    from curation.atomic import AtomicError, atomic_dir
    from curation.data.pairs import load_pairs, pair_id, trl_row

    kinds = list(PAIR_KINDS) if cfg.kinds == ",".join(KINDS) else cfg.kind_list()  # the default: the pair kind
    if kinds != list(PAIR_KINDS):
        raise CanaryError(f"{specs[0].path} holds preference pairs: the one kind planted in pairs is "
                          f"{PAIR_KINDS[0]} (chosen and rejected exchanged); give --kinds {PAIR_KINDS[0]} or leave "
                          "--kinds out")
    report(phase="loading the pool", done=0, total=None)
    data = load_pairs(specs, limit=cfg.limit)
    plan, counts, warnings = assign_kinds({p.pair_id: p.domain for p in data.pairs},
                                          {p.pair_id: p.chosen for p in data.pairs}, kinds, cfg.rate, cfg.seed)
    names = copy_names(data.sources, {p.source for p in data.pairs})
    rows: dict[str, list[str]] = {n: [] for n in names}
    truth, index = [], {n: 0 for n in names}
    for p in data.pairs:
        flip = p.pair_id in plan
        chosen, rejected = (p.rejected, p.chosen) if flip else (p.chosen, p.rejected)
        rows[p.source].append(json.dumps(trl_row(p.prompt, chosen, rejected, p.rating_chosen, p.rating_rejected),
                                         ensure_ascii=False) + "\n")
        truth.append({"example_id": pair_id(p.prompt, chosen, rejected), "source": names[p.source],
                      "source_index": index[p.source], "domain": p.domain, "kind": plan.get(p.pair_id, "clean"),
                      "original_example_id": p.pair_id, **({"detail": "chosen and rejected swapped"} if flip else {})})
        index[p.source] += 1
    if len({t["example_id"] for t in truth}) != len(truth):
        raise CanaryError("a swapped pair equals another pair of the pool (its reverse is there too); use another "
                          "--seed, or remove the reversed duplicate")
    report(phase="writing the canary pool", done=0, total=len(data.pairs))
    manifest = {
        "kind": "canary", "data": "pairs", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate": cfg.rate, "kinds": kinds, "seed": cfg.seed,
        "sources": [{"source": r.source, "path": r.path, "fingerprint": r.fingerprint, "domain": r.domain,
                     "format": r.format, "file": names.get(r.source), "n_records": r.n_records,
                     "n_copied": index.get(r.source, 0), "n_not_copied": r.n_records - index.get(r.source, 0)}
                    for r in data.sources],
        "counts": counts, "warnings": warnings,
        "learn_with": "python -m curation score " + " ".join(f"{r.domain}={out / names[r.source]}"
                                                            for r in data.sources if r.source in names),
    }
    try:
        with atomic_dir(out, marker=MANIFEST, what="canary pool", known=(MANIFEST, TRUTH, "*.jsonl")) as tmp:
            for source, name in names.items():
                (tmp / name).write_text("".join(rows[source]), encoding="utf-8")
            (tmp / TRUTH).write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truth), encoding="utf-8")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except AtomicError as e:
        raise CanaryError(str(e)) from None
    report(phase="done", done=len(data.pairs), total=len(data.pairs))
    return out


# ----------------------------------------------------------------------------------------------
# Reading the truth


def read_truth(folder: str | Path):
    """``canary_truth.jsonl`` of a canary pool as a DataFrame (example_id, source, source_index,
    domain, kind, original_example_id, detail)."""
    import pandas as pd

    p = Path(folder) / TRUTH
    try:
        rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CanaryError(f"{p}: not a readable canary truth file ({e})") from None
    return pd.DataFrame(rows, columns=["example_id", "source", "source_index", "domain", "kind",
                                       "original_example_id", "detail"])


def truth_for(provenance: dict):
    """The canary truth of a run over a canary pool (``{example_id: kind}`` as a Series), found
    beside its sources; None when no source folder holds a truth file."""
    import pandas as pd

    folders = []
    for s in provenance.get("sources", []):
        for p in (s.get("abs_path"), s.get("path")):
            if p and (Path(p).parent / TRUTH).is_file():
                folders.append(Path(p).parent.resolve())
                break
    if not folders:
        return None
    parts = [read_truth(f) for f in dict.fromkeys(folders)]
    truth = pd.concat(parts, ignore_index=True).drop_duplicates("example_id")
    return truth.set_index("example_id")["kind"]

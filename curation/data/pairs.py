"""Preference pairs as data: the :class:`Pair`, its id, loading sources of pairs, writing them out.

A pair is a prompt (messages ``[system] user (assistant user)*``, ending with a user turn) and two
responses to it, ``chosen`` (preferred) and ``rejected``, each one assistant message's text, with
optional ratings.  Everything the product does for an SFT example it does for each response given
the prompt: :meth:`Pair.sft_messages` is the SFT conversation a response is scored as, and
:meth:`Pair.sft_id` its example id (:func:`curation.data.load.example_id`), so the score cache
holds a pair's response exactly as that SFT example.

The record shapes are read by :mod:`curation.data.pair_formats`.  :func:`load_pairs` mirrors
:func:`curation.data.load.load_sources`: the same bounded readers (``iter_records``), records in =
pairs + rejected, exact duplicates rejected naming the kept copy, per-source reports with
fingerprints and the detected format, a source with no usable pair refused.  A run holds pairs or
SFT examples, never both: :func:`source_kind` tells which a source holds (a source that mixes them
is refused with one line), and :func:`run_kind` refuses sources that disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

from curation.data.load import (
    FORMATS, PAIR_FORMATS, SOURCE_FORMATS, RecordError, Rejected, SourceError, SourceReport, SourceSpec, check_columns,
    detect_format, example_id, file_fingerprint, iter_records, source_names,
)
from curation.data.pair_formats import SIDES, detect_pair_format, is_pair_record, read_pair

KIND_RECORDS = 20  # a source's kind is judged on its first this many readable records


class MixedData(SourceError):
    """Sources (or one source) holding preference pairs and SFT examples: a run holds one kind."""


@dataclass
class Pair:
    """A normalised preference pair (``rating_*`` from ``score_chosen`` / ``score_rejected``)."""

    pair_id: str
    source: str
    source_index: int
    domain: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    rating_chosen: float | None = None
    rating_rejected: float | None = None

    @property
    def rating_margin(self) -> float | None:
        """``rating_chosen - rating_rejected`` (None without ratings)."""
        if self.rating_chosen is None or self.rating_rejected is None:
            return None
        return self.rating_chosen - self.rating_rejected

    def response(self, side: str) -> str:
        if side not in SIDES:
            raise ValueError(f"side {side!r}: expected one of {', '.join(SIDES)}")
        return self.chosen if side == "chosen" else self.rejected

    def sft_messages(self, side: str) -> list[dict[str, str]]:
        """The SFT conversation ``prompt + [assistant response]`` this side is scored as."""
        return [dict(m) for m in self.prompt] + [{"role": "assistant", "content": self.response(side)}]

    def sft_id(self, side: str) -> str:
        """The example id of :meth:`sft_messages` (the score cache's key for this response)."""
        return example_id(self.sft_messages(side))

    def trl_row(self) -> dict:
        return trl_row(self.prompt, self.chosen, self.rejected, self.rating_chosen, self.rating_rejected)


def pair_id(prompt: list[dict[str, str]], chosen: str, rejected: str) -> str:
    """Content hash of a normalised pair: the same prompt and responses always get the same id.

    Order-sensitive (swapping chosen and rejected gives another pair).  It is the example-id hash of
    the prompt followed by two pseudo-turns ``chosen`` and ``rejected``: no conversation has those
    roles, so a pair id is never an SFT example's id."""
    return example_id([*prompt, {"role": "chosen", "content": chosen}, {"role": "rejected", "content": rejected}])


def trl_row(prompt: list[dict[str, str]], chosen: str, rejected: str, rating_chosen: float | None = None,
            rating_rejected: float | None = None) -> dict:
    """A pair as a TRL conversational row ``{"prompt": [messages], "chosen": [assistant message],
    "rejected": [...]}`` (ratings as ``score_chosen`` / ``score_rejected``): it loads back as the
    same pair, with the same id."""
    row = {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
           "chosen": [{"role": "assistant", "content": chosen}],
           "rejected": [{"role": "assistant", "content": rejected}]}
    if rating_chosen is not None and rating_rejected is not None:
        row["score_chosen"], row["score_rejected"] = rating_chosen, rating_rejected
    return row


@dataclass
class PairLoadResult:
    """Pairs, the records not used (``example_id`` holds a rejected duplicate's pair id), per-source reports."""

    pairs: list[Pair]
    rejected: list[Rejected]
    sources: list[SourceReport]

    def rejected_rows(self) -> list[dict]:
        return [asdict(r) for r in self.rejected]


# ----------------------------------------------------------------------------------------------
# which kind of data a source holds


def record_kind(record: dict, columns: dict[str, str] | None = None) -> str | None:
    """``"pairs"`` for a preference pair, ``"sft"`` for a record of an SFT shape, None for neither."""
    if is_pair_record(record, columns):
        return "pairs"
    try:
        detect_format(record, columns)
    except RecordError:
        return None
    return "sft"


def format_kind(fmt: str) -> str:
    """The kind of data a ``--format`` name reads."""
    if fmt in PAIR_FORMATS:
        return "pairs"
    if fmt in FORMATS:
        return "sft"
    raise SourceError(f"unknown format {fmt!r}; expected one of {', '.join(SOURCE_FORMATS)}")


def mixed_kinds(path: str, first: tuple[int, int | None, str], other: tuple[int, int | None, str]) -> MixedData:
    """The one-line refusal of a source holding pairs and SFT examples, naming one record of each."""
    def where(index, line, kind):
        what = "a preference pair (chosen/rejected)" if kind == "pairs" else "an SFT example"
        return f"record #{index}" + (f" (line {line})" if line else "") + f" is {what}"

    return MixedData(f"{path}: mixes preference pairs and SFT examples ({where(*first)}, {where(*other)}); a run "
                       "holds pairs or SFT examples, not both: put them in separate files")


def source_kind(spec: SourceSpec, n_records: int = KIND_RECORDS) -> str:
    """``"pairs"`` or ``"sft"``: the kind a forced ``--format`` reads, else the kind of the source's
    first ``n_records`` readable records (after ``--columns``).  Raises :class:`MixedData` for a
    source that mixes them, :class:`SourceError` for one whose first records are of neither kind."""
    if spec.format is not None:
        return format_kind(spec.format)
    seen: dict[str, tuple[int, int | None, str]] = {}
    n = 0
    for index, line, record in iter_records(spec):
        if isinstance(record, RecordError):
            continue
        if not seen:
            check_columns(record, spec)
        kind = record_kind(record, spec.columns)
        if kind is not None:
            seen.setdefault(kind, (index, line, kind))
            if len(seen) == 2:
                raise mixed_kinds(spec.path, *sorted(seen.values()))
        n += 1
        if n >= n_records:
            break
    if not seen:
        raise SourceError(f"{spec.path}: none of its first {n} readable record(s) is a preference pair (chosen, "
                          "rejected) or an SFT example (messages, conversations, instruction/output, question/answer, "
                          "prompt/response); map your columns with --columns")
    return next(iter(seen))


def run_kind(specs: list[SourceSpec]) -> str:
    """The one kind of data all sources hold; refuses sources that disagree (:class:`MixedData`,
    one line naming them)."""
    if not specs:
        raise SourceError("no source given")
    kinds = {spec.path: source_kind(spec) for spec in specs}
    if len(set(kinds.values())) > 1:
        pairs = [p for p, k in kinds.items() if k == "pairs"]
        sft = [p for p, k in kinds.items() if k == "sft"]
        raise MixedData(f"{pairs[0]} holds preference pairs and {sft[0]} SFT examples; a run holds pairs or SFT "
                          "examples, not both: load them in separate runs")
    return next(iter(kinds.values()))


# ----------------------------------------------------------------------------------------------
# loading


def load_pairs(specs: list[SourceSpec], limit: int | None = None) -> PairLoadResult:
    """Read, normalise and de-duplicate preference pairs from all sources.

    ``limit`` keeps the first ``limit`` records of each source.  Raises :class:`SourceError` when a
    source cannot be opened, holds SFT examples (or mixes them with pairs), or has no usable pair;
    bad records become :class:`Rejected` rows with their reason."""
    if limit is not None and limit < 1:
        raise SourceError(f"--limit must be a positive number of rows, got {limit}")
    result = PairLoadResult([], [], [])
    kept: dict[str, Pair] = {}
    for spec, name in zip(specs, source_names(specs)):
        if spec.format is not None and format_kind(spec.format) != "pairs":
            raise SourceError(f"{spec.path}: --format {spec.format} reads SFT examples; preference pairs are read as "
                              f"one of {', '.join(PAIR_FORMATS)}")
        report = SourceReport(source=name, path=spec.path, domain=spec.domain, format=spec.format,
                              fingerprint=file_fingerprint(spec.path))
        n_dupes = 0
        for index, line, outcome in _read_source(spec, name, report, limit):
            report.n_records += 1
            if isinstance(outcome, RecordError):
                result.rejected.append(Rejected(name, index, line, str(outcome)))
                report.n_rejected += 1
            elif outcome.pair_id in kept:
                first = kept[outcome.pair_id]
                reason = f"exact duplicate of pair {first.pair_id} ({first.source} #{first.source_index})"
                result.rejected.append(Rejected(name, index, line, reason, example_id=outcome.pair_id))
                report.n_rejected += 1
                n_dupes += 1
            else:
                kept[outcome.pair_id] = outcome
                result.pairs.append(outcome)
                report.n_accepted += 1
        result.sources.append(report)
        if report.n_accepted + n_dupes == 0:
            first = next((r.reason for r in result.rejected if r.source == name), None)
            raise SourceError(f"{spec.path}: no usable pair among {report.n_records} record(s)"
                              + (f"; first problem: {first}" if first else ""))
    return result


def _read_source(spec: SourceSpec, name: str, report: SourceReport,
                 limit: int | None) -> Iterator[tuple[int, int | None, Pair | RecordError]]:
    """``(index, line, Pair or the RecordError why not)`` for each record of one source; the
    source's format is detected on its first readable record unless forced (kept in ``report``)."""
    first_pair = None
    for index, line, record in iter_records(spec):
        if limit is not None and index >= limit:
            return
        try:
            if isinstance(record, RecordError):
                raise record
            if report.format is None:
                check_columns(record, spec)
            kind = record_kind(record, spec.columns)
            if kind == "pairs" and first_pair is None:
                first_pair = (index, line, kind)
            if kind == "sft":
                raise mixed_kinds(spec.path, first_pair, (index, line, kind)) if first_pair else SourceError(
                    f"{spec.path}: record #{index} is an SFT example, not a preference pair (chosen, rejected); a run "
                    "holds pairs or SFT examples, not both: load SFT data without the pair formats")
            if report.format is None:
                report.format = detect_pair_format(record, spec.columns)
            pair = pair_of_record(record, report.format, spec.columns, name, index, spec.domain)
        except RecursionError:
            yield index, line, RecordError("record nested too deeply to read")
            continue
        except RecordError as e:
            yield index, line, e
            continue
        yield index, line, pair


def pair_of_record(record: dict, fmt: str, columns: dict[str, str] | None, source: str, index: int,
                   domain: str | None) -> Pair:
    """The :class:`Pair` a record of pair format ``fmt`` holds (RecordError: why it holds none)."""
    parts = read_pair(record, fmt, columns)
    return Pair(pair_id(parts.prompt, parts.chosen, parts.rejected), source, index, domain, parts.prompt,
                parts.chosen, parts.rejected, parts.rating_chosen, parts.rating_rejected)


def load_data(specs: list[SourceSpec], limit: int | None = None):
    """``(kind, result)``: what the sources hold, ``"pairs"`` (a :class:`PairLoadResult`) or ``"sft"``
    (a :class:`curation.data.load.LoadResult`), loaded as a run reads them; sources that disagree
    are refused in one line (:func:`run_kind`)."""
    from curation.data.load import load_sources

    kind = run_kind(specs)
    return kind, (load_pairs(specs, limit) if kind == "pairs" else load_sources(specs, limit=limit))


@dataclass
class _Side:
    """One response of a pair as the SFT example it is scored as (what token_lengths reads)."""

    example_id: str
    domain: str
    messages: list[dict[str, str]]


def pair_token_lengths(tokenizer, template, pairs: list[Pair]):
    """``pair_id, domain, n_prompt_tokens, n_chosen_tokens, n_rejected_tokens, len_diff`` of ``pairs``
    (no truncation), each response counted as the SFT example it is scored as
    (:func:`curation.data.templates.token_lengths`): what the Data page plots before scoring."""
    import pandas as pd

    from curation.data.templates import token_lengths

    sides = {side: token_lengths(tokenizer, template, [_Side(p.pair_id, p.domain, p.sft_messages(side)) for p in pairs])
             .set_index("example_id") for side in SIDES}
    ok = [p for p in pairs if all(p.pair_id in sides[s].index for s in SIDES)]
    out = pd.DataFrame({"pair_id": [p.pair_id for p in ok], "domain": [p.domain for p in ok],
                        "n_prompt_tokens": [int(sides["chosen"].at[p.pair_id, "n_prompt_tokens"]) for p in ok],
                        **{f"n_{s}_tokens": [int(sides[s].at[p.pair_id, "n_response_tokens"]) for p in ok]
                           for s in SIDES}})
    out["len_diff"] = out["n_chosen_tokens"] - out["n_rejected_tokens"]
    return out

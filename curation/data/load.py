"""Load SFT data from files or datasets and normalise every record to chat messages.

Supported inputs: JSON arrays, JSONL (also ``.gz``), Parquet, CSV, ``datasets`` ``save_to_disk``
folders and hub dataset ids (``datasets.load_dataset``, needs network).

Supported record shapes (detected per source from its first usable record, or forced):

========== =========================================================================
format     fields
========== =========================================================================
messages   ``messages: [{role, content}]`` (OpenAI / HF), multi-turn
sharegpt   ``conversations: [{from: human|gpt|system, value}]``, multi-turn
alpaca     ``instruction``, optional ``input``, ``output`` (optional ``system``)
gsm8k      ``question``, ``answer``
prompt     ``prompt`` and ``response`` or ``completion``
========== =========================================================================

Every record that cannot be used becomes a :class:`Rejected` row naming its source, position and
reason; nothing is dropped silently (records in = accepted + rejected, in every format).  Exact
duplicates (same normalised messages) are kept once.

The files are read by :mod:`curation.data.readers` (bounded: a record larger than
``max_record_bytes``, 1 MB by default, ``--max-record-bytes``, is rejected by name without being kept
in memory); this module decides what a record is: its shape, its messages, its id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The errors and the record bound are also this module's: callers that load sources name them here.
from curation.data.readers import DEFAULT_MAX_RECORD_BYTES, RecordError, SourceError, file_fingerprint, iter_records

FORMATS = ("messages", "sharegpt", "alpaca", "gsm8k", "prompt")
# Preference-pair shapes, read by curation.data.pairs (described in curation/data/pair_formats.py).
PAIR_FORMATS = ("trl-standard", "trl-conversational", "trl-implicit", "anthropic-hh", "llamafactory-ranking",
                "alpaca-ranking", "ultrafeedback")
SOURCE_FORMATS = FORMATS + PAIR_FORMATS  # what --format accepts

# Speaker names seen in the wild, mapped to chat roles.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
}


@dataclass
class SourceSpec:
    """One input: a path or hub id, the domain its examples belong to, and how to read it.

    ``columns`` maps canonical field names to this source's column names, e.g.
    ``{"question": "problem", "answer": "solution"}``; ``format`` forces a record shape.
    """

    path: str
    domain: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    split: str | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    def __post_init__(self):
        if self.format is not None and self.format not in SOURCE_FORMATS:
            raise SourceError(f"{self.path}: unknown format {self.format!r}; expected one of {', '.join(FORMATS)} "
                              f"(SFT examples) or {', '.join(PAIR_FORMATS)} (preference pairs)")
        if self.domain is None:
            self.domain = safe_domain(source_stem(self.path))
        if isinstance(self.max_record_bytes, bool) or not isinstance(self.max_record_bytes, int) \
                or self.max_record_bytes < 1:
            raise SourceError(f"max-record-bytes must be a positive number of bytes, got {self.max_record_bytes!r}")


@dataclass
class Example:
    """A normalised SFT example."""

    example_id: str
    source: str
    source_index: int
    domain: str
    messages: list[dict[str, str]]


@dataclass
class Rejected:
    """A record that was not used, with where it was and why."""

    source: str
    source_index: int | None
    line: int | None
    reason: str
    example_id: str | None = None


@dataclass
class SourceReport:
    """What was read from one source."""

    source: str
    path: str
    domain: str
    format: str | None
    n_records: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    fingerprint: str | None = None


@dataclass
class LoadResult:
    examples: list[Example]
    rejected: list[Rejected]
    sources: list[SourceReport]

    def rejected_rows(self) -> list[dict]:
        return [asdict(r) for r in self.rejected]


# ----------------------------------------------------------------------------------------------
# Public API


def parse_source_arg(arg: str, **kwargs) -> SourceSpec:
    """Parse ``[DOMAIN=]PATH`` as given on the command line.

    A ``name=`` prefix is a domain unless the whole argument is an existing path.
    """
    m = re.match(r"^([^=/\\]+)=(.+)$", arg)
    if m and not Path(arg).exists():
        return SourceSpec(path=m.group(2), domain=check_domain(m.group(1)), **kwargs)
    return SourceSpec(path=arg, **kwargs)


def check_domain(name: str) -> str:
    """A domain name: letters, digits, ``.``, ``_`` and ``-`` (it is part of ``DOMAIN=PATH``, of
    recipes' ``--mix`` and of file names)."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name or ""):
        raise SourceError(f"domain {name!r}: use letters, digits, '.', '_' and '-' only (e.g. "
                          f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name or 'chat').strip('_') or 'chat'})")
    return name


def safe_domain(name: str) -> str:
    """A domain name derived from a file name: the characters ``check_domain`` refuses become
    ``_`` (``my data`` -> ``my_data``), so a domain taken from a file obeys the same rule as one
    given with ``DOMAIN=``."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_.") or "data"


def source_stem(path: str) -> str:
    """The default domain of a source: its file name without extensions (or the dataset id)."""
    name = Path(path.rstrip("/")).name
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".parquet", ".csv"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name or path


def example_id(messages: list[dict[str, str]]) -> str:
    """Content hash of normalised messages: the same conversation always gets the same id."""
    canon = json.dumps(
        [[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def load_sources(specs: list[SourceSpec], limit: int | None = None) -> LoadResult:
    """Read, normalise and de-duplicate all sources.

    ``limit`` keeps the first ``limit`` records of each source.  Raises :class:`SourceError` when a
    source cannot be opened or has no usable record; bad records become :class:`Rejected` rows.
    """
    if limit is not None and limit < 1:
        raise SourceError(f"--limit must be a positive number of rows, got {limit}")
    names = source_names(specs)
    examples: list[Example] = []
    rejected: list[Rejected] = []
    reports: list[SourceReport] = []
    seen: dict[str, Example] = {}
    for spec, name in zip(specs, names):
        report = SourceReport(
            source=name, path=spec.path, domain=spec.domain, format=spec.format,
            fingerprint=file_fingerprint(spec.path),
        )
        n_ok_before, n_dupes = len(examples), 0
        for index, line, record in iter_records(spec):
            if limit is not None and index >= limit:
                break
            report.n_records += 1
            try:
                if isinstance(record, RecordError):
                    raise record
                if report.format is None:
                    check_columns(record, spec)
                    report.format = detect_format(record, spec.columns)
                messages = normalise(record, report.format, spec.columns)
            except RecursionError:
                rejected.append(Rejected(name, index, line, "record nested too deeply to read"))
                report.n_rejected += 1
                continue
            except RecordError as e:
                rejected.append(Rejected(name, index, line, str(e)))
                report.n_rejected += 1
                continue
            ex = Example(example_id(messages), name, index, spec.domain, messages)
            kept = seen.get(ex.example_id)
            if kept is not None:
                rejected.append(Rejected(
                    name, index, line,
                    f"exact duplicate of example {kept.example_id} ({kept.source} #{kept.source_index})",
                    example_id=ex.example_id,
                ))
                report.n_rejected += 1
                n_dupes += 1
                continue
            seen[ex.example_id] = ex
            examples.append(ex)
        report.n_accepted = len(examples) - n_ok_before
        reports.append(report)
        if report.n_accepted + n_dupes == 0:
            first = next((r.reason for r in rejected if r.source == name), None)
            detail = f"; first problem: {first}" if first else ""
            raise SourceError(
                f"{spec.path}: no usable row among {report.n_records} record(s){detail}"
            )
    return LoadResult(examples, rejected, reports)


def check_columns(record: dict, spec: SourceSpec) -> None:
    """A ``--columns`` mapping must name columns the source has (checked on its first record)."""
    missing = {k: v for k, v in (spec.columns or {}).items() if v not in record}
    if missing:
        pairs = ",".join(f"{k}={v}" for k, v in missing.items())
        raise SourceError(f"{spec.path}: --columns {pairs}: no column {', '.join(map(repr, missing.values()))} in "
                          f"this source; its columns are {sorted(record)}")


def detect_format(record: dict, columns: dict[str, str] | None = None) -> str:
    """Name the record shape of ``record`` (after applying the column mapping)."""
    r = _rename(record, columns or {})
    if "messages" in r:
        return "messages"
    if "conversations" in r:
        return "sharegpt"
    if "instruction" in r and "output" in r:
        return "alpaca"
    if "question" in r and "answer" in r:
        return "gsm8k"
    if "prompt" in r and ("response" in r or "completion" in r):
        return "prompt"
    raise RecordError(
        f"unrecognised record shape with fields {sorted(r)}; expected one of: messages, "
        "conversations, instruction/output, question/answer, prompt/response; "
        "map your columns with --columns (e.g. --columns question=problem,answer=solution)"
    )


def normalise(record: dict, fmt: str, columns: dict[str, str] | None = None) -> list[dict]:
    """Turn one record of format ``fmt`` into validated chat messages ``[{role, content}]``."""
    r = _rename(record, columns or {})
    if fmt == "messages":
        turns = _turns(r, "messages", "role", "content")
    elif fmt == "sharegpt":
        turns = _turns(r, "conversations", "from", "value")
    elif fmt == "alpaca":
        user = _text(r, "instruction")
        extra = r.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RecordError("field 'input' is not text")
        if extra and extra.strip():
            user = user + "\n\n" + extra
        turns = [("user", user), ("assistant", _text(r, "output"))]
        system = r.get("system")
        if isinstance(system, str) and system.strip():
            turns.insert(0, ("system", system))
    elif fmt == "gsm8k":
        turns = [("user", _text(r, "question")), ("assistant", _text(r, "answer"))]
    elif fmt == "prompt":
        key = "response" if "response" in r else "completion"
        turns = [("user", _text(r, "prompt")), ("assistant", _text(r, key))]
    else:
        raise SourceError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    _check_turns(turns)
    return [{"role": role, "content": content} for role, content in turns]


def with_last_answer(record: dict, fmt: str, text: str, columns: dict[str, str] | None = None) -> dict:
    """A copy of ``record`` (format ``fmt``, source columns as in ``columns``) whose last assistant
    turn says ``text``: the same record shape, so it loads as its source's other records do."""
    import copy

    columns = columns or {}
    out = copy.deepcopy(record)
    field_of = {"alpaca": "output", "gsm8k": "answer"}
    if fmt in field_of:
        out[columns.get(field_of[fmt], field_of[fmt])] = text
        return out
    if fmt == "prompt":
        key = "response" if columns.get("response", "response") in record else "completion"
        out[columns.get(key, key)] = text
        return out
    key, content_key = {"messages": ("messages", "content"), "sharegpt": ("conversations", "value")}[fmt]
    turns = out[columns.get(key, key)]
    for turn in reversed(turns):
        role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
        if isinstance(role, str) and ROLE_ALIASES.get(role.lower()) == "assistant":
            turn[next((k for k in (content_key, "content", "value") if k in turn), content_key)] = text
            return out
    raise RecordError("no assistant turn")


def source_names(specs: list[SourceSpec]) -> list[str]:
    """File names (or dataset ids) as source names, made unique with their parent folders."""
    names = [Path(s.path.rstrip("/")).name if Path(s.path).exists() else s.path for s in specs]
    for i, spec in enumerate(specs):
        if names.count(names[i]) > 1 and Path(spec.path).exists():
            names[i] = str(Path(spec.path).resolve())
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SourceError(f"the same source is given twice: {sorted(dupes)}")
    return names


# ----------------------------------------------------------------------------------------------
# Normalisation helpers


def _rename(record: dict, columns: dict[str, str]) -> dict:
    if not columns:
        return record
    r = dict(record)
    for canonical, actual in columns.items():
        if actual in record:
            r[canonical] = record[actual]
    return r


def _text(r: dict, key: str) -> str:
    if key not in r or r[key] is None:
        raise RecordError(f"missing field {key!r}")
    if not isinstance(r[key], str):
        raise RecordError(f"field {key!r} is {type(r[key]).__name__}, expected text")
    return r[key]


def _turns(r: dict, key: str, role_key: str, content_key: str) -> list[tuple[str, str]]:
    conv = r.get(key)
    if conv is None:
        raise RecordError(f"missing field {key!r}")
    if not isinstance(conv, list) or not conv:
        raise RecordError(f"field {key!r} must be a non-empty list of turns")
    turns = []
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise RecordError(f"turn {k} is not an object")
        # Accept both {role, content} and {from, value} whatever the container is called.
        role = turn.get(role_key, turn.get("role", turn.get("from")))
        content = turn.get(content_key, turn.get("content", turn.get("value")))
        if role is None:
            raise RecordError(f"turn {k} has no {role_key!r}")
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise RecordError(f"turn {k} has unknown role {role!r}")
        if not isinstance(content, str):
            raise RecordError(f"turn {k} content is {type(content).__name__}, expected text")
        turns.append((ROLE_ALIASES[role.lower()], content))
    return turns


def _check_turns(turns: list[tuple[str, str]]) -> None:
    """Validate role order and content: [system] user assistant (user assistant)* [user]."""
    body = turns[1:] if turns and turns[0][0] == "system" else turns
    for k, (role, content) in enumerate(body):
        expected = "user" if k % 2 == 0 else "assistant"
        if role == "system":
            raise RecordError(f"impossible role order: a system turn at position {k + len(turns) - len(body)}")
        if role != expected:
            raise RecordError(
                f"impossible role order: turn {k + len(turns) - len(body)} is {role}, expected {expected}"
            )
        if not content.strip():
            raise RecordError(f"empty {role} turn at position {k + len(turns) - len(body)}")
    if not any(role == "assistant" for role, _ in body):
        raise RecordError("no assistant turn")

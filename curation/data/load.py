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

Input is bounded: a record larger than ``max_record_bytes`` (1 MB by default; ``--max-record-bytes``)
is rejected by name without being kept in memory; line formats (JSONL, CSV, also gzipped) are read
as a stream; a JSON array is read whole and must be under :data:`MAX_JSON_ARRAY_BYTES` after
decompression (a larger one is refused with the advice to write it as JSONL).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

FORMATS = ("messages", "sharegpt", "alpaca", "gsm8k", "prompt")
# Preference-pair shapes, read by curation.data.pairs (described in curation/data/pair_formats.py).
PAIR_FORMATS = ("trl-standard", "trl-conversational", "trl-implicit", "anthropic-hh", "llamafactory-ranking",
                "alpaca-ranking", "ultrafeedback")
SOURCE_FORMATS = FORMATS + PAIR_FORMATS  # what --format accepts
DEFAULT_MAX_RECORD_BYTES = 1_000_000  # a record's bytes as stored (a line, a CSV row, a JSON object)
MAX_JSON_ARRAY_BYTES = 256_000_000  # a JSON array is parsed whole: larger files should be JSONL
READ_CHUNK = 1 << 20

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


class SourceError(ValueError):
    """A whole source cannot be used (missing file, unknown format, no usable row)."""


class RecordError(ValueError):
    """One record cannot be used; the message is the reason shown to the curator."""


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


def iter_records(spec: SourceSpec) -> Iterator[tuple[int, int | None, dict | RecordError]]:
    """Yield ``(source_index, line, record)`` for every record of a source, in order.

    ``line`` is 1-based where the format has lines, else None.  A record that cannot be parsed is
    yielded as a :class:`RecordError` so the caller reports it and goes on.
    """
    path = Path(spec.path)
    name = path.name.lower()
    if path.is_dir():
        yield from _iter_hf_disk(path, spec.split, spec.max_record_bytes)
    elif not path.exists():
        if is_hub_id(spec.path):
            yield from _iter_hub(spec.path, spec.split, spec.max_record_bytes)
        else:
            raise SourceError(f"{spec.path}: no such file or folder")
    elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        yield from _iter_jsonl(path, spec.max_record_bytes)
    elif name.endswith((".json", ".json.gz")):
        yield from _iter_json(path, spec.max_record_bytes)
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path, spec.max_record_bytes)
    elif name.endswith((".csv", ".csv.gz")):
        yield from _iter_csv(path, spec.max_record_bytes)
    else:
        raise SourceError(
            f"{spec.path}: unsupported file type; expected .json, .jsonl, .parquet, .csv "
            "(optionally .gz), a datasets save_to_disk folder or a hub dataset id"
        )


DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".gz", ".arrow")


def is_hub_id(path: str) -> bool:
    """Whether ``path`` (not an existing file) reads as a hub dataset id such as ``org/name``: a
    name with a data file's suffix (``data/mth.jsonl``) is a local path that does not exist."""
    return (bool(re.match(r"^[\w.\-]+/[\w.\-]+$", path)) and not path.startswith(".") and not Path(path).exists()
            and not path.lower().endswith(DATA_SUFFIXES))


def read_record(spec: SourceSpec, source_index: int) -> dict:
    """Return the original record at ``source_index`` of a source."""
    return read_records(spec, [source_index])[source_index]


# ----------------------------------------------------------------------------------------------
# Readers


def _open_stream(path: Path):
    """The file as a binary stream, decompressed on the fly for ``.gz``."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _gzip_errors():
    return (OSError, EOFError, zlib.error, gzip.BadGzipFile)


def too_large(n: int, limit: int, what: str = "record") -> RecordError:
    return RecordError(f"{what} of {n:,}{'+' if n > limit else ''} bytes is larger than the limit of {limit:,} bytes "
                       "(--max-record-bytes); it is not read")


def _bounded_lines(path: Path, limit: int):
    """``(line number, bytes or None, length)`` of every line, streamed: a line longer than
    ``limit`` bytes is skipped to its end without being kept (``None``)."""
    try:
        with _open_stream(path) as f:
            lineno, first = 0, True
            while True:
                raw = f.readline(limit + 1)
                if not raw:
                    return
                lineno += 1
                n = len(raw)
                if not raw.endswith(b"\n") and n > limit:  # too long: skip the rest of the line in chunks
                    while True:
                        more = f.readline(READ_CHUNK)
                        n += len(more)
                        if not more or more.endswith(b"\n"):
                            break
                    yield lineno, None, n
                    first = False
                    continue
                if first:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is not part of the first record
                    first = False
                yield lineno, raw.removesuffix(b"\n").removesuffix(b"\r"), n
    except _gzip_errors() as e:
        raise SourceError(f"{path}: not a valid gzip file, or a truncated one ({type(e).__name__}: {e})") from None


def _read_bounded(path: Path, limit: int) -> bytes:
    """The whole (decompressed) file, refused above ``limit`` bytes."""
    try:
        with _open_stream(path) as f:
            data = f.read(limit + 1)
    except _gzip_errors() as e:
        raise SourceError(f"{path}: not a valid gzip file, or a truncated one ({type(e).__name__}: {e})") from None
    if len(data) > limit:
        raise SourceError(f"{path}: a JSON file larger than {limit:,} bytes (after decompression) is not read whole; "
                          "write it as JSONL (one record per line), which is read record by record")
    return data.removeprefix(b"\xef\xbb\xbf")


def _iter_jsonl(path: Path, limit: int = DEFAULT_MAX_RECORD_BYTES):
    index = 0
    # Records end at "\n" only: U+2028/U+2029 are valid inside JSON strings (bytes.splitlines
    # keeps them, str.splitlines would not), and a "\r" before the "\n" is stripped.
    for lineno, raw, n in _bounded_lines(path, limit):
        if raw is None:
            yield index, lineno, too_large(n, limit)
            index += 1
            continue
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield index, lineno, RecordError(f"invalid UTF-8 at byte {e.start} of the line")
        else:
            yield index, lineno, _parse_object(text)
        index += 1


def _parse_object(text: str) -> dict | RecordError:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return RecordError(f"malformed JSON: {e.msg} (column {e.colno})")
    except RecursionError:
        return RecordError("JSON nested too deeply to read")
    if not isinstance(obj, dict):
        return RecordError(f"record is a JSON {type(obj).__name__}, expected an object")
    return obj


def _iter_json(path: Path, limit: int = DEFAULT_MAX_RECORD_BYTES):
    # Decode with surrogateescape so one bad byte spoils one record, not the whole file.
    text = _read_bounded(path, MAX_JSON_ARRAY_BYTES).decode("utf-8", "surrogateescape")
    start = _skip_ws(text, 0)
    if start < len(text) and text[start] == "{":
        records = _records_in_object(text, path)
        if records is not None:  # {"data": [...]}: the one list of records the object holds
            text, start = records, 0
        else:
            # A ".json" file of one object per line (JSONL by another name) is common.
            yield from _iter_jsonl_text(text, limit)
            return
    if start >= len(text) or text[start] != "[":
        raise SourceError(f"{path}: expected a JSON array of records, JSON lines (one object per line), or one "
                          "object holding a list of records such as {\"data\": [...]}")
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, start + 1)
    index = 0
    if pos < len(text) and text[pos] == "]":
        return
    line, counted = 1, 0  # line of `pos`, counted incrementally (from the start each time is quadratic)
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except RecursionError:
            yield index, line, RecordError("JSON nested too deeply to read; the rest of the file from this record "
                                           "on could not be read")
            return
        except json.JSONDecodeError as e:
            # We cannot find the next record boundary reliably after a syntax error, so the rest
            # of the file is reported as one rejected record (e.g. a file cut off mid-record).
            yield index, line, RecordError(
                f"malformed JSON at line {e.lineno}: {e.msg}; the rest of the file from this "
                "record on could not be read"
            )
            return
        try:
            bad_utf8 = _has_surrogates(obj)
        except RecursionError:
            yield index, line, RecordError("record nested too deeply to read")
            bad_utf8 = None
        if bad_utf8 is None:
            pass
        elif len(text[pos:end].encode("utf-8", "surrogateescape")) > limit:
            yield index, line, too_large(len(text[pos:end].encode("utf-8", "surrogateescape")), limit)
        elif bad_utf8:
            yield index, line, RecordError("invalid UTF-8 in this record")
        elif not isinstance(obj, dict):
            yield index, line, RecordError(f"record is a JSON {type(obj).__name__}, expected an object")
        else:
            yield index, line, obj
        index += 1
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        yield index, line + text.count("\n", counted, pos), RecordError(
            "malformed JSON: expected ',' or ']' after a record (file truncated?); "
            "the rest of the file could not be read"
        )
        return


def _records_in_object(text: str, path: Path) -> str | None:
    """The records of a file that is one JSON object holding one list of objects (``{"data": [...]}``),
    re-serialised as an array; None when the file is not one such object (JSON lines)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    lists = [k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if len(lists) == 1:
        return json.dumps(obj[lists[0]], ensure_ascii=False)
    if len(lists) > 1:
        raise SourceError(f"{path}: one JSON object holding several lists of records ({', '.join(lists)}); save the "
                          "one to use as its own file")
    if any(k in obj for k in ("messages", "conversations", "instruction", "question", "prompt")):
        return None  # a single record: JSON lines with one line
    raise SourceError(f"{path}: one JSON object with the keys {sorted(obj)[:8]} and no list of records; expected a JSON "
                      "array of records, JSON lines, or an object holding a list of records such as {\"data\": [...]}")


def _iter_jsonl_text(text: str, limit: int = DEFAULT_MAX_RECORD_BYTES):
    index = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        if len(raw.encode("utf-8", "surrogateescape")) > limit:
            yield index, lineno, too_large(len(raw.encode("utf-8", "surrogateescape")), limit)
        elif re.search(r"[\udc80-\udcff]", raw):
            yield index, lineno, RecordError("invalid UTF-8 in this line")
        else:
            yield index, lineno, _parse_object(raw)
        index += 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _has_surrogates(obj: Any) -> bool:
    if isinstance(obj, str):
        return re.search(r"[\udc80-\udcff]", obj) is not None
    if isinstance(obj, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_surrogates(v) for v in obj)
    return False


def _iter_csv(path: Path, limit: int = DEFAULT_MAX_RECORD_BYTES):
    """Rows of a CSV file, streamed.  Lines are cut at ``limit`` bytes before the csv module sees
    them (so no field can grow past it), and a row that was cut, or whose lines add up to more
    than ``limit``, is rejected by name; the rows after it are read as usual."""
    import sys

    sizes = {"row": 0, "cut": False}

    def lines():
        for _, raw, n in _bounded_lines(path, limit):
            sizes["row"] += n
            if raw is None:  # too long: its content is dropped; a placeholder keeps the row (empty lines are skipped)
                sizes["cut"] = True
                raw = b"-"
            yield raw.decode("utf-8", "surrogateescape") + "\n"

    csv.field_size_limit(sys.maxsize)  # lines are bounded above; the csv module's own limit would stop the file
    reader = csv.DictReader(lines())
    try:
        reader.fieldnames  # the header: read now, so its size is not counted in the first row's
    except csv.Error as e:
        raise SourceError(f"{path}: malformed CSV header ({e})") from None
    index = 0
    while True:
        sizes["row"], sizes["cut"] = 0, False
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield index, reader.line_num, RecordError(f"malformed CSV: {e}; the rest of the file could not be read")
            return
        if sizes["cut"] or sizes["row"] > limit:
            yield index, reader.line_num, too_large(sizes["row"], limit, "row")
        elif _has_surrogates(row):
            yield index, reader.line_num, RecordError("invalid UTF-8 in this row")
        elif None in row:
            yield index, reader.line_num, RecordError("row has more fields than the header")
        else:
            yield index, reader.line_num, row
        index += 1


def _iter_parquet(path: Path, limit: int = DEFAULT_MAX_RECORD_BYTES):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise SourceError(f"{path}: not a readable Parquet file ({e})") from None
    index = 0
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            n = _size(row)
            yield index, None, (too_large(n, limit) if n > limit else row)
            index += 1


def _size(obj) -> int:
    """The bytes of a record's text (strings as UTF-8, other values by their decimal form)."""
    if isinstance(obj, str):
        return len(obj.encode("utf-8", "surrogateescape"))
    if isinstance(obj, dict):
        return sum(_size(k) + _size(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(_size(v) for v in obj)
    if isinstance(obj, bytes):
        return len(obj)
    return len(str(obj))


def _iter_hf_disk(path: Path, split: str | None, limit: int = DEFAULT_MAX_RECORD_BYTES):
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is in requirements.txt
        raise SourceError("reading datasets folders needs `pip install datasets`") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise SourceError(f"{path}: not a datasets save_to_disk folder ({e})") from None
    yield from _iter_hf(ds, split, str(path), limit)


def _iter_hub(name: str, split: str | None, limit: int = DEFAULT_MAX_RECORD_BYTES):
    import datasets

    try:
        ds = datasets.load_dataset(name)
    except Exception as e:
        raise SourceError(
            f"{name}: could not load this dataset from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e)[:200]}); check the id and the network, or pass a local file"
        ) from None
    yield from _iter_hf(ds, split, name, limit)


def _iter_hf(ds, split: str | None, where: str, limit: int = DEFAULT_MAX_RECORD_BYTES):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds else (next(iter(ds)) if len(ds) == 1 else None)
        if split not in ds:
            raise SourceError(f"{where}: choose a split, one of {sorted(ds)}")
        ds = ds[split]
    for index, row in enumerate(ds):
        n = _size(row)
        yield index, None, (too_large(n, limit) if n > limit else row)


def file_fingerprint(path: str) -> str | None:
    """SHA-256 of a file's bytes (None for folders and hub ids): what a run records of each source."""
    p = Path(path)
    if p.is_file():
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
    return None


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


def read_records(spec: SourceSpec, indices) -> dict[int, dict]:
    """Return ``{source_index: original record}`` for ``indices``, reading the source once.

    Stops as soon as the last wanted record is read.  Raises :class:`SourceError` naming the
    first index the source does not have, and :class:`RecordError` for a wanted record that no
    longer parses.
    """
    wanted = set(int(i) for i in indices)
    found: dict[int, dict] = {}
    if not wanted:
        return found
    last = max(wanted)
    for index, line, record in iter_records(spec):
        if index in wanted:
            if isinstance(record, RecordError):
                raise RecordError(f"{spec.path}: record #{index}" + (f" (line {line})" if line else "")
                                  + f" cannot be read: {record}")
            found[index] = record
        if index >= last:
            break
    missing = sorted(wanted - set(found))
    if missing:
        raise SourceError(f"{spec.path}: has no record #{missing[0]}" +
                          (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return found

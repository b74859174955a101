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
reason; nothing is dropped silently.  Exact duplicates (same normalised messages) are kept once.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

FORMATS = ("messages", "sharegpt", "alpaca", "gsm8k", "prompt")

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

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise SourceError(
                f"{self.path}: unknown format {self.format!r}; expected one of {', '.join(FORMATS)}"
            )
        if self.domain is None:
            self.domain = source_stem(self.path)


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
    names = _source_names(specs)
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


def iter_records(spec: SourceSpec) -> Iterator[tuple[int, int | None, dict | RecordError]]:
    """Yield ``(source_index, line, record)`` for every record of a source, in order.

    ``line`` is 1-based where the format has lines, else None.  A record that cannot be parsed is
    yielded as a :class:`RecordError` so the caller reports it and goes on.
    """
    path = Path(spec.path)
    name = path.name.lower()
    if path.is_dir():
        yield from _iter_hf_disk(path, spec.split)
    elif not path.exists():
        if is_hub_id(spec.path):
            yield from _iter_hub(spec.path, spec.split)
        else:
            raise SourceError(f"{spec.path}: no such file or folder")
    elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        yield from _iter_jsonl(path)
    elif name.endswith((".json", ".json.gz")):
        yield from _iter_json(path)
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.endswith((".csv", ".csv.gz")):
        yield from _iter_csv(path)
    else:
        raise SourceError(
            f"{spec.path}: unsupported file type; expected .json, .jsonl, .parquet, .csv "
            "(optionally .gz), a datasets save_to_disk folder or a hub dataset id"
        )


def is_hub_id(path: str) -> bool:
    """Whether ``path`` (not an existing file) reads as a hub dataset id such as ``org/name``."""
    return bool(re.match(r"^[\w.\-]+/[\w.\-]+$", path)) and not path.startswith(".") and not Path(path).exists()


def read_record(spec: SourceSpec, source_index: int) -> dict:
    """Return the original record at ``source_index`` of a source."""
    return read_records(spec, [source_index])[source_index]


# ----------------------------------------------------------------------------------------------
# Readers


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise SourceError(f"{path}: not a valid gzip file, or a truncated one ({type(e).__name__}: {e})") from None
    return data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is not part of the first record


def _iter_jsonl(path: Path):
    index = 0
    # Records end at "\n" only: U+2028/U+2029 are valid inside JSON strings (bytes.splitlines
    # keeps them, str.splitlines would not), and a "\r" before the "\n" is stripped.
    for lineno, raw in enumerate(_open_bytes(path).split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
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


def _iter_json(path: Path):
    # Decode with surrogateescape so one bad byte spoils one record, not the whole file.
    text = _open_bytes(path).decode("utf-8", "surrogateescape")
    start = _skip_ws(text, 0)
    if start < len(text) and text[start] == "{":
        # A ".json" file of one object per line (JSONL by another name) is common.
        yield from _iter_jsonl_text(text)
        return
    if start >= len(text) or text[start] != "[":
        raise SourceError(f"{path}: expected a JSON array of records")
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


def _iter_jsonl_text(text: str):
    index = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        if re.search(r"[\udc80-\udcff]", raw):
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


def _iter_csv(path: Path):
    text = _open_bytes(path).decode("utf-8", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    index = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield index, reader.line_num, RecordError(f"malformed CSV: {e}")
            return
        if _has_surrogates(row):
            yield index, reader.line_num, RecordError("invalid UTF-8 in this row")
        elif None in row:
            yield index, reader.line_num, RecordError("row has more fields than the header")
        else:
            yield index, reader.line_num, row
        index += 1


def _iter_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise SourceError(f"{path}: not a readable Parquet file ({e})") from None
    index = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield index, None, row
            index += 1


def _iter_hf_disk(path: Path, split: str | None):
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is in requirements.txt
        raise SourceError("reading datasets folders needs `pip install datasets`") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise SourceError(f"{path}: not a datasets save_to_disk folder ({e})") from None
    yield from _iter_hf(ds, split, str(path))


def _iter_hub(name: str, split: str | None):
    import datasets

    try:
        ds = datasets.load_dataset(name)
    except Exception as e:
        raise SourceError(
            f"{name}: could not load this dataset from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e)[:200]}); check the id and the network, or pass a local file"
        ) from None
    yield from _iter_hf(ds, split, name)


def _iter_hf(ds, split: str | None, where: str):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds else (next(iter(ds)) if len(ds) == 1 else None)
        if split not in ds:
            raise SourceError(f"{where}: choose a split, one of {sorted(ds)}")
        ds = ds[split]
    for index, row in enumerate(ds):
        yield index, None, row


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


def _source_names(specs: list[SourceSpec]) -> list[str]:
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

"""Readers: the records of a source, bounded, with nothing dropped silently.

:func:`iter_records` yields ``(source_index, line, record | RecordError)`` for every record of a
JSON array, JSONL (also ``.ndjson``), CSV (each also gzipped), Parquet file, a ``datasets``
``save_to_disk`` folder or a hub dataset id, in order; :func:`read_records` fetches records by
index.  What a record *is* (its shape, its messages) is :mod:`curation.data.load`'s business: a
reader only parses, so preference pairs and SFT examples share it (as datatrove keeps
``readers/`` apart from the pipeline steps).

Input is bounded: a record larger than ``max_record_bytes`` (1 MB by default) is yielded as a
:class:`RecordError` by name without being kept in memory; line formats are streamed
(:func:`bounded_lines`); a JSON array is read whole and must be under :data:`MAX_JSON_ARRAY_BYTES`
after decompression (a larger one is refused with the advice to write it as JSONL).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import zlib
from pathlib import Path
from typing import Any, Iterator

DEFAULT_MAX_RECORD_BYTES = 1_000_000  # a record's bytes as stored (a line, a CSV row, a JSON object)
MAX_JSON_ARRAY_BYTES = 256_000_000  # a JSON array is parsed whole: larger files should be JSONL
READ_CHUNK = 1 << 20
# The file types a reader reads, by name (a folder is a datasets save_to_disk folder).
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
JSON_SUFFIXES = (".json", ".json.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
DATA_SUFFIXES = (*JSONL_SUFFIXES, *JSON_SUFFIXES, ".parquet", *CSV_SUFFIXES)


class SourceError(ValueError):
    """A whole source cannot be used (missing file, unknown format, no usable row)."""


class RecordError(ValueError):
    """One record cannot be used; the message is the reason shown to the curator."""


def iter_records(spec) -> Iterator[tuple[int, int | None, dict | RecordError]]:
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
    elif name.endswith(JSONL_SUFFIXES):
        yield from _iter_jsonl(path, spec.max_record_bytes)
    elif name.endswith(JSON_SUFFIXES):
        yield from _iter_json(path, spec.max_record_bytes)
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path, spec.max_record_bytes)
    elif name.endswith(CSV_SUFFIXES):
        yield from _iter_csv(path, spec.max_record_bytes)
    else:
        raise SourceError(
            f"{spec.path}: unsupported file type; expected .json, .jsonl, .parquet, .csv "
            "(optionally .gz), a datasets save_to_disk folder or a hub dataset id"
        )


def is_hub_id(path: str) -> bool:
    """Whether ``path`` (not an existing file) reads as a hub dataset id such as ``org/name``: a
    name with a data file's suffix (``data/mth.jsonl``) is a local path that does not exist."""
    return (bool(re.match(r"^[\w.\-]+/[\w.\-]+$", path)) and not path.startswith(".") and not Path(path).exists()
            and not path.lower().endswith((*DATA_SUFFIXES, ".gz", ".arrow")))


def read_record(spec, source_index: int) -> dict:
    """Return the original record at ``source_index`` of a source."""
    return read_records(spec, [source_index])[source_index]


def read_records(spec, indices) -> dict[int, dict]:
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


def bounded_lines(path: Path, limit: int):
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
    for lineno, raw, n in bounded_lines(path, limit):
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
        for _, raw, n in bounded_lines(path, limit):
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

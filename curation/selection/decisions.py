"""Curator decisions: exclude, always keep, or tag individual examples; every selection honours them.

A decision belongs to an example id (the content hash of its normalised conversation), so it
survives a re-score, a new run over the same data and a grown pool; one on an example that is not
in the current run is kept (and shown as such).  They live in the workspace's SQLite database
``WORKSPACE/decisions.sqlite`` (WAL: readers never wait; every change is one transaction, so two
writers at once lose nothing), with the time and the page each came from, and an action log for
undo.

A selection applies a snapshot (:class:`Decisions`): ``exclude`` rows are never eligible, ``keep``
rows are selected first in their domain, counted against its part of the budget (and taken even
when a threshold or filter would have left them out: a curator's decision stands).  The recipe's
``decisions`` setting says which snapshot: ``current`` (the workspace's, the default), ``none``, or
a JSONL file (one decision a line, :func:`read_jsonl`; a selection folder keeps the one it used as
``decisions.jsonl``, so re-applying its recipe with it reproduces the selection).

File format (``decisions export``/``import``), one object a line::

    {"example_id": "3f2a...", "decision": "exclude" | "keep" | null, "tags": ["..."], "note": "..."}
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("exclude", "keep")
DB_NAME = "decisions.sqlite"
ID_RE = re.compile(r"^[0-9a-f]{16}$")
MAX_TAGS, MAX_TAG, MAX_NOTE = 50, 80, 2000
MAX_ACTIONS = 200  # undo depth
MAX_IDS = 1_000_000  # examples one action may touch (and decisions one file may hold)
MAX_FILE_BYTES = 256_000_000  # a decisions or id file larger than this is refused unread
MAX_LINE_BYTES = 64_000  # one decision (at most 50 tags and a 2,000-character note) fits many times over

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    example_id TEXT PRIMARY KEY,
    decision TEXT CHECK (decision IN ('exclude', 'keep')),
    tags TEXT NOT NULL DEFAULT '[]',       -- JSON list of strings
    note TEXT NOT NULL DEFAULT '',
    page TEXT,                             -- where it was made: inspect, explore, cli, import ...
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (       -- for undo: the rows an action changed, as they were before
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    page TEXT,
    what TEXT NOT NULL,
    before TEXT NOT NULL                   -- JSON {example_id: row or null}
);
"""


class DecisionError(ValueError):
    """A decision that cannot be recorded or read (the message names it and says what to change)."""


@dataclass
class Decisions:
    """A snapshot of decisions: ``{example_id: {"decision", "tags", "note"}}`` and where it came from."""

    rows: dict[str, dict] = field(default_factory=dict)
    source: str = "none"

    def excluded(self) -> set[str]:
        return {i for i, r in self.rows.items() if r.get("decision") == "exclude"}

    def kept(self) -> set[str]:
        return {i for i, r in self.rows.items() if r.get("decision") == "keep"}

    def fingerprint(self) -> str:
        import hashlib

        return "sha256:" + hashlib.sha256(json.dumps(self.rows, sort_keys=True).encode()).hexdigest()[:16]

    def to_jsonl(self) -> str:
        return "".join(json.dumps({"example_id": i, **r}, ensure_ascii=False) + "\n" for i, r in sorted(self.rows.items()))

    def tags(self) -> dict[str, list[str]]:
        """``{example_id: tags}`` of the examples that have tags."""
        return {i: r["tags"] for i, r in self.rows.items() if r.get("tags")}

    def describe(self) -> dict:
        """Where the snapshot came from and what it holds (a selection's summary keeps this)."""
        tags: dict[str, int] = {}
        for r in self.rows.values():
            for t in r.get("tags", []):
                tags[t] = tags.get(t, 0) + 1
        return {"source": self.source, "fingerprint": self.fingerprint(),
                "snapshot": {"decisions": len(self.rows), "exclude": len(self.excluded()), "keep": len(self.kept()),
                             "tagged": len(self.tags()), "tags": dict(sorted(tags.items()))}}


def check_row(obj, where: str) -> tuple[str, dict]:
    """``(example_id, {"decision", "tags", "note"})`` of one decision object, or a DecisionError naming ``where``."""
    if not isinstance(obj, dict):
        raise DecisionError(f"{where}: expected an object with example_id, decision, tags, note")
    unknown = sorted(set(obj) - {"example_id", "decision", "tags", "note"})
    if unknown:
        raise DecisionError(f"{where}: unknown field(s) {unknown}; a decision has example_id, decision, tags, note")
    eid = obj.get("example_id")
    if not isinstance(eid, str) or not ID_RE.match(eid):
        raise DecisionError(f"{where}: example_id {eid!r} is not an example id (16 hex characters, as in a run's tables)")
    decision = obj.get("decision")
    if decision not in (*KINDS, None):
        raise DecisionError(f"{where}: decision {decision!r}: expected exclude, keep or null")
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() and len(t) <= MAX_TAG for t in tags) \
            or len(tags) > MAX_TAGS:
        raise DecisionError(f"{where}: tags must be a list of at most {MAX_TAGS} non-empty strings of at most "
                            f"{MAX_TAG} characters")
    note = obj.get("note", "") or ""
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise DecisionError(f"{where}: note must be text of at most {MAX_NOTE} characters")
    return eid, {"decision": decision, "tags": sorted(set(t.strip() for t in tags)), "note": note}


def check_ids(ids) -> list[str]:
    """``ids`` without repeats, each checked to be an example id (16 hex characters)."""
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_IDS:
        raise DecisionError(f"{len(ids):,} examples in one action; at most {MAX_IDS:,}")
    for i in ids:
        if not isinstance(i, str) or not ID_RE.match(i):
            raise DecisionError(f"{i!r} is not an example id (16 hex characters, as in a run's tables)")
    return ids


def file_lines(path: str | Path, what: str = "decisions file"):
    """``(line number, text)`` of every non-empty line of a decisions or id file, read the way the
    loader reads records (:func:`curation.data.readers.bounded_lines`): a regular file only (not a
    folder, a device such as /dev/zero or a pipe), at most :data:`MAX_FILE_BYTES`, streamed line by
    line with each line at most :data:`MAX_LINE_BYTES`, and at most :data:`MAX_IDS` lines."""
    from curation.data.readers import bounded_lines

    p = Path(path)
    if not p.exists():
        raise DecisionError(f"{p}: no such {what}")
    if not p.is_file():
        raise DecisionError(f"{p}: not a regular file; give a {what} (one entry a line)")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DecisionError(f"{p}: {size:,} bytes, more than a {what} may have ({MAX_FILE_BYTES:,}); split it")
    count = 0
    try:
        for n, raw, length in bounded_lines(p, MAX_LINE_BYTES):
            if raw is None:
                raise DecisionError(f"{p} line {n}: {length:,} bytes, longer than a line of a {what} may be "
                                    f"({MAX_LINE_BYTES:,}); is this the right file?")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DecisionError(f"{p} line {n}: not UTF-8 text; is this the right file?") from None
            if text.strip():
                count += 1
                if count > MAX_IDS:
                    raise DecisionError(f"{p}: more than {MAX_IDS:,} entries in one {what}; split it")
                yield n, text
    except OSError as e:
        raise DecisionError(f"{p}: cannot read the {what} ({e})") from None


def read_ids(path: str | Path) -> list[str]:
    """The example ids of a file, one a line (blank lines skipped), read bounded (:func:`file_lines`)."""
    return [text.strip() for _, text in file_lines(path, "file of ids")]


def read_jsonl(path: str | Path) -> Decisions:
    """A decisions file (one object a line, see the module docstring); every line is checked first,
    and a malformed one is refused by its line number.  Read bounded (:func:`file_lines`)."""
    p = Path(path)
    rows: dict[str, dict] = {}
    for n, line in file_lines(p):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DecisionError(f"{p} line {n}: not JSON ({e.msg}, column {e.colno})") from None
        eid, row = check_row(obj, f"{p} line {n}")
        rows[eid] = row  # a later line for the same example replaces an earlier one
    return Decisions(rows, str(p))


class DecisionStore:
    """The workspace's decisions (``WORKSPACE/decisions.sqlite``)."""

    def __init__(self, workspace: str | Path | None = None):
        from curation.system import workspace_root

        self.ws = workspace_root(workspace)
        if self.ws.exists() and not self.ws.is_dir():
            raise DecisionError(f"--workspace {self.ws} is a file; give the workspace folder")
        self.path = self.ws / DB_NAME

    @contextmanager
    def connect(self, write: bool = False):
        self.ws.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise DecisionError(f"{self.path}: the decisions database is unreadable ({e}); move it aside "
                                f"(mv {self.path} {self.path}.broken) and the next decision starts an empty one") from None
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")  # the write lock first: two writers queue, none loses a change
            yield conn
            if write:
                conn.execute("COMMIT")
        except BaseException:
            if write and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    # -- reading ----------------------------------------------------------------------------------

    def snapshot(self) -> Decisions:
        if not self.path.is_file():
            return Decisions({}, f"{self.path} (empty)")
        with self.connect() as conn:
            rows = {r["example_id"]: {"decision": r["decision"], "tags": json.loads(r["tags"]), "note": r["note"]}
                    for r in conn.execute("SELECT * FROM decisions ORDER BY example_id")}
        return Decisions(rows, str(self.path))

    def table(self):
        """Every decision with its time and page, newest first (a DataFrame; ``decision`` is
        exclude, keep or None for a tag-only one)."""
        import pandas as pd

        cols = ["example_id", "decision", "tags", "note", "page", "created", "updated"]
        if not self.path.is_file():
            return pd.DataFrame(columns=cols)
        with self.connect() as conn:
            rows = [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY updated DESC, example_id")]
        df = pd.DataFrame(rows, columns=cols)
        df["tags"] = df["tags"].map(json.loads)
        # A tag-only decision has no decision: None, as in the file format (pandas would make it NaN).
        df["decision"] = df["decision"].astype(object).where(df["decision"].notna(), None)
        return df

    def can_undo(self) -> str | None:
        """What the last action did (None when there is nothing to undo)."""
        if not self.path.is_file():
            return None
        with self.connect() as conn:
            r = conn.execute("SELECT what FROM actions ORDER BY seq DESC LIMIT 1").fetchone()
        return r["what"] if r else None

    # -- writing ------------------------------------------------------------------------------------

    def set(self, ids, decision: str | None = "", add_tags=(), remove_tags=(), note: str | None = None,
            page: str = "cli") -> int:
        """One action over ``ids``: set the decision (``exclude``, ``keep``, None to clear it; ``""``
        leaves it), add or remove tags, set the note.  Returns how many examples it touched."""
        ids = check_ids(ids)
        if decision not in ("", None, *KINDS):
            raise DecisionError(f"decision {decision!r}: expected exclude or keep")
        now = time.time()
        what = ", ".join(filter(None, [f"{decision or 'clear'}" if decision != "" else "",
                                       f"tag {', '.join(add_tags)}" if add_tags else "",
                                       f"untag {', '.join(remove_tags)}" if remove_tags else "",
                                       "note" if note is not None else ""])) + f" on {len(ids)} example(s)"
        with self.connect(write=True) as conn:
            before = {}
            for i in ids:
                old = conn.execute("SELECT * FROM decisions WHERE example_id = ?", (i,)).fetchone()
                before[i] = dict(old) if old else None
                row = {"decision": old["decision"] if old else None, "tags": json.loads(old["tags"]) if old else [],
                       "note": old["note"] if old else ""}
                if decision != "":
                    row["decision"] = decision
                row["tags"] = sorted((set(row["tags"]) | {t.strip() for t in add_tags if t.strip()}) - set(remove_tags))
                if note is not None:
                    row["note"] = note
                check_row({"example_id": i, **row}, f"example {i}")
                if row["decision"] is None and not row["tags"] and not row["note"]:
                    conn.execute("DELETE FROM decisions WHERE example_id = ?", (i,))
                    continue
                _upsert(conn, i, row, page, old["created"] if old else now, now)
            _log_action(conn, now, page, what, before)
        return len(ids)

    def remove(self, ids, page: str = "cli") -> int:
        """Forget every decision, tag and note of ``ids`` (one action, undoable); returns how many
        had something to forget."""
        ids = check_ids(ids)
        with self.connect(write=True) as conn:
            before = {}
            for i in ids:
                old = conn.execute("SELECT * FROM decisions WHERE example_id = ?", (i,)).fetchone()
                if old is not None:
                    before[i] = dict(old)
                    conn.execute("DELETE FROM decisions WHERE example_id = ?", (i,))
            if before:
                _log_action(conn, time.time(), page, f"remove the decisions of {len(before)} example(s)", before)
        return len(before)

    def undo(self) -> str | None:
        """Put back the rows the last action changed; returns what it was (None: nothing to undo)."""
        if not self.path.is_file():
            return None
        with self.connect(write=True) as conn:
            last = conn.execute("SELECT * FROM actions ORDER BY seq DESC LIMIT 1").fetchone()
            if last is None:
                return None
            for i, row in json.loads(last["before"]).items():
                conn.execute("DELETE FROM decisions WHERE example_id = ?", (i,))
                if row is not None:
                    conn.execute("INSERT INTO decisions (example_id, decision, tags, note, page, created, updated) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (row["example_id"], row["decision"], row["tags"],
                                                                  row["note"], row["page"], row["created"], row["updated"]))
            conn.execute("DELETE FROM actions WHERE seq = ?", (last["seq"],))
        return last["what"]

    def import_jsonl(self, path: str | Path, page: str = "import") -> int:
        """Add the decisions of a file (a later line for an example replaces an earlier one, and the
        file's decision, tags and note replace the store's); nothing is imported when a line is
        malformed.  One action, undoable."""
        got = read_jsonl(path)
        now = time.time()
        with self.connect(write=True) as conn:
            before = {}
            for i, row in got.rows.items():
                old = conn.execute("SELECT * FROM decisions WHERE example_id = ?", (i,)).fetchone()
                before[i] = dict(old) if old else None
                if row["decision"] is None and not row["tags"] and not row["note"]:  # a line that clears
                    conn.execute("DELETE FROM decisions WHERE example_id = ?", (i,))
                else:
                    _upsert(conn, i, row, page, old["created"] if old else now, now)
            _log_action(conn, now, page, f"import {len(got.rows)} decision(s) from {Path(path).name}", before)
        return len(got.rows)

    def export_jsonl(self, path: str | Path) -> int:
        """Write every decision to ``path`` (the import format).  An existing file is replaced only
        when it is a decisions file itself (an earlier export); anything else is refused."""
        from curation.atomic import write_text

        p = Path(path)
        if p.is_dir():
            raise DecisionError(f"{p} is a folder; give a file name, e.g. {p / 'decisions.jsonl'}")
        if p.exists():
            try:
                read_jsonl(p)
            except DecisionError:
                raise DecisionError(f"{p} exists and is not a decisions file; it is not overwritten: give a new "
                                    "file name") from None
        snap = self.snapshot()
        write_text(p, snap.to_jsonl())
        return len(snap.rows)

    def where(self, ids, runs) -> dict[str, list[tuple[str, str]]]:
        """``{example_id: [(run name, domain), ...]}``: the runs (:class:`curation.runs.folder.Run`)
        that hold each example (an empty list: in none of them)."""
        return where_found(ids, runs)


def _upsert(conn, example_id: str, row: dict, page: str, created: float, now: float) -> None:
    conn.execute("INSERT INTO decisions (example_id, decision, tags, note, page, created, updated) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(example_id) DO UPDATE SET decision = excluded.decision,"
                 " tags = excluded.tags, note = excluded.note, page = excluded.page, updated = excluded.updated",
                 (example_id, row["decision"], json.dumps(row["tags"]), row["note"], page, created, now))


def _log_action(conn, now: float, page: str, what: str, before: dict) -> None:
    """One undoable action: the rows it changed, as they were before (null: there was none)."""
    conn.execute("INSERT INTO actions (ts, page, what, before) VALUES (?, ?, ?, ?)", (now, page, what, json.dumps(before)))
    # The undo log is bounded: only the last MAX_ACTIONS actions can be undone.
    conn.execute("DELETE FROM actions WHERE seq <= (SELECT MAX(seq) FROM actions) - ?", (MAX_ACTIONS,))


def where_found(ids, runs) -> dict[str, list[tuple[str, str]]]:
    """``{example_id: [(run name, domain), ...]}`` over ``runs`` (runs whose examples table cannot be
    read are skipped: a run in progress or a damaged folder is not where a decision lives)."""
    want = set(ids)
    out: dict[str, list[tuple[str, str]]] = {i: [] for i in want}
    for run in runs:
        try:
            df = run.scores()
        except (OSError, ValueError):
            continue
        if df is None or "example_id" not in df.columns:
            continue
        hit = df[df["example_id"].astype(str).isin(want)]
        for i, d in zip(hit["example_id"].astype(str), hit["domain"].astype(str)):
            out[i].append((run.name, d))
    return out


def filter_decisions(table, kinds=(), tags=(), tagged: bool = False, found=None, domains=(), run: str | None = None):
    """The rows of a decisions table (:meth:`DecisionStore.table`) that pass every filter given:
    ``kinds`` (any of exclude, keep, ``tag only``), ``tagged`` (any tag at all), ``tags`` (any of
    them); with ``found`` (:func:`where_found` of the table's ids): ``domains`` (held in a run under
    any of them) and ``run`` (a run's name, or ``"in no run"``)."""
    import pandas as pd

    ids = table["example_id"]
    keep = pd.Series(True, index=table.index, dtype=bool)
    if kinds:
        keep &= table["decision"].fillna("tag only").isin(list(kinds))
    if tagged:
        keep &= table["tags"].map(bool).astype(bool)
    if tags:
        keep &= table["tags"].map(lambda ts: bool(set(ts) & set(tags))).astype(bool)
    if domains:
        keep &= ids.map(lambda i: bool({d for _, d in found[i]} & set(domains))).astype(bool)
    if run == "in no run":
        keep &= ids.map(lambda i: not found[i]).astype(bool)
    elif run is not None:
        keep &= ids.map(lambda i: run in {r for r, _ in found[i]}).astype(bool)
    return table[keep]


def load_decisions(spec: str, workspace: str | Path | None = None) -> Decisions:
    """The snapshot a recipe's ``decisions`` setting names: ``none``, ``current`` (the workspace's:
    ``workspace``, else ``$CURATION_WORKSPACE`` or ``./workspace``) or a decisions JSONL file."""
    if spec == "none":
        return Decisions({}, "none")
    if spec == "current":
        return DecisionStore(workspace).snapshot()
    if not Path(spec).is_file():
        raise DecisionError(f"decisions {spec}: no such decisions file; give none, current (the workspace's) or a "
                            "JSONL file written by `python -m curation decisions export`")
    return read_jsonl(spec)


def state_key(spec: str, workspace: str | Path | None = None) -> str:
    """A key that changes whenever the decisions ``spec`` names change (for caches)."""
    return "none" if spec == "none" else load_decisions(spec, workspace).fingerprint()

"""The store: SQLite (standard library, WAL) holding tasks, workers and worker samples.

One writer (the collector's writing thread, or the inspector for inspect replies) and any number of
readers; each thread gets its own connection because sqlite3 connections are not shared between
threads. Everything the web side shows is read from here, never from live celery objects.
"""
from __future__ import annotations

import functools
import itertools
import json
import sqlite3
import threading
import time
from typing import Iterable, Iterator, Sequence

from monitor.store import rollup
from monitor.store.schema import (SCHEMA_VERSION, TASK_FIELDS, TERMINAL_STATES, TEXT_COLUMNS, WORKER_COUNTERS,
                                  WORKER_FIELDS, StoreError, is_online)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT, state TEXT, worker TEXT, args TEXT, kwargs TEXT, result TEXT, exception TEXT,
    traceback TEXT, retries INTEGER, sent REAL, received REAL, started REAL, succeeded REAL,
    failed REAL, retried REAL, revoked REAL, rejected REAL, runtime REAL, eta TEXT, expires TEXT,
    exchange TEXT, routing_key TEXT, root_id TEXT, parent_id TEXT, client TEXT, timestamp REAL, broker TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks(name);
CREATE INDEX IF NOT EXISTS tasks_worker ON tasks(worker);
CREATE INDEX IF NOT EXISTS tasks_received ON tasks(received);
CREATE INDEX IF NOT EXISTS tasks_started ON tasks(started);
CREATE INDEX IF NOT EXISTS tasks_runtime ON tasks(runtime);
CREATE INDEX IF NOT EXISTS tasks_broker ON tasks(broker);
CREATE TABLE IF NOT EXISTS workers (
    hostname TEXT PRIMARY KEY, pid INTEGER, freq REAL, last_heartbeat REAL, offline_at REAL,
    active INTEGER, processed INTEGER, loadavg TEXT, sw_ident TEXT, sw_ver TEXT, sw_sys TEXT,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in WORKER_COUNTERS)},
    inspect TEXT, inspected_at REAL, broker TEXT
);
CREATE TABLE IF NOT EXISTS worker_samples (
    hostname TEXT NOT NULL, at REAL NOT NULL, active INTEGER, load1 REAL, load5 REAL, load15 REAL
);
CREATE INDEX IF NOT EXISTS worker_samples_at ON worker_samples(at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

# The text index (see schema.TEXT_COLUMNS) is kept in step with `tasks` by triggers; search.py still
# checks each candidate with LIKE, so the index only has to find a superset: detail=none (no
# positions) writes ~3x faster than full.
_TEXT_LIST = ", ".join(TEXT_COLUMNS)
_TEXT_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS tasks_text USING fts5(
    {_TEXT_LIST}, content='tasks', content_rowid='seq', tokenize='trigram', detail=none
);
CREATE TRIGGER IF NOT EXISTS tasks_text_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO tasks_text (rowid, {_TEXT_LIST}) VALUES (new.seq, {", ".join(f"new.{c}" for c in TEXT_COLUMNS)});
END;
CREATE TRIGGER IF NOT EXISTS tasks_text_update AFTER UPDATE ON tasks
WHEN {" OR ".join(f"old.{c} IS NOT new.{c}" for c in TEXT_COLUMNS)}
BEGIN
    INSERT INTO tasks_text (tasks_text, rowid, {_TEXT_LIST})
        VALUES ('delete', old.seq, {", ".join(f"old.{c}" for c in TEXT_COLUMNS)});
    INSERT INTO tasks_text (rowid, {_TEXT_LIST}) VALUES (new.seq, {", ".join(f"new.{c}" for c in TEXT_COLUMNS)});
END;
CREATE TRIGGER IF NOT EXISTS tasks_text_delete AFTER DELETE ON tasks BEGIN
    INSERT INTO tasks_text (tasks_text, rowid, {_TEXT_LIST})
        VALUES ('delete', old.seq, {", ".join(f"old.{c}" for c in TEXT_COLUMNS)});
END;
"""

# Rows per task upsert statement. sqlite3's executemany releases and retakes the GIL for every row;
# while the collector's receiving thread is busy each retake can wait a whole switch interval
# (5 ms), which held the writer near 3k rows/s in the benchmark. Many rows per statement: few retakes.
_ROWS_PER_UPSERT = 200
_TASK_ROW = f"({', '.join('?' * len(TASK_FIELDS))})"
_TASK_CONFLICT = (
    " ON CONFLICT(uuid) DO UPDATE SET "
    # A row written from a partial in-memory task (evicted from the merge state) must not erase
    # what is stored, nor move a finished task back to an earlier state.
    + ", ".join(f"{f} = coalesce(excluded.{f}, tasks.{f})" for f in TASK_FIELDS[1:] if f != "state")
    # A finished task stays finished: a late received, started or retried row (or one of a custom
    # state) never moves it back, whichever order the rows arrive in.
    + f", state = CASE WHEN tasks.state IN {TERMINAL_STATES} "
      f"AND coalesce(excluded.state, '') NOT IN {TERMINAL_STATES} THEN tasks.state "
      "ELSE coalesce(excluded.state, tasks.state) END"
)


@functools.lru_cache(maxsize=_ROWS_PER_UPSERT)
def _task_upsert(rows: int) -> str:
    return f"INSERT INTO tasks ({', '.join(TASK_FIELDS)}) VALUES {', '.join([_TASK_ROW] * rows)}{_TASK_CONFLICT}"


def _task_upserts(rows: Sequence[tuple]) -> list[tuple[str, list]]:
    """(statement, parameter rows) for executemany: full statements of _ROWS_PER_UPSERT rows, then the rest."""
    whole = len(rows) - len(rows) % _ROWS_PER_UPSERT
    statements = [(_task_upsert(_ROWS_PER_UPSERT), [
        tuple(itertools.chain.from_iterable(rows[start:start + _ROWS_PER_UPSERT]))
        for start in range(0, whole, _ROWS_PER_UPSERT)])]
    if whole < len(rows):
        statements.append((_task_upsert(len(rows) - whole), [tuple(itertools.chain.from_iterable(rows[whole:]))]))
    return statements


_WORKER_UPSERT = (
    f"INSERT INTO workers ({', '.join(WORKER_FIELDS)}) VALUES ({', '.join('?' * len(WORKER_FIELDS))}) "
    "ON CONFLICT(hostname) DO UPDATE SET "
    + ", ".join(f"{f} = coalesce(excluded.{f}, workers.{f})" for f in WORKER_FIELDS[1:])
)
_COUNTER_UPSERT = (
    f"INSERT INTO workers (hostname, {', '.join(WORKER_COUNTERS)}) VALUES (?, {', '.join('?' * len(WORKER_COUNTERS))}) "
    "ON CONFLICT(hostname) DO UPDATE SET "
    + ", ".join(f"{c} = workers.{c} + excluded.{c}" for c in WORKER_COUNTERS)
)


def _add_broker_columns(connection: sqlite3.Connection) -> None:
    """Version 2: a store written before gets the `broker` columns (at the end, where a new store has
    them too); what it holds keeps NULL there. One transaction, checked inside it, so that two
    processes opening the store at once add them once."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for table in ("tasks", "workers"):
            columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            if columns and "broker" not in columns:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN broker TEXT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class Store:
    # busy_seconds: how long a write waits for another process's lock before it fails and the
    # collector shows the error (and retries), instead of seeming stuck.
    def __init__(self, path: str, max_tasks: int = 100_000, sample_days: float = 7.0, busy_seconds: float = 10.0):
        self.path = path
        self.busy_seconds = busy_seconds
        self.max_tasks = max_tasks
        self.sample_seconds = sample_days * 86400
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._write_lock:
            connection = self._connection()
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer Flowerbed (store version {version}; this one "
                                 f"knows up to {SCHEMA_VERSION}): upgrade Flowerbed, or use another --db")
            indexed = connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks_text'").fetchone()
            _add_broker_columns(connection)
            connection.executescript(_SCHEMA + rollup.SCHEMA + _TEXT_SCHEMA)
            if not indexed:  # a store written before the text index: index what it holds
                connection.execute("INSERT INTO tasks_text (tasks_text) VALUES ('rebuild')")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections -------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_seconds, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA temp_store=MEMORY")
            self._local.conn = conn
        return conn

    def query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, params).fetchall()

    def iter_query(self, sql: str, params: Sequence = (), chunk: int = 500) -> Iterator[dict]:
        """The rows of a query as dicts, read `chunk` at a time, so that a large answer can be
        streamed without holding it all in memory."""
        cursor = self._connection().execute(sql, params)
        try:
            while rows := cursor.fetchmany(chunk):
                yield from map(dict, rows)
        finally:
            cursor.close()

    # SQLite's own codes for a store that cannot be written now but may be soon (a lock, a full
    # disk, an I/O error); anything else a write raises is about the data and will never succeed.
    _TRANSIENT_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                        "SQLITE_READONLY", "SQLITE_PROTOCOL", "SQLITE_NOMEM", "SQLITE_INTERRUPT")

    @classmethod
    def is_transient(cls, error: BaseException) -> bool:
        """Whether a write that raised `error` is worth retrying as it is."""
        if isinstance(error, MemoryError):
            return True
        code = getattr(error, "sqlite_errorname", None) or ""
        return isinstance(error, sqlite3.OperationalError) and (not code or code.startswith(cls._TRANSIENT_CODES))

    def _write(self, statements: Iterable[tuple[str, Sequence]], then=None) -> None:
        """Run the statements in one transaction; `then(connection)` runs last, inside it."""
        conn = self._connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    conn.executemany(sql, rows)
                if then is not None:
                    then(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- writes ------------------------------------------------------------------------------
    def write_batch(self, tasks: Sequence[tuple] = (), workers: Sequence[tuple] = (),
                    counters: Sequence[tuple] = (), samples: Sequence[tuple] = ()) -> None:
        """One transaction for everything a collector batch changed.

        tasks: tuples in TASK_FIELDS order; workers: in WORKER_FIELDS order; counters:
        (hostname, *increments in WORKER_COUNTERS order); samples: (hostname, at, active, l1, l5, l15).
        """
        self._write((
            *_task_upserts(tasks),
            (_WORKER_UPSERT, workers),
            (_COUNTER_UPSERT, counters),
            ("INSERT INTO worker_samples VALUES (?, ?, ?, ?, ?, ?)", samples),
        ), then=rollup.fold_inbox)  # the tasks this batch finished, into the analytics rollups

    def fold_rollups(self) -> int:
        """Fold the finished tasks queued for the analytics rollups now instead of when due."""
        folded = []
        self._write((), then=lambda conn: folded.append(rollup.fold_inbox(conn, force=True)))
        return folded[0]

    def save_inspection(self, replies: dict[str, dict], at: float, broker: str | None = None) -> None:
        """Inspect replies per worker, of the workers of `broker`; a worker that only answered
        inspect still gets a row."""
        rows = [(host, json.dumps(reply, default=str), at, broker) for host, reply in replies.items()]
        self._write(((
            "INSERT INTO workers (hostname, inspect, inspected_at, broker) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(hostname) DO UPDATE SET inspect = excluded.inspect, inspected_at = excluded.inspected_at, "
            "broker = coalesce(excluded.broker, workers.broker)",
            rows),))

    def set_meta(self, key: str, value) -> None:
        self._write((("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(key, json.dumps(value))]),))

    def claim_lease(self, name: str, owner: str, seconds: float, now: float | None = None,
                    replacing: str | None = None) -> dict:
        """Take or renew the lease `name` for `owner` unless another owner holds it unexpired (or
        that owner is `replacing`: the caller knows it is gone).

        Returns the holder after the attempt: {"owner", "expires"}; the caller holds the lease when
        its owner is that one. One transaction, so two processes can never both take it."""
        now = time.time() if now is None else now
        key = f"lease:{name}"
        holder = []

        def take(conn):
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            current = json.loads(row[0]) if row else None
            if current is None or current["owner"] in (owner, replacing) or current["expires"] <= now:
                current = {"owner": owner, "expires": now + seconds}
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(current)))
            holder.append(current)
        self._write((), then=take)
        return holder[0]

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up at once (a clean stop), so that a standby takes over without waiting."""
        self._write((), then=lambda conn: conn.execute(
            "DELETE FROM meta WHERE key = ? AND json_extract(value, '$.owner') = ?", (f"lease:{name}", owner)))

    def get_meta(self, key: str, default=None):
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def get_meta_prefixed(self, prefix: str) -> dict:
        """Every meta value whose key starts with `prefix`, by the rest of its key."""
        rows = self.query("SELECT key, value FROM meta WHERE substr(key, 1, length(?)) = ? ORDER BY key",
                          (prefix, prefix))
        return {row["key"][len(prefix):]: json.loads(row["value"]) for row in rows}

    def enforce_retention(self, now: float | None = None) -> int:
        """Drop the oldest tasks beyond max_tasks and samples older than the sample window."""
        now = time.time() if now is None else now
        excess = self.count_tasks() - self.max_tasks
        deleted = 0
        statements = [("DELETE FROM worker_samples WHERE at < ?", [(now - self.sample_seconds,)]),
                      *rollup.retention_statements(now)]
        if excess > 0:
            cutoff = self.query("SELECT seq FROM tasks ORDER BY seq LIMIT 1 OFFSET ?", (excess,))[0]["seq"]
            statements.append(("DELETE FROM tasks WHERE seq < ?", [(cutoff,)]))
            deleted = excess
        self._write(statements, then=rollup.fold_inbox)  # a quiet cluster's last tasks reach the charts too
        return deleted

    # -- reads -------------------------------------------------------------------------------
    def count_tasks(self, where: str = "", params: Sequence = ()) -> int:
        return self.query(f"SELECT count(*) FROM tasks {'WHERE ' + where if where else ''}", params)[0][0]

    def get_task(self, uuid: str) -> dict | None:
        rows = self.query("SELECT * FROM tasks WHERE uuid = ?", (uuid,))
        return dict(rows[0]) if rows else None

    def brokers(self) -> list[str]:
        """The names of the brokers workers were recorded from."""
        return [row[0] for row in self.query("SELECT DISTINCT broker FROM workers WHERE broker IS NOT NULL "
                                             "ORDER BY broker")]

    def last_inspected(self) -> float | None:
        """When the workers last answered an inspect."""
        return self.query("SELECT max(inspected_at) FROM workers")[0][0]

    def workers(self, now: float | None = None) -> list[dict]:
        """Every known worker, from events and inspect, with `online` derived from heartbeats."""
        now = time.time() if now is None else now
        result = []
        for row in self.query("SELECT * FROM workers ORDER BY hostname"):
            worker = dict(row)
            worker["loadavg"] = json.loads(worker["loadavg"]) if worker["loadavg"] else None
            worker["inspect"] = json.loads(worker["inspect"]) if worker["inspect"] else {}
            worker["online"] = is_online(worker, now)
            result.append(worker)
        return result

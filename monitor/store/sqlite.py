"""The store: SQLite (standard library, WAL) holding tasks, workers and worker samples.

One writer (the collector's writing thread, or the inspector for inspect replies) and any number of
readers; each thread gets its own connection because sqlite3 connections are not shared between
threads. Everything the web side shows is read from here, never from live celery objects.
"""
from __future__ import annotations

import sqlite3
import threading
from typing import Iterator, Sequence

from monitor.store import event_counts, rollup
from monitor.store.base import Statements, Store
from monitor.store.dialect import SQLITE
from monitor.store.schema import (ADDED_COLUMNS, SCHEMA_VERSION, TEXT_COLUMNS, WORKER_COUNTERS,
                                  StoreError)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT, state TEXT, worker TEXT, args TEXT, kwargs TEXT, result TEXT, exception TEXT,
    traceback TEXT, retries INTEGER, sent REAL, received REAL, started REAL, succeeded REAL,
    failed REAL, retried REAL, revoked REAL, rejected REAL, runtime REAL, eta TEXT, expires TEXT,
    exchange TEXT, routing_key TEXT, root_id TEXT, parent_id TEXT, client TEXT, timestamp REAL, broker TEXT,
    clock INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks(name);
CREATE INDEX IF NOT EXISTS tasks_worker ON tasks(worker);
CREATE INDEX IF NOT EXISTS tasks_received ON tasks(received);
CREATE INDEX IF NOT EXISTS tasks_started ON tasks(started);
CREATE INDEX IF NOT EXISTS tasks_runtime ON tasks(runtime);
CREATE INDEX IF NOT EXISTS tasks_broker ON tasks(broker);
CREATE INDEX IF NOT EXISTS tasks_parent_id ON tasks(parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_timestamp ON tasks(timestamp);
CREATE TABLE IF NOT EXISTS workers (
    hostname TEXT PRIMARY KEY, pid INTEGER, freq REAL, last_heartbeat REAL, offline_at REAL,
    active INTEGER, processed INTEGER, loadavg TEXT, sw_ident TEXT, sw_ver TEXT, sw_sys TEXT,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in WORKER_COUNTERS)},
    inspect TEXT, inspected_at REAL, broker TEXT, online_at REAL, clock_offset REAL
);
CREATE TABLE IF NOT EXISTS worker_samples (
    hostname TEXT NOT NULL, at REAL NOT NULL, active INTEGER, load1 REAL, load5 REAL, load15 REAL
);
CREATE INDEX IF NOT EXISTS worker_samples_at ON worker_samples(at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT, action TEXT NOT NULL, target TEXT, arguments TEXT,
    outcome TEXT, message TEXT, replies TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS task_reruns (rerun TEXT PRIMARY KEY, original TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS task_reruns_original ON task_reruns(original);
CREATE TABLE IF NOT EXISTS queues (
    broker TEXT NOT NULL, name TEXT NOT NULL, messages INTEGER, consumers INTEGER, workers TEXT, at REAL NOT NULL,
    seen_at REAL NOT NULL, PRIMARY KEY (broker, name)
);
CREATE TABLE IF NOT EXISTS queue_samples (
    broker TEXT NOT NULL, name TEXT NOT NULL, at REAL NOT NULL, messages INTEGER, consumers INTEGER
);
CREATE INDEX IF NOT EXISTS queue_samples_at ON queue_samples(at);
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

def _add_columns(connection: sqlite3.Connection) -> None:
    """A store written before gets the columns added since (ADDED_COLUMNS: `broker` in version 2,
    `clock` in 5, `online_at` and `clock_offset` in 6), at the end, where a new store has them too; what it holds keeps NULL there. One
    transaction, checked inside it, so that two processes opening the store at once add them once."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for table, added in ADDED_COLUMNS.items():
            columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            for column, kind in added.items():
                if columns and column not in columns:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class SqliteStore(Store):
    dialect = SQLITE

    # busy_seconds: how long a write waits for another process's lock before it fails and the
    # collector shows the error (and retries), instead of seeming stuck.
    def __init__(self, path: str, max_tasks: int = 100_000, sample_days: float = 7.0, busy_seconds: float = 10.0):
        super().__init__(max_tasks, sample_days)
        self.path = path
        self.busy_seconds = busy_seconds
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._write_lock:
            connection = self._connection()
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer Flowerbed (store version {version}; this one "
                                 f"knows up to {SCHEMA_VERSION}): upgrade Flowerbed, or use another --db")
            indexed = connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks_text'").fetchone()
            _add_columns(connection)
            connection.executescript(_SCHEMA + rollup.schema(SQLITE) + event_counts.schema(SQLITE) + _rollup_triggers()
                                     + _TEXT_SCHEMA)
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

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, params).fetchall()

    def iter_query(self, sql: str, params: Sequence = (), chunk: int = 500) -> Iterator[dict]:
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
        if isinstance(error, MemoryError):
            return True
        code = getattr(error, "sqlite_errorname", None) or ""
        return isinstance(error, sqlite3.OperationalError) and (not code or code.startswith(cls._TRANSIENT_CODES))

    def _write(self, statements: Statements, then=None):
        conn = self._connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    conn.executemany(sql, rows)
                result = then(conn) if then is not None else None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result


def _rollup_triggers() -> str:
    """The rollup triggers (see rollup.py). Triggers are code, not data: recreated at every start so
    that a store follows the running version, in one transaction so that a writer in another process
    never sees the store without them."""
    final = rollup.FINAL_LIST
    return f"""
BEGIN IMMEDIATE;
DROP TRIGGER IF EXISTS tasks_rollup_on_insert;
DROP TRIGGER IF EXISTS tasks_rollup_on_finish;
DROP TRIGGER IF EXISTS worker_samples_rollup;
CREATE TRIGGER tasks_rollup_on_insert AFTER INSERT ON tasks
WHEN new.state IN ({final})
BEGIN {rollup.queue_finished_task(SQLITE)};
END;
CREATE TRIGGER tasks_rollup_on_finish AFTER UPDATE OF state ON tasks
WHEN new.state IN ({final}) AND coalesce(old.state, '') NOT IN ({final})
BEGIN {rollup.queue_finished_task(SQLITE)};
END;
CREATE TRIGGER worker_samples_rollup AFTER INSERT ON worker_samples
BEGIN
    {"; ".join(rollup.roll_up_sample(SQLITE))};
END;
COMMIT;
"""

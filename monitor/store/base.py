"""The store interface: what the collector writes and the web side reads, whatever the backend.

A backend (sqlite.py, postgres.py) connects, creates its schema and runs statements; everything
else is written here once, in SQL both engines read the same way (`?` placeholders, ON CONFLICT
upserts). The few pieces they spell differently come from the backend's `dialect`.
"""
from __future__ import annotations

import functools
import itertools
import json
import time
from typing import Callable, Iterable, Iterator, Sequence

from monitor.store import rollup
from monitor.store.dialect import Dialect
from monitor.store.schema import TASK_FIELDS, TERMINAL_STATES, WORKER_COUNTERS, WORKER_FIELDS, is_online

# Rows per task upsert statement. sqlite3's executemany releases and retakes the GIL for every row;
# while the collector's receiving thread is busy each retake can wait a whole switch interval
# (5 ms), which held the writer near 3k rows/s in the benchmark. Many rows per statement: few
# retakes (and few round trips to PostgreSQL).
_ROWS_PER_UPSERT = 200
_TASK_ROW = f"({', '.join('?' * len(TASK_FIELDS))})"
_TASK_CONFLICT = (
    " ON CONFLICT (uuid) DO UPDATE SET "
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
    "ON CONFLICT (hostname) DO UPDATE SET "
    + ", ".join(f"{f} = coalesce(excluded.{f}, workers.{f})" for f in WORKER_FIELDS[1:])
)
_COUNTER_UPSERT = (
    f"INSERT INTO workers (hostname, {', '.join(WORKER_COUNTERS)}) VALUES (?, {', '.join('?' * len(WORKER_COUNTERS))}) "
    "ON CONFLICT (hostname) DO UPDATE SET "
    + ", ".join(f"{c} = workers.{c} + excluded.{c}" for c in WORKER_COUNTERS)
)
_META_UPSERT = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"

Statements = Iterable[tuple[str, Sequence]]


class Store:
    """The store's interface and what every backend shares; a backend supplies the five methods
    marked as its own."""
    dialect: Dialect

    def __init__(self, max_tasks: int, sample_days: float):
        self.max_tasks = max_tasks
        self.sample_seconds = sample_days * 86400

    # -- the backend's own -------------------------------------------------------------------
    def query(self, sql: str, params: Sequence = ()) -> list:
        """All rows of a read, each readable by position and by column name."""
        raise NotImplementedError

    def iter_query(self, sql: str, params: Sequence = (), chunk: int = 500) -> Iterator[dict]:
        """The rows of a read as dicts, fetched `chunk` at a time, so that a large answer can be
        streamed without holding it all in memory."""
        raise NotImplementedError

    def _write(self, statements: Statements, then: Callable | None = None) -> None:
        """Run the statements (sql, parameter rows) in one transaction; `then(connection)` runs
        last, inside it, with `execute` and `executemany` taking `?` placeholders."""
        raise NotImplementedError

    @classmethod
    def is_transient(cls, error: BaseException) -> bool:
        """Whether a write that raised `error` is worth retrying as it is (a lock, a full disk, a
        server away) rather than refused for its data."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

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
        ), then=self._fold)  # the tasks this batch finished, into the analytics rollups

    def _fold(self, conn, force: bool = False) -> int:
        return rollup.fold_inbox(conn, self.dialect, force)

    def fold_rollups(self) -> int:
        """Fold the finished tasks queued for the analytics rollups now instead of when due."""
        folded = []
        self._write((), then=lambda conn: folded.append(self._fold(conn, force=True)))
        return folded[0]

    def save_inspection(self, replies: dict[str, dict], at: float, broker: str | None = None) -> None:
        """Inspect replies per worker, of the workers of `broker`; a worker that only answered
        inspect still gets a row."""
        rows = [(host, json.dumps(reply, default=str), at, broker) for host, reply in replies.items()]
        self._write(((
            "INSERT INTO workers (hostname, inspect, inspected_at, broker) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (hostname) DO UPDATE SET inspect = excluded.inspect, inspected_at = excluded.inspected_at, "
            "broker = coalesce(excluded.broker, workers.broker)",
            rows),))

    def set_meta(self, key: str, value) -> None:
        self._write(((_META_UPSERT, [(key, json.dumps(value))]),))

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
            current = self._locked_meta(conn, key)
            if current is None or current["owner"] in (owner, replacing) or current["expires"] <= now:
                current = {"owner": owner, "expires": now + seconds}
                conn.execute(_META_UPSERT, (key, json.dumps(current)))
            holder.append(current)
        self._write((), then=take)
        return holder[0]

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up at once (a clean stop), so that a standby takes over without waiting."""
        key = f"lease:{name}"

        def release(conn):
            current = self._locked_meta(conn, key)
            if current is not None and current["owner"] == owner:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        self._write((), then=release)

    def _locked_meta(self, conn, key: str):
        """A meta value read inside a write, so that no other writer changes it before the commit."""
        row = conn.execute(f"SELECT value FROM meta WHERE key = ?{self._for_update}", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    _for_update = ""  # SQLite's write transaction already excludes every other writer

    def meta_once(self, key: str, make: Callable[[], object]):
        """The meta value `key`, set to make() by the first process to ask: every process agrees."""
        value = []

        def read_or_set(conn):
            current = self._locked_meta(conn, key)
            if current is None:
                current = make()
                conn.execute(_META_UPSERT, (key, json.dumps(current)))
            value.append(current)
        self._write((), then=read_or_set)
        return value[0]

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
        self._write(statements, then=self._fold)  # a quiet cluster's last tasks reach the charts too
        return deleted

    # -- reads -------------------------------------------------------------------------------
    def count_tasks(self, where: str = "", params: Sequence = ()) -> int:
        return self.query(f"SELECT count(*) FROM tasks {'WHERE ' + where if where else ''}", params)[0][0]

    def get_task(self, uuid: str) -> dict | None:
        rows = self.query("SELECT * FROM tasks WHERE uuid = ?", (uuid,))
        return dict(rows[0]) if rows else None

    def distinct_task_values(self, column: str) -> list[str]:
        """The distinct task names or workers (`column`), found through the column's index one value
        at a time (a few hundred lookups), not by reading every task."""
        if column not in ("name", "worker"):
            raise ValueError(f"no index to list the distinct values of {column!r}")
        return [row[0] for row in self.query(
            f"WITH RECURSIVE found(value) AS (SELECT min({column}) FROM tasks UNION ALL "
            f"SELECT (SELECT min({column}) FROM tasks WHERE {column} > found.value) FROM found "
            "WHERE found.value IS NOT NULL) SELECT value FROM found WHERE value IS NOT NULL")]

    def children(self, uuids: Sequence[str]) -> dict[str, list[str]]:
        """The ids of the tasks each of `uuids` started (their parent_id), in the order first seen."""
        found: dict[str, list[str]] = {}
        if uuids:
            for row in self.query(f"SELECT parent_id, uuid FROM tasks WHERE parent_id IN "
                                  f"({', '.join('?' * len(uuids))}) ORDER BY seq", list(uuids)):
                found.setdefault(row[0], []).append(row[1])
        return found

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


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

from monitor.store import event_counts, rollup
from monitor.store.dialect import Dialect, like_escaped
from monitor.store.schema import AUDIT_FIELDS, AUDIT_SEARCHED, LOST_SQL, TASK_FIELDS, TERMINAL_STATES, WORKER_COUNTERS, WORKER_FIELDS, is_online

# Rows per upsert statement of a collector's batch. sqlite3's executemany releases and retakes the GIL
# for every row; while the collector's receiving thread is busy each retake can wait a whole switch
# interval (5 ms), which held the writer near 3k rows/s in the benchmark. Many rows per statement: few
# retakes (and few round trips to PostgreSQL: a row each cost its writer ~25 us, bench/cpu.py).
_ROWS_PER_UPSERT = 200
_LOOKUP_CHUNK = 500  # ids per `IN (...)` lookup
_TASK_INSERT = f"INSERT INTO tasks ({', '.join(TASK_FIELDS)})"
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


@functools.lru_cache(maxsize=4 * _ROWS_PER_UPSERT)
def _upsert(insert: str, conflict: str, width: int, rows: int) -> str:
    row = f"({', '.join('?' * width)})"
    return f"{insert} VALUES {', '.join([row] * rows)}{conflict}"


def _task_fields(execute: Callable[[str, list], list], uuids: Iterable[str], fields: Sequence[str]) -> dict:
    """{uuid: {field: value}} of the tasks among `uuids` the store holds, `execute(sql, params)` giving the
    rows (a read, or inside a write)."""
    uuids, found = list(uuids), {}
    for start in range(0, len(uuids), _LOOKUP_CHUNK):
        chunk = uuids[start:start + _LOOKUP_CHUNK]
        for row in execute(f"SELECT uuid, {', '.join(fields)} FROM tasks "
                           f"WHERE uuid IN ({', '.join('?' * len(chunk))})", chunk):
            found[row[0]] = dict(zip(fields, tuple(row)[1:]))
    return found


def _reader(conn) -> Callable[[str, list], list]:
    """`execute(sql, params)` giving the rows, inside a write's transaction (for _task_fields)."""
    return lambda sql, params: conn.execute(sql, params).fetchall()


def _meta_in(conn, key: str, lock: str = ""):
    """A meta value read in the transaction of `conn` (`lock`: a clause locking its row)."""
    row = conn.execute(f"SELECT value FROM meta WHERE key = ?{lock}", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def _counter_upserts(events: Sequence[tuple], runtimes: Sequence[tuple],
                     runtime_buckets: Sequence[tuple]) -> list[tuple[str, list]]:
    """The upserts adding increments to the /metrics counters (rows as event_counts.Increments.rows)."""
    return [*_upserts(*event_counts.EVENT_UPSERT, events), *_upserts(*event_counts.RUNTIME_UPSERT, runtimes),
            *_upserts(*event_counts.BUCKET_UPSERT, runtime_buckets)]


def _upserts(insert: str, conflict: str, rows: Sequence[tuple]) -> list[tuple[str, list]]:
    """(statement, parameter rows) for executemany: full statements of _ROWS_PER_UPSERT rows, then the
    rest. `insert` names the table and columns, `conflict` is the ON CONFLICT clause; a statement may
    not hold two rows of one key (PostgreSQL refuses to update a row twice in one statement)."""
    if not rows:
        return []
    width, whole = len(rows[0]), len(rows) - len(rows) % _ROWS_PER_UPSERT
    statements = [(_upsert(insert, conflict, width, _ROWS_PER_UPSERT), [
        tuple(itertools.chain.from_iterable(rows[start:start + _ROWS_PER_UPSERT]))
        for start in range(0, whole, _ROWS_PER_UPSERT)])]
    if whole < len(rows):
        statements.append((_upsert(insert, conflict, width, len(rows) - whole),
                           [tuple(itertools.chain.from_iterable(rows[whole:]))]))
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
# How much later than the worker-online event's a start told by uptime (see inspector.before_start, which
# puts it early) must be to be another start.
UPTIME_SLACK_SECONDS = 2
_AUDIT_INSERT = f"INSERT INTO audit ({', '.join(AUDIT_FIELDS)}) VALUES ({', '.join('?' * len(AUDIT_FIELDS))})"
_AUDIT_JSON = ("arguments", "replies")
# A broker's latest reading of its queues, in meta: {"at", "error"} (error None when all was read).
QUEUE_REPORT_PREFIX = "queues:"
_QUEUE_UPSERT = (
    "INSERT INTO queues (broker, name, messages, consumers, workers, at, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (broker, name) DO UPDATE SET messages = excluded.messages, consumers = excluded.consumers, "
    "workers = excluded.workers, at = excluded.at, seen_at = {greatest}(queues.seen_at, excluded.seen_at)"
)
_META_UPSERT = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"

Statements = Iterable[tuple[str, Sequence]]


def _worker(row, now: float) -> dict:
    worker = dict(row)
    worker["loadavg"] = json.loads(worker["loadavg"]) if worker["loadavg"] else None
    worker["inspect"] = json.loads(worker["inspect"]) if worker["inspect"] else {}
    worker["online"] = is_online(worker, now)
    return worker


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

    def _write(self, statements: Statements, then: Callable | None = None):
        """Run the statements (sql, parameter rows) in one transaction; `then(connection)` runs
        last, inside it, with `execute` and `executemany` taking `?` placeholders. Returns what
        `then` returned."""
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
                    counters: Sequence[tuple] = (), samples: Sequence[tuple] = (), events: Sequence[tuple] = (),
                    runtimes: Sequence[tuple] = (), runtime_buckets: Sequence[tuple] = (),
                    unnamed: Sequence[tuple] = ()) -> int:
        """One transaction for everything a collector batch changed. Returns how many finished tasks
        it folded into the analytics rollups (rollup.fold_inbox: those of earlier batches too).

        tasks: tuples in TASK_FIELDS order; workers: in WORKER_FIELDS order; counters:
        (hostname, *increments in WORKER_COUNTERS order); samples: (hostname, at, active, l1, l5, l15);
        events, runtimes, runtime_buckets: increments of the /metrics counters (event_counts.py):
        (worker, name, type, n, at), (worker, name, n, seconds, at), (worker, name, le, n); unnamed: task
        events waiting for their task's name, (uuid, worker, subject, runtime to observe or None, at).
        """
        return self._write((
            *_upserts(_TASK_INSERT, _TASK_CONFLICT, tasks),
            (_WORKER_UPSERT, workers),
            (_COUNTER_UPSERT, counters),
            ("INSERT INTO worker_samples VALUES (?, ?, ?, ?, ?, ?)", samples),
            *_counter_upserts(events, runtimes, runtime_buckets),
            (event_counts.UNNAMED_INSERT, unnamed),
        ), then=self._after_batch)

    def _after_batch(self, conn) -> int:
        """In a batch's transaction: the waiting events whose task's name is now stored into the
        counters, and the finished tasks into the analytics rollups when due (how many it folded)."""
        self._count_named(conn, time.time())
        return self._fold(conn)

    def _count_named(self, conn, now: float) -> None:
        """Count the events that waited for their task's name (event_counts.py) and have it now, or
        waited too long (under "")."""
        taken = conn.execute(event_counts.TAKE_NAMED, (now - event_counts.UNNAMED_WAIT_SECONDS,)).fetchall()
        if not taken:
            return
        stored = _task_fields(_reader(conn), {row[0] for row in taken}, ("name",))
        bounds = _meta_in(conn, event_counts.RUNTIME_BUCKETS_KEY)
        increments = event_counts.Increments(tuple(bounds) if bounds else event_counts.DEFAULT_RUNTIME_BUCKETS)
        for uuid, worker, subject, runtime in taken:
            name = stored.get(uuid, {}).get("name") or ""
            increments.count(worker, name, subject)
            if runtime is not None:
                increments.observe(worker, name, runtime)
        for sql, params in _counter_upserts(**increments.rows(now)):
            conn.executemany(sql, params)

    def _fold(self, conn, force: bool = False) -> int:
        return rollup.fold_inbox(conn, self.dialect, functools.partial(_task_fields, _reader(conn)), force)

    def fold_rollups(self) -> int:
        """Fold the finished tasks queued for the analytics rollups now instead of when due."""
        return self._write((), then=lambda conn: self._fold(conn, force=True))

    def save_inspection(self, replies: dict[str, dict], at: float, broker: str | None = None,
                        online_since: dict[str, float] | None = None) -> None:
        """Inspect replies per worker, of the workers of `broker`; a worker that only answered
        inspect still gets a row. `online_since`: a moment before each worker's start, as its uptime
        tells (inspector.before_start), which becomes its `online_at` when later than the one its
        worker-online event gave by more than the slack: the worker restarted while no collector listened."""
        online_since = online_since or {}
        rows = [(host, json.dumps(reply, default=str), at, broker, online_since.get(host)) for host, reply in replies.items()]
        self._write(((
            "INSERT INTO workers (hostname, inspect, inspected_at, broker, online_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (hostname) DO UPDATE SET inspect = excluded.inspect, inspected_at = excluded.inspected_at, "
            "broker = coalesce(excluded.broker, workers.broker), "
            f"online_at = CASE WHEN excluded.online_at > coalesce(workers.online_at, 0) + {UPTIME_SLACK_SECONDS} "
            "THEN excluded.online_at ELSE workers.online_at END",
            rows),))

    def save_queue_depths(self, broker: str, at: float, depths: Sequence[tuple], error: str | None = None) -> None:
        """One reading of a broker's queues: depths are (name, messages, consumers, consuming workers,
        watched), messages and consumers None for a queue the broker does not have; `watched` says
        the queue has a reason to stay watched (a consumer, messages waiting, the default queue), else
        it is forgotten once the sample window passes. `error`: why the reading failed (no depths)."""
        self._write((
            (_QUEUE_UPSERT.format(greatest=self.dialect.greatest),
             [(broker, name, messages, consumers, json.dumps(sorted(workers)), at, at if watched else 0.0)
              for name, messages, consumers, workers, watched in depths]),
            ("INSERT INTO queue_samples VALUES (?, ?, ?, ?, ?)",
             [(broker, name, at, messages, consumers) for name, messages, consumers, _w, _s in depths
              if messages is not None]),
            (_META_UPSERT, [(QUEUE_REPORT_PREFIX + broker, json.dumps({"at": at, "error": error}))]),
        ))

    def use_runtime_buckets(self, buckets: Sequence[float]) -> bool:
        """Count runtimes in `buckets` from now on. A store that counted in other buckets starts its
        histogram again (as Flower's does when restarted with other buckets: Prometheus reads a
        reset); returns whether it did."""
        wanted = list(buckets)

        def switch(conn):
            current = self._locked_meta(conn, event_counts.RUNTIME_BUCKETS_KEY)
            if current != wanted:
                conn.execute(_META_UPSERT, (event_counts.RUNTIME_BUCKETS_KEY, json.dumps(wanted)))
                conn.execute("DELETE FROM task_runtime_buckets")
                conn.execute("DELETE FROM task_runtimes")
            return current is not None and current != wanted
        return self._write((), then=switch)

    def set_meta(self, key: str, value) -> None:
        self._write(((_META_UPSERT, [(key, json.dumps(value))]),))

    def delete_meta(self, keys: list[str]) -> None:
        self._write((("DELETE FROM meta WHERE key = ?", [(key,) for key in keys]),))

    def claim_lease(self, name: str, owner: str, seconds: float, now: float | None = None,
                    replacing: str | None = None) -> dict:
        """Take or renew the lease `name` for `owner` unless another owner holds it unexpired (or
        that owner is `replacing`: the caller knows it is gone).

        Returns the holder after the attempt: {"owner", "expires"}; the caller holds the lease when
        its owner is that one. One transaction, so two processes can never both take it."""
        now = time.time() if now is None else now
        key = f"lease:{name}"

        def take(conn):
            current = self._locked_meta(conn, key)
            if current is None or current["owner"] in (owner, replacing) or current["expires"] <= now:
                current = {"owner": owner, "expires": now + seconds}
                conn.execute(_META_UPSERT, (key, json.dumps(current)))
            return current
        return self._write((), then=take)

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
        return _meta_in(conn, key, self._for_update)

    _for_update = ""  # SQLite's write transaction already excludes every other writer

    def meta_once(self, key: str, make: Callable[[], object]):
        """The meta value `key`, set to make() by the first process to ask: every process agrees."""
        def read_or_set(conn):
            current = self._locked_meta(conn, key)
            if current is None:
                current = make()
                conn.execute(_META_UPSERT, (key, json.dumps(current)))
            return current
        return self._write((), then=read_or_set)

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
        window_start = now - self.sample_seconds
        statements = [("DELETE FROM worker_samples WHERE at < ?", [(window_start,)]),
                      ("DELETE FROM queue_samples WHERE at < ?", [(window_start,)]),
                      ("DELETE FROM queues WHERE seen_at < ?", [(window_start,)]),
                      *rollup.retention_statements(now), *event_counts.retention_statements(window_start)]
        if excess > 0:
            cutoff = self.query("SELECT seq FROM tasks ORDER BY seq LIMIT 1 OFFSET ?", (excess,))[0]["seq"]
            statements.append(("DELETE FROM tasks WHERE seq < ?", [(cutoff,)]))
            deleted = excess
        self._write(statements)
        return deleted

    def record_action(self, entry: dict, reruns: Sequence[tuple[str, str]] = ()) -> None:
        """One audit row for a control action (the AUDIT_FIELDS of `entry`, `arguments` and `replies`
        as objects) and the (re-run, original) task links the action made, in one transaction."""
        row = tuple(json.dumps(entry.get(field), default=str) if field in _AUDIT_JSON else entry.get(field)
                    for field in AUDIT_FIELDS)
        self._write(((_AUDIT_INSERT, [row]),
                     ("INSERT INTO task_reruns (rerun, original, at) VALUES (?, ?, ?) ON CONFLICT (rerun) DO NOTHING",
                      [(rerun, original, entry["at"]) for rerun, original in reruns])))

    # -- reads -------------------------------------------------------------------------------
    def _audit_where(self, search: str) -> tuple[str, list]:
        """Every word of `search` in some searched column of the row, ignoring case."""
        clauses, params = [], []
        for word in search.split():
            pattern = f"%{like_escaped(word)}%"
            clauses.append("(" + " OR ".join(f"{column} {self.dialect.like} ? ESCAPE '\\'"
                                             for column in AUDIT_SEARCHED) + ")")
            params.extend([pattern] * len(AUDIT_SEARCHED))
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params

    def count_audit(self, search: str = "") -> int:
        where, params = self._audit_where(search)
        return self.query(f"SELECT count(*) FROM audit {where}", params)[0][0]

    def iter_audit(self, search: str = "", limit: int | None = None, offset: int = 0) -> Iterator[dict]:
        """The audit rows `search` matches, newest first, `arguments` and `replies` decoded."""
        where, params = self._audit_where(search)
        paging = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        for row in self.iter_query(f"SELECT id, {', '.join(AUDIT_FIELDS)} FROM audit {where} "
                                   f"ORDER BY at DESC, id DESC{paging}", params):
            for field in _AUDIT_JSON:
                row[field] = json.loads(row[field]) if row[field] else None
            yield row

    def task_links(self, uuid: str) -> dict:
        """The re-run links of a task: {"rerun_of": the original's id or None, "reruns": the ids of
        its re-runs, oldest first}."""
        original = self.query("SELECT original FROM task_reruns WHERE rerun = ?", (uuid,))
        reruns = self.query("SELECT rerun FROM task_reruns WHERE original = ? ORDER BY at, rerun", (uuid,))
        return {"rerun_of": original[0][0] if original else None, "reruns": [row[0] for row in reruns]}

    def count_tasks(self, where: str = "", params: Sequence = ()) -> int:
        return self.query(f"SELECT count(*) FROM tasks {'WHERE ' + where if where else ''}", params)[0][0]

    def get_task(self, uuid: str) -> dict | None:
        rows = self.query("SELECT * FROM tasks WHERE uuid = ?", (uuid,))
        return dict(rows[0]) if rows else None

    def task_fields(self, uuids: Iterable[str], fields: Sequence[str]) -> dict:
        """{uuid: {field: value}} of the tasks among `uuids` the store holds."""
        return _task_fields(self.query, uuids, fields)

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
        return [_worker(row, now) for row in self.query("SELECT * FROM workers ORDER BY hostname")]

    def busy_floors(self, since: float) -> dict[str, tuple[int, float]]:
        """Each worker's fewest active tasks over its heartbeats since `since`, with its first such
        heartbeat's time: a floor near the pool size means it was busy all along, not in a spike."""
        return {row[0]: (row[1], row[2]) for row in self.query(
            "SELECT hostname, min(active), min(at) FROM worker_samples WHERE at >= ? AND active IS NOT NULL "
            "GROUP BY hostname", (since,))}

    def worker(self, hostname: str, now: float | None = None) -> dict | None:
        """One worker as workers() gives it, None when unknown."""
        rows = self.query("SELECT * FROM workers WHERE hostname = ?", (hostname,))
        return _worker(rows[0], time.time() if now is None else now) if rows else None

    def metric_counters(self) -> dict[str, list]:
        """The /metrics counters (event_counts.py), read in one snapshot: "events" (worker, name, type,
        count), "runtimes" (worker, name, count, seconds), "buckets" (worker, name, le, count), each
        sorted by its key."""
        found: dict[str, list] = {"events": [], "runtimes": [], "buckets": []}
        for kind, worker, name, event_type, count, number in self.query(event_counts.READ_ALL):
            found[kind].append((worker, name, event_type, count) if kind == "events" else
                               (worker, name, count, number) if kind == "runtimes" else (worker, name, number, count))
        return {kind: sorted(rows) for kind, rows in found.items()}

    def tasks_at_workers(self) -> dict[str, list]:
        """What Flower's prefetch gauges read, for tasks without an ETA (a scheduled task waits on
        purpose): "received" (worker, name, count) of the tasks received and not started yet;
        "started" (worker, name, started, received) of the tasks running now (not lost, LOST_SQL)."""
        return {"received": self.query("SELECT worker, name, count(*) FROM tasks WHERE state = 'RECEIVED' "
                                       "AND eta IS NULL AND worker IS NOT NULL GROUP BY worker, name"),
                "started": self.query(f"SELECT worker, name, started, received FROM tasks WHERE state = 'STARTED' "
                                      f"AND eta IS NULL AND worker IS NOT NULL AND received IS NOT NULL "
                                      f"AND started IS NOT NULL AND NOT coalesce({LOST_SQL}, false)")}

    def queues(self, broker: str | None = None) -> list[dict]:
        """Each watched queue's latest reading (all brokers', or one's), by broker and name."""
        where, params = ("WHERE broker = ?", (broker,)) if broker else ("", ())
        rows = [dict(row) for row in self.query(f"SELECT * FROM queues {where} ORDER BY broker, name", params)]
        for row in rows:
            row["workers"] = json.loads(row["workers"]) if row["workers"] else []
        return rows

    def queue_names(self, broker: str, since: float) -> list[str]:
        """The queues of `broker` that had a reason to be watched since `since`."""
        return [row[0] for row in self.query("SELECT name FROM queues WHERE broker = ? AND seen_at >= ? ORDER BY name",
                                             (broker, since))]

    def pending_routing_keys(self, broker: str, limit: int = 100) -> list[str]:
        """The routing keys of tasks sent and not yet received (task-sent events): queues clients
        publish to, consumed or not."""
        return [row[0] for row in self.query(
            "SELECT DISTINCT routing_key FROM tasks WHERE state = 'PENDING' AND broker = ? AND routing_key IS NOT NULL "
            "LIMIT ?", (broker, limit))]

    def queue_history(self, since: float, step: int, broker: str | None = None) -> list[dict]:
        """Per broker, queue and `step`-second bucket since `since`: the most messages a sample saw."""
        bucket = self.dialect.floor_to("at", step)
        where, params = ("AND broker = ?", [broker]) if broker else ("", [])
        return [dict(row) for row in self.query(
            f"SELECT broker, name, {bucket} AS bucket, max(messages) AS messages FROM queue_samples "
            f"WHERE at >= ? {where} GROUP BY broker, name, {bucket} ORDER BY broker, name, bucket", [since, *params])]

    def queue_reports(self) -> dict[str, dict]:
        """Each broker's latest queue reading: {"at", "error"} by broker name."""
        return self.get_meta_prefixed(QUEUE_REPORT_PREFIX)

"""The counters behind /metrics: task events per worker, task name and event type, and the runtimes of
successful tasks as a histogram per worker and task name (Flower's `flower_events_total` and
`flower_task_runtime_seconds`).

The collector adds a batch's increments in the transaction that writes the batch, counting each event
once (see Collector._new_events), so the counters only go up, survive restarts and agree across any
number of web processes. They are not trimmed with the tasks (a counter that went down would read as a
reset to Prometheus): a counter goes once no event has added to it for the sample window (7 days), so
workers and clients that came and went (a pod's name, a client process's gen123@host) do not stay.

A task's events are counted under its name, which only its task-received (or task-sent) event carries.
When no collector knows it yet (collectors sharing an events queue: the task-received event may be in
another's batch, not committed), the events wait in `task_events_unnamed`, written with the batch, and
a later batch of any collector counts them once the name is stored, or under Flower's label for an
unknown name, "", after UNNAMED_WAIT_SECONDS.
"""
from __future__ import annotations

import bisect

# Flower's default buckets (prometheus_client's), in seconds; +Inf is every observation.
DEFAULT_RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# The meta key holding the buckets the stored histogram counts in.
RUNTIME_BUCKETS_KEY = "runtime_buckets"
# How long a task's events wait for its name (the task-received event in another collector's backlog).
UNNAMED_WAIT_SECONDS = 120.0

# (INSERT with its columns, ON CONFLICT clause) of each table, for Store.write_batch's multi-row upserts:
# an increment adds to what is stored; `at`, when it last did.
EVENT_UPSERT = ("INSERT INTO task_events (worker, name, type, count, at)",
                " ON CONFLICT (worker, name, type) DO UPDATE SET count = task_events.count + excluded.count, "
                "at = excluded.at")
RUNTIME_UPSERT = ("INSERT INTO task_runtimes (worker, name, count, seconds, at)",
                  " ON CONFLICT (worker, name) DO UPDATE SET count = task_runtimes.count + excluded.count, "
                  "seconds = task_runtimes.seconds + excluded.seconds, at = excluded.at")
BUCKET_UPSERT = ("INSERT INTO task_runtime_buckets (worker, name, le, count)",
                 " ON CONFLICT (worker, name, le) DO UPDATE SET count = task_runtime_buckets.count + excluded.count")
UNNAMED_INSERT = "INSERT INTO task_events_unnamed (uuid, worker, subject, runtime, queued) VALUES (?, ?, ?, ?, ?)"
# The waiting events to count now, taken out (each by one writer, whichever takes it first): their task's
# name is stored, or they waited too long.
TAKE_NAMED = ("DELETE FROM task_events_unnamed WHERE queued < ? OR uuid IN (SELECT uuid FROM tasks WHERE uuid IN "
              "(SELECT uuid FROM task_events_unnamed) AND name IS NOT NULL) RETURNING uuid, worker, subject, runtime")
# Every counter in one statement, so in one snapshot: a histogram's buckets never read ahead of its count.
READ_ALL = ("SELECT 'events', worker, name, type, count, NULL FROM task_events "
            "UNION ALL SELECT 'runtimes', worker, name, NULL, count, seconds FROM task_runtimes "
            "UNION ALL SELECT 'buckets', worker, name, NULL, count, le FROM task_runtime_buckets")


def schema(dialect) -> str:
    integer, real, text, no_rowid = dialect.integer, dialect.real, dialect.text, dialect.without_rowid
    return f"""
CREATE TABLE IF NOT EXISTS task_events (
    worker {text} NOT NULL, name {text} NOT NULL, type {text} NOT NULL, count {integer} NOT NULL, at {real} NOT NULL,
    PRIMARY KEY (worker, name, type)
){no_rowid};
CREATE TABLE IF NOT EXISTS task_runtimes (
    worker {text} NOT NULL, name {text} NOT NULL, count {integer} NOT NULL, seconds {real} NOT NULL,
    at {real} NOT NULL,
    PRIMARY KEY (worker, name)
){no_rowid};
-- A bucket counts the runtimes above the bound before it, up to its own (`le`); /metrics adds them up
-- (Prometheus' buckets are cumulative), so a runtime is one row's increment, not one per bucket above it.
CREATE TABLE IF NOT EXISTS task_runtime_buckets (
    worker {text} NOT NULL, name {text} NOT NULL, le {real} NOT NULL, count {integer} NOT NULL,
    PRIMARY KEY (worker, name, le)
){no_rowid};
-- `subject` as the collector has it (`succeeded`); `runtime` only when it is to be observed.
CREATE TABLE IF NOT EXISTS task_events_unnamed (
    uuid {text} NOT NULL, worker {text} NOT NULL, subject {text} NOT NULL, runtime {real}, queued {real} NOT NULL
);
"""


def retention_statements(window_start: float) -> list[tuple[str, list]]:
    """DELETE statements (for Store._write) of the counters nothing added to since `window_start`; a
    histogram's buckets go with its count, never alone (its cumulative buckets would go down)."""
    return [("DELETE FROM task_events WHERE at < ?", [(window_start,)]),
            ("DELETE FROM task_runtime_buckets WHERE EXISTS (SELECT 1 FROM task_runtimes WHERE "
             "task_runtimes.worker = task_runtime_buckets.worker AND task_runtimes.name = task_runtime_buckets.name "
             "AND task_runtimes.at < ?)", [(window_start,)]),
            ("DELETE FROM task_runtimes WHERE at < ?", [(window_start,)])]


def parse_buckets(text: str) -> tuple[float, ...]:
    """Flower's --task_runtime_metric_buckets ('0.1,1,10,inf'): the finite upper bounds, sorted.
    Raises ValueError saying what is wrong."""
    bounds = set()
    for part in text.split(","):
        part = part.strip()
        try:
            bound = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number of seconds") from None
        if bound != bound or bound <= 0:
            raise ValueError(f"a bucket bound must be greater than 0 seconds, got {part!r}")
        if bound != float("inf"):  # +Inf is always there
            bounds.add(bound)
    if not bounds:
        raise ValueError("give at least one finite bucket bound, e.g. 0.1,1,10")
    return tuple(sorted(bounds))


class Increments:
    """One batch's increments of the counters, added up by key, written sorted (two collectors
    sharing a PostgreSQL store then take the rows' locks in one order)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.events: dict[tuple, int] = {}
        self.runtimes: dict[tuple, list] = {}
        self.in_buckets: dict[tuple, int] = {}  # (worker, name, le): runtimes in that bucket alone

    def count(self, worker: str, name: str, subject: str) -> None:
        """One task event, `subject` naming it as celery does (`succeeded` for task-succeeded)."""
        key = (worker, name, subject)
        self.events[key] = self.events.get(key, 0) + 1

    def observe(self, worker: str, name: str, seconds: float) -> None:
        total = self.runtimes.setdefault((worker, name), [0, 0.0])
        total[0] += 1
        total[1] += seconds
        index = bisect.bisect_left(self.buckets, seconds)  # the first bound at or above it
        if index < len(self.buckets):  # above every bound: in +Inf only, which is the count
            key = (worker, name, self.buckets[index])
            self.in_buckets[key] = self.in_buckets.get(key, 0) + 1

    def rows(self, now: float) -> dict[str, list[tuple]]:
        """write_batch's keyword arguments, the counters last added to at `now`."""
        return {"events": [(worker, name, f"task-{subject}", n, now)
                           for (worker, name, subject), n in sorted(self.events.items())],
                "runtimes": [(*key, n, seconds, now) for key, (n, seconds) in sorted(self.runtimes.items())],
                "runtime_buckets": [(*key, n) for key, n in sorted(self.in_buckets.items())]}

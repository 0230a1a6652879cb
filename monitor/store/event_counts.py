"""The counters behind /metrics: task events per worker, task name and event type, and the runtimes of
successful tasks as a histogram per worker and task name (Flower's `flower_events_total` and
`flower_task_runtime_seconds`).

The collector adds a batch's increments in the transaction that writes the batch, counting each event
once (see Collector._new_events), so the counters only go up, survive restarts and agree across any
number of web processes. They are never pruned with the tasks: a counter that went down would read as
a reset to Prometheus. Their size is bounded by workers × task names (× buckets), not by tasks.
"""
from __future__ import annotations

import bisect

# Flower's default buckets (prometheus_client's), in seconds; +Inf is every observation.
DEFAULT_RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# The meta key holding the buckets the stored histogram counts in.
RUNTIME_BUCKETS_KEY = "runtime_buckets"

# (INSERT with its columns, ON CONFLICT clause) of each table, for Store.write_batch's multi-row upserts:
# an increment adds to what is stored.
EVENT_UPSERT = ("INSERT INTO task_events (worker, name, type, count)",
                " ON CONFLICT (worker, name, type) DO UPDATE SET count = task_events.count + excluded.count")
RUNTIME_UPSERT = ("INSERT INTO task_runtimes (worker, name, count, seconds)",
                  " ON CONFLICT (worker, name) DO UPDATE SET count = task_runtimes.count + excluded.count, "
                  "seconds = task_runtimes.seconds + excluded.seconds")
BUCKET_UPSERT = ("INSERT INTO task_runtime_buckets (worker, name, le, count)",
                 " ON CONFLICT (worker, name, le) DO UPDATE SET count = task_runtime_buckets.count + excluded.count")


def schema(dialect) -> str:
    integer, real, text, no_rowid = dialect.integer, dialect.real, dialect.text, dialect.without_rowid
    return f"""
CREATE TABLE IF NOT EXISTS task_events (
    worker {text} NOT NULL, name {text} NOT NULL, type {text} NOT NULL, count {integer} NOT NULL,
    PRIMARY KEY (worker, name, type)
){no_rowid};
CREATE TABLE IF NOT EXISTS task_runtimes (
    worker {text} NOT NULL, name {text} NOT NULL, count {integer} NOT NULL, seconds {real} NOT NULL,
    PRIMARY KEY (worker, name)
){no_rowid};
-- A bucket counts the runtimes above the bound before it, up to its own (`le`); /metrics adds them up
-- (Prometheus' buckets are cumulative), so a runtime is one row's increment, not one per bucket above it.
CREATE TABLE IF NOT EXISTS task_runtime_buckets (
    worker {text} NOT NULL, name {text} NOT NULL, le {real} NOT NULL, count {integer} NOT NULL,
    PRIMARY KEY (worker, name, le)
){no_rowid};
"""


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

    def rows(self) -> dict[str, list[tuple]]:
        """write_batch's keyword arguments."""
        return {"events": [(worker, name, f"task-{subject}", n)
                           for (worker, name, subject), n in sorted(self.events.items())],
                "runtimes": [(*key, n, seconds) for key, (n, seconds) in sorted(self.runtimes.items())],
                "runtime_buckets": [(*key, n) for key, n in sorted(self.in_buckets.items())]}

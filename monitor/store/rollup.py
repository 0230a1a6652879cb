"""Pre-aggregated task and worker history for the analytics charts, maintained inside the store.

Reading a million task rows into pandas for every refresh is out of the question, so the store keeps
rollups: per time bucket × task name × final state × worker × queue, the count and sums of runtime
and queue wait; per bucket × task name, log-spaced histograms of runtime and wait, from which
quantiles are read with a bounded relative error (see BIN_RATIO); failures by exception type and
masked message. Triggers on `tasks` queue a task exactly once, on the write that first moves it to a
final state (a task rewritten later by a late event is not counted twice), and Store.write_batch
folds the queue into the rollups in the same transaction, so every writer keeps them right. Worker
heartbeat samples are rolled up by a trigger.

Several grains (1 min to 3 h, see GRAINS): a chart reads the coarsest that fits its buckets, and a
distribution reads coarse rows for the middle of its range and fine ones for the edges. Retention is
by age, not by the task count: trimming the oldest tasks keeps the charts' history, so the charts
can show more than the Tasks page still holds (the page says so).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Callable

from monitor.store.event_counts import UNNAMED_WAIT_SECONDS

MINUTE, FIVE_MINUTES, QUARTER, THREE_HOURS, DAY = 60, 300, 900, 10800, 86400
GRAINS = (MINUTE, FIVE_MINUTES, QUARTER, THREE_HOURS, DAY)
# How long each grain is kept: minute rows serve ranges up to an hour (and yesterday's same hour for
# a comparison), 5-minute rows 6 hours, quarter-hour rows a day, three-hour rows a week; day rows
# the middle of long ranges (a week reads 6 day rows per name and the edges). A range older than a
# grain keeps uses the next coarser one.
KEEP_SECONDS = {MINUTE: 2 * 86400 + 3600, FIVE_MINUTES: 8 * 86400, QUARTER: 8 * 86400, THREE_HOURS: 31 * 86400,
                DAY: 400 * 86400}

# Histogram bins: bin 0 holds [0, 0.1 ms); bin k >= 1 holds [0.1 ms * r^(k-1), 0.1 ms * r^k) with
# r = 2^(1/8). Reporting a bin's geometric middle is within ±4.4 % of any value in it.
BIN_FLOOR = 0.0001
BINS_PER_DOUBLING = 8
BIN_RATIO = 2 ** (1 / BINS_PER_DOUBLING)
METRICS = ("runtime", "wait", "sent_wait")  # run time; started − received; started − sent
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def bin_of(seconds: float) -> int:
    """The histogram bin of a duration (the same rule as the SQL in the triggers)."""
    if seconds < BIN_FLOOR:
        return 0
    return 1 + int(BINS_PER_DOUBLING * math.log2(seconds / BIN_FLOOR))


def bin_bounds(index):
    """Lower and upper edge of bins (numpy arrays or scalars)."""
    lower = BIN_FLOOR * BIN_RATIO ** (index - 1)
    return lower * (index > 0), BIN_FLOOR * BIN_RATIO ** index


_EXCEPTION = re.compile(r"^\s*([\w.]+)(?:\((.*)\))?\s*$", re.S)
# Numbers, hex ids and uuids make every message unique; the grouping key masks them as '#'.
_VARIABLE = re.compile(r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}|\d+(?:\.\d+)?")
KEY_SEPARATOR = ": "


def split_exception(text: str | None) -> tuple[str, str]:
    """'ValueError("card declined for 42")' -> ('ValueError', 'card declined for 42')."""
    match = _EXCEPTION.match(text or "")
    if not match:
        return ("Unknown" if not text else text.split("(")[0][:80]), (text or "")
    kind, message = match.group(1), (match.group(2) or "")
    if len(message) >= 2 and message[0] == message[-1] and message[0] in "'\"":
        message = message[1:-1]
    return kind, message


def exception_key(text: str | None) -> str:
    """'ValueError: card declined for customer #' for ValueError('card declined for customer 1042').

    Runs in the writer's transaction: it must never raise."""
    try:
        kind, message = split_exception(text)
        return f"{kind}{KEY_SEPARATOR}{_VARIABLE.sub('#', message)[:300]}"
    except Exception:  # noqa: BLE001 - a failed write would lose the whole batch
        return f"Unknown{KEY_SEPARATOR}{str(text)[:300]}"


def finished_sql(prefix: str = "") -> str:
    """When a task in a final state finished (its last event's time if the final one lacks it)."""
    return f"coalesce({prefix}succeeded, {prefix}failed, {prefix}revoked, {prefix}timestamp)"


# What the triggers queue for each task reaching a final state: one plain insert per task, cheap
# inside the writer's statement; fold_inbox() aggregates the batch and updates the rollups with a
# few upserts (a trigger updating 16 rollup rows per task halved the writer's throughput).
_INBOX_COLUMNS = ("finished", "name", "state", "worker", "queue", "runtime", "wait", "sent_wait", "exception", "uuid")
FINAL_LIST = ", ".join(f"'{s}'" for s in FINAL_STATES)


_DESCRIBED = ("name", "worker", "queue", "runtime", "wait", "sent_wait")


def _described(dialect, prefix: str) -> list[str]:
    """What the rollups take of a task row (the inbox columns _DESCRIBED), from the columns named
    `prefix`name etc."""
    positive = dialect.greatest
    return [f"coalesce({prefix}name, '')", f"coalesce({prefix}worker, '')", f"coalesce({prefix}routing_key, '')",
            f"{prefix}runtime",
            f"CASE WHEN {prefix}started IS NOT NULL AND {prefix}received IS NOT NULL "
            f"THEN {positive}(0.0, {prefix}started - {prefix}received) END",
            # sent comes from the client's clock, started from the worker's: a skew below zero is clamped.
            f"CASE WHEN {prefix}started IS NOT NULL AND {prefix}sent IS NOT NULL "
            f"THEN {positive}(0.0, {prefix}started - {prefix}sent) END"]


def queue_finished_task(dialect) -> str:
    """The trigger statement queueing the task `new` that just reached a final state."""
    name, worker, queue, *measures = _described(dialect, "new.")
    return f"""
    INSERT INTO rollup_inbox ({", ".join(_INBOX_COLUMNS)}) SELECT {finished_sql("new.")}, {name}, new.state,
        {worker}, {queue}, {", ".join(measures)}, CASE WHEN new.state = 'FAILURE' THEN new.exception END, new.uuid
    WHERE {finished_sql("new.")} IS NOT NULL"""


_ROLLUP_KEY = "grain, bucket, name, state, worker, queue"
_HISTOGRAM_KEY = "grain, bucket, name, metric, bin"
_FAILURE_KEY = "grain, bucket, name, worker, queue, exception"
_WORKER_KEY = "grain, bucket, hostname"


@functools.lru_cache(maxsize=None)
def _upserts(dialect) -> tuple[str, str, str]:
    """The rollup, histogram and failure upserts fold_inbox() runs, in the dialect's words."""
    most, least = dialect.greatest, dialect.least
    metric_updates = ", ".join(
        f"{m}_count = task_rollup.{m}_count + excluded.{m}_count, {m}_sum = task_rollup.{m}_sum + excluded.{m}_sum, "
        f"{m}_max = {most}(coalesce(task_rollup.{m}_max, excluded.{m}_max), coalesce(excluded.{m}_max, task_rollup.{m}_max))"
        for m in METRICS)
    return (
        f"INSERT INTO task_rollup VALUES ({', '.join('?' * (7 + 3 * len(METRICS)))}) ON CONFLICT ({_ROLLUP_KEY}) "
        f"DO UPDATE SET count = task_rollup.count + excluded.count, {metric_updates}",
        f"INSERT INTO task_histogram VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT ({_HISTOGRAM_KEY}) "
        "DO UPDATE SET count = task_histogram.count + excluded.count",
        f"INSERT INTO failure_rollup VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT ({_FAILURE_KEY}) "
        "DO UPDATE SET count = failure_rollup.count + excluded.count, "
        f"first = {least}(failure_rollup.first, excluded.first), "
        "last_uuid = CASE WHEN excluded.last >= failure_rollup.last THEN excluded.last_uuid ELSE failure_rollup.last_uuid END, "
        f"last = {most}(failure_rollup.last, excluded.last)",
    )


# The inbox is folded once its oldest task waited this long, or once it holds this many: the more
# tasks a fold takes, the more of them share a rollup row (the charts lag by at most FOLD_SECONDS).
FOLD_SECONDS = 2.0
FOLD_ROWS = 20_000


def fold_inbox(conn, dialect, task_fields: Callable[[list, list], dict], force: bool = False) -> int:
    """Add the tasks queued in rollup_inbox to the rollups when it is due (or `force`); runs in the
    writer's transaction. Returns how many tasks it folded.

    A task may reach its final state before the events that name it or tell when it was received
    are stored: collectors sharing an events queue each write part of its events. Its queued row
    then lacks them, so the fold takes them from the task's row as it is now (`task_fields(uuids,
    expressions)`: Store's lookup by id), and a task with no name yet waits for it, as the /metrics
    counters' events do (event_counts.UNNAMED_WAIT_SECONDS; then it counts under "")."""
    if not force:
        waited, queued = conn.execute(
            f"SELECT {dialect.seconds_since('min(queued)')}, count(*) FROM rollup_inbox").fetchone()
        if not queued or waited < FOLD_SECONDS and queued < FOLD_ROWS:
            return 0
    rows = [list(row) for row in conn.execute(
        f"DELETE FROM rollup_inbox WHERE name <> '' OR {dialect.seconds_since('queued')} >= {UNNAMED_WAIT_SECONDS} "
        "OR EXISTS (SELECT 1 FROM tasks WHERE tasks.uuid = rollup_inbox.uuid AND coalesce(tasks.name, '') <> '') "
        f"RETURNING {', '.join(_INBOX_COLUMNS)}").fetchall()]
    if not rows:
        return 0
    name, wait, uuid = (_INBOX_COLUMNS.index(column) for column in ("name", "wait", "uuid"))
    incomplete = [row for row in rows if row[name] == "" or row[wait] is None]
    current = task_fields([row[uuid] for row in incomplete], _described(dialect, ""))
    described = [_INBOX_COLUMNS.index(column) for column in _DESCRIBED]
    for row in incomplete:
        for at, value in zip(described, current.get(row[uuid], {}).values()):
            row[at] = value
    # One pass over the tasks at the minute grain; the coarser grains are sums of the minute rows,
    # far fewer than the tasks.
    totals: dict[tuple, list] = {}
    histogram: dict[tuple, int] = {}
    failures: dict[tuple, list] = {}
    for finished, name, state, worker, queue, *measures, exception, uuid in rows:
        minute = int(finished // MINUTE) * MINUTE
        sums = totals.get((MINUTE, minute, name, state, worker, queue))
        if sums is None:
            sums = totals[(MINUTE, minute, name, state, worker, queue)] = [0] + [0, 0.0, None] * len(METRICS)
        sums[0] += 1
        for metric, at, value in zip(METRICS, range(1, 3 * len(METRICS), 3), measures):
            if value is not None:
                sums[at] += 1
                sums[at + 1] += value
                sums[at + 2] = value if sums[at + 2] is None or value > sums[at + 2] else sums[at + 2]
                key = (MINUTE, minute, name, metric, bin_of(value))
                histogram[key] = histogram.get(key, 0) + 1
        if state == "FAILURE":
            key = (MINUTE, minute, name, worker, queue, exception_key(exception))
            seen = failures.get(key)
            if seen is None:
                failures[key] = [1, finished, finished, uuid]
            else:
                seen[0] += 1
                seen[1] = min(seen[1], finished)
                if finished >= seen[2]:
                    seen[2], seen[3] = finished, uuid
    for grain in GRAINS[1:]:
        for (row_grain, minute, *rest), sums in list(totals.items()):
            if row_grain == MINUTE:
                _add_sums(totals.setdefault((grain, minute // grain * grain, *rest), [0] + [0, 0.0, None] * len(METRICS)), sums)
        for (row_grain, minute, *rest), count in list(histogram.items()):
            if row_grain == MINUTE:
                key = (grain, minute // grain * grain, *rest)
                histogram[key] = histogram.get(key, 0) + count
    rollup_upsert, histogram_upsert, failure_upsert = _upserts(dialect)
    conn.executemany(rollup_upsert, [(*key, *sums) for key, sums in totals.items()])
    conn.executemany(histogram_upsert, [(*key, count) for key, count in histogram.items()])
    conn.executemany(failure_upsert, [(*key, *seen) for key, seen in failures.items()])
    return len(rows)


def _add_sums(into: list, sums: list) -> None:
    """Merge rollup sums ([count, then count, sum, max per metric]) into `into`."""
    into[0] += sums[0]
    for at in range(1, len(sums), 3):
        into[at] += sums[at]
        into[at + 1] += sums[at + 1]
        if sums[at + 2] is not None and (into[at + 2] is None or sums[at + 2] > into[at + 2]):
            into[at + 2] = sums[at + 2]


def roll_up_sample(dialect) -> list[str]:
    """The trigger statements adding the worker sample `new` to the worker rollup, one per grain."""
    return [
        f"INSERT INTO worker_rollup SELECT {grain}, {dialect.floor_to('new.at', grain)}, new.hostname, "
        f"1, coalesce(new.active, 0), coalesce(new.active, 0), coalesce(new.load1, 0) WHERE new.at IS NOT NULL "
        f"ON CONFLICT ({_WORKER_KEY}) DO UPDATE SET samples = worker_rollup.samples + 1, "
        f"active_sum = worker_rollup.active_sum + excluded.active_sum, "
        f"active_max = {dialect.greatest}(worker_rollup.active_max, excluded.active_max), "
        f"load1_sum = worker_rollup.load1_sum + excluded.load1_sum"
        for grain in GRAINS]


def schema(dialect) -> str:
    """The rollup tables, in the dialect's types (the triggers belong to each backend)."""
    integer, real, text, no_rowid = dialect.integer, dialect.real, dialect.text, dialect.without_rowid
    metric_columns = ", ".join(f"{m}_count {integer}, {m}_sum {real}, {m}_max {real}" for m in METRICS)
    return f"""
CREATE TABLE IF NOT EXISTS task_rollup (
    grain {integer} NOT NULL, bucket {integer} NOT NULL, name {text} NOT NULL, state {text} NOT NULL,
    worker {text} NOT NULL, queue {text} NOT NULL, count {integer} NOT NULL, {metric_columns},
    PRIMARY KEY ({_ROLLUP_KEY})
){no_rowid};
-- The buckets of given task names, without reading every name's rows (slowest tasks of a name).
CREATE INDEX IF NOT EXISTS task_rollup_by_name ON task_rollup(grain, name, bucket);
-- Per task name only: a worker and a queue dimension would multiply the rows by their counts.
CREATE TABLE IF NOT EXISTS task_histogram (
    grain {integer} NOT NULL, bucket {integer} NOT NULL, name {text} NOT NULL, metric {text} NOT NULL,
    bin {integer} NOT NULL, count {integer} NOT NULL,
    PRIMARY KEY ({_HISTOGRAM_KEY})
){no_rowid};
CREATE TABLE IF NOT EXISTS failure_rollup (
    grain {integer} NOT NULL, bucket {integer} NOT NULL, name {text} NOT NULL, worker {text} NOT NULL,
    queue {text} NOT NULL, exception {text} NOT NULL, count {integer} NOT NULL, first {real}, last {real},
    last_uuid {text},
    PRIMARY KEY ({_FAILURE_KEY})
){no_rowid};
CREATE TABLE IF NOT EXISTS worker_rollup (
    grain {integer} NOT NULL, bucket {integer} NOT NULL, hostname {text} NOT NULL, samples {integer} NOT NULL,
    active_sum {real} NOT NULL, active_max {integer} NOT NULL, load1_sum {real} NOT NULL,
    PRIMARY KEY ({_WORKER_KEY})
){no_rowid};
CREATE TABLE IF NOT EXISTS rollup_inbox (
    finished {real}, name {text}, state {text}, worker {text}, queue {text}, runtime {real}, wait {real},
    sent_wait {real}, exception {text}, uuid {text}, queued {real} DEFAULT ({dialect.clock})
);
"""


def retention_statements(now: float) -> list[tuple[str, list]]:
    """DELETE statements (for Store._write) dropping rollup rows older than their grain keeps."""
    statements = []
    for table in ("task_rollup", "task_histogram", "worker_rollup"):
        statements.append((f"DELETE FROM {table} WHERE grain = ? AND bucket < ?",
                           [(grain, now - keep) for grain, keep in KEEP_SECONDS.items()]))
    statements.append(("DELETE FROM failure_rollup WHERE bucket < ?", [(now - KEEP_SECONDS[QUARTER],)]))
    return statements

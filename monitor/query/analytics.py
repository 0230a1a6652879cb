"""Runtime and failure analytics: SQL over the rollups (see rollup.py) and pandas for the shaping.

Every function takes the store and a Scope (time range and optional task names, workers, queues,
brokers) and returns plain data, mostly DataFrames already aggregated to what a chart or table
shows: the size of a result depends on the number of task names and buckets, never on the number
of tasks.
Raw task rows are read only where an index keeps it cheap: the slowest tasks (the runtime index, or
the started index within the rollup's slowest minutes), stuck and waiting tasks (the state index) and
sample tracebacks (by uuid).

The rollups have no broker dimension: a broker filter keeps the rows of the workers recorded from
that broker (worker names are kept with their broker), so it narrows exactly what a worker filter
narrows; raw task rows are filtered on their own broker.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import threading
import time

import numpy as np
import pandas as pd

from monitor.store import rollup
from monitor.store.base import Store
from monitor.store.schema import LOST_SQL

RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
# Bucket sizes a chart may use, each a multiple of a rollup grain; the smallest that keeps a range
# within MAX_BUCKETS wins.
BUCKET_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 10800, 21600, 43200, 86400)
MAX_BUCKETS = 120
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
# What is normal for a task name: its runtime p99 over the day before now, whatever range the page
# shows (a p99 that moved with the range made the stuck count flap).
BASELINE_SECONDS = 86400
# A task's queue is its routing key, which only task-sent events carry; unknown values are stored as
# '' in the rollups (their key columns cannot be NULL).
UNKNOWN = ""


class AnalyticsError(ValueError):
    """A range or filter the user can fix; the message is shown as it is."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """When a running task is stuck and a queued one waits too long.

    Stuck: running longer than max(factor × its name's p99 runtime of the day before, floor seconds),
    or than the floor for a name with no finished run that day. One task in a hundred runs past its
    p99 on any healthy day; `factor` keeps those out. Waiting: received by a worker (or sent, with
    task-sent events) and not started for longer than `waiting` seconds."""
    factor: float = 3.0
    floor: float = 60.0
    waiting: float = 60.0

    def __post_init__(self):
        for label, value in (("factor", self.factor), ("floor", self.floor), ("waiting", self.waiting)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise AnalyticsError(f"Stuck and waiting limits: the {label} must be a positive number, not {value!r}")


@dataclasses.dataclass(frozen=True)
class Scope:
    start: float
    end: float
    names: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    brokers: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.end > self.start:
            raise AnalyticsError("The range ends before it starts: pick an end after the start.")

    @property
    def span(self) -> float:
        return self.end - self.start

    def shifted(self, seconds: float) -> "Scope":
        return dataclasses.replace(self, start=self.start + seconds, end=self.end + seconds)


def last(range_key: str, now: float | None = None, **filters) -> Scope:
    """The Scope of a named range ending now, e.g. last("1h", names=("shop.checkout",))."""
    if range_key not in RANGES:
        raise AnalyticsError(f"unknown range {range_key!r} (use {', '.join(RANGES)})")
    now = time.time() if now is None else now
    return Scope(now - RANGES[range_key], now, **{k: tuple(v or ()) for k, v in filters.items()})


def bucket_seconds(scope: Scope, now: float | None = None) -> int:
    """Bucket size for time series: ≤ MAX_BUCKETS buckets, never finer than the rollup still keeps."""
    now = time.time() if now is None else now
    step = next((s for s in BUCKET_STEPS if scope.span / s <= MAX_BUCKETS), BUCKET_STEPS[-1])
    for grain in rollup.GRAINS[:-1]:
        if _grain_of(step) == grain and scope.start < now - rollup.KEEP_SECONDS[grain]:
            step = rollup.GRAINS[rollup.GRAINS.index(grain) + 1]  # those rows are gone; coarser ones remain
    return step


def edge_grain(scope: Scope, now: float | None = None) -> int:
    """The grain of the buckets a scope's edges are read in (taken whole: see _cover)."""
    return _grain_of(bucket_seconds(scope, now))


def _grain_of(step: int) -> int:
    return max(g for g in rollup.GRAINS if step % g == 0)


# Which filters a rollup table can apply, and its column for each: a dimension it lacks is ignored.
ALL_DIMENSIONS = {"name": "name", "worker": "worker", "queue": "queue"}


def _filters(scope: Scope, dimensions=ALL_DIMENSIONS) -> tuple[str, list]:
    clauses, params = [], []
    for dimension, values in (("name", scope.names), ("worker", scope.workers), ("queue", scope.queues)):
        if values and dimension in dimensions:
            clauses.append(f"{dimensions[dimension]} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    if scope.brokers and "worker" in dimensions:
        clauses.append(f"{dimensions['worker']} IN (SELECT hostname FROM workers "
                       f"WHERE broker IN ({', '.join('?' * len(scope.brokers))}))")
        params.extend(scope.brokers)
    return "".join(f" AND {c}" for c in clauses), params


def _series_where(scope: Scope, step: int, dimensions=ALL_DIMENSIONS) -> tuple[str, list]:
    """Rows of the grain a time series of `step` buckets reads, in the range, narrowed by filters."""
    grain = _grain_of(step)
    extra, params = _filters(scope, dimensions)
    return f"grain = ? AND bucket >= ? AND bucket < ?{extra}", [grain, (int(scope.start) // step) * step, scope.end, *params]


def _cover(start: float, end: float, finest: int) -> list[tuple[int, int, float]]:
    """(grain, first bucket, end) pieces covering [start, end): the coarsest grain for the middle, finer
    ones down to `finest` for the edges, so a week reads a few hundred rows per name instead of ten
    thousand. Like the time series, the range starts at the beginning of its first `finest` bucket."""
    pieces = []

    def cover(lo: float, hi: float, grains):
        grain, finer = grains[-1], grains[:-1]
        if not finer:  # the finest grain takes the edges' partial buckets whole
            if hi > lo:
                pieces.append((grain, int(lo) // grain * grain, hi))
            return
        inner_lo, inner_hi = -(-int(lo) // grain) * grain, int(hi) // grain * grain
        if inner_lo >= inner_hi:
            cover(lo, hi, finer)
            return
        pieces.append((grain, inner_lo, inner_hi))
        cover(lo, inner_lo, finer)
        cover(inner_hi, hi, finer)

    cover(start, end, tuple(g for g in rollup.GRAINS if g >= finest))
    return pieces


def _cover_where(scope: Scope, now: float | None, dimensions=ALL_DIMENSIONS) -> tuple[str, list]:
    pieces = _cover(scope.start, scope.end, edge_grain(scope, now))
    extra, params = _filters(scope, dimensions)
    where = " OR ".join("(grain = ? AND bucket >= ? AND bucket < ?)" for _ in pieces)
    return f"({where}){extra}", [value for piece in pieces for value in piece] + params


def _frame(store: Store, sql: str, params, columns) -> pd.DataFrame:
    rows = store.query(sql, params)
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


# -- time series -----------------------------------------------------------------------------
def throughput(store: Store, scope: Scope, now: float | None = None) -> pd.DataFrame:
    """Finished tasks per bucket and final state: columns time (UTC), bucket, state, count.

    Buckets with no task are absent; failure_rate() derives the failure rate from this frame."""
    step = bucket_seconds(scope, now)
    where, params = _series_where(scope, step)
    frame = _frame(store, f"SELECT (bucket / ?) * ? AS b, state, sum(count) FROM task_rollup WHERE {where} "
                          "GROUP BY b, state ORDER BY b", [step, step, *params], ["bucket", "state", "count"])
    frame.insert(0, "time", pd.to_datetime(frame["bucket"], unit="s", utc=True))
    frame.attrs["bucket_seconds"] = step
    return frame


def failure_rate(throughput_frame: pd.DataFrame) -> pd.DataFrame:
    """Per bucket: finished, failed and failed / finished, from a throughput() frame."""
    if throughput_frame.empty:
        return pd.DataFrame(columns=["time", "bucket", "finished", "failed", "rate"])
    frame = throughput_frame.assign(failed=throughput_frame["count"].where(throughput_frame["state"] == "FAILURE", 0))
    per_bucket = frame.groupby(["time", "bucket"], as_index=False).agg(finished=("count", "sum"), failed=("failed", "sum"))
    per_bucket["rate"] = per_bucket["failed"] / per_bucket["finished"]
    per_bucket.attrs["bucket_seconds"] = throughput_frame.attrs.get("bucket_seconds")
    return per_bucket


def worker_activity(store: Store, scope: Scope, now: float | None = None) -> pd.DataFrame:
    """Heartbeat samples per bucket and worker: mean and peak active tasks, mean 1-minute load."""
    step = bucket_seconds(scope, now)
    where, params = _series_where(scope, step, dimensions={"worker": "hostname"})
    frame = _frame(store, f"SELECT (bucket / ?) * ? AS b, hostname, sum(active_sum) / sum(samples), "
                          f"max(active_max), sum(load1_sum) / sum(samples) FROM worker_rollup "
                          f"WHERE {where} GROUP BY b, hostname ORDER BY b",
                   [step, step, *params], ["bucket", "worker", "active_mean", "active_max", "load1"])
    frame.insert(0, "time", pd.to_datetime(frame["bucket"], unit="s", utc=True))
    frame.attrs["bucket_seconds"] = step
    return frame


# -- distributions ---------------------------------------------------------------------------
def quantiles_from_histogram(bins: np.ndarray, counts: np.ndarray, qs=QUANTILES) -> list[float]:
    """Quantiles of values binned by rollup.bin_of: each is its bin's geometric middle (±4.4 %).

    `bins` must be sorted ascending; bin 0 ([0, 0.1 ms)) reports 0.05 ms."""
    if len(counts) == 0 or counts.sum() == 0:
        return [float("nan")] * len(qs)
    cumulative = np.cumsum(counts)
    ranks = np.ceil(np.asarray(qs) * cumulative[-1])
    chosen = bins[np.searchsorted(cumulative, np.maximum(ranks, 1))]
    lower, upper = rollup.bin_bounds(chosen.astype(float))
    middle = np.where(chosen > 0, np.sqrt(np.maximum(lower, 1e-12) * upper), rollup.BIN_FLOOR / 2)
    return middle.tolist()


STAT_COLUMNS = ("count", "mean", *(f"p{round(q * 100)}" for q in QUANTILES), "max")
STATS_COLUMNS = ["name", "finished", "failed", "failure_rate",
                 *(f"{m}_{s}" for m in rollup.METRICS for s in STAT_COLUMNS)]


def task_stats(store: Store, scope: Scope, now: float | None = None) -> pd.DataFrame:
    """One row per task name: finished count, failures, failure rate, and for each metric
    (runtime, wait, sent_wait) count, mean, p5, p25, p50, p75, p90, p95, p99 and max, as `<metric>_<stat>`.

    Counts, means and maxima follow every filter. The histograms have no worker, queue or broker
    dimension, so quantiles follow the name filter only; they are clamped to the (filtered) exact
    maximum."""
    where, params = _cover_where(scope, now)
    metric_sums = ", ".join(f"sum({m}_count), sum({m}_sum), max({m}_max)" for m in rollup.METRICS)
    totals = _frame(
        store,
        f"SELECT name, sum(count), sum(CASE WHEN state = 'FAILURE' THEN count ELSE 0 END), {metric_sums} "
        f"FROM task_rollup WHERE {where} GROUP BY name", params,
        ["name", "finished", "failed", *(f"{m}_{c}" for m in rollup.METRICS for c in ("count", "sum", "max"))])
    if totals.empty:
        return pd.DataFrame(columns=STATS_COLUMNS)
    where, params = _cover_where(scope, now, dimensions={"name": "name"})
    bins = _frame(store, f"SELECT name, metric, bin, sum(count) FROM task_histogram WHERE {where} "
                         "GROUP BY name, metric, bin ORDER BY name, metric, bin", params,
                  ["name", "metric", "bin", "count"])
    quantiles = {
        (name, metric): quantiles_from_histogram(group["bin"].to_numpy(), group["count"].to_numpy())
        for (name, metric), group in bins.groupby(["name", "metric"], sort=False)
    }
    totals["failure_rate"] = totals["failed"] / totals["finished"]
    # In numpy, all quantiles of a metric at once: a pandas Series per quantile took most of the time.
    columns, unknown = {}, [np.nan] * len(QUANTILES)
    for metric in rollup.METRICS:
        count = totals[f"{metric}_count"].to_numpy(dtype=float)
        counted = count > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            columns[f"{metric}_mean"] = np.where(counted, totals[f"{metric}_sum"].to_numpy(dtype=float) / count, np.nan)
        estimates = np.array([quantiles.get((name, metric), unknown) for name in totals["name"]], dtype=float)
        most = totals[f"{metric}_max"].to_numpy(dtype=float)[:, None]  # no maximum: the estimate stands
        clamped = np.where(np.isnan(most), estimates, np.minimum(estimates, most))
        for index, q in enumerate(QUANTILES):
            columns[f"{metric}_p{round(q * 100)}"] = np.where(counted, clamped[:, index], np.nan)
    totals = totals.assign(**columns)
    return totals[STATS_COLUMNS].sort_values("finished", ascending=False, ignore_index=True)


def compare(store: Store, before: Scope, after: Scope, now: float | None = None) -> pd.DataFrame:
    """Per task name, runtime p50/p95 and failure rate in two windows and the change (the ratio
    after / before for p50 and p95, the difference for the failure rate), worst change first.

    `change` ranks the rows: the largest of the relative slowdowns of p50 and p95 and the relative
    rise of the failure rate (against at least 1 %, so that 0 → 5 % counts as five times worse, not
    infinitely); `overall`, their sum, breaks ties. A name found in one window only has no change and
    comes after those that have one."""
    # A window is read from the start of its first bucket (_cover): an earlier window reaching into
    # the bucket the later one starts in leaves that bucket to it, or both would count its tasks.
    grain = edge_grain(after, now)
    meeting = after.start // grain * grain
    if before.end > meeting:
        before = dataclasses.replace(before, end=max(before.start, meeting))
    picked = ["name", "finished", "failure_rate", "runtime_p50", "runtime_p95"]
    merged = pd.merge(task_stats(store, before, now)[picked], task_stats(store, after, now)[picked],
                      on="name", how="outer", suffixes=("_before", "_after"))
    for stat in ("runtime_p50", "runtime_p95"):
        merged[f"{stat}_ratio"] = merged[f"{stat}_after"] / merged[f"{stat}_before"]
    merged["failure_rate_change"] = merged["failure_rate_after"] - merged["failure_rate_before"]
    changes = pd.concat([merged["runtime_p50_ratio"] - 1, merged["runtime_p95_ratio"] - 1,
                         merged["failure_rate_change"] / merged["failure_rate_before"].clip(lower=0.01)], axis=1)
    merged["change"] = changes.max(axis=1)
    # Among equally bad worst changes, the name better in other ways (faster, fewer failures) goes lower.
    merged["overall"] = changes.sum(axis=1, min_count=1)
    return merged.sort_values(["change", "overall", "finished_after"], ascending=False, na_position="last",
                              ignore_index=True)


class CompareCache:
    """compare() answers kept by what decides them: the store's version (monitor.services.store_version:
    when a collector last stored tasks) and, for each window, the rollup buckets it reads. A refresh that
    finds neither changed (an idle store, or within the minute a busy store did not write) gets the kept
    answer instead of half a second of queries. The answers are shared: callers do not change them."""

    def __init__(self, size: int = 64):
        self._answers: collections.OrderedDict = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def compare(self, store: Store, before: Scope, after: Scope, version, now: float | None = None) -> pd.DataFrame:
        now = time.time() if now is None else now
        key = (json.dumps(version), _buckets_read(before, now), _buckets_read(after, now))
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]
        answer = compare(store, before, after, now)
        with self._lock:
            self._answers[key] = answer
            while len(self._answers) > self._size:
                self._answers.popitem(last=False)
        return answer


def _buckets_read(scope: Scope, now: float) -> tuple:
    """What task_stats reads for `scope`: its filters and the buckets of its finest grain from the one
    holding its start up to the last that starts before its end (_cover: coarser rows sum the same)."""
    finest = edge_grain(scope, now)
    return (finest, math.floor(scope.start / finest), math.ceil(scope.end / finest), scope.names, scope.workers,
            scope.queues, scope.brokers)


def history_start(store: Store, now: float | None = None) -> float | None:
    """When the kept chart history begins: the first bucket of the finest grain whose rows reach back
    to their first task (a grain already trimmed by age says only where its retention cut)."""
    now = time.time() if now is None else now
    first = None
    for grain in rollup.GRAINS:
        first = store.query("SELECT min(bucket) FROM task_rollup WHERE grain = ?", (grain,))[0][0]
        if first is None:
            return None
        if first > now - rollup.KEEP_SECONDS[grain] + grain:
            return float(first)
    return float(first)


# -- raw rows where an index keeps them cheap -----------------------------------------------------
FINISHED_SQL = rollup.finished_sql()


def _task_filters(scope: Scope) -> tuple[str, list]:
    # coalesce() also keeps SQLite off the name and worker indexes: the caller picks the index.
    clauses, params = [], []
    for column, values in (("name", scope.names), ("worker", scope.workers), ("routing_key", scope.queues),
                           ("broker", scope.brokers)):
        if values:
            clauses.append(f"coalesce({column}, '') IN ({', '.join('?' * len(values))})")
            params.extend(values)
    return "".join(f" AND {c}" for c in clauses), params


SLOWEST_COLUMNS = ["uuid", "name", "state", "worker", "received", "runtime"]


def slowest_tasks(store: Store, scope: Scope, stats: pd.DataFrame, limit: int = 15) -> pd.DataFrame:
    """The tasks with the longest runtime that finished in the range (`stats`: task_stats of the scope).

    With many tasks in the range and no filter, walking the runtime index down from the range's
    longest runtime stops after a few rows. Otherwise most rows that index yields would be skipped, so
    the rollup picks the `limit` buckets with the highest maximum runtime (the slowest tasks finished
    in them, by the pigeonhole principle) and only tasks started in those buckets (widened by their
    maximum runtime) are read, through the started index."""
    longest = stats["runtime_max"].max() if not stats.empty else None
    if longest is None or np.isnan(longest):
        return pd.DataFrame(columns=SLOWEST_COLUMNS)
    extra, params = _task_filters(scope)
    finished = f"{FINISHED_SQL} >= ? AND {FINISHED_SQL} < ?"
    filtered = scope.names or scope.workers or scope.queues or scope.brokers
    if not filtered and stats["finished"].sum() > 200 * limit:
        return _frame(store, f"SELECT {', '.join(SLOWEST_COLUMNS)} FROM tasks {store.dialect.indexed_by('tasks_runtime')} "
                             f"WHERE runtime <= ? AND {finished} ORDER BY {store.dialect.order('runtime', True)}, "
                             f"{store.dialect.order('seq', True)} LIMIT ?",
                      [longest, scope.start, scope.end, limit], SLOWEST_COLUMNS)
    grain = _grain_of(bucket_seconds(dataclasses.replace(scope, end=scope.start + 60), None))
    where, where_params = _series_where(scope, grain)
    by_name = store.dialect.indexed_by("task_rollup_by_name") if scope.names else ""
    buckets = store.query(f"SELECT bucket, max(runtime_max) AS longest FROM task_rollup {by_name} WHERE {where} "
                          "GROUP BY bucket ORDER BY longest DESC LIMIT ?", [*where_params, limit])
    if not buckets:
        return pd.DataFrame(columns=SLOWEST_COLUMNS)
    windows = " OR ".join("started BETWEEN ? AND ?" for _ in buckets)
    window_params = [v for b in buckets for v in (b["bucket"] - (b["longest"] or 0) - 1, b["bucket"] + grain)]
    # +runtime: SQLite would otherwise walk the runtime index for the ORDER BY instead of the windows.
    return _frame(store, f"SELECT {', '.join(SLOWEST_COLUMNS)} FROM tasks WHERE ({windows}) "
                         f"AND +runtime IS NOT NULL AND {finished}{extra} ORDER BY +runtime DESC, seq DESC LIMIT ?",
                  [*window_params, scope.start, scope.end, *params, limit], SLOWEST_COLUMNS)


STUCK_COLUMNS = ["uuid", "name", "worker", "started", "running", "limit", "over"]
LOST_COLUMNS = ["uuid", "name", "worker", "started", "restarted"]


def _started_tasks(store: Store, scope: Scope) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(running, lost): the tasks whose last word is that they started, split by LOST_SQL's rule;
    `restarted` is when the worker of a lost one started again."""
    extra, params = _task_filters(scope)
    started = _frame(store, f"SELECT uuid, name, worker, started, "
                            f"(SELECT online_at FROM workers WHERE workers.hostname = tasks.worker), "
                            f"CASE WHEN {LOST_SQL} THEN 1 ELSE 0 END "
                            f"FROM tasks WHERE state = 'STARTED' AND started IS NOT NULL{extra}", params,
                     [*LOST_COLUMNS, "lost"])
    lost = started.pop("lost") == 1
    return started[~lost].drop(columns="restarted"), started[lost].reset_index(drop=True)


def lost_since(now: float) -> int:
    """The lost tasks counted are those started from here on (a whole second, as the search that lists
    them does): a count of every task ever lost would only grow, and be read as an alarm for ever."""
    return math.floor(now - BASELINE_SECONDS)


def stuck_and_lost_tasks(store: Store, scope: Scope, limits: Limits = Limits(),
                         now: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stuck, lost), from one read of the started tasks (_started_tasks).

    Stuck: every task started and still running past its limit (see Limits), longest overrun first; not
    those a worker's restart left behind. `started` is compared with a whole second (now − limit, rounded
    down), as the Tasks search that lists them does (stuck_search). The scope's range plays no part:
    stuck is about now. Lost: the tasks left STARTED by a worker that restarted since, of any age, the
    latest restart first."""
    now = time.time() if now is None else now
    running, lost = _started_tasks(store, scope)
    lost = lost.sort_values(["restarted", "started"], ascending=False, ignore_index=True)
    if running.empty:
        return pd.DataFrame(columns=STUCK_COLUMNS), lost
    names = tuple(sorted(set(running["name"].fillna(UNKNOWN))))
    baseline = task_stats(store, Scope(now - BASELINE_SECONDS, now, names=names), now)
    typical = running["name"].fillna(UNKNOWN).map(baseline.set_index("name")["runtime_p99"]).astype(float)
    running["limit"] = (typical.fillna(0.0) * limits.factor).clip(lower=limits.floor)
    running["running"] = now - running["started"]
    running["over"] = running["running"] / running["limit"]
    stuck = running[running["started"] < np.floor(now - running["limit"])]
    return stuck.sort_values("over", ascending=False)[STUCK_COLUMNS].reset_index(drop=True), lost


def stuck_search(stuck: pd.DataFrame, now: float | None = None) -> list[tuple[str, float]]:
    """(task name, started before) pairs that find exactly `stuck`'s tasks among the running ones."""
    now = time.time() if now is None else now
    limits = stuck.groupby(stuck["name"].fillna(UNKNOWN))["limit"].first()
    return [(name, math.floor(now - limit)) for name, limit in limits.items()]


WAITING_COLUMNS = ["uuid", "name", "state", "worker", "queued", "waiting"]
# A task a worker holds but has not started is RECEIVED; one only sent (task-sent events) is PENDING.
WAITING_STATES = {"RECEIVED": "received", "PENDING": "sent"}


def waiting_tasks(store: Store, scope: Scope, limits: Limits = Limits(), now: float | None = None) -> pd.DataFrame:
    """Tasks received (or sent) and not started for longer than limits.waiting, longest wait first.

    The moment compared is a whole second (waiting_cut), as the Tasks search that lists them does."""
    now = time.time() if now is None else now
    cut = waiting_cut(limits, now)
    extra, params = _task_filters(scope)
    waits = " OR ".join(f"(state = '{state}' AND {column} < ?)" for state, column in WAITING_STATES.items())
    waiting = _frame(store, f"SELECT uuid, name, state, worker, CASE WHEN state = 'RECEIVED' THEN received ELSE sent END "
                            f"FROM tasks WHERE ({waits}){extra}", [cut] * len(WAITING_STATES) + params,
                     WAITING_COLUMNS[:-1])
    waiting["waiting"] = now - waiting["queued"]
    return waiting.sort_values("waiting", ascending=False, ignore_index=True)


def waiting_cut(limits: Limits, now: float) -> int:
    return math.floor(now - limits.waiting)


EXCEPTION_COLUMNS = ["type", "message", "count", "names", "first", "last", "sample_uuid", "match"]


def exception_groups(store: Store, scope: Scope, limit: int = 20) -> pd.DataFrame:
    """Failures in the range grouped by exception type and message (numbers and ids masked as #):
    count, task names, last seen, the latest failure's uuid, and `match`, the longest literal part of
    the exception text, for an `exception:` search that finds the group's tasks. `first` is the first
    failure of the group in the whole kept history (not only the range): since when does it fail?"""
    extra, params = _filters(scope)
    dialect = store.dialect
    groups = _frame(store, f"SELECT exception, sum(count), {dialect.distinct_list('name')}, min(first), max(last), "
                           f"{dialect.latest('last_uuid', 'last')} FROM failure_rollup "
                           f"WHERE bucket >= ? AND bucket < ? AND first < ? AND last >= ?{extra} "
                           "GROUP BY exception ORDER BY sum(count) DESC, max(last) DESC LIMIT ?",
                    [int(scope.start) // rollup.MINUTE * rollup.MINUTE, scope.end, scope.end, scope.start, *params,
                     limit], ["key", "count", "names", "first", "last", "sample_uuid"])
    if groups.empty:
        return pd.DataFrame(columns=EXCEPTION_COLUMNS)
    split = groups["key"].str.split(rollup.KEY_SEPARATOR, n=1)
    groups["type"], groups["message"] = split.str[0], split.str[1]
    groups["names"] = groups["names"].map(lambda names: ", ".join(sorted(set(names.split(",")))))
    groups["match"] = [_longest_literal(kind, masked) for kind, masked in zip(groups["type"], groups["message"])]
    keys = list(groups["key"])
    first_seen = dict(store.query(f"SELECT exception, min(first) FROM failure_rollup "
                                  f"WHERE exception IN ({', '.join('?' * len(keys))}){extra} GROUP BY exception",
                                  [*keys, *params]))
    groups["first"] = [first_seen.get(key, first) for key, first in zip(keys, groups["first"])]
    return groups[EXCEPTION_COLUMNS]


def _longest_literal(kind: str, masked: str) -> str:
    """The longest run of the exception text that the masked message keeps as it is."""
    pieces = [p for p in masked.split("#") if p.strip()]
    best = max(pieces, key=len, default="")
    return best if len(best) > len(kind) else kind


def tracebacks(store: Store, uuids) -> dict[str, str]:
    """The traceback (else the exception) of each task, by uuid."""
    uuids = [u for u in uuids if u]
    rows = store.query(f"SELECT uuid, traceback, exception FROM tasks WHERE uuid IN ({', '.join('?' * len(uuids))})",
                       uuids) if uuids else []
    return {r["uuid"]: r["traceback"] or r["exception"] or "" for r in rows}


# -- what the filters can offer -----------------------------------------------------------------
def filter_options(store: Store) -> dict[str, list[str]]:
    """Task names, workers and queues seen in the kept three-hour rollup, and the brokers workers were
    recorded from (for the filter menus)."""
    rows = store.query("SELECT DISTINCT name, worker, queue FROM task_rollup WHERE grain = ?", (rollup.THREE_HOURS,))
    options = {key: sorted({r[key] for r in rows} - {UNKNOWN}) for key in ("name", "worker", "queue")}
    options["broker"] = store.brokers()
    return options

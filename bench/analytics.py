"""Analytics benchmark: fill a store with N realistic finished tasks (1M by default) through
Store.write_batch, as the collector writes them, then time every chart query of one Analytics
refresh for each range and measure the bytes that refresh sends to the browser.

    python bench/analytics.py                     # 1M tasks over the last 24 h, in /tmp
    python bench/analytics.py --tasks 200000 --days 7 --db /tmp/a.db --keep

Tasks: 20 names with log-normal runtimes (medians 20 ms to 8 s), 8 workers, 3 queues (routed by task
name), ~3 % failures with 6 exception kinds carrying ids, queue waits; heartbeats every 2 s per worker.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.query import analytics  # noqa: E402
from monitor.store.schema import TASK_FIELDS  # noqa: E402
from monitor.store.sqlite import SqliteStore as Store  # noqa: E402

NAMES = [(f"{area}.{verb}", median) for area, verb, median in (
    ("shop", "checkout", 0.25), ("shop", "cart_merge", 0.04), ("email", "send", 0.06), ("email", "digest", 1.5),
    ("reports", "build", 8.0), ("reports", "export_csv", 3.0), ("images", "resize", 0.15), ("images", "thumbnail", 0.05),
    ("payments", "charge", 0.18), ("payments", "refund", 0.3), ("inventory", "sync", 0.1), ("inventory", "reindex", 2.0),
    ("search", "index_doc", 0.02), ("search", "reindex_all", 6.0), ("users", "welcome", 0.03), ("users", "gdpr_export", 4.0),
    ("billing", "invoice", 0.5), ("billing", "dunning", 0.2), ("ml", "score", 0.8), ("ml", "retrain", 7.5))]
WORKERS = [f"celery@worker-{i}" for i in range(8)]
# Routed by task name, as task_routes does: slow batch jobs, payments first, the rest by default.
QUEUES = {"reports": "batch", "ml": "batch", "search": "batch", "payments": "priority", "billing": "priority"}
ERRORS = ("ValueError('card declined for customer {n}')", "TimeoutError('upstream timed out after {n} ms')",
          "KeyError('sku-{n}')", "ConnectionError('redis://cache-{n}:6379 refused')",
          "RuntimeError('lock held by worker {n}')", "PermissionError('user {n} may not export')")
TRACEBACK = ('Traceback (most recent call last):\n  File "/app/tasks.py", line {n}, in run\n'
             '    return handler(*args)\n  File "/app/handlers.py", line 88, in handler\n    raise exc\n{exc}\n')
INDEX = {field: i for i, field in enumerate(TASK_FIELDS)}


def task_rows(count: int, start: float, end: float, rng: random.Random):
    span = end - start
    weights = [1 / (1 + median) for _name, median in NAMES]
    for seq in range(count):
        name, median = rng.choices(NAMES, weights)[0]
        received = start + span * seq / count
        wait = rng.expovariate(1 / 0.05) if rng.random() < 0.9 else rng.expovariate(1 / 3.0)
        runtime = min(rng.lognormvariate(0, 0.5) * median, median * 15)
        started = received + wait
        finished = started + runtime
        row = [None] * len(TASK_FIELDS)
        failed = rng.random() < 0.03
        values = {"uuid": f"{seq:08x}-0000-4000-8000-{rng.getrandbits(48):012x}", "name": name,
                  "state": "FAILURE" if failed else "SUCCESS", "worker": rng.choice(WORKERS),
                  "args": f"({seq},)", "kwargs": "{}", "sent": received - 0.002, "received": received,
                  "started": started, "runtime": runtime, "routing_key": QUEUES.get(name.split(".")[0], "default"),
                  "exchange": "", "timestamp": finished, "retries": 0}
        if failed:
            exc = rng.choice(ERRORS).format(n=rng.randint(1, 5000))
            values.update(failed=finished, exception=exc, traceback=TRACEBACK.format(n=rng.randint(10, 99), exc=exc))
        else:
            values.update(succeeded=finished, result="None")
        for field, value in values.items():
            row[INDEX[field]] = value
        yield tuple(row)


def fill(store: Store, count: int, days: float, batch: int = 5000) -> float:
    rng = random.Random(7)
    end = time.time() - 60
    start = end - days * 86400
    began = time.perf_counter()
    pending = []
    for row in task_rows(count, start, end, rng):
        pending.append(row)
        if len(pending) == batch:
            store.write_batch(tasks=pending)
            pending = []
    store.write_batch(tasks=pending)
    store.fold_rollups()
    samples = [(worker, at, rng.randint(0, 8), rng.uniform(0.2, 4), 1.0, 1.0)
               for at in range(int(start), int(end), 2) for worker in WORKERS]
    for i in range(0, len(samples), 50_000):
        store.write_batch(samples=samples[i:i + 50_000])
    return time.perf_counter() - began


def compare_ingest(count: int) -> None:
    """What the rollups cost the writer: the same tasks, each written as the collector does (received,
    started, then final: three upserts), into a store with and one without the rollup triggers."""
    for with_rollups in (False, True, False, True):
        path = os.path.join(tempfile.mkdtemp(prefix="flowerbed-ingest-"), "ingest.db")
        store = Store(path, max_tasks=count)
        if not with_rollups:
            for (trigger,) in store.query("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%rollup%'"):
                store._write(((f"DROP TRIGGER {trigger}", [()]),))
        # A busy cluster finishing 1,000 tasks/s: a batch holds a couple of seconds of tasks, as the
        # collector's batches (every 250 ms) do.
        rows = list(task_rows(count, time.time() - count / 1000, time.time(), random.Random(7)))
        stages = [[_stage(row, stage) for row in rows] for stage in ("received", "started", "final")]
        began = time.perf_counter()
        for stage in stages:
            for i in range(0, count, 2000):
                store.write_batch(tasks=stage[i:i + 2000])
        seconds = time.perf_counter() - began
        print(f"{'with' if with_rollups else 'without'} rollup triggers: {count:,} tasks × 3 upserts in "
              f"{seconds:.1f} s = {count / seconds:,.0f} tasks/s")
        os.remove(path)


def _stage(row: tuple, stage: str) -> tuple:
    """The row as the collector writes it after task-received, task-started or the final event."""
    values = list(row)
    state = INDEX["state"]
    if stage == "received":
        for field in ("started", "runtime", "succeeded", "failed", "result", "exception", "traceback"):
            values[INDEX[field]] = None
        values[state] = "RECEIVED"
    elif stage == "started":
        for field in ("runtime", "succeeded", "failed", "result", "exception", "traceback"):
            values[INDEX[field]] = None
        values[state] = "STARTED"
    return tuple(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=1.0, help="the tasks are spread over this many days")
    parser.add_argument("--db", default=None, help="reuse this store if it exists, else fill it")
    parser.add_argument("--keep", action="store_true", help="keep the store file")
    parser.add_argument("--repeat", type=int, default=5, help="refreshes per range; the median is printed")
    parser.add_argument("--ingest-cost", type=int, metavar="N", default=0,
                        help="only compare filling N tasks with and without the rollup triggers")
    args = parser.parse_args()
    if args.ingest_cost:
        compare_ingest(args.ingest_cost)
        return
    path = args.db or os.path.join(tempfile.mkdtemp(prefix="flowerbed-bench-"), "analytics.db")
    existed = os.path.exists(path)
    store = Store(path, max_tasks=args.tasks)
    if not existed:
        seconds = fill(store, args.tasks, args.days)
        print(f"filled {args.tasks:,} tasks over {args.days:g} day(s) in {seconds:.1f} s "
              f"({args.tasks / seconds:,.0f} tasks/s through Store.write_batch, rollup triggers included)")
    for table in ("tasks", "task_rollup", "task_histogram", "worker_rollup"):
        print(f"  {table:15s} {store.query(f'SELECT count(*) FROM {table}')[0][0]:>10,} rows")
    from callbacks.analytics import compare_windows, refresh_outputs, response_body  # the callbacks' work

    # "Now" is when the stored traffic ends, so a store filled earlier still has a full last 15 minutes.
    now = store.query("SELECT max(bucket) FROM task_rollup WHERE grain = 60")[0][0] + 60
    cases = [(key, {}) for key in analytics.RANGES] + [
        ("24h", {"names": (NAMES[0][0],)}), ("24h", {"workers": (WORKERS[1],)}), ("7d", {"queues": ("batch",)})]
    print(f"\n{'range':24s} {'query (ms, median of %d refreshes)' % args.repeat:<84s} {'total':>6s} {'bytes':>8s} "
          f"{'compare':>8s}")
    for range_key, filters in cases:
        timings: dict[str, list[float]] = {}
        totals, sizes, comparisons = [], [], []
        for _ in range(args.repeat):
            scope = analytics.last(range_key, now, **filters)
            began = time.perf_counter()
            outputs = refresh_outputs(store, scope, now=now, timings=timings)
            totals.append(time.perf_counter() - began)
            sizes.append(len(response_body(outputs).encode()))
            began = time.perf_counter()  # the Compare panel's own callback: the same range a day earlier
            analytics.compare(store, *compare_windows(scope, "day", None, now), now)
            comparisons.append(time.perf_counter() - began)
        median = lambda values: sorted(values)[len(values) // 2] * 1000  # noqa: E731
        parts = " ".join(f"{key}={median(values):.0f}" for key, values in timings.items())
        label = range_key + "".join(f" {key}={','.join(values)}" for key, values in filters.items())
        print(f"{label:24s} {parts:<84s} {median(totals):>6.0f} {sizes[-1]:>8,} {median(comparisons):>8.0f}")
    if not args.keep and not args.db:
        os.remove(path)


if __name__ == "__main__":
    main()

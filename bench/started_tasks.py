"""Stuck and lost tasks: what one Dashboard or Analytics refresh spends reading the started tasks.

    python bench/started_tasks.py                       # 100k tasks, 1 % of them still STARTED
    python bench/started_tasks.py --tasks 300000 --started 5000

The store (SQLite, in /tmp) holds bench/analytics.py's tasks with the last --started of them left STARTED,
on 8 workers that all started again halfway through (workers.online_at), so that about half the started
tasks are lost. It prints, as medians of --repeat runs in this process:
  started read       the started tasks as the stuck count read them before lost existed (state index only)
  with lost rule     the same read with each task's worker start and LOST_SQL (analytics._started_tasks)
  stuck and lost     analytics.stuck_and_lost_tasks, all a refresh asks for (the baseline's p99 included)
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from analytics import WORKERS, _stage, task_rows  # noqa: E402

from monitor.query import analytics  # noqa: E402
from monitor.store.schema import WORKER_FIELDS  # noqa: E402
from monitor.store.sqlite import SqliteStore as Store  # noqa: E402


def median_ms(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--started", type=int, default=1_000, help="the last this many tasks are left STARTED")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    path = os.path.join(tempfile.mkdtemp(prefix="flowerbed-bench-"), "started.db")
    store = Store(path, max_tasks=args.tasks)
    end = time.time() - 60
    start = end - 86400
    rows = list(task_rows(args.tasks, start, end, random.Random(7)))
    rows[-args.started:] = [_stage(row, "started") for row in rows[-args.started:]]
    for i in range(0, len(rows), 5000):
        store.write_batch(tasks=rows[i:i + 5000])
    halfway = end - (end - start) * (args.started // 2) / args.tasks  # half the started tasks began before it
    store.write_batch(workers=[tuple({"hostname": worker, "online_at": halfway}.get(field)
                                     for field in WORKER_FIELDS) for worker in WORKERS])
    scope, now = analytics.last("1h", end), end
    running, lost = analytics._started_tasks(store, scope)
    print(f"{args.tasks:,} tasks, {args.started:,} STARTED: {len(running):,} running, {len(lost):,} lost")
    before = median_ms(lambda: analytics._frame(store, "SELECT uuid, name, worker, started FROM tasks "
                                                       "WHERE state = 'STARTED' AND started IS NOT NULL", [],
                                                [c for c in analytics.LOST_COLUMNS if c != "restarted"]), args.repeat)
    with_rule = median_ms(lambda: analytics._started_tasks(store, scope), args.repeat)
    both = median_ms(lambda: analytics.stuck_and_lost_tasks(store, scope, analytics.Limits(), now), args.repeat)
    print(f"  started read     {before:8.2f} ms")
    print(f"  with lost rule   {with_rule:8.2f} ms   ({with_rule / before:.1f}x the started read)")
    print(f"  stuck and lost   {both:8.2f} ms")
    os.remove(path)


if __name__ == "__main__":
    main()

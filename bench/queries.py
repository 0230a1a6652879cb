"""Tasks query latency: the Tasks page's first page (100 rows and the count) at 100k and 1M tasks.

    python bench/queries.py                   # 100k and 1M tasks
    python bench/queries.py --quick           # 10k and 100k tasks
    python bench/queries.py --sizes 200000    # any sizes

Both systems hold the same synthetic tasks (bench/stream.py). Flowerbed's store is filled straight
through `Store.write_batch` (the collector's write, without the broker: faster than replaying the
stream); Flower's `EventsState` is fed the same tasks' events directly (its own ingest path, without
the broker). The queries are what each Tasks page runs for its first page: Flowerbed's
`fetch_tasks` with the TaskQuery the page's grid callback builds, Flower's `TasksDataTable` work
(`search_tasks` and a dict per row).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import types

from stream import print_table, ratio, synthetic_tasks, task_events
from systems import PAGE_QUERIES, flower_page, flower_state, flowerbed_page

WORKERS = 8


def fill_flowerbed(path: str, tasks: list[dict]):
    from monitor.store.schema import TASK_FIELDS
    from monitor.store.sqlite import SqliteStore as Store

    store = Store(path, max_tasks=len(tasks))
    for start in range(0, len(tasks), 5000):
        store.write_batch(tasks=[tuple(task.get(field) for field in TASK_FIELDS) for task in tasks[start:start + 5000]])
    return store


def fill_flower(tasks: list[dict]):
    state = flower_state(max_tasks=len(tasks))
    apply_event, now = state.event, time.time()
    for event in task_events(tasks, WORKERS, rate=16_000):
        event["local_received"] = now
        apply_event(event)
    return types.SimpleNamespace(state=state)  # what flower's task utilities read: `events.state`


def p50_ms(run, repeats: int, max_seconds: float) -> tuple[float, int]:
    """Median of up to `repeats` timed runs (after one warm-up), within `max_seconds`."""
    matched = run()
    timings, deadline = [], time.monotonic() + max_seconds
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    return statistics.median(timings) * 1000, matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k tasks")
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated task counts")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per query (after a warm-up)")
    parser.add_argument("--max-seconds", type=float, default=60, help="bound on the timed runs of one query")
    parser.add_argument("--no-flower", action="store_true", help="Flowerbed only")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [int(size) for size in args.sizes.split(",")]

    rows = []
    for size in sizes:
        tasks = synthetic_tasks(size, WORKERS)
        with tempfile.TemporaryDirectory(prefix="flowerbed-bench-") as directory:
            started = time.perf_counter()
            store = fill_flowerbed(f"{directory}/bench.db", tasks)
            print(f"{size:,} tasks: Flowerbed store filled through Store.write_batch in "
                  f"{time.perf_counter() - started:.1f}s", flush=True)
            ours = {}
            for label, grid, page_query, _flower_query in PAGE_QUERIES:
                def run(grid=grid, page_query=page_query):
                    page = flowerbed_page(store, grid, page_query)
                    return f"{page.total:,}{'' if page.total_is_exact else '+'}"
                ours[label] = p50_ms(run, args.repeats, args.max_seconds)
        theirs = {}
        if not args.no_flower:
            started = time.perf_counter()
            events = fill_flower(tasks)
            print(f"{size:,} tasks: Flower's EventsState fed their events in {time.perf_counter() - started:.1f}s",
                  flush=True)
            for label, _grid, _page_query, flower_query in PAGE_QUERIES:
                def run(flower_query=flower_query):
                    return f"{flower_page(events, flower_query)[1]:,}"
                theirs[label] = p50_ms(run, args.repeats, args.max_seconds)
            del events
        del tasks
        gc.collect()
        for label, *_ in PAGE_QUERIES:
            (our_ms, our_matches), (their_ms, their_matches) = ours[label], theirs.get(label, (None, None))
            rows.append((f"{size:,}", label, our_ms, their_ms, ratio(our_ms, their_ms, higher_is_better=False),
                         f"{our_matches} / {their_matches or '-'}"))
    print_table("Tasks page query, first 100 rows and the count: p50 ms (ratio >1: Flowerbed faster)",
                ("tasks", "query", "Flowerbed ms", "Flower ms", "Flowerbed vs Flower", "matches (Flowerbed / Flower)"),
                rows)


if __name__ == "__main__":
    main()

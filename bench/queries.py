"""Tasks query latency: the Tasks page's first page (100 rows and the count) at 100k and 1M tasks,
on each store, and what a web process serving those queries holds in memory.

    python bench/queries.py                                  # 100k and 1M tasks, SQLite and PostgreSQL
    python bench/queries.py --quick                          # 10k and 100k tasks
    python bench/queries.py --sizes 1000000 --no-flower      # any sizes; Flowerbed only
    python bench/queries.py --backends sqlite --no-web       # one store; no web process

Every system holds the same synthetic tasks (bench/stream.py). Flowerbed's store is filled straight
through `Store.write_batch` (the collector's write, without the broker: faster than replaying the
stream): a SQLite file in a temporary directory, or a private database created on --pg-server and
dropped at the end (after the fill, `VACUUM (ANALYZE) tasks`, what autovacuum does to a table that
grew: `--no-pg-vacuum` leaves it as filled). Flower's `EventsState` is fed the same tasks' events
directly (its own ingest path, without the broker). The queries are what each Tasks page runs for its
first page: Flowerbed's `fetch_tasks` with the TaskQuery the page's grid callback builds, Flower's
`TasksDataTable` work (`search_tasks` and a dict per row).

Then, unless --no-web, `python cli.py web --db <the filled store>` (one gunicorn worker) is asked
over HTTP --web-rounds times for the Tasks page's grid callback (the three queries in turn) and
/api/tasks?limit=100&sort_by=-received; printed: the RSS of its worker and its master, and the
latencies over HTTP.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import types

from stream import percentile, print_table, ratio, synthetic_tasks, task_events
from systems import (DEFAULT_PG_SERVER, PAGE_QUERIES, HttpClient, WebTier, flower_page, flower_state,
                     flowerbed_page, postgres_problem, private_store)

WORKERS = 8
BACKENDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def fill_flowerbed(db: str, tasks: list[dict]):
    """A store (a SQLite path or a postgresql:// URL) holding `tasks`, written through write_batch."""
    from monitor.store import open_store
    from monitor.store.schema import TASK_FIELDS

    store = open_store(db, max_tasks=len(tasks))
    for start in range(0, len(tasks), 5000):
        store.write_batch(tasks=[tuple(task.get(field) for field in TASK_FIELDS) for task in tasks[start:start + 5000]])
    return store


def vacuum_analyze(db: str) -> None:
    import psycopg

    with psycopg.connect(db, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) tasks")


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


def measure_web(db: str, rounds: int) -> dict:
    """`python cli.py web --db DB` (one worker) asked `rounds` times for the Tasks page's grid callback
    and /api/tasks over HTTP; RSS of its worker and master (at the end, and the worker's peak)."""
    with tempfile.TemporaryDirectory(prefix="flowerbed-bench-logs-") as directory:
        return _measure_web(db, rounds, f"{directory}/web.log")


def _measure_web(db: str, rounds: int, log_path: str) -> dict:
    web = WebTier(db, 1, log_path)
    client = HttpClient(web.port, timeout=60)
    timings = {"page": [], "api": []}
    errors, peak = [], 0
    try:
        first = web.memory()
        deadline = time.monotonic() + 300
        for round_number in range(rounds):
            for kind, seconds, status, body in web.use_once(client, round_number):
                if status == 200:
                    timings[kind].append(seconds * 1000)
                else:
                    errors.append(f"{kind} {status}: {body[:200].decode(errors='replace')}")
            peak = max(peak, web.memory()["web_worker"])
            if time.monotonic() > deadline:
                break
        memory = web.memory()
    finally:
        client.close()
        web.stop()
    problems, first_problems = web.service.problems()
    return {"worker_start_mb": first["web_worker"] / 2**20, "worker_mb": memory["web_worker"] / 2**20,
            "worker_peak_mb": max(peak, memory["web_worker"]) / 2**20, "master_mb": memory["web_master"] / 2**20,
            "page_p50_ms": percentile(timings["page"], 0.5), "page_max_ms": max(timings["page"], default=None),
            "api_p50_ms": percentile(timings["api"], 0.5), "api_max_ms": max(timings["api"], default=None),
            "requests": len(timings["page"]) + len(timings["api"]), "errors": len(errors),
            "first_errors": errors[:3], "log_problems": problems, "log_first": first_problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k tasks")
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated task counts")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per query (after a warm-up)")
    parser.add_argument("--max-seconds", type=float, default=60, help="bound on the timed runs of one query")
    parser.add_argument("--no-flower", action="store_true", help="Flowerbed only")
    parser.add_argument("--backends", default="sqlite,postgresql", help="stores, of: " + ", ".join(BACKENDS))
    parser.add_argument("--pg-server", default=DEFAULT_PG_SERVER,
                        help="PostgreSQL server for the private databases (created and dropped by the run)")
    parser.add_argument("--no-pg-vacuum", action="store_true", help="query PostgreSQL as filled, before any VACUUM")
    parser.add_argument("--no-web", action="store_true", help="no web process (no RSS figures)")
    parser.add_argument("--web-rounds", type=int, default=36, help="page + API requests to the web process")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [int(size) for size in args.sizes.split(",")]
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    for backend in backends:
        if backend not in BACKENDS:
            raise SystemExit(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    if "postgresql" in backends and (problem := postgres_problem(args.pg_server)):
        print(f"skipping PostgreSQL: the server {args.pg_server} cannot be reached ({problem}); see --pg-server")
        backends.remove("postgresql")

    rows, web_rows = [], []
    for size in sizes:
        tasks = synthetic_tasks(size, WORKERS)
        ours: dict[str, dict] = {}
        for backend in backends:
            with private_store(backend, args.pg_server) as db:
                started = time.perf_counter()
                store = fill_flowerbed(db, tasks)
                filled = time.perf_counter() - started
                vacuumed = ""
                if backend == "postgresql" and not args.no_pg_vacuum:
                    started = time.perf_counter()
                    vacuum_analyze(db)
                    vacuumed = f", then VACUUM (ANALYZE) tasks in {time.perf_counter() - started:.1f}s"
                print(f"{size:,} tasks: {BACKENDS[backend]} store filled through Store.write_batch in "
                      f"{filled:.1f}s{vacuumed}", flush=True)
                try:
                    ours[backend] = {}
                    for label, grid, page_query, _flower_query in PAGE_QUERIES:
                        def run(grid=grid, page_query=page_query):
                            page = flowerbed_page(store, grid, page_query)
                            return f"{page.total:,}{'' if page.total_is_exact else '+'}"
                        ours[backend][label] = p50_ms(run, args.repeats, args.max_seconds)
                finally:
                    store.close()
                if not args.no_web:
                    web = measure_web(db, args.web_rounds)
                    print(f"{size:,} tasks: {BACKENDS[backend]} web process: "
                          f"{ {k: round(v, 1) if isinstance(v, float) else v for k, v in web.items()} }", flush=True)
                    web_rows.append((f"{size:,}", BACKENDS[backend], web["worker_start_mb"], web["worker_mb"],
                                     web["worker_peak_mb"], web["master_mb"], web["page_p50_ms"], web["page_max_ms"],
                                     web["api_p50_ms"], web["api_max_ms"], web["requests"], web["errors"]))
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
            their_ms, their_matches = theirs.get(label, (None, None))
            ms = [ours[backend][label][0] for backend in backends]
            matches = [ours[backend][label][1] for backend in backends] + [their_matches or "-"]
            rows.append((f"{size:,}", label, *ms, their_ms,
                         *(ratio(value, their_ms, higher_is_better=False) for value in ms), " / ".join(matches)))
    names = [BACKENDS[backend] for backend in backends]
    print_table("Tasks page query, first 100 rows and the count: p50 ms (ratio >1: Flowerbed faster)",
                ("tasks", "query", *(f"{name} ms" for name in names), "Flower ms",
                 *(f"{name} vs Flower" for name in names), f"matches ({' / '.join(names + ['Flower'])})"), rows)
    if web_rows:
        print_table(f"Web process (python cli.py web, 1 worker) serving the Tasks page's three queries and "
                    f"/api/tasks over HTTP, {args.web_rounds} rounds: RSS MB and ms",
                    ("tasks", "store", "worker RSS at start", "worker RSS at end", "worker RSS peak", "master RSS",
                     "page p50 ms", "page max ms", "API p50 ms", "API max ms", "requests", "failed"), web_rows)


if __name__ == "__main__":
    main()

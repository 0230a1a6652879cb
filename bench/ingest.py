"""Ingest: how fast each system takes in the replayed stream, what it loses, and its memory.

    python bench/ingest.py              # 100k tasks (~300k events) per phase; about fifteen minutes
    python bench/ingest.py --quick      # 10k tasks; a few minutes
    python bench/ingest.py --systems receiver,collector-sqlite,flower --phases fastest

Three phases on the same stream, each run against celery's bare receiver (the baseline), Flowerbed's
collector service on SQLite and on PostgreSQL (`python cli.py collect`, as users run it; a private
database on --pg-server, skipped with the reason when that server cannot be reached), Flower, and on
request Flowerbed in-process (`--systems flowerbed`), each consumer in a fresh process of its own
(and a fresh store), on a private redis-server:
  fastest  the stream published as fast as it goes, with Redis's subscriber output-buffer limit off
           so nothing is cut: events/s processed
  steady   the stream paced at --steady-rate (5k events/s) with Redis's default limit (a subscriber
           32 MB behind is disconnected): events lost, and RSS once every task is held
  burst    the stream paced at --burst-rate (16k events/s), default limit, while the Tasks page and
           /api/tasks are requested every --use-pause seconds: events lost, tasks that reached their
           final state, page latency meanwhile. For the collector services the pages are a web tier
           of their own (`python cli.py web --workers 4` on the same store) asked over HTTP from
           --use-threads threads, and its RSS is printed
"""
from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import threading
import time

from stream import (PrivateRedis, Recording, percentile, print_table, ratio, record_templates, replay,
                    synthetic_tasks, task_events)
from systems import CONSUMERS, DEFAULT_PG_SERVER, DEFAULT_SYSTEMS, consumer_class, postgres_problem, private_store

BASELINE, THEIRS = "celery receiver", "Flower"
PHASES = ("fastest", "steady", "burst")
MEMORY_SECONDS = 0.25  # RSS is sampled this often while a phase runs (for the peak)


def consume(kind: str, redis_url: str, max_tasks: int, in_use: bool, use_pause: float, max_seconds: float,
            idle_seconds: float, options: dict, conn) -> None:
    """Child process: run one consumer until it has processed what was published (or went idle)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # terminated: close() still runs
    consumer = CONSUMERS[kind](redis_url, max_tasks, in_use, **options)
    try:
        _consume(consumer, in_use, use_pause, max_seconds, idle_seconds, conn)
    finally:
        close = getattr(consumer, "close", None)
        if close is not None:
            close()


def _consume(consumer, in_use: bool, use_pause: float, max_seconds: float, idle_seconds: float, conn) -> None:
    consumer.start()
    conn.send("ready")
    stop_use = threading.Event()
    timings = consumer.start_use(stop_use, use_pause, max_rounds=int(max_seconds / use_pause) + 1) if in_use else []
    progress = {"count": 0, "last_change": None, "publish_started": None, "received": 0, "last_received": None}
    peaks: dict = {}
    memory_due = [0.0]

    def sample_memory():
        if time.monotonic() < memory_due[0]:
            return
        memory_due[0] = time.monotonic() + MEMORY_SECONDS
        for key, value in consumer.memory().items():
            if value is not None:
                peaks[key] = max(peaks.get(key, 0), value)

    def watch():
        published = publish_ended = None
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            while conn.poll():
                message = conn.recv()
                if message[0] == "publishing":
                    progress["publish_started"] = message[1]
                else:
                    published, publish_ended = message[1], message[2]
            sample_memory()
            count, received, now = consumer.processed(), consumer.received(), time.time()
            if count != progress["count"]:
                progress["count"], progress["last_change"] = count, now
            if received is not None and received != progress["received"]:
                progress["received"], progress["last_received"] = received, now
            last_progress = max(progress["last_change"] or 0, progress["last_received"] or 0, publish_ended or 0)
            if published is not None and (count >= published or now - last_progress > idle_seconds):
                return
            time.sleep(0.02)

    consumer.serve(watch)
    stop_use.set()
    memory_due[0] = 0.0
    sample_memory()
    memory = consumer.memory()  # once the stream is in (and, in use, with the pages still up)
    figures = consumer.figures()
    busy = (progress["last_change"] or 0) - (progress["publish_started"] or 0)
    receiving = (progress["last_received"] or 0) - (progress["publish_started"] or 0)
    for key, value in memory.items():
        figures[f"{key}_mb"] = _mb(value)
        figures[f"{key}_peak_mb"] = _mb(peaks.get(key))
    figures.update(rate=progress["count"] / busy if busy > 0 else None,
                   receive_rate=progress["received"] / receiving if receiving > 0 else None,
                   use_p50_ms=_ms(percentile(timings, 0.5)), use_max_ms=_ms(max(timings, default=None)),
                   use_requests=len(timings))
    conn.send(figures)


def _ms(seconds):
    return None if seconds is None else seconds * 1000


def _mb(size):
    return None if not size else size / 2**20


def _backend(kind: str) -> str | None:
    """The store a consumer is given (created and removed by the run), None for one that needs none
    or makes its own (Flowerbed in-process)."""
    return getattr(CONSUMERS[kind], "backend", None)


def run_phase(redis: PrivateRedis, kind: str, messages, rate, limited: bool, in_use: bool, args) -> dict:
    """One consumer on one phase, in a fresh process, on a fresh store (created and removed here, so
    that it goes even when the consumer's process had to be killed)."""
    with private_store(_backend(kind), args.pg_server) as db:
        options = {"db": db, "use_threads": args.use_threads, "web_workers": args.web_workers, "logs": args.logs}
        return _run_phase(redis, kind, messages, rate, limited, in_use, options, args)


def _run_phase(redis: PrivateRedis, kind: str, messages, rate, limited: bool, in_use: bool, options: dict,
               args) -> dict:
    redis.limit_subscriber_buffer(limited)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=consume, args=(  # not daemonic: Flowerbed starts a receiving process
        kind, redis.url, args.tasks, in_use, args.use_pause, args.max_seconds, args.idle_seconds, options, theirs))
    process.start()
    figures = None
    try:
        if not ours.poll(180):
            raise RuntimeError(f"{kind} did not start")
        ours.recv()
        redis.wait_for_subscriber()
        ours.send(("publishing", time.time()))
        published, seconds = replay(redis.client(), messages, rate, args.max_seconds)
        ours.send(("published", published, time.time()))
        if not ours.poll(args.max_seconds + 90):
            raise RuntimeError(f"{kind} did not report")
        figures = ours.recv()
    finally:  # on a failure at once: what the child started ends with it (PR_SET_PDEATHSIG)
        process.join(60 if figures is not None else 0)
        if process.is_alive():
            process.terminate()
            process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)
    figures.update(published=published, publish_rate=published / seconds,
                   lost=published - (figures["processed"] or 0))
    shown = {key: round(value, 1) if isinstance(value, float) else value for key, value in figures.items()}
    print(f"  {kind:20} {published:>9,} published at {published / seconds:>8,.0f}/s: {shown}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k tasks")
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in the stream (about 3 events each)")
    parser.add_argument("--workers", type=int, default=8, help="workers sending heartbeats (K)")
    parser.add_argument("--steady-rate", type=float, default=5_000)
    parser.add_argument("--burst-rate", type=float, default=16_000)
    parser.add_argument("--use-pause", type=float, default=0.5, help="seconds between page+API requests")
    parser.add_argument("--max-seconds", type=float, default=300, help="bound on each phase")
    parser.add_argument("--idle-seconds", type=float, default=10, help="a consumer this long without progress is done")
    parser.add_argument("--use-threads", type=int, default=3,
                        help="threads asking a collector service's web tier for pages, each every --use-pause")
    parser.add_argument("--web-workers", type=int, default=4, help="the web tier's gunicorn workers (burst phase)")
    parser.add_argument("--pg-server", default=DEFAULT_PG_SERVER,
                        help="PostgreSQL server for the private databases (created and dropped by the run)")
    parser.add_argument("--logs", help="keep the collector services' and web tiers' logs in this directory")
    parser.add_argument("--systems", default=",".join(consumer_class(name).key for name in DEFAULT_SYSTEMS),
                        help="which of: " + ", ".join(f"{c.key} ({c.name})" for c in CONSUMERS.values()))
    parser.add_argument("--phases", default=",".join(PHASES), help="which of: " + ", ".join(PHASES))
    args = parser.parse_args()
    if args.quick:
        args.tasks = 10_000
    systems = [consumer_class(name).name for name in args.systems.split(",") if name.strip()]
    phases = [name.strip() for name in args.phases.split(",")]
    on_postgres = [name for name in systems if _backend(name) == "postgresql"]
    if on_postgres:
        problem = postgres_problem(args.pg_server)
        if problem:
            print(f"skipping {', '.join(on_postgres)}: the PostgreSQL server {args.pg_server} cannot be reached "
                  f"({problem}); see --pg-server", flush=True)
            systems = [name for name in systems if name not in on_postgres]

    with PrivateRedis() as redis:
        recording = Recording(record_templates(redis.url))
        tasks = synthetic_tasks(args.tasks, args.workers)
        stream = recording.messages(task_events(tasks, args.workers, args.burst_rate))
        print(f"recorded {len(recording.templates)} celery event messages on {redis.url}; stream: "
              f"{len(tasks):,} tasks = {len(stream):,} events, {args.workers} workers")
        results = {}
        for phase, rate, limited, in_use in (
                ("fastest", None, False, False),
                ("steady", args.steady_rate, True, False),
                ("burst", args.burst_rate, True, True)):
            if phase not in phases:
                continue
            print(f"{phase}:", flush=True)
            for kind in systems:
                results[phase, kind] = run_phase(redis, kind, stream, rate, limited, in_use and kind != BASELINE, args)
    report(results, args, len(stream), systems)


def report(results: dict, args, events: int, systems: list[str]) -> None:
    ours = [name for name in systems if CONSUMERS[name].ours]
    comparisons = [(name, other) for name in ours for other in (THEIRS, BASELINE) if other in systems]

    def row(label, phase, key, higher_is_better=None):
        values = [results.get((phase, kind), {}).get(key) for kind in systems]
        ratios = [None if higher_is_better is None else ratio(
            results.get((phase, name), {}).get(key), results.get((phase, other), {}).get(key), higher_is_better)
            for name, other in comparisons]
        return (label, *values, *ratios)

    rows = [
        row("events/s processed, as fast as it goes", "fastest", "rate", True),
        row("events/s received, as fast as it goes", "fastest", "receive_rate", True),
        row("fastest: RSS MB peak, receiving process incl.", "fastest", "rss_peak_mb", False),
        row("fastest: most events waiting in the collector", "fastest", "backlog_peak"),
        row(f"steady {args.steady_rate:,.0f}/s: events lost (of {events:,})", "steady", "lost"),
        row("steady: disconnects", "steady", "disconnects"),
        row(f"steady: RSS MB with {args.tasks:,} tasks held", "steady", "rss_mb", False),
        row("steady: RSS MB of its receiving process", "steady", "receiving_mb", False),
        row("steady: RSS MB peak, receiving process incl.", "steady", "rss_peak_mb", False),
        row("steady: most events waiting in the collector", "steady", "backlog_peak"),
        row(f"burst {args.burst_rate:,.0f}/s: pace held (events/s)", "burst", "publish_rate"),
        row(f"burst: events lost (of {events:,})", "burst", "lost"),
        row("burst: disconnects", "burst", "disconnects"),
        row(f"burst: tasks complete (of {args.tasks:,})", "burst", "finished"),
        row("burst: events/s processed", "burst", "rate", True),
        row("burst: page/API p50 ms meanwhile", "burst", "use_p50_ms", False),
        row("burst: page/API max ms meanwhile", "burst", "use_max_ms", False),
        row("burst: Tasks grid callback p50 ms", "burst", "page_p50_ms", False),
        row("burst: /api/tasks p50 ms", "burst", "api_p50_ms", False),
        row("burst: page/API requests answered", "burst", "use_requests"),
        row("burst: page/API requests failed", "burst", "use_errors"),
        row("burst: RSS MB at the end, receiving incl.", "burst", "rss_mb", False),
        row("burst: RSS MB peak, receiving incl.", "burst", "rss_peak_mb", False),
        row("burst: RSS MB of its receiving process", "burst", "receiving_mb", False),
        row("burst: most events waiting in the collector", "burst", "backlog_peak"),
        row(f"burst: web tier RSS MB (master + {args.web_workers})", "burst", "web_mb", False),
        row("burst: web tier RSS MB peak", "burst", "web_peak_mb", False),
        row("burst: web tier largest worker RSS MB", "burst", "web_worker_peak_mb", False),
    ]
    rows = [r for r in rows if any(value is not None for value in r[1:])]
    header = ("figure", *systems, *(f"{CONSUMERS[name].label} vs {CONSUMERS[other].label}" for name, other in comparisons))
    print_table(f"Ingest: {args.tasks:,} tasks, {args.workers} workers (processed = stored by Flowerbed, applied by "
                f"Flower, received by the receiver; RSS of the collector includes its receiving process; "
                f"ratios >1 mean Flowerbed is better)", header, rows)


if __name__ == "__main__":
    main()

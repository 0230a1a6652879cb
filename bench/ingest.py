"""Ingest: how fast each system takes in the replayed stream, what it loses, and its memory.

    python bench/ingest.py              # 100k tasks (~300k events) per phase; about ten minutes
    python bench/ingest.py --quick      # 10k tasks; a minute or two

Three phases on the same stream, each run against celery's bare receiver (the baseline), Flowerbed
and Flower, each consumer in a fresh process of its own, on a private redis-server:
  fastest  the stream published as fast as it goes, with Redis's subscriber output-buffer limit off
           so nothing is cut: events/s processed
  steady   the stream paced at --steady-rate (5k events/s) with Redis's default limit (a subscriber
           32 MB behind is disconnected): events lost, and RSS once every task is held
  burst    the stream paced at --burst-rate (16k events/s), default limit, while the Tasks page and
           /api/tasks are requested every --use-pause seconds: events lost, tasks that reached their
           final state, page latency meanwhile
"""
from __future__ import annotations

import argparse
import multiprocessing
import threading
import time

from stream import (PrivateRedis, Recording, percentile, print_table, ratio, record_templates, replay,
                    synthetic_tasks, task_events)
from systems import CONSUMERS

BASELINE, OURS, THEIRS = "celery receiver", "Flowerbed", "Flower"
PHASES = ("fastest", "steady", "burst")


def consume(kind: str, redis_url: str, max_tasks: int, in_use: bool, use_pause: float, max_seconds: float,
            idle_seconds: float, conn) -> None:
    """Child process: run one consumer until it has processed what was published (or went idle)."""
    import psutil

    consumer = CONSUMERS[kind](redis_url, max_tasks, in_use)
    consumer.start()
    conn.send("ready")
    stop_use = threading.Event()
    timings = consumer.start_use(stop_use, use_pause, max_rounds=int(max_seconds / use_pause) + 1) if in_use else []
    progress = {"count": 0, "last_change": None, "publish_started": None, "received": 0, "last_received": None}

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
    process = psutil.Process()
    rss, children = process.memory_info().rss, process.children()
    child_rss = sum(child.memory_info().rss for child in children) if children else None
    figures = consumer.figures()
    busy = (progress["last_change"] or 0) - (progress["publish_started"] or 0)
    receiving = (progress["last_received"] or 0) - (progress["publish_started"] or 0)
    figures.update(rss_mb=rss / 2**20, child_rss_mb=child_rss and child_rss / 2**20,
                   rate=progress["count"] / busy if busy > 0 else None,
                   receive_rate=progress["received"] / receiving if receiving > 0 else None,
                   use_p50_ms=_ms(percentile(timings, 0.5)), use_max_ms=_ms(max(timings, default=None)),
                   use_requests=len(timings))
    conn.send(figures)


def _ms(seconds):
    return None if seconds is None else seconds * 1000


def run_phase(redis: PrivateRedis, kind: str, messages, rate, limited: bool, in_use: bool, args) -> dict:
    redis.limit_subscriber_buffer(limited)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=consume, args=(  # not daemonic: Flowerbed starts a receiving process
        kind, redis.url, args.tasks, in_use, args.use_pause, args.max_seconds, args.idle_seconds, theirs))
    process.start()
    try:
        if not ours.poll(120):
            raise RuntimeError(f"{kind} did not start")
        ours.recv()
        redis.wait_for_subscriber()
        ours.send(("publishing", time.time()))
        published, seconds = replay(redis.client(), messages, rate, args.max_seconds)
        ours.send(("published", published, time.time()))
        if not ours.poll(args.max_seconds + 60):
            raise RuntimeError(f"{kind} did not report")
        figures = ours.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    figures.update(published=published, publish_rate=published / seconds,
                   lost=published - figures["processed"])
    print(f"  {kind:16} {published:>9,} published at {published / seconds:>8,.0f}/s: {figures}", flush=True)
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
    parser.add_argument("--systems", default=",".join(CONSUMERS), help="which of: " + ", ".join(CONSUMERS))
    parser.add_argument("--phases", default=",".join(PHASES), help="which of: " + ", ".join(PHASES))
    args = parser.parse_args()
    if args.quick:
        args.tasks = 10_000
    systems = [name.strip() for name in args.systems.split(",")]
    phases = [name.strip() for name in args.phases.split(",")]

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
    report(results, args, len(stream))


def report(results: dict, args, events: int) -> None:
    def row(label, phase, key, higher_is_better=None):
        values = [results.get((phase, kind), {}).get(key) for kind in (BASELINE, OURS, THEIRS)]
        ratios = (None, None) if higher_is_better is None else (
            ratio(values[1], values[2], higher_is_better), ratio(values[1], values[0], higher_is_better))
        return (label, *values, *ratios)

    rows = [
        row("events/s processed, as fast as it goes", "fastest", "rate", True),
        row("events/s received, as fast as it goes", "fastest", "receive_rate", True),
        row(f"steady {args.steady_rate:,.0f}/s: events lost (of {events:,})", "steady", "lost"),
        row("steady: disconnects", "steady", "disconnects"),
        row(f"steady: RSS MB with {args.tasks:,} tasks held", "steady", "rss_mb", False),
        row("steady: RSS MB of its receiving process", "steady", "child_rss_mb", False),
        row(f"burst {args.burst_rate:,.0f}/s: pace held (events/s)", "burst", "publish_rate"),
        row(f"burst: events lost (of {events:,})", "burst", "lost"),
        row("burst: disconnects", "burst", "disconnects"),
        row(f"burst: tasks complete (of {args.tasks:,})", "burst", "finished"),
        row("burst: events/s processed", "burst", "rate", True),
        row("burst: page/API p50 ms meanwhile", "burst", "use_p50_ms", False),
        row("burst: page/API max ms meanwhile", "burst", "use_max_ms", False),
        row("burst: page/API requests", "burst", "use_requests"),
        row("burst: RSS MB (pages in use)", "burst", "rss_mb", False),
        row("burst: RSS MB of its receiving process", "burst", "child_rss_mb", False),
    ]
    print_table(f"Ingest: {args.tasks:,} tasks, {args.workers} workers "
                f"(processed = stored by Flowerbed, applied by Flower, received by the receiver; "
                f"ratios >1 mean Flowerbed is better)",
                ("figure", BASELINE, OURS, THEIRS, "Flowerbed vs Flower", "Flowerbed vs receiver"), rows)


if __name__ == "__main__":
    main()

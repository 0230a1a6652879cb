"""CPU time per event of the collector service's two processes, and where it goes.

The receiving process (`--receiving`): the stream published as fast as it goes on a private Redis
(bench/stream.py's recorded messages), received by a real receiving process
(`monitor.ingest.receiving`) whose batches this process reads from the pipe; printed: that
process's CPU seconds (psutil) per event; then, in this process, the part the receiving process's
short path changes (from the Redis channel's delivery to the receiver's handler) on both paths.

The writer: the same stream's events, as celery's receiver hands them over (`local_received`
added), go into a real `Collector`'s inbox and through its `merge_batch` (merge, rows, write) to a
fresh store, `--batch-events` at a time as the writing thread takes them. Printed per store: the
writer's CPU seconds (user + sys of this process, SQLite's own work included) per event and events
per CPU second; on PostgreSQL also the CPU of the server processes serving the bench's database
(psutil, same host). `--merge-only`: the merge alone on the same events, celery's `State` (what the
collector ran before merge.py) and `MergeState`. CPU time, not wall-clock: it stays comparable on a
busy machine.

    python bench/cpu.py --receiving --merge-only   # 20k tasks (~60k events): everything
    python bench/cpu.py                            # the writer on SQLite and PostgreSQL
    python bench/cpu.py --tasks 50000 --backends sqlite --profile 25   # and cProfile's top 25
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # stream.py, as ingest.py imports it

from celery import Celery  # noqa: E402
from celery.events.state import State  # noqa: E402

from stream import synthetic_tasks, task_events  # noqa: E402
from monitor.ingest.collector import Collector  # noqa: E402
from monitor.ingest.merge import MergeState  # noqa: E402
from monitor.store import open_store  # noqa: E402

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receiving_cpu(tasks: int, workers: int) -> tuple[int, float]:
    """(events received, CPU seconds of the receiving process) for the stream published on a private Redis."""
    import threading

    import psutil
    from stream import PrivateRedis, Recording, record_templates, replay

    from monitor.ingest import receiving

    with PrivateRedis() as redis:
        redis.limit_subscriber_buffer(False)
        messages = Recording(record_templates(redis.url)).messages(
            task_events(synthetic_tasks(tasks, workers), workers, rate=16_000))
        app = Celery("bench-receiving", broker=redis.url, set_as_current=False)
        process = receiving.start_process(receiving.broker_conf(app), 1.0)
        try:
            redis.wait_for_subscriber()
            child = psutil.Process(process.process.pid)
            began = sum(child.cpu_times()[:2])
            publisher = threading.Thread(target=replay, args=(redis.client(), messages, None, 120), daemon=True)
            publisher.start()
            received, deadline = 0, time.monotonic() + 120
            while received < len(messages) and time.monotonic() < deadline:
                if process.events.poll(0.5):
                    message = process.events.recv()
                    if message[0] == "events":
                        received += message[2]
            seconds = sum(child.cpu_times()[:2]) - began
            publisher.join(10)
        finally:
            process.end(2.0)
    return received, seconds


def delivery_cpu(tasks: int, workers: int) -> dict[str, float]:
    """CPU seconds per message from the Redis channel's delivery to the receiver's handler, in this
    process: kombu's path (Message, consumer, kombu's JSON) and the short one (receiving.py), on
    the same recorded envelopes. The part of the receiving process that the short path changes,
    without the broker's reads around it."""
    import json

    from stream import PrivateRedis, Recording, record_templates

    from monitor.ingest import receiving

    with PrivateRedis() as redis:
        envelopes = [json.loads(payload) for _channel, payload in Recording(record_templates(redis.url)).messages(
            task_events(synthetic_tasks(tasks, workers), workers, rate=16_000))]
        app = Celery("bench-delivery", broker=redis.url, set_as_current=False)
        handled = []
        with receiving.connection_for_events(app) as connection:
            receiver = receiving.TolerantReceiver(connection, handlers={"*": handled.append}, app=app,
                                                  counts=collections.Counter())
            with receiver.Consumer() as (_connection, channel, _consumers):  # the channel knows the receiver now
                short = channel.receive_body
                timings = {}
                for label, receive_body in (("kombu", None), ("short", short), ("kombu", None), ("short", short)):
                    channel.receive_body = receive_body
                    copies = [json.loads(json.dumps(envelope)) for envelope in envelopes]  # either path may change them
                    handled.clear()
                    began = cpu_seconds()
                    for envelope in copies:
                        channel._deliver_fanout_message(envelope, app.conf.event_exchange)
                    seconds = cpu_seconds() - began
                    assert len(handled) == len(envelopes), (label, len(handled))
                    timings[label] = min(timings.get(label, seconds), seconds)
                channel.receive_body = short
    return {label: seconds / len(envelopes) for label, seconds in timings.items()}


def received_events(tasks: int, workers: int) -> list[dict]:
    """The stream's events as the receiver hands them to the collector: stamped when received."""
    events = []
    for event in task_events(synthetic_tasks(tasks, workers), workers, rate=16_000):
        event["local_received"] = event["timestamp"]
        events.append(event)
    return events


def server_cpu_seconds(store) -> float:
    """CPU seconds of the PostgreSQL server processes serving this store's database (0 on SQLite)."""
    if not hasattr(store, "_pool"):
        return 0.0
    import psutil
    total = 0.0
    for row in store.query("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"):
        try:
            times = psutil.Process(row[0]).cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


def run_writer(store, events: list[dict], profile: cProfile.Profile | None,
               batch_events: int = 4_000) -> tuple[float, float, Collector]:
    """Every event through merge_batch into `store`, `batch_events` per batch; the CPU seconds it
    took here and in the server."""
    collector = Collector(Celery("bench-cpu", broker="memory://", set_as_current=False), store,
                          receive_in_process=False, batch_events=batch_events)
    collector._inbox.events.extend(dict(event) for event in events)  # fresh dicts: the merge may keep them
    state = collector._state
    server_began, began = server_cpu_seconds(store), cpu_seconds()
    if profile:
        profile.enable()
    while collector._inbox:
        collector.merge_batch(state)
    if profile:
        profile.disable()
    return cpu_seconds() - began, server_cpu_seconds(store) - server_began, collector


def run_celery_state(events: list[dict]) -> float:
    """celery's own State on the events, nothing written: the merge the collector used to run."""
    state = State(max_tasks_in_memory=5_000, max_workers_in_memory=10_000)
    fresh = [dict(event) for event in events]
    began = cpu_seconds()
    apply_event = state._event
    for event in fresh:
        apply_event(event)
    return cpu_seconds() - began


def run_merge_state(events: list[dict]) -> float:
    """The collector's merge (monitor/ingest/merge.py) on the same events, nothing written."""
    state = MergeState(5_000)
    fresh = [dict(event) for event in events]
    began = cpu_seconds()
    merge_task, merge_worker = state.merge_task, state.merge_worker
    for event in fresh:
        group, _, subject = event["type"].partition("-")
        (merge_task if group == "task" else merge_worker)(event, subject)
    return cpu_seconds() - began


def open_bench_store(backend: str, directory: str, pg_server: str):
    """A fresh store and a function that drops it."""
    if backend == "sqlite":
        path = os.path.join(directory, f"writer-{uuid.uuid4().hex[:6]}.db")
        return open_store(path, max_tasks=10_000_000), lambda: None
    import psycopg
    name = f"flowerbed_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    store = open_store(f"{pg_server}/{name}", max_tasks=10_000_000)

    def drop():
        store.close()
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return store, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--backends", default="sqlite,postgresql", help="'' for none")
    parser.add_argument("--batch-events", type=int, default=4_000,
                        help="events per writer batch (the collector takes 0.25 s worth: 4,000 at 16k events/s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per store (the best is printed)")
    parser.add_argument("--merge-only", action="store_true",
                        help="also time the merge alone: celery's State and MergeState, on the same events")
    parser.add_argument("--receiving", action="store_true", help="also the receiving process on a private Redis")
    parser.add_argument("--profile", type=int, metavar="N", default=0, help="print cProfile's top N (one run)")
    parser.add_argument("--pg-server", default=PG_SERVER)
    args = parser.parse_args()
    events = received_events(args.tasks, args.workers)
    print(f"{len(events):,} events ({args.tasks:,} tasks, {args.workers} workers)")
    if args.receiving:
        best = min((receiving_cpu(args.tasks, args.workers) for _ in range(args.repeats)),
                   key=lambda run: run[1] / max(run[0], 1))
        print(f"  receiving process            {best[1] / max(best[0], 1) * 1e6:8.1f} us/event "
              f"{best[0] / best[1]:>10,.0f} events/CPU s  (received {best[0]:,} of {len(events):,})")
        for label, seconds in delivery_cpu(args.tasks, args.workers).items():
            path = {"kombu": "kombu's path", "short": "short path"}[label]
            print(f"  delivery to the handler, {path:13s}{seconds * 1e6:5.1f} us/event (in this process)")
    if args.merge_only:
        for label, run in (("celery State, merge only", run_celery_state), ("MergeState, merge only", run_merge_state)):
            best = min(run(events) for _ in range(args.repeats))
            print(f"  {label:28s} {best / len(events) * 1e6:8.1f} us/event {len(events) / best:>10,.0f} events/CPU s")
    with tempfile.TemporaryDirectory(prefix="flowerbed-cpu-") as directory:
        for backend in filter(None, args.backends.split(",")):
            try:
                timings = []
                for attempt in range(args.repeats):
                    store, drop = open_bench_store(backend, directory, args.pg_server)
                    profile = cProfile.Profile() if args.profile and attempt == 0 else None
                    try:
                        seconds, server_seconds, collector = run_writer(store, events, profile, args.batch_events)
                        stored = collector.counts["stored"]
                        count = store.count_tasks()
                    finally:
                        drop()
                    timings.append((seconds, server_seconds))
                    if profile:
                        print(f"\n-- cProfile, {backend} (own time) --")
                        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
            except Exception as exc:  # noqa: BLE001 - e.g. no PostgreSQL server: say so, go on
                print(f"  {backend}: skipped ({type(exc).__name__}: {exc})")
                continue
            best, server = min(timings)
            print(f"  writer on {backend:12s}      {best / len(events) * 1e6:8.1f} us/event "
                  f"{len(events) / best:>10,.0f} events/CPU s  (stored {stored:,} events, {count:,} tasks)"
                  + (f"; the server's CPU {server / len(events) * 1e6:.1f} us/event" if server else ""))


if __name__ == "__main__":
    main()

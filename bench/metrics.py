"""What a Prometheus scrape of /metrics costs, against Flower's own scrape of the same counts.

A store (SQLite, and PostgreSQL when reachable) is filled with the counters of W workers × N task
names (five event types each, a runtime histogram in Flower's default buckets), the workers' rows,
`--tasks` tasks of which a few hundred wait or run at the workers (the prefetch gauges read those);
then /metrics is asked through Flask's test client, the whole answer built each time, `--rounds`
times. Flower's baseline, in the same process: prometheus_client's Counter, Histogram and Gauges
holding the same label sets and values, rendered by `generate_latest` as Flower's /metrics does
(its tornado handler adds little). Printed: median ms per scrape, the ratio to Flower's, and the
answer's size.

    python bench/metrics.py                       # 8×20 and 50×100, 100k tasks, SQLite and PostgreSQL
    python bench/metrics.py --sizes 8x20 --backends sqlite --tasks 10000
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid as uuid_module
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest  # noqa: E402

from monitor.services import build_services  # noqa: E402
from monitor.serving.metrics import create_metrics_blueprint  # noqa: E402
from monitor.settings import load_settings  # noqa: E402
from monitor.store.event_counts import DEFAULT_RUNTIME_BUCKETS, Increments  # noqa: E402
from monitor.store.schema import TASK_FIELDS, WORKER_FIELDS  # noqa: E402

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
EVENT_TYPES = ("received", "started", "succeeded", "failed", "retried")
OBSERVED_PER_PAIR = 40  # runtimes observed per (worker, name): enough to fill most buckets


def filled(store, workers: int, names: int, tasks: int, now: float, rng: random.Random) -> dict:
    """Counters and rows as a cluster of that size leaves them; returns what Flower's registry needs:
    {"events": {(worker, name, type): n}, "runtimes": {(worker, name): [seconds]}, "waiting": {(worker,
    name): n}, "workers": [hostname]}."""
    hosts = [f"celery@worker-{w:03d}" for w in range(workers)]
    task_names = [f"app.tasks.task_{n:03d}" for n in range(names)]
    counts = Increments(DEFAULT_RUNTIME_BUCKETS)
    runtimes: dict[tuple, list[float]] = {}
    for host in hosts:
        for name in task_names:
            for subject in EVENT_TYPES:
                counts.events[(host, name, subject)] = rng.randint(1, 10_000)
            for _ in range(OBSERVED_PER_PAIR):
                seconds = rng.lognormvariate(-3, 1.5)
                counts.observe(host, name, seconds)
                runtimes.setdefault((host, name), []).append(seconds)
    store.use_runtime_buckets(DEFAULT_RUNTIME_BUCKETS)  # as a collector's start leaves it
    store.write_batch(**counts.rows(now))
    store.write_batch(workers=[tuple({"hostname": host, "last_heartbeat": now, "freq": 2.0, "active": 3,
                                      "online_at": now - 3600}.get(f) for f in WORKER_FIELDS) for host in hosts])
    waiting: dict[tuple, int] = {}
    rows = []
    for number in range(tasks):
        host, name = rng.choice(hosts), rng.choice(task_names)
        state = "RECEIVED" if number % 500 == 0 else "STARTED" if number % 500 == 1 else "SUCCESS"
        if state == "RECEIVED":
            waiting[(host, name)] = waiting.get((host, name), 0) + 1
        fields = {"uuid": str(uuid_module.UUID(int=rng.getrandbits(128))), "name": name, "state": state,
                  "worker": host, "received": now - 60, "started": None if state == "RECEIVED" else now - 59}
        rows.append(tuple(fields.get(f) for f in TASK_FIELDS))
        if len(rows) == 5_000:
            store.write_batch(tasks=rows)
            rows = []
    store.write_batch(tasks=rows)
    return {"events": {(w, n, f"task-{s}"): v for (w, n, s), v in counts.events.items()}, "runtimes": runtimes,
            "waiting": waiting, "workers": hosts}


def flower_registry(data: dict) -> CollectorRegistry:
    """Flower's metrics (flower/events.py PrometheusMetrics) holding the same values."""
    registry = CollectorRegistry()
    events = Counter("flower_events_total", "Number of events", ["worker", "type", "task"], registry=registry)
    runtime = Histogram("flower_task_runtime_seconds", "Task runtime", ["worker", "task"], registry=registry,
                        buckets=DEFAULT_RUNTIME_BUCKETS)
    waited = Gauge("flower_task_prefetch_time_seconds", "The time the task spent waiting at the celery worker to "
                   "be executed.", ["worker", "task"], registry=registry)
    prefetched = Gauge("flower_worker_prefetched_tasks", "Number of tasks of given type prefetched at a worker",
                       ["worker", "task"], registry=registry)
    online = Gauge("flower_worker_online", "Worker online status", ["worker"], registry=registry)
    executing = Gauge("flower_worker_number_of_currently_executing_tasks",
                      "Number of tasks currently executing at a worker", ["worker"], registry=registry)
    for (worker, name, event_type), count in data["events"].items():
        events.labels(worker, event_type, name).inc(count)
        if event_type == "task-received":
            waited.labels(worker, name).set(0)
            prefetched.labels(worker, name).set(data["waiting"].get((worker, name), 0))
    for (worker, name), observed in data["runtimes"].items():
        for seconds in observed:
            runtime.labels(worker, name).observe(seconds)
    for host in data["workers"]:
        online.labels(host).set(1)
        executing.labels(host).set(3)
    return registry


def timed(action, rounds: int) -> tuple[float, object]:
    """(median ms, last result) of `rounds` calls."""
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def run(db: str, label: str, workers: int, names: int, tasks: int, rounds: int) -> None:
    settings = load_settings(["web", "--db", db])
    services = build_services(settings)
    data = filled(services.store, workers, names, tasks, time.time(), random.Random(7))
    server = Flask("bench")
    server.register_blueprint(create_metrics_blueprint(services, "/"))
    client = server.test_client()

    def scrape():
        response = client.get("/metrics")
        assert response.status_code == 200, response.data[:300]
        return response.data
    registry = flower_registry(data)
    ours, body = timed(scrape, rounds)
    flowers, flower_body = timed(lambda: generate_latest(registry), rounds)
    print(f"{label:<11} {workers:>4}×{names:<4} {tasks:>8,} tasks   /metrics {ours:8.1f} ms   Flower's "
          f"{flowers:7.1f} ms   ×{ours / flowers:5.2f}   {len(body) / 1e6:6.2f} MB (Flower's "
          f"{len(flower_body) / 1e6:.2f} MB)", flush=True)
    services.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8x20,50x100", help="workers×task names, separated by commas")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-server", default=PG_SERVER)
    args = parser.parse_args()
    sizes = [tuple(int(part) for part in size.split("x")) for size in args.sizes.split(",")]
    backends = args.backends.split(",")
    print(f"median of {args.rounds} scrapes; Flower's: generate_latest of its registry holding the same values")
    for workers, names in sizes:
        if "sqlite" in backends:
            with tempfile.TemporaryDirectory() as folder:
                run(str(Path(folder) / "bench.db"), "SQLite", workers, names, args.tasks, args.rounds)
        if "postgresql" in backends:
            run_on_postgres(args.pg_server, workers, names, args.tasks, args.rounds)


def run_on_postgres(server: str, workers: int, names: int, tasks: int, rounds: int) -> None:
    """The same on a private database of `server`, dropped at the end, failures included."""
    import psycopg

    name = f"flowerbed_bench_{uuid_module.uuid4().hex[:8]}"
    try:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL   skipped: {server} cannot be reached ({str(exc).splitlines()[0]})")
        return
    try:
        run(f"{server}/{name}", "PostgreSQL", workers, names, tasks, rounds)
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()

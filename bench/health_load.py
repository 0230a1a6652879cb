"""Health checks, fairness and memory under heavy API load, against a real Flowerbed server process.

The server runs as the Procfile runs it (gunicorn, 1 worker, 8 threads, gunicorn.conf.py), with two
basic-auth users, a store seeded with synthetic tasks and a private redis-server as its broker.

1. idle: health-check latency with nothing else running; the worker's RSS;
2. load: `--clients` threads send `/api/tasks?limit=10000` as user `ann` back to back for
   `--seconds`, ignoring Retry-After as an abusive script would, while user `bob` sends the same
   request one at a time (both in a process of their own, so that their reading does not slow the
   prober); meanwhile a prober sends a health check every 20 ms, on a new connection each;
3. after: the load stopped, health-check latency again, and the RSS once it settles.

Printed: health-check latency p50/p99/max per phase (ratio: p50 over the idle p50), heavy requests
served per second, 429s and errors per user, and the worker's RSS at start, after one heavy request,
at its peak and after the load. `--compare-stock` runs the same again on gunicorn's own gthread
worker (no health lane, no admission control), for the ratio. Asserts nothing.

    python bench/health_load.py                      # 20k tasks, 200 clients, 20 s of load
    python bench/health_load.py --compare-stock      # and the same on gunicorn's gthread worker
"""
from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from queries import fill_flowerbed  # noqa: E402  (bench/ is on the path above)
from stream import PrivateRedis, free_port, percentile, print_table, synthetic_tasks  # noqa: E402

USERS = {"ann": "ann-secret", "bob": "bob-secret"}
HEAVY_PATH = "/api/tasks?limit=10000"
PROBE_INTERVAL = 0.02
SLOW_MS = 100  # what a liveness probe may take
WORKERS = {"Flowerbed": "monitor.serving.gunicorn_worker.HealthFirstWorker", "gunicorn gthread": "gthread"}


def auth_header(user: str) -> dict:
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def request(port: int, path: str, headers: dict | None = None, timeout: float = 120) -> tuple[int, int]:
    """(status, body bytes) of one GET on a connection of its own; status 0 when it failed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, len(response.read())
    except OSError:
        return 0, 0
    finally:
        connection.close()


def worker_pid(arbiter_pid: int) -> int:
    """gunicorn's worker: the arbiter's child (the collector's receiving process is the worker's)."""
    return psutil.Process(arbiter_pid).children()[0].pid


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2 ** 20


def start_server(worker_class: str, redis_url: str, db: str, log_path: str) -> tuple[subprocess.Popen, int]:
    """The Procfile's command, with the worker class given."""
    port = free_port()
    env = {**os.environ, "FLOWERBED_BROKER": redis_url, "FLOWERBED_DB": db,
           "FLOWERBED_BASIC_AUTH": ",".join(f"{user}:{password}" for user, password in USERS.items())}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "app:server", "--workers", "1", "--threads", "8",
         "--bind", f"127.0.0.1:{port}", "--worker-class", worker_class],
        cwd=ROOT, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while request(port, "/healthcheck", timeout=2)[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start; see {log_path}")
        time.sleep(0.1)
    return process, port


def probe_health(port: int, stop: threading.Event, max_probes: int) -> list[float]:
    """Health-check latencies (ms), one probe every PROBE_INTERVAL until `stop` or `max_probes`."""
    latencies = []
    while not stop.is_set() and len(latencies) < max_probes:
        started = time.perf_counter()
        status, _ = request(port, "/healthcheck", timeout=120)
        latencies.append((time.perf_counter() - started) * 1000 if status == 200 else float("inf"))
        stop.wait(PROBE_INTERVAL)
    return latencies


def heavy_load(port: int, clients: int, seconds: float, results) -> None:
    """`clients` threads sending HEAVY_PATH as ann back to back for `seconds`, and bob one at a time
    meanwhile (runs in a process of its own); puts ann's counts and bob's statuses in `results`."""
    deadline = time.monotonic() + seconds
    counts = {"served": 0, "bytes": 0, "429": 0, "errors": 0}
    lock = threading.Lock()
    bob = []

    def client():
        while time.monotonic() < deadline:
            status, size = request(port, HEAVY_PATH, auth_header("ann"))
            key = "served" if status == 200 else "429" if status == 429 else "errors"
            with lock:
                counts[key] += 1
                counts["bytes"] += size if status == 200 else 0

    def sequential_user():
        while time.monotonic() < deadline:
            bob.append(request(port, HEAVY_PATH, auth_header("bob"))[0])

    threads = [threading.Thread(target=client) for _ in range(clients)] + [threading.Thread(target=sequential_user)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((counts, bob))


def run(worker_class: str, redis_url: str, db: str, directory: str, args) -> dict:
    """The three phases against one server; the figures measured."""
    server, port = start_server(worker_class, redis_url, db, f"{directory}/server-{worker_class}.log")
    try:
        pid = worker_pid(server.pid)
        figures = {"rss_start": rss_mb(pid)}
        request(port, HEAVY_PATH, auth_header("bob"))  # what the first request loads stays
        figures["rss_before"] = rss_mb(pid)
        figures["idle"] = probe_health(port, threading.Event(), max_probes=100)

        spawn = multiprocessing.get_context("spawn")
        results = spawn.Queue()
        load = spawn.Process(target=heavy_load, args=(port, args.clients, args.seconds, results))
        stop, loaded = threading.Event(), []
        prober = threading.Thread(target=lambda: loaded.extend(probe_health(port, stop, max_probes=100_000)))
        started, rss_peak = time.monotonic(), figures["rss_before"]
        load.start()
        prober.start()
        while load.is_alive():
            rss_peak = max(rss_peak, rss_mb(pid))
            load.join(0.1)
        stop.set()
        prober.join()
        counts, bob = results.get(timeout=60)
        figures.update(loaded=loaded, bob=bob, counts=counts, load_seconds=time.monotonic() - started,
                       rss_peak=rss_peak)

        figures["after"] = probe_health(port, threading.Event(), max_probes=100)
        deadline, rss_after = time.monotonic() + args.settle_seconds, rss_mb(pid)
        while time.monotonic() < deadline:  # settled: the same to 1 MB one second apart
            time.sleep(1)
            previous, rss_after = rss_after, rss_mb(pid)
            if abs(previous - rss_after) < 1:
                break
        figures["rss_after"] = rss_after
        return figures
    finally:
        server.terminate()
        server.wait(30)


def latency_row(label: str, latencies: list[float], baseline: float | None) -> tuple:
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    failed = sum(1 for value in latencies if value == float("inf"))
    slow = sum(1 for value in latencies if SLOW_MS < value < float("inf"))
    return (label, len(latencies), failed, slow, p50, p99, max(latencies),
            f"{p50 / baseline:.1f}x" if baseline and p50 else None)


def report(name: str, figures: dict, clients: int) -> None:
    baseline = percentile(figures["idle"], 0.5)
    print_table(f"{name}: health check (new connection each), latency ms (ratio: p50 / idle p50)",
                ("phase", "probes", "failed", f"> {SLOW_MS} ms", "p50", "p99", "max", "p50 vs idle"),
                [latency_row("idle", figures["idle"], None),
                 latency_row(f"{clients} heavy clients", figures["loaded"], baseline),
                 latency_row("after", figures["after"], baseline)])
    counts, bob, seconds = figures["counts"], figures["bob"], figures["load_seconds"]
    print_table(f"{name}: heavy requests (GET {HEAVY_PATH}) during {seconds:.0f} s",
                ("client", "served", "served/s", "MB/s", "429", "errors"),
                [("ann (flood)", counts["served"], counts["served"] / seconds, counts["bytes"] / 1e6 / seconds,
                  counts["429"], counts["errors"]),
                 ("bob (one at a time)", bob.count(200), bob.count(200) / seconds, None, bob.count(429),
                  sum(1 for status in bob if status not in (200, 429)))])
    print_table(f"{name}: worker RSS (MB)", ("at start", "after 1 request", "peak", "after", "after - 1 request"),
                [(figures["rss_start"], figures["rss_before"], figures["rss_peak"], figures["rss_after"],
                  figures["rss_after"] - figures["rss_before"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks seeded into the store")
    parser.add_argument("--clients", type=int, default=200, help="concurrent heavy clients (user ann)")
    parser.add_argument("--seconds", type=float, default=20, help="how long the heavy load runs")
    parser.add_argument("--settle-seconds", type=float, default=15, help="bound on waiting for RSS to settle")
    parser.add_argument("--compare-stock", action="store_true", help="the same on gunicorn's gthread worker")
    args = parser.parse_args()
    names = list(WORKERS) if args.compare_stock else ["Flowerbed"]

    with tempfile.TemporaryDirectory(prefix="flowerbed-health-") as directory, PrivateRedis() as redis_server:
        db = f"{directory}/bench.db"
        fill_flowerbed(db, synthetic_tasks(args.tasks, 8))
        print(f"{args.tasks:,} tasks seeded; {args.clients} clients for {args.seconds:g} s", flush=True)
        results = {name: run(WORKERS[name], redis_server.url, db, directory, args) for name in names}
    for name, figures in results.items():
        report(name, figures, args.clients)


if __name__ == "__main__":
    main()

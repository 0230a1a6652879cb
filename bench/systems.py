"""The systems the benchmark drives on the same stream, each in a process of its own.

- `celery receiver`: celery's own bare `app.events.Receiver` counting what it receives (the baseline).
- `collector SQLite` / `collector PostgreSQL`: the collector service as users run it,
  `python cli.py collect --broker ... --db ... --port ...` in a subprocess (its receiving process a
  child of it), counted through its `/api/collector`; "in use" means a web tier beside it,
  `python cli.py web --db <the same store> --workers 4`, asked over HTTP for the Tasks page's grid
  callback and `/api/tasks` from a few threads while events arrive.
- `Flowerbed in-process`: the real services (collector with its receiving process and its relaying and writing
  threads, SQLite store, inspector) in the benchmark's process; "in use" means the real Dash app answering the Tasks page's grid callback and the
  JSON API through Flask's test client, from a thread, while events arrive.
- `Flower`: flower 2.2's `flower.events.Events` thread handing events to its tornado loop, which
  applies them to its `EventsState`; "in use" means its Tasks page (`TasksDataTable`) and
  `/api/tasks` work running on that same loop, where its web handlers run.

Each consumer reports `processed()` (events stored / applied / received), `received()` where it
counts what it received apart from what it processed, `memory()` (RSS in bytes: `rss` in all, the
receiving process and the web tier apart where there are such) and `figures()`; `close()` ends what
it started.
"""
from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from stream import SEARCHED_CUSTOMER, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
RECEIVING_MODULE = "monitor.ingest.receiving"

# The Tasks page queries, first page of 100 rows: (label, AG Grid getRowsRequest, the page's search
# and state chip, the same query on Flower's Tasks page).
PAGE_QUERIES = (
    ("sorted by runtime", {"sortModel": [{"colId": "runtime", "sort": "desc"}]}, {"search": "", "state": "ALL"},
     {"sort_by": "runtime", "descending": True}),
    ("filtered by state", {"sortModel": []}, {"search": "", "state": "FAILURE"}, {"search": "state:FAILURE"}),
    ("text search", {"sortModel": []}, {"search": SEARCHED_CUSTOMER, "state": "ALL"}, {"search": SEARCHED_CUSTOMER}),
)
PAGE_ROWS = 100
FINAL_STATES = ("SUCCESS", "FAILURE")


def grid_request(grid: dict) -> dict:
    return {"startRow": 0, "endRow": PAGE_ROWS, "filterModel": {}, **grid}


def grid_payload(round_number: int) -> dict:
    """The Dash request the Tasks page's grid sends for its first rows (the three queries in turn)."""
    _label, grid, page_query, _flower = PAGE_QUERIES[round_number % len(PAGE_QUERIES)]
    return {
        "output": "..tasks-grid.getRowsResponse...tasks-count.children..",
        "outputs": [{"id": "tasks-grid", "property": "getRowsResponse"},
                    {"id": "tasks-count", "property": "children"}],
        "inputs": [{"id": "tasks-grid", "property": "getRowsRequest", "value": grid_request(grid)}],
        "state": [{"id": "tasks-query", "property": "data", "value": page_query}],
        "changedPropIds": ["tasks-grid.getRowsRequest"],
    }


API_PATH = f"/api/tasks?limit={PAGE_ROWS}&sort_by=-received"


def own_memory() -> dict:
    """RSS of this process and its children (a receiving process, for the in-process Flowerbed)."""
    import psutil

    process = psutil.Process()
    children = [_rss(child) for child in process.children(recursive=True)]
    return {"rss": _rss(process) + sum(children), "receiving": sum(children) if children else None}


def _rss(process) -> int:
    try:
        return process.memory_info().rss
    except Exception:  # ended meanwhile
        return 0


# -- Flowerbed ---------------------------------------------------------------------------------
def flowerbed_page(store, grid: dict, page_query: dict):
    """What the Tasks page's grid callback does for one getRowsRequest (minus Dash's transport)."""
    from callbacks.tasks import grid_query
    from components.tasks import GRID_FIELDS
    from monitor.query.tasks import fetch_tasks

    return fetch_tasks(store, grid_query(grid_request(grid), page_query), GRID_FIELDS)


class FlowerbedConsumer:
    name, key, label, ours = "Flowerbed in-process", "flowerbed", "in-process", True
    memory = staticmethod(own_memory)

    def __init__(self, redis_url: str, max_tasks: int, in_use: bool, **_options):
        from monitor.services import build_services
        from monitor.settings import Settings

        self._directory = tempfile.TemporaryDirectory(prefix="flowerbed-bench-")
        self.settings = Settings(broker=redis_url, db=f"{self._directory.name}/bench.db", max_tasks=max_tasks)
        self.services = build_services(self.settings)
        self.client = None
        if in_use:
            from app import create_app  # the whole Dash app, as a deployment runs it

            self.client = create_app(self.settings, self.services).server.test_client()

    def start(self) -> None:
        self.services.start()

    def processed(self) -> int:
        return self.services.collector.counts["stored"]

    def received(self) -> int:
        return self.services.collector.counts["received"]

    def serve(self, watch) -> None:
        watch()

    def use_once(self, round_number: int) -> list[float]:
        """One Tasks page grid request (the three queries in turn) and one API request; seconds each."""
        payload = grid_payload(round_number)
        timings = []
        for call in (lambda: self.client.post("/_dash-update-component", json=payload),
                     lambda: self.client.get(API_PATH)):
            started = time.perf_counter()
            response = call()
            timings.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"Flowerbed answered {response.status_code}: {response.get_data(as_text=True)[:200]}")
        return timings

    def start_use(self, stop: threading.Event, pause: float, max_rounds: int) -> list[float]:
        timings: list[float] = []

        def use():
            for round_number in range(max_rounds):
                if stop.wait(pause):
                    return
                timings.extend(self.use_once(round_number))

        threading.Thread(target=use, name="bench-pages-in-use", daemon=True).start()
        return timings

    def figures(self) -> dict:
        store, counts = self.services.store, self.services.collector.counts
        figures = {
            "received": counts["received"], "processed": counts["stored"], "dropped": counts["dropped"],
            "disconnects": counts["disconnects"], "tasks": store.count_tasks(),
            "finished": store.count_tasks("state IN (?, ?)", FINAL_STATES),
        }
        self.services.stop()
        self._directory.cleanup()
        return figures


# -- Flower ------------------------------------------------------------------------------------
def flower_page(events, flower_query: dict):
    """What Flower's Tasks page (TasksDataTable.get) does for one request, minus tornado's write."""
    from flower.utils.tasks import as_dict, search_tasks

    page = search_tasks(events, offset=0, limit=PAGE_ROWS, **flower_query)
    task_map = getattr(events.state.tasks, "data", events.state.tasks)
    rows = []
    for task_id in page.task_ids:
        task = task_map.get(task_id)
        if task is not None:
            row = as_dict(task)
            if row.get("worker"):
                row["worker"] = row["worker"].hostname
            rows.append(row)
    return rows, page.filtered_count


def flower_api_tasks(events) -> str:
    """What Flower's GET /api/tasks?limit=100&sort_by=-received does, up to the JSON it writes."""
    from flower.utils.tasks import as_dict, iter_tasks

    result = {}
    for task_id, task in iter_tasks(events, limit=PAGE_ROWS, sort_by="-received"):
        row = as_dict(task)
        worker = row.pop("worker", None)
        if worker is not None:
            row["worker"] = worker.hostname
        result[task_id] = row
    return json.dumps(result, default=str)


def flower_state(max_tasks: int):
    """A bare Flower EventsState (for filling it directly, without a broker)."""
    import flower.options  # noqa: F401  (defines the tornado options its metrics read)
    from flower.events import EventsState

    return EventsState(max_tasks_in_memory=max_tasks)


class _CountFailures(logging.Handler):
    """Counts Flower's "Failed to capture events" log lines: its only trace of a lost connection."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        self.count += 1


class FlowerConsumer:
    name, key, label, ours = "Flower", "flower", "Flower", False
    memory = staticmethod(own_memory)

    def __init__(self, redis_url: str, max_tasks: int, in_use: bool, **_options):
        import flower.options  # noqa: F401
        from celery import Celery
        from flower.events import Events
        from tornado.ioloop import IOLoop

        self.loop = IOLoop.current()
        self.app = Celery("flower-bench", broker=redis_url, set_as_current=False)
        self.events = Events(self.app, self.loop, enable_events=False, max_tasks_in_memory=max_tasks)
        self.failures = _CountFailures()
        self.failures.setLevel(logging.ERROR)
        logging.getLogger("flower.events").addHandler(self.failures)
        self.in_use = in_use

    def start(self) -> None:
        self.events.start()

    def processed(self) -> int:
        return self.events.state.event_count

    def received(self) -> None:
        return None  # Flower queues what it receives on its loop, uncounted

    def serve(self, watch) -> None:
        """Flower applies events on its tornado loop: run it here and watch from a thread."""
        def watch_then_stop():
            try:
                watch()
            finally:
                self.loop.add_callback(self.loop.stop)

        threading.Thread(target=watch_then_stop, name="bench-watch", daemon=True).start()
        self.loop.start()

    def start_use(self, stop: threading.Event, pause: float, max_rounds: int) -> list[float]:
        """The page and API requests run on Flower's loop, between the events it applies."""
        from tornado.ioloop import PeriodicCallback

        timings: list[float] = []
        rounds = iter(range(max_rounds))

        def use():
            round_number = next(rounds, None)
            if stop.is_set() or round_number is None:
                callback.stop()
                return
            flower_query = PAGE_QUERIES[round_number % len(PAGE_QUERIES)][3]
            for call in (lambda: json.dumps(flower_page(self.events, flower_query), default=str),
                         lambda: flower_api_tasks(self.events)):
                started = time.perf_counter()
                call()
                timings.append(time.perf_counter() - started)

        callback = PeriodicCallback(use, pause * 1000)
        self.loop.add_callback(callback.start)
        return timings

    def figures(self) -> dict:
        state = self.events.state
        return {
            "received": None, "processed": state.event_count, "dropped": None,
            "disconnects": self.failures.count, "tasks": len(state.tasks),
            "finished": sum(1 for task in state.tasks.values() if task.state in FINAL_STATES),
        }


# -- the collector service, as users run it ----------------------------------------------------
def postgres_problem(server_url: str) -> str | None:
    """Why the PostgreSQL server cannot be used for a private database, or None when it can."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(_database_url(server_url, "postgres"), connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any reason is a reason to skip
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return None


def _database_url(server_url: str, database: str) -> str:
    """The server's URL naming `database` (whatever database, if any, it named)."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@contextlib.contextmanager
def private_postgres(server_url: str):
    """A database of our own on the server (created, yielded as a URL, dropped even on failure)."""
    import psycopg

    name = f"flowerbed_bench_{secrets.token_hex(4)}"
    admin = _database_url(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def private_store(backend: str | None, pg_server: str = DEFAULT_PG_SERVER):
    """A fresh store's --db value: a SQLite file in a temporary directory, or a private PostgreSQL
    database; removed at the end. None for consumers without a store of their own choosing."""
    if backend is None:
        yield None
    elif backend == "postgresql":
        with private_postgres(pg_server) as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="flowerbed-bench-") as directory:
            yield f"{directory}/bench.db"


_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark's process ends, however it ends."""
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback \(most recent call last\)")
# Warnings the benchmark itself causes, not counted as problems: the stream's timestamps are set when
# it is built, so celery's State sees "drift" growing with every phase; and the services run on
# loopback without basic auth on purpose.
_EXPECTED = re.compile(r"Substantial drift from celery@bench-worker|basic auth is OFF")


class ServiceProcess:
    """`python cli.py ARGS` run from the repository as users run it; its output in `log_path`; in a
    session of its own, so that stop() ends its children too (a collector's receiving process,
    gunicorn's workers)."""

    def __init__(self, args: list[str], log_path: str):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "cli.py", *args], cwd=REPO_ROOT, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.process.poll() is None

    def processes(self) -> tuple[object, list]:
        import psutil

        try:
            main = psutil.Process(self.process.pid)
            return main, main.children(recursive=True)
        except psutil.NoSuchProcess:
            return None, []

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a collector writes what it holds, gunicorn stops its workers), then SIGKILL to
        whatever of its session is left."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait(5)
        self._log.close()

    def problems(self) -> tuple[int, list[str]]:
        """Warnings, errors and tracebacks in its log: how many, and the first few distinct ones."""
        count, distinct = 0, []
        try:
            with open(self.log_path, errors="replace") as log:
                for line in log:
                    if _PROBLEM.search(line) and not _EXPECTED.search(line):
                        count += 1
                        text = re.sub(r"^\S+ \S+ ", "", line.strip())[:300]  # without the timestamp
                        if text not in distinct and len(distinct) < 5:
                            distinct.append(text)
        except OSError:
            pass
        return count, distinct

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""


class HttpClient:
    """One keep-alive connection to a loopback port, as a browser tab holds one."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.port, self.timeout = port, timeout
        self._connection = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        for attempt in (1, 2):  # the server may have closed an idle keep-alive connection
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
                if response.will_close:
                    self.close()
                return response.status, payload
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def get_json(self, path: str):
        status, payload = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {payload[:200]!r}")
        return json.loads(payload)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def wait_until(check, seconds: float, service: ServiceProcess, what: str) -> None:
    """Until check() is true (exceptions count as not yet), at most `seconds`; fails with the log's
    tail when the service ended or the time is up."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if not service.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} ({'ended' if not service.alive() else f'not within {seconds:g} s'}); "
                               f"its log ends with:\n{service.tail()}")
        time.sleep(0.1)


class WebTier:
    """`python cli.py web --db DB --workers N`: pages and API over HTTP, and what they cost in RSS."""

    def __init__(self, db: str, workers: int, log_path: str):
        self.port = free_port()
        self.workers = workers
        self.service = ServiceProcess(["web", "--db", db, "--workers", str(workers), "--port", str(self.port)],
                                      log_path)
        probe = HttpClient(self.port, timeout=5)
        try:
            wait_until(lambda: probe.request("GET", "/healthcheck")[0] == 200
                       and len(self.service.processes()[1]) >= workers, 120, self.service,
                       "the web tier did not answer")
        finally:
            probe.close()

    def use_once(self, client: HttpClient, round_number: int) -> list[tuple[str, float, int, bytes]]:
        """The Tasks page's grid callback and /api/tasks: (kind, seconds, status, body) each."""
        results = []
        for kind, method, path, body in (("page", "POST", "/_dash-update-component", grid_payload(round_number)),
                                         ("api", "GET", API_PATH, None)):
            started = time.perf_counter()
            try:
                status, payload = client.request(method, path, body)
            except Exception as exc:  # noqa: BLE001 - an error is a figure, not the end of the run
                status, payload = 0, f"{type(exc).__name__}: {exc}".encode()
            results.append((kind, time.perf_counter() - started, status, payload))
        return results

    def memory(self) -> dict:
        """RSS of the master and the workers, in all and of the largest worker."""
        master, workers = self.service.processes()
        sizes = [_rss(worker) for worker in workers]
        return {"web": (_rss(master) if master else 0) + sum(sizes), "web_worker": max(sizes, default=0),
                "web_master": _rss(master) if master else 0}

    def stop(self) -> None:
        self.service.stop()


class _CollectorService:
    """`python cli.py collect` on a private store, as users run it, counted through its /api/collector;
    in use: a web tier on the same store, polled over HTTP from `use_threads` threads."""
    backend = "sqlite"
    ours = True
    STATS_SECONDS = 0.25  # /api/collector is asked at most this often (it shares the collector's GIL, and logs each request)

    def __init__(self, redis_url: str, max_tasks: int, in_use: bool, db: str | None = None, use_threads: int = 3,
                 web_workers: int = 4, logs: str | None = None, **_options):
        if db is None:
            raise ValueError(f"{self.name} needs a store (db=...)")
        self.redis_url, self.max_tasks, self.in_use, self.db = redis_url, max_tasks, in_use, db
        self.use_threads, self.web_workers = use_threads, web_workers
        self._directory = tempfile.TemporaryDirectory(prefix="flowerbed-bench-logs-")
        self.logs = logs or self._directory.name
        os.makedirs(self.logs, exist_ok=True)
        self.port = free_port()
        self.collector: ServiceProcess | None = None
        self.web: WebTier | None = None
        self.status = HttpClient(self.port, timeout=10)
        self._stats, self._stats_at = {}, 0.0
        self.backlog_peak = 0  # the most events seen waiting in the collector (received, not yet stored)
        self.uses: list[tuple[str, float]] = []  # (kind, seconds) of every answered page/API request
        self.errors: list[str] = []
        self.warmup: list[float] = []
        self._stopping = threading.Event()

    def _log_path(self, role: str) -> str:
        tag = f"{self.backend}-{os.getpid()}"
        return f"{self.logs}/{role}-{tag}.log"

    def start(self) -> None:
        self.collector = ServiceProcess(
            ["collect", "--broker", self.redis_url, "--db", self.db, "--port", str(self.port),
             "--max-tasks", str(self.max_tasks)], self._log_path("collector"))
        wait_until(lambda: (stats := self.stats(fresh=True)).get("connected") and stats.get("role") == "active",
                   90, self.collector, f"{self.name} did not connect and take its lease")
        if self.in_use:
            self.web = WebTier(self.db, self.web_workers, self._log_path("web"))
            self._warm_up()

    def _warm_up(self) -> None:
        """Each web worker's first requests load what Dash loads once: not what a running tier
        answers in, so they go before the measure (their latencies are kept apart)."""
        def warm(thread_number):
            client = HttpClient(self.web.port)
            for round_number in range(2 * self.web_workers):
                for _kind, seconds, _status, _body in self.web.use_once(client, thread_number + round_number):
                    self.warmup.append(seconds)
            client.close()
        threads = [threading.Thread(target=warm, args=(n,), daemon=True) for n in range(self.use_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    def stats(self, fresh: bool = False) -> dict:
        now = time.monotonic()
        if fresh or now - self._stats_at >= self.STATS_SECONDS:
            self._stats_at = now
            try:
                self._stats = self.status.get_json("/api/collector")
            except Exception:  # noqa: BLE001 - busy or gone: the last counters stand
                if fresh:
                    raise
            self.backlog_peak = max(self.backlog_peak, self._stats.get("backlog") or 0)
        return self._stats

    def processed(self) -> int:
        return self.stats().get("stored", 0)

    def received(self) -> int:
        return self.stats().get("received", 0)

    def serve(self, watch) -> None:
        watch()

    def start_use(self, stop: threading.Event, pause: float, max_rounds: int) -> list[float]:
        """`use_threads` threads, each a page request and an API request every `pause` seconds."""
        timings: list[float] = []
        lock = threading.Lock()

        def use(thread_number):
            client = HttpClient(self.web.port)
            try:
                for round_number in range(max_rounds):
                    if stop.wait(pause):
                        return
                    for kind, seconds, status, body in self.web.use_once(client, round_number + thread_number):
                        if stop.is_set() or self._stopping.is_set():
                            return
                        with lock:
                            if status == 200:
                                timings.append(seconds)
                                self.uses.append((kind, seconds))
                            else:
                                self.errors.append(f"{kind} {status}: {body[:200].decode(errors='replace')}")
            finally:
                client.close()

        for thread_number in range(self.use_threads):
            threading.Thread(target=use, args=(thread_number,), name=f"bench-web-use-{thread_number}",
                             daemon=True).start()
        return timings

    def memory(self) -> dict:
        """RSS of the collector's processes (the receiving process apart too) and of the web tier."""
        main, children = self.collector.processes() if self.collector else (None, [])
        receiving = 0
        for child in children:
            try:
                if RECEIVING_MODULE in " ".join(child.cmdline()):
                    receiving += _rss(child)
            except Exception:  # noqa: BLE001 - ended meanwhile
                pass
        memory = {"rss": (_rss(main) if main else 0) + sum(_rss(child) for child in children),
                  "receiving": receiving or None}
        if self.web is not None:
            memory.update(self.web.memory())
        return memory

    def figures(self) -> dict:
        from monitor.store import open_store

        stats = self.stats(fresh=True)
        store = open_store(self.db, max_tasks=self.max_tasks)
        try:
            tasks, finished = store.count_tasks(), store.count_tasks("state IN (?, ?)", FINAL_STATES)
        finally:
            store.close()
        self._stopping.set()
        figures = {
            "received": stats.get("received"), "processed": stats.get("stored"), "dropped": stats.get("dropped"),
            "disconnects": stats.get("disconnects"), "tasks": tasks, "finished": finished,
            "malformed": stats.get("malformed"), "rejected": stats.get("rejected"), "backlog_peak": self.backlog_peak,
        }
        if self.in_use:
            pages = [seconds for kind, seconds in self.uses if kind == "page"]
            api = [seconds for kind, seconds in self.uses if kind == "api"]
            figures.update(page_p50_ms=_p50_ms(pages), api_p50_ms=_p50_ms(api),
                           page_max_ms=max(pages, default=0) * 1000 or None, api_max_ms=max(api, default=0) * 1000 or None,
                           use_errors=len(self.errors), first_errors=self.errors[:3],
                           warmup_max_ms=max(self.warmup, default=0) * 1000 or None)
        self._stop_services()  # before reading their logs: a clean stop logs too
        for role, service in (("collector", self.collector), ("web", self.web and self.web.service)):
            if service is not None:
                count, first = service.problems()
                figures[f"{role}_log_problems"] = count
                if first:
                    figures[f"{role}_log_first"] = first
        self.close()
        return figures

    def _stop_services(self) -> None:
        """Stop the web tier and the collector (each by its own process id and session)."""
        self._stopping.set()
        self.status.close()
        for service in (self.web and self.web.service, self.collector):
            if service is not None and service.process.returncode is None:
                service.stop()

    def close(self) -> None:
        """Stop what was started and remove the logs' temporary directory; safe to call again."""
        try:
            self._stop_services()
        finally:
            self._directory.cleanup()


def _p50_ms(seconds: list[float]) -> float | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return ordered[len(ordered) // 2] * 1000


class SqliteCollectorService(_CollectorService):
    name, key, label = "collector SQLite", "collector-sqlite", "SQLite"
    backend = "sqlite"


class PostgresCollectorService(_CollectorService):
    name, key, label = "collector PostgreSQL", "collector-postgresql", "PostgreSQL"
    backend = "postgresql"


# -- the baseline ------------------------------------------------------------------------------
class ReceiverConsumer:
    """celery's own event receiver doing nothing but count: the most any consumer could keep up with."""
    name, key, label, ours = "celery receiver", "receiver", "receiver", False
    memory = staticmethod(own_memory)

    def __init__(self, redis_url: str, max_tasks: int, in_use: bool, **_options):
        from celery import Celery

        self.app = Celery("receiver-bench", broker=redis_url, set_as_current=False)
        self.count = 0
        self.disconnects = 0
        self._stop = threading.Event()

    def _count(self, event) -> None:
        self.count += 1

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    receiver = self.app.events.Receiver(connection, handlers={"*": self._count})
                    receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception:  # Redis dropped us (output buffer limit): reconnect, as a monitor would
                self.disconnects += 1
                self._stop.wait(0.5)

    def start(self) -> None:
        threading.Thread(target=self._receive, name="bench-receiver", daemon=True).start()

    def processed(self) -> int:
        return self.count

    def received(self) -> int:
        return self.count

    def serve(self, watch) -> None:
        watch()

    def figures(self) -> dict:
        self._stop.set()
        return {"received": self.count, "processed": self.count, "dropped": None,
                "disconnects": self.disconnects, "tasks": None, "finished": None}


CONSUMERS = {consumer.name: consumer for consumer in (
    ReceiverConsumer, SqliteCollectorService, PostgresCollectorService, FlowerConsumer, FlowerbedConsumer)}
# What `ingest.py` runs unless told otherwise. The in-process Flowerbed (`--systems flowerbed`) is
# left out: users run the collector as a service, and the table stays readable.
DEFAULT_SYSTEMS = ("celery receiver", "collector SQLite", "collector PostgreSQL", "Flower")


def consumer_class(name: str):
    """A consumer by its name or key (`receiver`, `collector-sqlite`, `flower`...), any case."""
    for consumer in CONSUMERS.values():
        if name.strip().lower() in (consumer.name.lower(), consumer.key):
            return consumer
    raise SystemExit(f"unknown system {name!r}: use one of " + ", ".join(
        f"{consumer.key} ({consumer.name})" for consumer in CONSUMERS.values()))

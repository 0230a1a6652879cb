"""The three systems the benchmark drives on the same stream, each in a process of its own.

- `celery receiver`: celery's own bare `app.events.Receiver` counting what it receives (the baseline).
- `Flowerbed`: the real services (collector with its receiving process and its relaying and writing
  threads, SQLite store, inspector); "in use" means the real Dash app answering the Tasks page's grid callback and the
  JSON API through Flask's test client, from a thread, while events arrive.
- `Flower`: flower 2.2's `flower.events.Events` thread handing events to its tornado loop, which
  applies them to its `EventsState`; "in use" means its Tasks page (`TasksDataTable`) and
  `/api/tasks` work running on that same loop, where its web handlers run.

Each consumer reports `processed()` (events stored / applied / received), `received()` where it
counts what it received apart from what it processed, and `figures()`.
"""
from __future__ import annotations

import json
import logging
import tempfile
import threading
import time

from stream import SEARCHED_CUSTOMER

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


# -- Flowerbed ---------------------------------------------------------------------------------
def flowerbed_page(store, grid: dict, page_query: dict):
    """What the Tasks page's grid callback does for one getRowsRequest (minus Dash's transport)."""
    from callbacks.tasks import grid_query
    from components.tasks import GRID_FIELDS
    from monitor.query.tasks import fetch_tasks

    return fetch_tasks(store, grid_query(grid_request(grid), page_query), GRID_FIELDS)


class FlowerbedConsumer:
    name = "Flowerbed"

    def __init__(self, redis_url: str, max_tasks: int, in_use: bool):
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
        _label, grid, page_query, _flower = PAGE_QUERIES[round_number % len(PAGE_QUERIES)]
        payload = {
            "output": "..tasks-grid.getRowsResponse...tasks-count.children..",
            "outputs": [{"id": "tasks-grid", "property": "getRowsResponse"},
                        {"id": "tasks-count", "property": "children"}],
            "inputs": [{"id": "tasks-grid", "property": "getRowsRequest", "value": grid_request(grid)}],
            "state": [{"id": "tasks-query", "property": "data", "value": page_query}],
            "changedPropIds": ["tasks-grid.getRowsRequest"],
        }
        timings = []
        for call in (lambda: self.client.post("/_dash-update-component", json=payload),
                     lambda: self.client.get(f"/api/tasks?limit={PAGE_ROWS}&sort_by=-received")):
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
    name = "Flower"

    def __init__(self, redis_url: str, max_tasks: int, in_use: bool):
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


# -- the baseline ------------------------------------------------------------------------------
class ReceiverConsumer:
    """celery's own event receiver doing nothing but count: the most any consumer could keep up with."""
    name = "celery receiver"

    def __init__(self, redis_url: str, max_tasks: int, in_use: bool):
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


CONSUMERS = {consumer.name: consumer for consumer in (ReceiverConsumer, FlowerbedConsumer, FlowerConsumer)}

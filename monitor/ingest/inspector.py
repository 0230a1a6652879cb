"""Periodic `inspect` of the workers, in the background; replies go to the store.

No page ever waits on a broadcast: a Refresh button only asks this thread to run early, directly
when the pages run in this process, or through the store (REQUEST_KEY) from `flowerbed web`.
"""
from __future__ import annotations

import logging
import math
import threading
import time

from monitor.ingest import queues
from monitor.ingest.incident import Incident
from monitor.store.base import Store

log = logging.getLogger(__name__)

# The meta key a web process sets (to the time of asking) to have an inspect run now.
REQUEST_KEY = "inspect_requested_at"
# The meta keys where each broker's inspector records when its last finished inspect began (by broker
# name after the prefix), whether any worker answered or none: a web process asking for a fresh
# inspect waits for it to pass the time of asking.
INSPECTED_PREFIX = "inspect_started_at:"
# How often the store is asked whether a web process wants an inspect.
REQUEST_POLL_SECONDS = 1.0
INSPECT_METHODS = ("stats", "active", "reserved", "scheduled", "registered", "active_queues", "conf", "revoked")
TASK_INFO_ITEMS = ("rate_limit", "time_limit", "soft_time_limit")


class Inspector:
    def __init__(self, celery_app, store: Store, *, broker_name: str, interval: float = 10.0, timeout: float = 1.0,
                 enable_events: bool = True, broker_api: str = ""):
        self.app = celery_app
        self.store = store
        self.broker_name = broker_name  # the broker of the workers it inspects, named on their rows
        self.interval = interval
        self.timeout = timeout
        self.enable_events = enable_events
        self.broker_api = broker_api  # RabbitMQ's management API, for queue depths
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.last_started: float | None = None  # when the last finished inspect began
        self.failure = Incident("inspector: inspect", log)
        self.queue_failure = Incident("inspector: queue depths", log)
        self.runs = 0

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run_forever, name="flowerbed-inspector", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def request_refresh(self) -> None:
        """Run an inspect now (without waiting for it)."""
        self._wake.set()

    def _run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.inspect_once()
                self.failure.recovered()
            except Exception as exc:  # broker down or a garbled reply: try again next round
                self.failure.failing(f"{type(exc).__name__}: {exc}")
            if not self._stop.is_set():
                try:
                    self.sample_queues()
                except Exception as exc:  # the store cannot be written now: next round
                    self.queue_failure.failing(f"{type(exc).__name__}: {exc}")
            self._wait_for_next_round()

    def _wait_for_next_round(self) -> None:
        """Until the interval passes, a refresh is asked for here or through the store, or stop()."""
        due = time.monotonic() + self.interval
        while not self._stop.is_set() and time.monotonic() < due:
            if self._wake.wait(min(REQUEST_POLL_SECONDS, max(0.0, due - time.monotonic()))):
                break
            try:
                asked = self.store.get_meta(REQUEST_KEY)
            except Exception:  # noqa: BLE001 - a store that cannot be read now: the interval still runs
                asked = None
            # asked after the last inspect began: its replies may predate the asking
            if asked and asked > (self.last_started or 0):
                break
        self._wake.clear()

    def inspect_once(self) -> dict[str, dict]:
        started = time.time()
        if self.enable_events:
            self.app.control.enable_events()
        known = {w["hostname"]: w for w in self.store.workers()}
        known_online = sum(1 for w in known.values() if w["online"] and w["broker"] == self.broker_name)
        # With a limit the broadcast returns as soon as every worker we know answered.
        inspect = self.app.control.inspect(timeout=self.timeout, limit=known_online or None)
        replies: dict[str, dict] = {}
        for method in INSPECT_METHODS:
            if self._stop.is_set():
                break
            # Registered tasks with their limits: "name [rate_limit=10/m time_limit=30]".
            arguments = TASK_INFO_ITEMS if method == "registered" else ()
            for hostname, reply in (getattr(inspect, method)(*arguments) or {}).items():
                replies.setdefault(hostname, {})[method] = reply
        now = time.time()
        if replies:
            self.store.save_inspection(replies, now, self.broker_name, {
                hostname: start for hostname, reply in replies.items()
                if (start := before_start(reply, started, known.get(hostname, {}).get("clock_offset"))) is not None})
        if not self._stop.is_set():  # a round cut short by stop() is no fresh inspect
            self.store.set_meta(INSPECTED_PREFIX + self.broker_name, started)
        self.last_started = started
        self.runs += 1
        return replies

    def sample_queues(self, now: float | None = None) -> None:
        """Read the depth of every watched queue and store it (or why it could not be read): the
        queues online workers consume, the default queue, those clients sent tasks to that still
        wait, and those watched before within the store's sample window (a queue whose workers all
        stopped stays watched, so its growing backlog shows)."""
        now = time.time() if now is None else now
        default = self.app.conf.task_default_queue
        consumers: dict[str, set[str]] = {}
        for worker in self.store.workers(now):
            if worker["online"] and worker["broker"] == self.broker_name:
                for queue in worker["inspect"].get("active_queues") or ():
                    consumers.setdefault(queue.get("name"), set()).add(worker["hostname"])
        names = {default, *consumers, *self.store.queue_names(self.broker_name, now - self.store.sample_seconds),
                 *self.store.pending_routing_keys(self.broker_name)}
        names.discard(None)
        try:
            depths = queues.read_depths(self.app, names, self.broker_api)
        except Exception as exc:  # noqa: BLE001 - broker or management API away: said on the Broker page
            error = f"{type(exc).__name__}: {exc}"
            self.queue_failure.failing(error)
            self.store.save_queue_depths(self.broker_name, now, (), error)
            return
        self.queue_failure.recovered()
        rows = []
        for depth in depths:
            workers = consumers.get(depth.name, set())
            count = depth.consumers if depth.consumers is not None or depth.messages is None else len(workers)
            watched = depth.name == default or bool(workers) or bool(count) or bool(depth.messages)
            rows.append((depth.name, depth.messages, count, workers, watched))
        self.store.save_queue_depths(self.broker_name, now, rows)


# The uptime says when a worker started in this host's clock; the tasks' times are in the worker's. Of a
# worker whose clock offset is not known yet, the start is put this much earlier, so that a clock behind
# by up to as much never has a task it ran counted as lost (one begun in the margin counts as stuck).
CLOCK_MARGIN_SECONDS = 5.0


def before_start(reply: dict, asked_at: float, clock_offset: float | None = None) -> float | None:
    """A moment before the worker's start in its own clock, from the uptime its stats reply gives: the
    reply came after `asked_at`, the uptime is rounded to a whole second, and this host's clock is ahead
    of the worker's by `clock_offset` (the worker row's; CLOCK_MARGIN_SECONDS when not known)."""
    uptime = (reply.get("stats") if isinstance(reply.get("stats"), dict) else {}).get("uptime")
    if type(uptime) not in (int, float) or not 0 <= uptime < math.inf:
        return None
    known = isinstance(clock_offset, (int, float)) and math.isfinite(clock_offset)
    offset = clock_offset if known else CLOCK_MARGIN_SECONDS
    return asked_at - uptime - 1 - offset

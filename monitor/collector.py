"""The collector: receives celery events, merges them, writes them to the store in batches.

Two threads. The receiving thread only receives and hands events over, so that it drains the broker
as fast as events arrive (on Redis a subscriber that falls behind is disconnected and its backlog
lost). The writing thread merges with celery's own `State` rules, which already handle out-of-order
and duplicate events, and writes what changed in one transaction every `batch_seconds`.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time

from celery.events.state import State

from .store import TASK_FIELDS, WORKER_COUNTERS, Store

log = logging.getLogger(__name__)

_COUNTER_INDEX = {f"task-{name}": i for i, name in enumerate(WORKER_COUNTERS)}
_SCALARS = (str, int, float, type(None))


class Collector:
    def __init__(self, celery_app, store: Store, *, batch_seconds: float = 0.25, batch_events: int = 20_000,
                 max_backlog: int = 1_000_000, tasks_in_memory: int = 20_000,
                 retention_seconds: float = 5.0, max_backoff: float = 10.0):
        self.app = celery_app
        self.store = store
        self.batch_seconds = batch_seconds
        self.batch_events = batch_events
        self.max_backlog = max_backlog
        self.tasks_in_memory = tasks_in_memory
        self.retention_seconds = retention_seconds
        self.max_backoff = max_backoff
        self._inbox: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiver = None
        self._start_lock = threading.Lock()
        self.connected = False
        self.counts = collections.Counter()  # received, merged, stored, dropped, malformed, disconnects
        self.last_error: str | None = None
        self.lag_seconds = 0.0
        self._pending = _Pending()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._start_lock:
            if self._threads:
                return
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._receive_forever, name="flowerbed-receiver", daemon=True),
                threading.Thread(target=self._write_forever, name="flowerbed-writer", daemon=True),
            ]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def stats(self) -> dict:
        return {
            **{key: self.counts[key] for key in ("received", "merged", "stored", "dropped", "malformed", "disconnects")},
            "backlog": len(self._inbox),
            "lag_seconds": round(self.lag_seconds, 3),
            "connected": self.connected,
            "last_error": self.last_error,
        }

    # -- receiving thread --------------------------------------------------------------------
    def _receive_forever(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with self.app.connection_for_read() as connection:
                    self._receiver = self.app.events.Receiver(connection, handlers={"*": self._hand_over_function()})
                    if self._stop.is_set():  # stop() ran before the receiver existed
                        return
                    self.connected = True
                    self.last_error = None
                    log.info("collector connected to %s", connection.as_uri())
                    self._receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:  # the broker went away: count it, wait, reconnect
                self.counts["disconnects"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("collector lost the broker (%s); reconnecting in %.1fs", self.last_error, backoff)
            finally:
                self.connected = False
            if time.monotonic() - started > 30:
                backoff = 0.5
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _hand_over_function(self):
        # Runs once per event on the receiving thread: keep it to a length check and an append.
        inbox, counts, limit = self._inbox, self.counts, self.max_backlog
        append, size = inbox.append, inbox.__len__

        def hand_over(event):
            counts["received"] += 1
            if size() < limit:
                append(event)
            else:
                counts["dropped"] += 1
        return hand_over

    # -- writing thread ----------------------------------------------------------------------
    def _write_forever(self) -> None:
        state = State(max_tasks_in_memory=self.tasks_in_memory, max_workers_in_memory=10_000)
        next_retention = time.monotonic() + self.retention_seconds
        while not self._stop.is_set():
            try:
                merged = self.merge_batch(state)
                if not merged:
                    self._stop.wait(self.batch_seconds / 5)
                if time.monotonic() >= next_retention:
                    self.store.enforce_retention()
                    self.store.set_meta("collector", self.stats())
                    next_retention = time.monotonic() + self.retention_seconds
            except Exception:  # a store error must not kill the collector; the pending batch is retried
                log.exception("collector failed to write a batch")
                self._stop.wait(1.0)

    def merge_batch(self, state: State) -> int:
        """Merge what the inbox holds (up to one batch) into `state` and write it. Returns events taken.

        This is the per-event hot path: locals instead of attribute lookups, no per-event writes.
        What a failed write leaves in `self._pending` goes out with the next batch.
        """
        inbox, popleft = self._inbox, self._inbox.popleft
        pending = self._pending
        dirty_tasks, dirty_workers = pending.tasks, pending.workers
        samples, increments = pending.samples, pending.increments
        counter_index = _COUNTER_INDEX.get
        apply_event = state._event  # State.event without a lock that nobody else takes
        taken = malformed = 0
        monotonic, sleep = time.monotonic, time.sleep
        deadline = monotonic() + self.batch_seconds
        while taken < self.batch_events:
            if not inbox:
                if taken == 0 or monotonic() >= deadline:
                    break
                sleep(0.005)
                continue
            event = popleft()
            taken += 1
            try:
                (obj, _created), subject = apply_event(event)
                if event["type"].startswith("worker-"):
                    offline_at = event.get("local_received") if subject == "offline" else None
                    dirty_workers[obj.hostname] = (obj, offline_at)
                    if subject == "heartbeat":
                        load = obj.loadavg or (None, None, None)
                        samples.append((obj.hostname, event.get("local_received"), obj.active, *load[:3]))
                else:
                    dirty_tasks[obj.uuid] = obj
                    worker = obj.worker
                    if worker is not None:
                        dirty_workers.setdefault(worker.hostname, (worker, None))
                        index = counter_index(event["type"])
                        if index is not None:
                            increments[worker.hostname][index] += 1
                if pending.oldest is None:
                    pending.oldest = event.get("local_received")
                pending.events += 1
            except Exception:  # missing fields, unknown type, garbage: count it and go on
                malformed += 1
        if malformed:
            self.counts["malformed"] += malformed
        if pending.events:
            self._flush(pending)
        return taken

    def _flush(self, pending: "_Pending") -> None:
        self.store.write_batch(
            tasks=[task_row(task) for task in pending.tasks.values()],
            workers=[worker_row(worker, offline_at) for worker, offline_at in pending.workers.values()],
            counters=[(host, *values) for host, values in pending.increments.items()],
            samples=pending.samples,
        )
        self.counts["merged"] += pending.events
        self.counts["stored"] += pending.events
        if pending.oldest:
            self.lag_seconds = max(0.0, time.time() - pending.oldest)
        self._pending = _Pending()


class _Pending:
    """What merged events changed and the store has not taken yet."""

    def __init__(self):
        self.tasks: dict = {}
        self.workers: dict = {}
        self.samples: list = []
        self.increments = collections.defaultdict(lambda: [0] * len(WORKER_COUNTERS))
        self.events = 0
        self.oldest: float | None = None


def _scalar(value):
    return value if isinstance(value, _SCALARS) else str(value)


def task_row(task) -> tuple:
    values = []
    for field in TASK_FIELDS:
        value = getattr(task, field, None)
        if field == "worker":
            value = value.hostname if value is not None else None
        elif field == "runtime" and value is None and task.failed and task.started:
            # task-failed events carry no runtime; both stamps come from the same worker clock.
            value = max(0.0, task.failed - task.started)
        values.append(_scalar(value))
    return tuple(values)


def worker_row(worker, offline_at) -> tuple:
    return (
        worker.hostname, worker.pid, worker.freq,
        worker.heartbeats[-1] if worker.heartbeats else None,
        offline_at,
        worker.active, worker.processed,
        json.dumps(list(worker.loadavg)) if worker.loadavg else None,
        worker.sw_ident, worker.sw_ver, worker.sw_sys,
    )

"""The collector: receives celery events, merges them, writes them to the store in batches.

Two threads. The receiving thread only receives and hands events over, so that it drains the broker
as fast as events arrive (on Redis a subscriber that falls behind is disconnected and its backlog
lost); on a broker outside this process it relays batches from a receiving process (receiving.py),
which decodes events on a core of its own. The writing thread merges with celery's own `State`
rules, which already handle out-of-order and duplicate events, and writes what changed in one
transaction every `batch_seconds`.
"""
from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import sqlite3
import sys
import threading
import time

from celery.events.receiver import EventReceiver
from celery.events.state import State

from . import receiving
from .store import NUMERIC_FIELDS, TASK_FIELDS, WORKER_COUNTERS, Store

log = logging.getLogger(__name__)

_COUNTER_INDEX = {f"task-{name}": i for i, name in enumerate(WORKER_COUNTERS)}
_NUMERIC_FIELDS = frozenset(NUMERIC_FIELDS)
_SQLITE_INT = (-2 ** 63, 2 ** 63 - 1)
# What binding a value SQLite cannot take raises (a huge int, a lone surrogate, a list): data
# errors, unlike a locked database, which is worth retrying.
_UNSTORABLE = (OverflowError, ValueError, TypeError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


class Collector:
    # tasks_in_memory: how many tasks celery's State keeps for merging. A task's events arrive within
    # its runtime, and a late event for a task already let go is merged by the store's upsert, so a
    # short horizon is enough; each task held costs ~4 KB (20k held: ~90 MB of RSS in bench/).
    def __init__(self, celery_app, store: Store, *, batch_seconds: float = 0.25, batch_events: int = 20_000,
                 max_backlog: int = 1_000_000, tasks_in_memory: int = 5_000,
                 retention_seconds: float = 5.0, max_backoff: float = 10.0,
                 receive_in_process: bool | None = None):
        self.app = celery_app
        self.store = store
        self.batch_seconds = batch_seconds
        self.batch_events = batch_events
        self.max_backlog = max_backlog
        self.tasks_in_memory = tasks_in_memory
        self.retention_seconds = retention_seconds
        self.max_backoff = max_backoff
        # None: in a process of its own (see receiving.py), unless the broker lives in this process.
        self.receive_in_process = receive_in_process
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
            **{key: self.counts[key] for key in ("received", "merged", "stored", "dropped", "disconnects")},
            # Counted apart because two threads count them: the receiver (unreadable) and the writer.
            "malformed": self.counts["malformed"] + self.counts["unreadable"],
            "backlog": len(self._inbox),
            "lag_seconds": round(self.lag_seconds, 3),
            "connected": self.connected,
            "last_error": self.last_error,
        }

    # -- receiving thread --------------------------------------------------------------------
    def _receive_forever(self) -> None:
        if self.receive_in_process is None:
            with self.app.connection_for_read() as connection:
                in_memory = connection.transport.driver_type == "memory"
            # A daemonic process (multiprocessing's) may not start one of its own.
            self.receive_in_process = not in_memory and not multiprocessing.current_process().daemon
        if self.receive_in_process:
            self._relay_from_process()
            return
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with self.app.connection_for_read() as connection:
                    self._receiver = _TolerantReceiver(connection, handlers={"*": self._hand_over_function()},
                                                       app=self.app, counts=self.counts)
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

    def _relay_from_process(self) -> None:
        """Run the receiving process (restarted if it dies) and move its batches into the inbox."""
        context = multiprocessing.get_context("spawn")  # no fork of a process running threads
        while not self._stop.is_set():
            ours, theirs = context.Pipe(duplex=False)
            receiving.widen_pipe(theirs)
            process = context.Process(target=receiving.receive_in_child, name="flowerbed-receiver", daemon=True,
                                      args=(receiving.broker_conf(self.app), theirs, self.max_backoff))
            process.start()
            theirs.close()
            try:
                self._relay(ours)
            finally:
                self.connected = False
                process.terminate()
                process.join(5)
                ours.close()
            if not self._stop.is_set():
                log.warning("the receiving process ended (exit code %s); restarting it", process.exitcode)
                self._stop.wait(1.0)

    def _relay(self, pipe) -> None:
        inbox, counts, limit = self._inbox, self.counts, self.max_backlog
        while not self._stop.is_set():
            if not pipe.poll(0.25):
                continue
            try:
                message = pipe.recv()
            except EOFError:
                return
            if message[0] == "events":
                _kind, events, unreadable = message
                counts["received"] += len(events)
                counts["unreadable"] += unreadable
                room = max(0, limit - len(inbox))
                if room < len(events):
                    counts["dropped"] += len(events) - room
                    events = events[:room]
                inbox.extend(events)
            elif message[0] == "connected":
                self.connected, self.last_error = True, None
                log.info("collector connected to %s", message[1])
            else:
                self.connected, self.last_error = False, message[1]
                counts["disconnects"] += 1
                log.warning("collector lost the broker (%s); reconnecting", self.last_error)

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
        _yield_cpu_to_receiving()
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
                        samples.append((obj.hostname, event.get("local_received"), _number(obj.active),
                                        *_loadavg(obj.loadavg)))
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
        batch = {
            "tasks": [task_row(task) for task in pending.tasks.values()],
            "workers": [worker_row(worker, offline_at) for worker, offline_at in pending.workers.values()],
            "counters": [(host, *values) for host, values in pending.increments.items()],
            "samples": pending.samples,
        }
        try:
            self.store.write_batch(**batch)
        except _UNSTORABLE as exc:
            # Garbage from the event bus that SQLite refuses: retrying the batch would fail forever
            # and block every later event, so write row by row and drop the rows that fail.
            log.warning("a batch held values the store cannot take (%s); dropping those rows", exc)
            self.counts["malformed"] += self._write_storable_rows(batch)
        self.counts["merged"] += pending.events
        self.counts["stored"] += pending.events
        if pending.oldest:
            self.lag_seconds = max(0.0, time.time() - pending.oldest)
        self._pending = _Pending()

    def _write_storable_rows(self, batch: dict) -> int:
        dropped = 0
        for kind, rows in batch.items():
            for row in rows:
                try:
                    self.store.write_batch(**{kind: [row]})
                except _UNSTORABLE:
                    dropped += 1
        return dropped


# Writing may lag (the inbox holds what waits), receiving may not: on a busy machine the scheduler
# should run the receiving process and the web threads first. Linux alone renices a single thread.
WRITER_NICENESS = 10


def _yield_cpu_to_receiving() -> None:
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        except OSError:  # not permitted here: run at the process's priority
            pass


class _TolerantReceiver(EventReceiver):
    """celery's receiver, except that an event it cannot read (not a dict, a timestamp that is not
    a number…) is counted and skipped: in celery's own the error ends the capture, which would
    reconnect and lose the events that arrive meanwhile."""

    def __init__(self, *args, counts: collections.Counter, **kwargs):
        super().__init__(*args, **kwargs)
        self._counts = counts

    def _receive(self, body, message, list=list, isinstance=isinstance):
        process, from_message = self.process, self.event_from_message
        for event in body if isinstance(body, list) else (body,):
            try:
                type_, event = from_message(event)
            except Exception:  # garbage from the bus; what is merely incomplete fails in the writer
                self._counts["unreadable"] += 1
                continue
            process(type_, event)

    def on_decode_error(self, message, exc):
        # A body kombu cannot decode (not JSON, a content type not accepted): kombu's handler only
        # logs it; count it with the events that cannot be read. (A payload published on Redis's
        # channel without kombu's envelope fails in kombu's transport before this: a reconnect.)
        self._counts["unreadable"] += 1
        log.debug("skipped an undecodable message on the event bus: %r", exc)


class _Pending:
    """What merged events changed and the store has not taken yet."""

    def __init__(self):
        self.tasks: dict = {}
        self.workers: dict = {}
        self.samples: list = []
        self.increments = collections.defaultdict(lambda: [0] * len(WORKER_COUNTERS))
        self.events = 0
        self.oldest: float | None = None


# Events are JSON from any producer: numbers are kept only when they are numbers SQLite can
# hold, so that what the pages compute with (times, runtimes, heartbeat periods) stays numeric.
def _number(value):
    kind = type(value)
    if kind is float or kind is int and _SQLITE_INT[0] <= value <= _SQLITE_INT[1]:
        return value
    return None


def _text(value):
    return value if value is None or type(value) is str else str(value)


def _loadavg(value) -> tuple:
    """(load1, load5, load15) as numbers or Nones."""
    if not isinstance(value, (list, tuple)):
        return (None, None, None)
    return tuple(_number(v) for v in (*value[:3], None, None, None)[:3])


def task_row(task) -> tuple:
    values = []
    for field in TASK_FIELDS:
        value = getattr(task, field, None)
        if field in _NUMERIC_FIELDS:
            if field == "runtime" and value is None:
                # task-failed events carry no runtime; both stamps come from the same worker clock.
                failed, started = _number(task.failed), _number(task.started)
                value = max(0.0, failed - started) if failed and started else None
            values.append(_number(value))
        elif field == "worker":
            values.append(value.hostname if value is not None else None)
        else:
            values.append(_text(value))
    return tuple(values)


def worker_row(worker, offline_at) -> tuple:
    load = _loadavg(worker.loadavg)
    return (
        worker.hostname, _number(worker.pid), _number(worker.freq),
        worker.heartbeats[-1] if worker.heartbeats else None,
        offline_at,
        _number(worker.active), _number(worker.processed),
        json.dumps(load) if worker.loadavg and None not in load else None,
        _text(worker.sw_ident), _text(worker.sw_ver), _text(worker.sw_sys),
    )

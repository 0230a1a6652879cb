"""The collector: receives celery events, merges them, writes them to the store in batches.

Two threads. The receiving thread only receives and hands events over, so that it drains the broker
as fast as events arrive (on Redis a subscriber that falls behind is disconnected and its backlog
lost); on a broker outside this process it relays batches from a receiving process (receiving.py),
which decodes events on a core of its own. The writing thread merges with celery's own `State`
rules (merge.py: the same rules on plain dicts), which already handle out-of-order and duplicate
events, and writes what changed in one transaction every `batch_seconds`.

No single event may stop it. An event that cannot be merged is counted and skipped; a batch the
store refuses is split until the rows it refuses are found, repaired where possible, else counted
and dropped; a store that cannot be written now (a lock, a full disk) keeps the batch and is
retried with backoff, with the error shown in `stats()` and logged once. One collector per broker
writes to a store: the others stand by behind a lease kept in the store. Several brokers may share a
store: each has its collector, which names its broker on every task and worker row it writes.

With an events queue (RabbitMQ, --events-queue) nothing is lost while no collector listens: the
receiving process acknowledges a message only once the store committed its events, and every
collector on the queue writes (the broker splits the messages between them), so no lease. A message
may then arrive twice (its collector was killed between the commit and the acknowledgement): the
task rows merge it as before, and the counters (a worker's, and those /metrics serves) count a task
event only when the store does not already show it (its task's row holds that event's time), see
`_new_events`.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid as uuid_module

from kombu.utils.url import maybe_sanitize_url

from monitor.ingest import receiving
from monitor.ingest.inbox import Inbox
from monitor.ingest.incident import Incident
from monitor.ingest.merge import MergeState
from monitor.ingest.reports import GONE_REPORT_SECONDS, report_key
from monitor.store import rollup
from monitor.store.base import Store
from monitor.store.event_counts import DEFAULT_RUNTIME_BUCKETS, Increments
from monitor.store.schema import EVENT_TIME_FIELDS, NUMERIC_FIELDS, TASK_FIELDS, WORKER_COUNTERS

log = logging.getLogger(__name__)

_COUNTER_INDEX = {name: i for i, name in enumerate(WORKER_COUNTERS)}
_FINISHED = ("succeeded", "failed")
_NUMERIC_FIELDS = frozenset(NUMERIC_FIELDS)
_SQLITE_INT = (-2 ** 63, 2 ** 63 - 1)
_INFINITY = float("inf")
# What stands after the kept part of a text field that was too long for the store.
TRUNCATED = "…[truncated {:,} characters]"
DEFAULT_FIELD_LIMIT = 65_536
# How often the lease is renewed and the counters published to the store, for the web processes.
REPORT_SECONDS = 1.0
# Events the relaying thread keeps unpickled ahead of the writer (see inbox.py): two of the
# receiving process's batches.
READY_EVENTS = 2 * receiving.BATCH_EVENTS


class Collector:
    # tasks_in_memory: how many tasks the merge keeps. A task's events arrive within its runtime, and
    # a late event for a task already let go is merged by the store's upsert, so a short horizon is
    # enough.
    # lease_seconds outlasts the store's busy timeout and a retry, so that a writer waiting on a
    # lock keeps its lease.
    def __init__(self, celery_app, store: Store, *, batch_seconds: float = 0.25, batch_events: int = 20_000,
                 max_backlog: int = 1_000_000, tasks_in_memory: int = 5_000,
                 retention_seconds: float = 5.0, max_backoff: float = 10.0,
                 receive_in_process: bool | None = None, field_limit: int = DEFAULT_FIELD_LIMIT,
                 lease_seconds: float = 30.0, broker_name: str | None = None,
                 events_queue: receiving.EventsQueue | None = None,
                 runtime_buckets: tuple[float, ...] = DEFAULT_RUNTIME_BUCKETS):
        self.app = celery_app
        self.store = store
        self.batch_seconds = batch_seconds
        self.batch_events = batch_events
        self.max_backlog = max_backlog
        self.tasks_in_memory = tasks_in_memory
        self.retention_seconds = retention_seconds
        self.max_backoff = max_backoff
        self.field_limit = field_limit
        self.lease_seconds = lease_seconds
        self.runtime_buckets = runtime_buckets
        self._buckets_agreed = False  # whether the store counts runtimes in runtime_buckets
        # None: in a process of its own (see receiving.py), unless the broker lives in this process.
        self.receive_in_process = receive_in_process
        if events_queue is not None and receive_in_process:
            raise ValueError("an events queue is consumed in the receiving process only")
        self.events_queue = events_queue
        self._inbox = Inbox()
        # Events ever put in the inbox and taken from it, and (events put in the inbox, receipt) of
        # the receiving process's batches not yet acknowledged: a batch is acknowledged once every
        # event taken up to its last one is committed.
        self._appended = 0
        self._taken = 0
        self._receipts: collections.deque = collections.deque()
        self._process: receiving.ReceivingProcess | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiver = None
        self._start_lock = threading.Lock()
        self.connected = False
        # received, merged, stored, dropped, malformed, unreadable, rejected, truncated, disconnects, skipped
        self.counts = collections.Counter()
        self.lag_seconds = 0.0
        self.last_stored_at: float | None = None
        # When the tasks or their analytics rollups last changed (heartbeats alone do not count): what
        # the pages' refreshes are keyed on (monitor.services.store_version).
        self.tasks_stored_at: float | None = None
        self._fold_due: float | None = None  # finished tasks may wait unfolded in the rollup inbox
        self._pending = _Pending()
        self._unwritten: _Unwritten | None = None
        self._state = self.new_merge_state()
        self._retention_due = 0.0
        self.broker = Incident("collector: the broker connection", log)
        self.writer = Incident("collector: writing to the store", log)
        # What its rows carry and what its lease and counters are kept under: collectors of different
        # brokers never stand by for each other.
        self.broker_name = broker_name or maybe_sanitize_url(celery_app.conf.broker_url)
        self.lease_name = f"collector:{self.broker_name}"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid_module.uuid4().hex[:6]}"
        # The collectors sharing an events queue all record: each reports apart (see reports.py).
        self.report_key = report_key(self.broker_name, self.owner if events_queue is not None else None)
        self.lease_holder: str | None = None
        self.holder_reported_at: float | None = None  # when the lease holder last published its counters

    @property
    def active(self) -> bool:
        """Whether this collector writes what it receives: it holds its broker's lease, or shares a queue."""
        return self.events_queue is not None or self.lease_holder == self.owner

    @property
    def receiving_pid(self) -> int | None:
        """The receiving process, while there is one."""
        process = self._process
        return process.process.pid if process is not None else None

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
        """Write what was received (the receiving process first sends what it holds), acknowledge it,
        hand the lease over; all within `timeout`."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self.active:
            try:
                self._write_what_is_held(deadline)
                self._fold_now()  # its last tasks in the charts, not when a collector next writes
                self.store.set_meta(self.report_key, self.stats())  # `running: false`, for the web side to show
                if self.events_queue is None:
                    self.store.release_lease(self.lease_name, self.owner)
            except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
                log.warning("collector: stopped with events unwritten or its lease held (%s: %s); a standby "
                            "takes over when the lease expires", type(exc).__name__, exc)
            self.lease_holder = None
        self._end_receiving_process(deadline - time.monotonic())

    def _write_what_is_held(self, deadline: float) -> None:
        """On a clean stop: merge and write what was received, within the time given."""
        while (self._inbox or self._unwritten) and time.monotonic() < deadline:
            self.merge_batch(self._state)

    def stats(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        counts = self.counts
        waiting = self._oldest_waiting()
        return {
            **{key: counts[key] for key in ("received", "merged", "stored", "dropped", "rejected", "truncated",
                                            "disconnects")},
            # Counted apart because two threads count them: the receiver (unreadable) and the writer.
            "malformed": counts["malformed"] + counts["unreadable"],
            "skipped_standby": counts["skipped"],
            # Tasks seen finishing without their received or started event: published while nobody
            # listened (counted without an events queue only, where that can happen).
            "gaps": counts["gaps"],
            "events_queue": self.events_queue.name if self.events_queue else None,
            # Published while no collector subscribes, events are gone: not so in-process (the demo).
            "unheard_events_lost": self.events_queue is None and not self.app.conf.broker_url.startswith("memory://"),
            "backlog": len(self._inbox) + (self._unwritten.events if self._unwritten else 0) + self._pending.events,
            "backlog_spooled_bytes": self._inbox.spooled_bytes(),  # the part of the backlog waiting on disk
            # While writes fail, the lag is the age of the oldest event still waiting, so it grows.
            "lag_seconds": round(max(self.lag_seconds, now - waiting) if waiting else self.lag_seconds, 3),
            "last_stored_at": self.last_stored_at,
            "tasks_stored_at": self.tasks_stored_at,
            "connected": self.connected,
            "broker_error": self.broker.message,
            "writer_error": self.writer.message,
            "writer_failing_since": self.writer.since,
            "last_error": self.writer.message or self.broker.message or self.writer.last or self.broker.last,
            "role": "active" if self.active else "standby" if self.lease_holder else "starting",
            "lease_holder": self.lease_holder,
            "holder_reported_at": None if self.active else self.holder_reported_at,
            "owner": self.owner,
            "broker": self.broker_name,
            "running": bool(self._threads),
            "updated_at": now,
        }

    def _oldest_waiting(self) -> float | None:
        """When the oldest event not yet in the store was received, or None when none waits."""
        if self._unwritten is not None:
            return self._unwritten.oldest
        if self._pending.oldest is not None:
            return self._pending.oldest
        return self._inbox.oldest()

    # -- receiving thread --------------------------------------------------------------------
    def _receive_forever(self) -> None:
        if self.receive_in_process is None:
            with self.app.connection_for_read() as connection:
                in_memory = connection.transport.driver_type == "memory"
            self.receive_in_process = not in_memory
        if self.receive_in_process:
            self._relay_from_process()
            return
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with self.app.connection_for_read() as connection:
                    self._receiver = receiving.TolerantReceiver(
                        connection, handlers={"*": self._hand_over_function()}, app=self.app, counts=self.counts)
                    if self._stop.is_set():  # stop() ran before the receiver existed
                        return
                    self._connected(maybe_sanitize_url(self.app.conf.broker_url))
                    self._receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:  # the broker went away: count it, wait, reconnect
                self._lost(f"{type(exc).__name__}: {exc}")
            finally:
                self.connected = False
            if time.monotonic() - started > 30:
                backoff = 0.5
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _connected(self, uri: str) -> None:
        self.connected = True
        if self.broker.message is None:
            log.info("collector connected to %s", uri)
        self.broker.recovered()

    def _lost(self, error: str) -> None:
        self.connected = False
        self.counts["disconnects"] += 1
        self.broker.failing(error)

    def _relay_from_process(self) -> None:
        """Run the receiving process (restarted if it dies) and move its batches into the inbox.
        On stop it is left running: stop() ends it once what it sent is written and acknowledged."""
        while not self._stop.is_set():
            self._process = receiving.start_process(receiving.broker_conf(self.app), self.max_backoff,
                                                    self.events_queue)
            try:
                self._relay(self._process)
            finally:
                self.connected = False
                if not self._stop.is_set():
                    self._end_receiving_process(5.0)
            if not self._stop.is_set():
                log.warning("the receiving process ended; restarting it")
                self._stop.wait(1.0)

    def _end_receiving_process(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.end(timeout)

    def _relay(self, process: receiving.ReceivingProcess) -> None:
        inbox, counts, limit, pipe = self._inbox, self.counts, self.max_backlog, process.events
        drain_until = None
        while drain_until is None or time.monotonic() < drain_until:
            if drain_until is None and self._stop.is_set():
                process.tell(("stop",))
                drain_until = time.monotonic() + receiving.DRAIN_SECONDS
            if self.events_queue is not None and len(inbox) >= limit:
                time.sleep(0.05)  # the queue keeps what waits: nothing is dropped
                continue
            inbox.top_up(READY_EVENTS)
            if not pipe.poll(0.1):
                continue
            try:
                message = pipe.recv()
            except EOFError:
                return
            if message[0] == "events":
                _kind, payload, count, oldest, unreadable, receipt = message
                counts["received"] += count
                counts["unreadable"] += unreadable
                if count > limit - len(inbox) and self.events_queue is None:
                    counts["dropped"] += count  # a batch is kept whole or not at all
                elif count:
                    inbox.add_batch(payload, count, oldest)
                    self._appended += count
                if receipt is not None:
                    self._receipts.append((self._appended, receipt))
            elif message[0] == "connected":
                self._connected(message[1])
            elif message[0] == "lost":
                self._lost(message[1])
            else:  # drained: it sent all it will
                return

    def _hand_over_function(self):
        # Runs once per event on the receiving thread: keep it to a length check and an append.
        inbox, counts, limit = self._inbox, self.counts, self.max_backlog
        append, size = inbox.events.append, inbox.__len__

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
        housekeeping_at = 0.0
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if time.monotonic() >= housekeeping_at:
                    self._housekeeping()
                    housekeeping_at = time.monotonic() + REPORT_SECONDS
                if not self.active:
                    self._skip_waiting_events()
                    self._stop.wait(self.batch_seconds)
                    continue
                if not self.merge_batch(self._state):
                    self._stop.wait(self.batch_seconds / 5)
                self.writer.recovered()
                backoff = 0.5
            except Exception as exc:  # a store error must not kill the collector: what waits is kept
                self.writer.failing(f"{type(exc).__name__}: {exc}", unexpected=not self.store.is_transient(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def new_merge_state(self) -> MergeState:
        """celery's State rules, with finished tasks kept finished, holding tasks_in_memory tasks."""
        return MergeState(self.tasks_in_memory)

    def _housekeeping(self) -> None:
        """Renew the lease (without an events queue), publish the counters for other processes, and
        now and then trim the store."""
        if self.events_queue is None:
            self._renew_lease()
        if self.active:
            if not self._buckets_agreed:  # before the first batch is written
                if self.store.use_runtime_buckets(self.runtime_buckets):
                    log.warning("collector: the runtime histogram of /metrics starts again from zero: its "
                                "buckets are now %s", ", ".join(f"{bound:g}" for bound in self.runtime_buckets))
                self._buckets_agreed = True
            self._fold_quiet_store()
            if time.monotonic() >= self._retention_due:
                if self.store.enforce_retention():  # the oldest tasks gone from the Tasks page
                    self.tasks_stored_at = time.time()
                self._retention_due = time.monotonic() + self.retention_seconds
            self._read_broker_reports()
            self.store.set_meta(self.report_key, self.stats())
        else:
            holder = self.store.get_meta(self.report_key) or {}
            self.holder_reported_at = holder.get("updated_at")
            self._adopt_later_change(holder)

    def _read_broker_reports(self) -> None:
        """Take the later changes of the collectors sharing the events queue, and delete the reports of
        this broker's other collectors that stopped (the running ones carry on without them) or are
        gone: an events queue's, or one's left from before (a lease holder's is written over)."""
        now, prefix = time.time(), report_key(self.broker_name)
        ended = []
        for rest, report in self.store.get_meta_prefixed(prefix).items():
            if report.get("broker") != self.broker_name or prefix + rest == self.report_key:
                continue  # a broker whose name begins with this one's, or this collector's own key
            self._adopt_later_change(report)
            if report.get("running") is False or now - (report.get("updated_at") or 0) > GONE_REPORT_SECONDS:
                ended.append(prefix + rest)
        if ended:
            self.store.delete_meta(ended)

    def _adopt_later_change(self, report: dict | None) -> None:
        """Take a later `tasks_stored_at` from the report of the collector writing in this one's stead
        (the lease holder of a standby) or beside it (on a shared events queue): this process's pages
        refresh on it, and show that collector's tasks too."""
        theirs = (report or {}).get("tasks_stored_at")
        if isinstance(theirs, (int, float)) and (self.tasks_stored_at is None or theirs > self.tasks_stored_at):
            self.tasks_stored_at = theirs

    def _renew_lease(self) -> None:
        holder = self.store.claim_lease(self.lease_name, self.owner, self.lease_seconds)["owner"]
        if holder != self.owner and _gone(holder):  # killed on this host: no need to wait for its lease
            holder = self.store.claim_lease(self.lease_name, self.owner, self.lease_seconds, replacing=holder)["owner"]
        if holder != self.lease_holder:
            if holder == self.owner:
                log.info("collector %s records %s", self.owner, self.lease_name.partition(":")[2])
            else:
                log.warning("collector %s stands by: %s already records %s into this store; it takes over "
                            "when that one stops", self.owner, holder, self.lease_name.partition(":")[2])
            self.lease_holder = holder

    def _skip_waiting_events(self) -> None:
        """A standby leaves the writing to the lease holder, which receives the same events."""
        skipped = self._inbox.clear() + self._pending.events + (self._unwritten.events if self._unwritten else 0)
        self._pending, self._unwritten = _Pending(), None
        self.counts["skipped"] += skipped

    def merge_batch(self, state: MergeState) -> int:
        """Merge what the inbox holds (up to one batch) into `state` and write it. Returns events taken.

        This is the per-event hot path: locals instead of attribute lookups, no per-event writes.
        A batch the store could not take yet is written first; meanwhile the inbox waits.
        """
        if self._unwritten is not None:
            self._write_unwritten()
            return 1
        inbox, unpack = self._inbox.events, self._inbox.unpack
        popleft = inbox.popleft
        pending = self._pending
        dirty_tasks, dirty_workers = pending.tasks, pending.workers
        samples, count = pending.samples, pending.counted.append
        merge_task, merge_worker = state.merge_task, state.merge_worker
        taken = malformed = 0
        monotonic, sleep = time.monotonic, time.sleep
        deadline = monotonic() + self.batch_seconds
        while taken < self.batch_events:
            if not inbox and not unpack():
                if taken == 0 or monotonic() >= deadline:
                    break
                sleep(0.005)
                continue
            event = popleft()
            taken += 1
            try:
                kind = event["type"]
                group, _, subject = kind.partition("-")
                hostname = event.get("hostname")
                # What the store keys rows on must be text: a task without an id, or a worker
                # without a name, has nothing to be merged into.
                if type(hostname) is not str:
                    malformed += 1
                    continue
                if group == "task":
                    uuid = event.get("uuid")
                    if type(uuid) is not str or not uuid:
                        malformed += 1
                        continue
                    task, worker = merge_task(event, subject)
                    dirty_tasks[uuid] = task
                    if worker is not None and hostname not in dirty_workers:
                        dirty_workers[hostname] = (worker, None, None)
                    count((uuid, subject, event["timestamp"], hostname, event.get("runtime")))
                elif group == "worker":
                    worker = merge_worker(event, subject)
                    # A goodbye or a start keeps its moment until written, whatever follows it in the batch.
                    _, offline_at, online_at = dirty_workers.get(hostname, (None, None, None))
                    if subject == "offline":
                        offline_at = event["local_received"]
                    elif subject == "online" and event.get("processed") == 0:
                        # A new process (one that reconnected to the broker says online again, with what
                        # it ran so far: its tasks go on). The worker's own clock, as its tasks' times.
                        online_at = event["timestamp"]
                    dirty_workers[hostname] = (worker, offline_at, online_at)
                    if subject == "heartbeat":
                        samples.append((hostname, _number(event["local_received"]), _number(worker.active),
                                        *_loadavg(worker.loadavg)))
                else:  # neither a task's nor a worker's: nothing to merge it into
                    malformed += 1
                    continue
                if pending.oldest is None:
                    pending.oldest = _number(event["local_received"])
                pending.events += 1
            except Exception:  # missing fields, garbage: count it and go on
                malformed += 1
        if malformed:
            self.counts["malformed"] += malformed
        self._taken += taken
        if pending.events:
            self._flush(pending)
        else:  # nothing to write: what was taken is done with
            self._acknowledge(self._taken)
        return taken

    def _flush(self, pending: "_Pending") -> None:
        limit, counts, broker = self.field_limit, self.counts, self.broker_name
        increments = collections.defaultdict(lambda: [0] * len(WORKER_COUNTERS))
        metrics, tasks, unnamed, now = Increments(self.runtime_buckets), pending.tasks, [], time.time()
        # A task whose received event memory does not hold (let go, or merged by another collector): its
        # name as stored, else its events wait for it (event_counts.py). Read before _new_events counts
        # gaps, so that a read that fails counts nothing before the batch is retried.
        stored = self.store.task_fields([uuid for uuid, task in tasks.items() if task.get("name") is None], ("name",))
        for uuid, subject, _at, hostname, runtime in self._new_events(pending):
            index = _COUNTER_INDEX.get(subject)
            if index is not None:
                increments[hostname][index] += 1
            runtime = _number(runtime)
            if subject != "succeeded" or runtime is None or not 0 < runtime < _INFINITY:  # (NaN neither)
                runtime = None  # nothing to observe
            name = tasks[uuid].get("name")
            if name is None:
                name = stored.get(uuid, {}).get("name")
                if name is None:
                    unnamed.append((uuid, hostname, subject, runtime, now))
                    continue
            name = _text(name, limit)  # the label is the name as stored
            metrics.count(hostname, name, subject)
            if runtime is not None:
                metrics.observe(hostname, name, runtime)
        self._unwritten = _Unwritten({
            "tasks": [task_row(task, limit, counts, broker) for task in pending.tasks.values()],
            "workers": [worker_row(worker, offline_at, online_at, limit, counts, broker)
                        for worker, offline_at, online_at in pending.workers.values()],
            "counters": [(host, *values) for host, values in increments.items()],
            "samples": pending.samples,
            **metrics.rows(now),
            "unnamed": unnamed,
        }, pending.events, pending.oldest, self._taken)
        self._pending = _Pending()
        self._write_unwritten()

    def _new_events(self, pending: "_Pending") -> list[tuple]:
        """The batch's task events to count (entries of `pending.counted`).

        Redis's pub/sub hands each event over once: all count. From an events queue a message may
        come twice (its collector was killed between a commit and its acknowledgement): an event
        counts only when its task's stored row does not hold its time in the field of its name yet,
        and once per batch, whichever collector wrote it. A task's retries keep only their latest
        time, so an earlier retry's event delivered again would count twice, as would a custom
        event (no field holds its time): a collector killed between a commit and its
        acknowledgement, during a retry, is rare enough."""
        if self.events_queue is None:
            self.counts["gaps"] += self._gaps(pending)
            return pending.counted
        stored = self.store.task_fields({entry[0] for entry in pending.counted}, EVENT_TIME_FIELDS)
        seen, new = set(), []
        for entry in pending.counted:
            uuid, subject, at = entry[0], entry[1], _number(entry[2])
            if at is not None:  # (a time the store cannot hold tells no copy apart)
                if stored.get(uuid, {}).get(subject) == at or (uuid, subject, at) in seen:
                    continue
                seen.add((uuid, subject, at))
            new.append(entry)
        return new

    def _gaps(self, pending: "_Pending") -> int:
        """Tasks of the batch seen finishing whose received or started event neither memory nor the
        store holds: published while no collector listened (pub/sub keeps nothing). The store is
        read only for the few tasks memory cannot vouch for, and a finish it already shows is the
        same event again, no new gap."""
        finished = {uuid: (subject, _number(at)) for uuid, subject, at, _host, _runtime in pending.counted
                    if subject in _FINISHED}
        tasks = pending.tasks
        suspects = [uuid for uuid in finished
                    if tasks[uuid].get("received") is None or tasks[uuid].get("started") is None]
        stored = self.store.task_fields(suspects, EVENT_TIME_FIELDS)
        gaps = 0
        for uuid in suspects:
            (subject, at), row, task = finished[uuid], stored.get(uuid, {}), tasks[uuid]
            if at is None or row.get(subject) != at:
                gaps += ((task.get("received") is None and row.get("received") is None)
                         or (task.get("started") is None and row.get("started") is None))
        return gaps

    def _acknowledge(self, through: int) -> None:
        """The first `through` events taken from the inbox are committed: tell the receiving
        process to acknowledge the batches they came in."""
        receipts, receipt = self._receipts, None
        while receipts and receipts[0][0] <= through:
            receipt = receipts.popleft()[1]
        process = self._process
        if receipt is not None and process is not None:
            process.tell(("ack", receipt))

    def _write_unwritten(self) -> None:
        """Write the batch in hand: at once when the store takes it whole, else split until every
        row it refuses is found. A store error worth retrying propagates, and what is not yet
        committed stays in hand (committed parts are never written twice: counters add up). A split
        batch's parts commit one by one: from an events queue, a collector killed between two of them
        may count an event delivered again twice, or not at all (a refused row and a kill: rare)."""
        batch = self._unwritten
        if batch.parts is None:
            try:
                self._committed(bool(batch.rows["tasks"]), self.store.write_batch(**batch.rows))
            except Exception as exc:
                if self.store.is_transient(exc):
                    raise
                batch.split(exc)
        while batch.parts:
            kind, rows = batch.parts[0]
            try:
                self._committed(kind == "tasks", self.store.write_batch(**{kind: rows}))
            except Exception as exc:
                if self.store.is_transient(exc):
                    raise
                if len(rows) > 1:
                    batch.parts.popleft()
                    batch.parts.extendleft([(kind, rows[len(rows) // 2:]), (kind, rows[:len(rows) // 2])])
                    continue
                self._write_repaired(kind, rows[0], exc)
            batch.parts.popleft()
        self._unwritten = None
        self._acknowledge(batch.through)
        self.counts["merged"] += batch.events
        self.counts["stored"] += batch.events
        self.last_stored_at = time.time()
        if batch.rows["tasks"]:
            self.tasks_stored_at = self.last_stored_at
        if batch.oldest:
            self.lag_seconds = max(0.0, self.last_stored_at - batch.oldest)

    def _committed(self, wrote_tasks: bool, folded: int) -> None:
        """After a write: a fold takes everything the rollup inbox holds, this write's tasks too; tasks
        written and not folded wait for a later batch's fold, or for _fold_quiet_store's."""
        if folded:
            self._fold_due = None
            self.tasks_stored_at = time.time()
        elif wrote_tasks and self._fold_due is None:
            self._fold_due = time.monotonic() + rollup.FOLD_SECONDS

    def _fold_quiet_store(self) -> None:
        """Fold the finished tasks a quiet cluster left in the rollup inbox: no batch comes to fold
        them, and the charts would miss its last tasks until the next event."""
        if self._fold_due is not None and time.monotonic() >= self._fold_due and not self._inbox:
            self._fold_now()

    def _fold_now(self) -> None:
        """Fold what the rollup inbox holds (a failure leaves it due); a fold changes the charts."""
        folded = self.store.fold_rollups()
        self._fold_due = None
        if folded:
            self.tasks_stored_at = time.time()

    def _write_repaired(self, kind: str, row: tuple, error: Exception) -> None:
        """One row the store refused: retry it with every value made storable, else drop it."""
        repaired = tuple(map(_storable, row))
        if repaired != row:
            try:
                self._committed(kind == "tasks", self.store.write_batch(**{kind: [repaired]}))
                return
            except Exception as exc:
                if self.store.is_transient(exc):
                    raise
                error = exc
        self.counts["rejected"] += 1
        log.log(logging.WARNING if self.counts["rejected"] == 1 else logging.DEBUG,
                "collector: the store refused a %s row (%s: %s); dropped and counted in `rejected` "
                "(logged once)", kind[:-1], type(error).__name__, error)


def _gone(owner: str) -> bool:
    """Whether a lease owner ('host:pid:tag') is a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


# Writing may lag (the inbox holds what waits), receiving may not: on a busy machine the scheduler
# should run the receiving process and the web threads first. Linux alone renices a single thread.
WRITER_NICENESS = 10


def _yield_cpu_to_receiving() -> None:
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        except OSError:  # not permitted here: run at the process's priority
            pass


class _Pending:
    """What merged events changed and the store has not taken yet."""

    def __init__(self):
        self.tasks: dict = {}
        self.workers: dict = {}
        self.samples: list = []
        self.counted: list = []  # (uuid, subject, time, hostname, runtime) of each task event
        self.events = 0
        self.oldest: float | None = None


class _Unwritten:
    """A batch of rows in hand: whole (`parts` None) until the store refuses it, then a queue of
    (kind, rows) parts, each split in halves when refused. `through`: the events taken from the
    inbox up to its last one."""

    def __init__(self, rows: dict, events: int, oldest: float | None, through: int):
        self.rows = rows
        self.events = events
        self.oldest = oldest
        self.through = through
        self.parts: collections.deque | None = None

    def split(self, error: Exception) -> None:
        log.debug("collector: the store refused a batch (%s); looking for the rows it refuses", error)
        self.parts = collections.deque((kind, rows) for kind, rows in self.rows.items() if rows)


# Events are JSON from any producer: numbers are kept only when they are numbers SQLite can
# hold, so that what the pages compute with (times, runtimes, heartbeat periods) stays numeric.
def _number(value):
    kind = type(value)
    if kind is float or kind is int and _SQLITE_INT[0] <= value <= _SQLITE_INT[1]:
        return value
    return None


def _text(value, limit: int, counts: collections.Counter | None = None):
    """Text for the store: other values as their str(), and at most `limit` characters, marked (and
    counted in `counts`, when given)."""
    if value is None:
        return None
    if type(value) is not str:
        try:
            value = str(value)
        except RecursionError:
            return receiving.TOO_DEEP
    if len(value) > limit:
        if counts is not None:
            counts["truncated"] += 1
        return value[:limit] + TRUNCATED.format(len(value) - limit)
    return value


def _storable(value):
    """A value the store can bind: lone surrogates (valid JSON, invalid UTF-8) and NUL characters
    (which PostgreSQL's text refuses) become U+FFFD."""
    if type(value) is str:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\0", "\ufffd")
    if value is None or type(value) is float:
        return value
    return _number(value) if type(value) is int else str(value)


def _loadavg(value) -> tuple:
    """(load1, load5, load15) as numbers or Nones."""
    if not isinstance(value, (list, tuple)):
        return (None, None, None)
    return tuple(_number(v) for v in (*value[:3], None, None, None)[:3])


_TEXT_INDEXES = tuple(i for i, field in enumerate(TASK_FIELDS) if field not in _NUMERIC_FIELDS)
_NUMERIC_INDEXES = tuple(i for i, field in enumerate(TASK_FIELDS) if field in _NUMERIC_FIELDS)
_RUNTIME, _BROKER = TASK_FIELDS.index("runtime"), TASK_FIELDS.index("broker")


def task_row(task: dict, limit: int = DEFAULT_FIELD_LIMIT, counts: collections.Counter | None = None,
             broker: str | None = None) -> tuple:
    """A merged task (merge.py) as the store's row, in TASK_FIELDS order.

    Once per task per batch: values that need no change (short text, floats, None) are taken as
    they are, the rest go through _text and _number."""
    values = list(map(task.get, TASK_FIELDS))
    if values[_RUNTIME] is None:
        # task-failed events carry no runtime; both stamps come from the same worker clock.
        failed, started = _number(task.get("failed")), _number(task.get("started"))
        values[_RUNTIME] = max(0.0, failed - started) if failed and started else None
    for index in _TEXT_INDEXES:
        value = values[index]
        if value is not None and (type(value) is not str or len(value) > limit):
            values[index] = _text(value, limit, collections.Counter() if counts is None else counts)
    for index in _NUMERIC_INDEXES:
        value = values[index]
        if value is not None and type(value) is not float:
            values[index] = _number(value)
    values[_BROKER] = broker
    return tuple(values)


def worker_row(worker, offline_at, online_at=None, limit: int = DEFAULT_FIELD_LIMIT,
               counts: collections.Counter | None = None, broker: str | None = None) -> tuple:
    counts = collections.Counter() if counts is None else counts
    load = _loadavg(worker.loadavg)
    heartbeat = worker.heartbeats[-1] if worker.heartbeats else None
    # Its last worker event's arrival here less its sending there: how far this host's clock is ahead
    # (the transit included, which errs on the safe side for inspector.before_start).
    received, sent = _number(getattr(worker, "local_received", None)), _number(getattr(worker, "timestamp", None))
    clock_offset = received - sent if received is not None and sent is not None else None
    return (
        worker.hostname, _number(worker.pid), _number(worker.freq), _number(heartbeat), _number(offline_at),
        _number(worker.active), _number(worker.processed),
        json.dumps(load) if worker.loadavg and None not in load else None,
        *(_text(value, limit, counts) for value in (worker.sw_ident, worker.sw_ver, worker.sw_sys)), broker,
        _number(online_at), clock_offset,
    )

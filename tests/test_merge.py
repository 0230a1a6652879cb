"""The collector's merge (monitor/ingest/merge.py) against celery's own State on the same streams.

The reference is celery's State as the collector ran it before merge.py: its Task, except that a
finished task stays finished. Every event goes to both; after each one the tasks and workers
held must be the same, field by field, and an event one of them cannot merge, the other cannot
either. The streams are random but seeded: out of order, duplicated, retried, revoked, custom
states, sent by a client, with fields missing or of the wrong type, tasks let go from memory,
workers going offline."""
from __future__ import annotations

import random

import pytest
from celery.events.state import TASK_EVENT_TO_STATE, State, Task

from monitor.ingest.merge import MergeState
from monitor.store.schema import TASK_FIELDS, TERMINAL_STATES

T0 = 1_800_000_000.0
WORKERS = ("celery@alpha", "celery@beta", "celery@gamma")
WORKER_FIELDS = ("hostname", "pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys")


class _FinalTask(Task):
    """celery's Task, except that a late task-received, -started or -retried (or a custom state)
    never moves a SUCCESS, FAILURE or REVOKED task back: the rule the collector keeps."""

    def event(self, type_, timestamp=None, local_received=None, fields=None, **celery_defaults):
        state = TASK_EVENT_TO_STATE.get(type_)
        if self.state in TERMINAL_STATES and state not in TERMINAL_STATES:
            if state is not None:
                setattr(self, type_, timestamp)
            keep = self.merge_rules.get(state, ())
            self.__dict__.update({key: value for key, value in (fields or {}).items() if key in keep})
            return
        super().event(type_, timestamp, local_received, fields, **celery_defaults)


class ReferenceState(State):
    Task = _FinalTask


def reference_merge(state: State, event: dict):
    """celery's State.event as the collector called it: (task or worker, subject), raising when it
    merged nothing."""
    (obj, _created), subject = state._event(event)
    return obj


def lean_merge(state: MergeState, event: dict):
    group, _, subject = event["type"].partition("-")
    if group == "task":
        return state.merge_task(event, subject)[0]
    if group == "worker":
        return state.merge_worker(event, subject)
    raise ValueError("neither a task's event nor a worker's")


def task_fields(task) -> dict:
    if isinstance(task, dict):
        return {field: task.get(field) for field in TASK_FIELDS}
    fields = {field: getattr(task, field, None) for field in TASK_FIELDS}
    fields["worker"] = task.worker.hostname if task.worker is not None else None
    return fields


def worker_fields(worker) -> dict:
    return {**{field: getattr(worker, field, None) for field in WORKER_FIELDS},
            "last_heartbeat": worker.heartbeats[-1] if worker.heartbeats else None}


class StreamMaker:
    """Random celery event streams, as the receiver hands events over."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.clock = 0

    def event(self, type_, at, hostname, **fields):
        self.clock += 1  # one clock per event sent (a duplicate keeps its original's)
        return {"type": type_, "timestamp": at, "local_received": at + self.rng.random() / 10,
                "clock": self.clock, "hostname": hostname, "utcoffset": 0, "pid": 4000 + WORKERS.index(hostname)
                if hostname in WORKERS else 1, **fields}

    def task_events(self, number: int, start: float) -> list[dict]:
        rng, uuid = self.rng, f"00000000-0000-4000-8000-{number:012d}"
        worker = rng.choice(WORKERS)
        at = start
        events = []
        if rng.random() < 0.3:
            events.append(self.event("task-sent", at, "client@web", uuid=uuid, name="shop.checkout",
                                     args="(1,)", kwargs="{}", retries=0, eta=None, expires=None, queue="default",
                                     exchange="", routing_key="default", root_id=uuid, parent_id=None))
        events.append(self.event("task-received", at + 0.1, worker, uuid=uuid, name="shop.checkout",
                                 args=f"({number},)", kwargs="{'customer': 'cust-1'}", retries=0, eta=None,
                                 expires=None, root_id=uuid, parent_id=None))
        at += 0.2
        for retry in range(rng.choice((0, 0, 0, 1, 2))):
            events.append(self.event("task-started", at, worker, uuid=uuid))
            events.append(self.event("task-retried", at + 0.1, worker, uuid=uuid, exception="Timeout()",
                                     traceback="Traceback...", retries=retry + 1))
            at += 0.2
        ending = rng.choice(("succeeded", "succeeded", "failed", "revoked", "progress", "none"))
        if ending in ("succeeded", "failed", "progress"):
            events.append(self.event("task-started", at, worker, uuid=uuid))
        if ending == "progress":  # a custom state (update_state from the task) then success
            events.append(self.event("task-progress", at + 0.05, worker, uuid=uuid, result="50%"))
            ending = "succeeded"
        if ending == "succeeded":
            events.append(self.event("task-succeeded", at + 0.3, worker, uuid=uuid, result="'done'",
                                     runtime=0.3))
        elif ending == "failed":
            events.append(self.event("task-failed", at + 0.3, worker, uuid=uuid, exception="ValueError('x')",
                                     traceback="Traceback..."))
        elif ending == "revoked":
            events.append(self.event("task-revoked", at + 0.3, worker, uuid=uuid, terminated=True,
                                     signum="15", expired=False))
        return events

    def worker_events(self, start: float, seconds: float) -> list[dict]:
        events = []
        for hostname in WORKERS:
            events.append(self.event("worker-online", start, hostname, freq=2.0, sw_ident="py-celery",
                                     sw_ver="5.7.0", sw_sys="Linux", active=0, processed=0, loadavg=[0.1, 0.2, 0.3]))
            at = start + 2
            while at < start + seconds:
                events.append(self.event("worker-heartbeat", at, hostname, freq=2.0, active=self.rng.randrange(4),
                                         processed=int(at - start), loadavg=[self.rng.random(), 0.2, 0.3]))
                at += 2
            if self.rng.random() < 0.5:
                events.append(self.event("worker-offline", at, hostname, freq=2.0))
                events.append(self.event("worker-online", at + 1, hostname, freq=2.0, pid=9000))
        return events

    def damaged(self, event: dict) -> dict:
        """The event with a field missing or of another type, as a buggy producer may send it."""
        event = dict(event)
        choice = self.rng.randrange(8)
        if choice == 0:
            event.pop(self.rng.choice(("timestamp", "local_received", "clock", "uuid", "hostname")), None)
        elif choice == 1:
            event["timestamp"] = "yesterday"
        elif choice == 2:
            event["runtime"] = "slow"
        elif choice == 3:
            event["retries"] = None
        elif choice == 4:
            event["type"] = self.rng.choice(("task", "worker", "other-thing", "task-"))
        elif choice == 5:
            event["state"] = self.rng.choice(("SUCCESS", "BOGUS", "RETRY"))
        elif choice == 6:
            event["local_received"] = 0
        else:
            event["args"] = {"nested": [1, 2]}
        return event

    def stream(self, tasks: int) -> list[dict]:
        rng, events = self.rng, []
        for number in range(tasks):
            events.extend(self.task_events(number, T0 + number * 0.05))
        events.sort(key=lambda event: event["timestamp"])  # interleaved as concurrent tasks are
        events = self.worker_events(T0, tasks * 0.05 + 4) + events
        events.sort(key=lambda event: event["timestamp"] if isinstance(event["timestamp"], float) else 0)
        for _ in range(len(events) // 4):  # out of order: swap events near each other
            i = rng.randrange(len(events))
            j = min(len(events) - 1, i + rng.randrange(1, 6))
            events[i], events[j] = events[j], events[i]
        for _ in range(len(events) // 10):  # delivered twice, the second time a little later
            i = rng.randrange(len(events))
            events.insert(min(len(events), i + rng.randrange(1, 20)), dict(events[i]))
        for _ in range(len(events) // 25):
            i = rng.randrange(len(events))
            events[i] = self.damaged(events[i])
        lost_time = dict(rng.choice(events))  # at least one event neither can merge
        lost_time.pop("timestamp", None)
        events.insert(rng.randrange(len(events)), lost_time)
        return events


@pytest.mark.parametrize("tasks_in_memory", [5_000, 7], ids=["all-held", "let-go"])
@pytest.mark.parametrize("seed", range(12))
def test_the_merge_holds_what_celerys_state_holds_after_every_event(seed, tasks_in_memory):
    events = StreamMaker(seed).stream(tasks=60)
    reference = ReferenceState(max_tasks_in_memory=tasks_in_memory, max_workers_in_memory=10_000)
    lean = MergeState(tasks_in_memory)
    merged = failed = 0
    for number, event in enumerate(events):
        try:
            expected = reference_merge(reference, dict(event))
        except Exception as exc:  # noqa: BLE001 - what celery cannot merge
            expected = exc
        try:
            got = lean_merge(lean, dict(event))
        except Exception as exc:  # noqa: BLE001
            got = exc
        context = f"event {number}: {event}"
        assert isinstance(got, Exception) == isinstance(expected, Exception), context
        if isinstance(expected, Exception):
            failed += 1
        else:
            merged += 1
            kind = task_fields if event["type"].partition("-")[0] == "task" else worker_fields
            assert kind(got) == kind(expected), context
        assert list(lean.tasks) == list(reference.tasks.data), context
        for uuid, task in lean.tasks.items():
            assert task_fields(task) == task_fields(reference.tasks.data[uuid]), context
        assert list(lean.workers) == list(reference.workers.data), context
        for hostname, worker in lean.workers.items():
            assert worker_fields(worker) == worker_fields(reference.workers.data[hostname]), context
    # The streams exercise both sides: most events merge, the damaged ones do not.
    assert merged > len(events) * 0.8 and failed > 0


def test_a_finished_task_stays_finished_whatever_comes_late_and_keeps_the_received_fields():
    maker, lean = StreamMaker(0), MergeState()
    uuid, worker = "00000000-0000-4000-8000-000000000001", WORKERS[0]
    lean_merge(lean, maker.event("task-succeeded", T0 + 2, worker, uuid=uuid, result="5", runtime=1.0))
    for kind, fields in (("task-retried", {"exception": "late"}), ("task-started", {}),
                         ("task-received", {"name": "sample.add", "args": "(2, 3)", "exception": "ignored"}),
                         ("task-progress", {"result": "50%"})):
        lean_merge(lean, maker.event(kind, T0 + 1, worker, uuid=uuid, **fields))
    task = lean.tasks[uuid]
    assert (task["state"], task["result"], task["name"], task["args"]) == ("SUCCESS", "5", "sample.add", "(2, 3)")
    assert task["started"] == task["received"] == task["retried"] == T0 + 1 and task.get("exception") is None

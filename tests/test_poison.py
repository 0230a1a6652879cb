"""Poison on the event bus: whatever a producer publishes on celery's event exchange (nulls where ids
go, wrong types, a 10 MB field, nesting 10,000 deep, NUL, lone surrogates, unknown types, garbage
envelopes) is stored as far as it is meaningful or dropped and counted, and every other event goes
on. Each bad event is published with kombu's envelope (and, on Redis, raw garbage without one) on
real brokers, interleaved with 500 tasks run by a real worker; checked through the JSON API."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid as uuid_module

import pytest
from celery.utils.time import utcoffset

from helpers import (CeleryWorker, EventPublisher, FlowerbedServer, Stack, get, get_json, tasks, wait_for,
                     worker_status)
from monitor.ingest.collector import DEFAULT_FIELD_LIMIT, TRUNCATED

pytestmark = pytest.mark.integration

GOOD_TASKS = 500
FAIL_EVERY = 10  # every tenth good task is sample.fail, the others sample.add
POISON_HOST = "poison@tests"
HEARTBEAT_HOST = "poison-heartbeat@tests"
BIG_ARGS = "0123456789" * 1_000_000  # 10 MB, a pattern so that a prefix kept from the wrong place shows
NUL_NAME, NUL_ARGS = "poison.nul\x00name", "('\x00',)"  # NUL is valid in JSON and in SQLite text
# What the collector's counters say about events it did not store: each bad event either is stored or
# adds one to these (a list body: one per item), never both.
NOT_STORED_COUNTERS = ("malformed", "dropped", "rejected")

# What must become of a bad event: nothing in it can be stored (no id to store it under, not an
# event at all); or it is meaningful and must be stored; or either, stored or counted.
COUNTED, STORED, EITHER = "counted", "stored", "stored or counted"
MISSING = object()  # leaves a field out of an event


@dataclasses.dataclass
class Poison:
    kind: str
    body: object
    outcome: str
    uuid: str | None = None  # the task a stored one is found as
    worker: str | None = None  # or the worker
    events: int = 1  # a list body is one event per item
    options: dict = dataclasses.field(default_factory=dict)  # kombu's publish options for an encoded body
    routing_key: str = "task.multi"
    raw: bool = False  # Redis only: PUBLISHed with no kombu envelope


def event(type_, **fields) -> dict:
    """An event with the fields celery's dispatcher adds, then `fields` (MISSING leaves one out)."""
    body = {"type": type_, "hostname": POISON_HOST, "utcoffset": utcoffset(), "pid": os.getpid(), "clock": 1,
            "timestamp": time.time(), **fields}
    return {key: value for key, value in body.items() if value is not MISSING}


def received(kind: str, uuid, **fields) -> dict:
    """A task-received event of a `poison.<kind>` task; `fields` may replace any field, `type` too."""
    return event("task-received", uuid=uuid, **{"name": f"poison.{kind}", "args": "()", "kwargs": "{}",
                                                 "retries": 0, **fields})


def nested_args_json(body: dict, depth: int) -> str:
    """The event as JSON with `args` lists nested `depth` deep, written by hand: the json module
    cannot encode 10,000 levels."""
    return json.dumps(body)[:-1] + ', "args": ' + "[" * depth + "]" * depth + "}"


JSON_TEXT = {"content_type": "application/json", "content_encoding": "utf-8"}


def make_poisons(redis: bool) -> list[Poison]:
    """Every kind of bad event, with ids of their own."""
    def new_id() -> str:
        return str(uuid_module.uuid4())

    def task_received(kind: str, outcome: str, **fields) -> Poison:
        """A bad task-received event (`type` may be overridden too), found by its uuid once stored."""
        uuid = new_id()
        return Poison(kind, received(kind, uuid, **fields), outcome, uuid=uuid)

    def nested_args(depth: int) -> Poison:
        uuid = new_id()
        return Poison(f"args-{depth}-deep", nested_args_json(received("deep", uuid, args=MISSING), depth), EITHER,
                      uuid=uuid, options=JSON_TEXT)

    number, succeeded = uuid_module.uuid4().int % 10 ** 12, new_id()
    poisons = [
        Poison("uuid-null", received("uuid-null", None), COUNTED),
        Poison("uuid-number", received("uuid-number", number), EITHER, uuid=str(number)),
        Poison("uuid-list", received("uuid-list", [new_id(), new_id()]), COUNTED),
        Poison("uuid-missing", received("uuid-missing", MISSING), COUNTED),
        task_received("type-unknown", COUNTED, type="flowerbed-poison"),
        task_received("type-missing", COUNTED, type=MISSING),
        task_received("hostname-null", EITHER, hostname=None),
        task_received("hostname-number", EITHER, hostname=42),
        task_received("timestamp-string", EITHER, timestamp="yesterday"),
        task_received("clock-string", EITHER, clock="late"),
        task_received("args-10mb", STORED, args=BIG_ARGS),
        nested_args(900),
        nested_args(10_000),
        task_received("nul", STORED, name=NUL_NAME, args=NUL_ARGS),
        # kombu's JSON writes the lone surrogate as the escape "\ud800": valid JSON, invalid UTF-8.
        task_received("surrogate", EITHER, name="poison.surrogate-\ud800"),
        Poison("list-of-garbage", [1, "x", None], COUNTED, events=3),
        Poison("heartbeat-numbers-not-numbers", event("worker-heartbeat", hostname=HEARTBEAT_HOST, freq="fast",
                                                      loadavg="x", active=0, processed=0, sw_ident="py-celery",
                                                      sw_ver="5.7.0", sw_sys="Linux"),
               STORED, worker=HEARTBEAT_HOST, routing_key="worker.heartbeat"),
        Poison("succeeded-unknown-uuid", event("task-succeeded", uuid=succeeded, result="'ok'", runtime="fast"),
               STORED, uuid=succeeded),
        Poison("body-not-a-dict", "not an event", COUNTED),
        Poison("not-json", "not json{", COUNTED, options=JSON_TEXT),
        Poison("wrong-content-type", "type=task-received", COUNTED,
               options={"content_type": "text/plain", "content_encoding": "utf-8"}),
        Poison("pickle-refused", b"\x80\x04 pickle refused", COUNTED,
               options={"content_type": "application/x-python-serialize", "content_encoding": "binary"}),
        Poison("binary-body", b"\x00\xff not an event", COUNTED,
               options={"content_type": "application/data", "content_encoding": "binary"}),
    ]
    if redis:
        poisons += [
            Poison("raw-not-json", b"not even JSON", COUNTED, raw=True),
            Poison("raw-json-no-envelope", json.dumps(received("raw", new_id())).encode(), COUNTED, raw=True),
        ]
    return poisons


def publish(publisher: EventPublisher, poison: Poison) -> None:
    if poison.raw:
        publisher.publish_raw(poison.body, poison.routing_key)
    else:
        publisher.publish(poison.body, poison.routing_key, **poison.options)


def is_stored(server: str, poison: Poison) -> bool:
    if poison.uuid:
        return get(f"{server}/api/task/info/{poison.uuid}")[0] == 200
    if poison.worker:
        return poison.worker in get_json(f"{server}/api/workers")[1]
    return False


def collector_stats(server: str) -> dict:
    status, stats = get_json(f"{server}/api/collector")
    assert status == 200, stats
    return stats


def good_tasks(server: str) -> dict:
    """The sample tasks the monitor stores, as {uuid: task}."""
    return {**tasks(server, "taskname=sample.add&limit=1000"), **tasks(server, "taskname=sample.fail&limit=1000")}


def outcome(task: dict) -> tuple:
    return task["state"], task["result"] if task["state"] == "SUCCESS" else task["exception"]


def wait_or_explain(server: FlowerbedServer, check, timeout: float, what: str, progress=lambda: ""):
    """wait_for, failing with `progress()`, the collector's counters and the end of the server's log."""
    try:
        return wait_for(check, timeout, what)
    except pytest.fail.Exception as timed_out:
        pytest.fail(f"{timed_out}\n{progress()}\ncollector: {collector_stats(server)}\n"
                    f"server log:\n{server.output()[-4000:]}")


@dataclasses.dataclass
class Poisoned:
    server: FlowerbedServer
    worker: CeleryWorker
    good: dict[str, tuple]  # uuid → (state, result or exception)
    bad: list[Poison]
    before: dict  # the collector's counters before the first bad event
    published_at: float  # wall-clock time after the last bad event was published

    def stored_task(self, kind: str) -> dict:
        """What the monitor stores of the bad task event of that kind."""
        [poison] = [poison for poison in self.bad if poison.kind == kind]
        status, task = get_json(f"{self.server}/api/task/info/{poison.uuid}")
        assert status == 200, task
        return task


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def poisoned(request, tmp_path_factory):
    """A monitor and a worker on one broker, with every bad event published among 500 good tasks;
    ready once the good tasks finished and an event published after the last bad one is stored."""
    broker = request.getfixturevalue(f"{request.param}_url")
    tmp = tmp_path_factory.mktemp(f"poison-{request.param}")
    stack = Stack()
    try:
        server = stack.add(FlowerbedServer.start(broker, tmp / "flowerbed.db", tmp / "flowerbed.log"))
        worker = stack.add(CeleryWorker(broker, "alpha@poison", tmp))
        wait_for(lambda: worker_status(server, worker.hostname), 20, "the worker online in the monitor")
        publisher = stack.add(EventPublisher(broker))
        bad = make_poisons(redis=request.param == "redis")
        # Spread evenly through the good tasks, so that events from the worker come before and after each.
        bad_at = {round((k + 0.5) * GOOD_TASKS / len(bad)): poison for k, poison in enumerate(bad)}
        before = collector_stats(server)
        good = {}
        for i in range(GOOD_TASKS):
            if i % FAIL_EVERY == FAIL_EVERY - 1:
                good[worker.send("sample.fail", f"boom {i}")] = ("FAILURE", f"ValueError('boom {i}')")
            else:
                good[worker.send("sample.add", i, i)] = ("SUCCESS", str(2 * i))
            if i in bad_at:
                publish(publisher, bad_at[i])
        # Events from one publisher arrive in order: once this one is stored, every bad one was handled.
        last = str(uuid_module.uuid4())
        publisher.publish(received("last", last))
        published_at = time.time()

        def finished() -> int:
            return sum(task["state"] in ("SUCCESS", "FAILURE") for task in good_tasks(server).values())
        wait_or_explain(server, lambda: finished() == GOOD_TASKS and get(f"{server}/api/task/info/{last}")[0] == 200,
                        90, f"the {GOOD_TASKS} good tasks finished and the event after the bad ones stored",
                        lambda: f"{finished()} of {GOOD_TASKS} good tasks finished")
        yield Poisoned(server, worker, good, bad, before, published_at)
    finally:
        stack.stop_all()


def test_every_good_task_is_stored_with_its_right_final_state(poisoned):
    stored = good_tasks(poisoned.server)
    assert set(stored) == set(poisoned.good)
    wrong = {uuid: (outcome(stored[uuid]), expected) for uuid, expected in poisoned.good.items()
             if outcome(stored[uuid]) != expected}
    assert wrong == {}
    assert {task["worker"] for task in stored.values()} == {poisoned.worker.hostname}


def test_meaningful_bad_events_are_stored_and_the_others_not(poisoned):
    stored = {poison.kind for poison in poisoned.bad if is_stored(poisoned.server, poison)}
    assert {poison.kind for poison in poisoned.bad if poison.outcome == STORED} - stored == set()
    assert {poison.kind for poison in poisoned.bad if poison.outcome == COUNTED} & stored == set()


def test_every_bad_event_not_stored_is_counted(poisoned):
    stats = collector_stats(poisoned.server)
    counted = {key: stats[key] - poisoned.before[key] for key in NOT_STORED_COUNTERS}
    not_stored = {poison.kind: poison.events for poison in poisoned.bad if not is_stored(poisoned.server, poison)}
    assert sum(counted.values()) == sum(not_stored.values()), f"counted {counted}, not stored {not_stored}"


def test_the_bad_events_never_cost_the_collector_its_connection(poisoned):
    stats = collector_stats(poisoned.server)
    assert stats["disconnects"] == poisoned.before["disconnects"]
    assert stats["connected"] is True


def test_the_worker_stays_online(poisoned):
    server, hostname = poisoned.server, poisoned.worker.hostname

    def heard_after_the_bad_events():
        worker = get_json(f"{server}/api/workers")[1][hostname]
        return worker if (worker["heartbeat"] or 0) > poisoned.published_at else None
    worker = wait_or_explain(server, heard_after_the_bad_events, 15, "a heartbeat sent after the bad events")
    assert worker["status"] is True


def test_a_10mb_field_is_stored_truncated_with_a_marker(poisoned):
    task = poisoned.stored_task("args-10mb")
    marker = TRUNCATED.format(len(BIG_ARGS) - DEFAULT_FIELD_LIMIT)
    assert len(task["args"]) == DEFAULT_FIELD_LIMIT + len(marker)  # checked first: a 10 MB diff says nothing
    assert task["args"] == BIG_ARGS[:DEFAULT_FIELD_LIMIT] + marker
    assert task["state"] == "RECEIVED"


def test_a_finished_task_with_a_runtime_that_is_no_number_keeps_its_state(poisoned):
    task = poisoned.stored_task("succeeded-unknown-uuid")
    assert (task["state"], task["result"], task["runtime"]) == ("SUCCESS", "'ok'", None)


def test_a_heartbeat_with_numbers_that_are_no_numbers_is_stored_without_them(poisoned):
    worker = get_json(f"{poisoned.server}/api/workers")[1][HEARTBEAT_HOST]
    assert worker["heartbeat"] is not None
    assert worker["loadavg"] is None


def test_nul_characters_are_kept(poisoned):
    task = poisoned.stored_task("nul")
    assert (task["name"], task["args"]) == (NUL_NAME, NUL_ARGS)

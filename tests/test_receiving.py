"""The receiving process (monitor/ingest/receiving.py) on a real Redis: events published to the broker reach
the Collector's store through the child process, which is restarted when it dies, reconnects when
the broker restarts, ends with Collector.stop() and skips (and counts) garbage from the bus."""
from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
import uuid as uuid_module
from collections import Counter

import pytest
import redis
from celery import Celery
from celery.events.event import get_exchange
from celery.events.receiver import EventReceiver
from kombu import Producer

from helpers import wait_for
from monitor.ingest import inbox, receiving
from monitor.ingest.collector import Collector
from monitor.store.sqlite import SqliteStore as Store

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, ended and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def receivers(collector) -> list[int]:
    """The collector's receiving process, as a list of its pid ([] when there is none)."""
    pid = collector.receiving_pid
    return [pid] if pid is not None and alive(pid) else []


@pytest.fixture
def collector_on(tmp_path):
    """collector_on(broker_url) starts a Collector on a real store, deciding by itself (as in
    production) to receive in a process; waits until its receiving process is connected."""
    started = []

    def start(broker: str) -> Collector:
        app = Celery("receiving-tests", broker=broker, set_as_current=False)
        collector = Collector(app, Store(str(tmp_path / f"receiving-{len(started)}.db")), batch_seconds=0.05,
                              max_backoff=1.0)
        started.append(collector)
        collector.start()
        wait_for(lambda: collector.connected, 20, "the receiving process connected")
        return collector
    yield start
    for collector in started:
        collector.stop()


def publish(app: Celery, *uuids: str) -> None:
    """A task-received event per uuid, from celery's own event dispatcher, on a fresh connection."""
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="probe@receiving-tests")
        for uuid in uuids:
            dispatcher.send("task-received", uuid=uuid, name="probe.task", args="()", kwargs="{}", retries=0)
        dispatcher.close()


def deliver(collector: Collector, timeout: float = 20) -> str:
    """Publish one event every 0.2 s until one reaches the store, and return its uuid. (A
    subscriber that has just (re)connected misses what was published before it subscribed.)"""
    sent = []

    def arrived():
        sent.append(str(uuid_module.uuid4()))
        publish(collector.app, sent[-1])
        return next((uuid for uuid in sent if collector.store.get_task(uuid)), None)
    return wait_for(arrived, timeout, "an event through the receiving process")


@pytest.mark.parametrize("inbox_memory", ["default", "none: every batch waits on disk"])
def test_worker_events_reach_the_store_through_the_receiving_process(redis_url, collector_on, celery_worker,
                                                                     inbox_memory, monkeypatch):
    if inbox_memory != "default":
        monkeypatch.setattr(inbox, "MEMORY_BYTES", 0)
    collector = collector_on(redis_url)
    assert collector.receive_in_process is True
    [child] = receivers(collector)
    with open(f"/proc/{child}/cmdline", "rb") as cmdline:  # its own entry point, not a copy of the caller
        assert b"monitor.ingest.receiving" in cmdline.read()
    worker = celery_worker(redis_url, "alpha@receiving")
    done, failed = worker.send("sample.add", 2, 3), worker.send("sample.fail", "boom")
    wait_for(lambda: (collector.store.get_task(done) or {}).get("state") == "SUCCESS" and
             (collector.store.get_task(failed) or {}).get("state") == "FAILURE", 20,
             "the worker's task events in the store")
    task = collector.store.get_task(done)
    assert (task["name"], task["result"], task["worker"]) == ("sample.add", "5", "alpha@receiving")
    stats = collector.stats()
    assert stats["received"] >= 6 and stats["stored"] >= 6  # at least received, started, finished × 2
    assert (stats["disconnects"], stats["malformed"], stats["dropped"]) == (0, 0, 0)


def test_a_killed_receiving_process_is_restarted_and_events_arrive_again(redis_url, collector_on):
    collector = collector_on(redis_url)
    deliver(collector)
    [child] = receivers(collector)
    os.kill(child, signal.SIGKILL)
    replacement = wait_for(lambda: [p for p in receivers(collector) if p != child], 15, "a new receiving process")
    assert not alive(child)
    assert len(replacement) == 1
    uuid = deliver(collector)
    assert collector.store.get_task(uuid)["name"] == "probe.task"


def test_a_broker_restart_is_counted_and_events_arrive_again(restartable_redis, collector_on):
    collector = collector_on(restartable_redis.url)
    deliver(collector)
    [child] = receivers(collector)
    restartable_redis.restart()
    wait_for(lambda: collector.stats()["disconnects"] >= 1, 15, "the lost connection counted")
    uuid = deliver(collector)
    assert collector.store.get_task(uuid)["state"] == "RECEIVED"
    assert collector.connected is True
    assert receivers(collector) == [child]  # the same process reconnected: losing the broker is not a crash


def test_stop_ends_the_receiving_process(redis_url, collector_on):
    collector = collector_on(redis_url)
    [child] = receivers(collector)
    collector.stop()
    assert receivers(collector) == []
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # ended and reaped: not even a zombie left


# Bodies kombu cannot decode, or that decode to something that is not an event: each is counted.
UNDECODABLE = [
    ("not json{", {"content_type": "application/json", "content_encoding": "utf-8"}),
    (b"\x80\x04 pickle refused", {"content_type": "application/x-python-serialize", "content_encoding": "binary"}),
    ("not an event", {"serializer": "json"}),
    ([1, 2], {"serializer": "json"}),  # a batch of two non-events
]
# and, straight on Redis's channel without kombu's envelope: not JSON, JSON that is no envelope
RAW_UNDECODABLE = ["not even JSON", "{}"]
UNDECODABLE_EVENTS = 5 + len(RAW_UNDECODABLE)


def publish_raw(redis_url: str, app: Celery, body: str) -> None:
    """PUBLISH straight on Redis's event channel, without kombu's envelope."""
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.publish(f"/0.{app.conf.event_exchange}/task.garbage", body) >= 1  # we subscribe to it
    finally:
        client.close()


def test_garbage_on_the_event_channel_is_counted_as_malformed_and_the_stream_goes_on(redis_url, collector_on):
    collector = collector_on(redis_url)
    deliver(collector)
    [child] = receivers(collector)
    with collector.app.connection_for_write() as connection:
        producer = Producer(connection, exchange=get_exchange(connection))
        for body, options in UNDECODABLE:
            producer.publish(body, routing_key="task.garbage", declare=[producer.exchange], **options)
    for body in RAW_UNDECODABLE:
        publish_raw(redis_url, collector.app, body)
    uuid = str(uuid_module.uuid4())
    publish(collector.app, uuid)  # right behind the garbage
    stats = wait_for(lambda: (lambda s: s if s["malformed"] >= UNDECODABLE_EVENTS and collector.store.get_task(uuid)
                              else None)(collector.stats()), 15, "the garbage counted and the next event stored")
    assert stats["malformed"] == UNDECODABLE_EVENTS
    assert stats["disconnects"] == 0
    assert receivers(collector) == [child]


def test_the_receivers_short_path_gives_the_events_kombus_path_gives(redis_url):
    """celery's own receiver (kombu's path) and the receiving process's (JSON events straight to
    the receiver, anything else through kombu) listen side by side on a real Redis: the same events
    arrive, in the same order, the odd messages too (compressed, a datetime kombu's JSON revives, a
    list body, a lone surrogate, deep nesting)."""
    app = Celery("short-path-tests", broker=redis_url, set_as_current=False)
    got = {"kombu": [], "short": []}
    # A dispatcher's events and the odd ones, each with a uuid of its own to be compared by.
    uuids = [str(uuid_module.uuid4()) for _ in range(6)]
    with app.connection_for_write() as connection:
        producer = Producer(connection, exchange=get_exchange(connection))

        def send(body, **options):
            producer.publish(body, routing_key="task.received", declare=[producer.exchange], serializer="json",
                             **options)

        def received(uuid, **fields):
            return {"type": "task-received", "uuid": uuid, "hostname": "probe@short", "timestamp": time.time(),
                    "utcoffset": 0, "pid": 1, "clock": 7, "name": "probe.task", **fields}

        def publish_all():
            dispatcher = app.events.Dispatcher(connection, hostname="probe@short")
            dispatcher.send("task-received", uuid=uuids[0], name="probe.task", args="(1,)", kwargs="{}", retries=0)
            dispatcher.send("task-succeeded", uuid=uuids[0], result="'ok'", runtime=0.5)
            dispatcher.close()
            send(received(uuids[1], args="x" * 2000), compression="zlib")
            send(received(uuids[2], eta=datetime.datetime(2030, 1, 2, 3, 4, 5)))
            send([received(uuids[3]), received(uuids[4], name="probe.surrogate-\ud800")])
            send(json.loads(json.dumps(received(uuids[5]))[:-1] + ', "args": ' + "[" * 800 + "]" * 800 + "}"))

        def ours(name):  # events of other tests' workers may be on the bus too
            return lambda event: got[name].append(event) if event.get("uuid") in uuids else None
        receivers = {
            "kombu": EventReceiver(app.connection_for_read(), handlers={"*": ours("kombu")}, app=app),
            "short": receiving.TolerantReceiver(receiving.connection_for_events(app), app=app, counts=Counter(),
                                                handlers={"*": ours("short")}),
        }
        threads = [threading.Thread(target=receiver.capture, daemon=True) for receiver in receivers.values()]
        for thread in threads:
            thread.start()
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: sum(entry["psub"] == "1" for entry in client.client_list()) >= 2, 15,
                 "both receivers subscribed")
        client.close()
        publish_all()
        wait_for(lambda: len(got["kombu"]) == len(got["short"]) == 7, 20, "every event through both receivers")
        for receiver, thread in zip(receivers.values(), threads):
            receiver.should_stop = True
            thread.join(10)
    assert [event["uuid"] for event in got["short"]] == [uuids[0], *uuids]

    def comparable(events):  # when each receiver got it differs, nothing else
        return [{key: value for key, value in event.items() if key != "local_received"} for event in events]
    assert comparable(got["short"]) == comparable(got["kombu"])
    assert got["short"][3]["eta"] == datetime.datetime(2030, 1, 2, 3, 4, 5)  # revived by kombu's path

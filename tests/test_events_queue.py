"""Lossless events on RabbitMQ (--events-queue): `flowerbed collect` consumes a durable queue bound to
celery's event exchange and acknowledges a message only once the store committed it. Killed with
SIGKILL and started again, it loses nothing and counts nothing twice; two collectors on one queue
end with the state one alone would; SIGTERM writes, acknowledges and exits within 10 s. Real
RabbitMQ (a vhost of this session's own), real `celery worker` processes, real collector processes.
Without an events queue, a task seen finishing without its earlier events is counted as a gap."""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid as uuid_module

import pytest
from celery import Celery
from kombu import Connection

from helpers import Process, Stack, child_pids, free_port, get, get_json, wait_for, wait_started
from monitor.ingest.collector import Collector
from monitor.ingest.receiving import EventsQueue
from monitor.ingest.reports import report_key
from monitor.store import open_store
from monitor.store.sqlite import SqliteStore as Store
from monitor.services import build_services
from monitor.settings import SettingsError, load_settings
from monitor.store.schema import WORKER_COUNTERS
from test_collector import T0, UUID, Feed, task_lifecycle
from test_receiving import alive, publish

# -- settings ---------------------------------------------------------------------------------------


def test_events_queue_options_from_flags_and_environment():
    settings = load_settings(["--broker", "amqp://guest@rabbit//", "--events-queue", "flowerbed"], {})
    assert (settings.events_queue, settings.events_queue_max_length, settings.events_queue_ttl) == (
        "flowerbed", 1_000_000, 86_400.0)
    settings = load_settings([], {"FLOWERBED_BROKER": "amqps://rabbit//", "FLOWERBED_EVENTS_QUEUE": "q",
                                  "FLOWERBED_EVENTS_QUEUE_MAX_LENGTH": "5000", "FLOWERBED_EVENTS_QUEUE_TTL": "3600"})
    assert (settings.events_queue, settings.events_queue_max_length, settings.events_queue_ttl) == ("q", 5000, 3600.0)
    assert load_settings([], {}).events_queue == ""  # a subscription, as before
    assert load_settings(["web", "--events-queue", "q"], {}).events_queue == "q"  # the web side reads no events


@pytest.mark.parametrize("argv, message", [
    (["--events-queue", "q"], "--events-queue needs a RabbitMQ broker (amqp://), not redis://"),
    (["--broker", "amqp://a//;redis://b/0", "--events-queue", "q"], "not redis://"),
    (["--demo", "--events-queue", "q"], "not memory://"),
    (["--broker", "amqp://rabbit//", "--events-queue", " "], "events-queue must name a queue"),
    (["--broker", "amqp://rabbit//", "--events-queue", "q", "--events-queue-max-length", "0"],
     "events-queue-max-length must be a finite number greater than 0"),
    (["--broker", "amqp://rabbit//", "--events-queue", "q", "--events-queue-ttl", "-1"],
     "events-queue-ttl must be a finite number greater than 0"),
    (["--broker", "amqp://rabbit//", "--events-queue", "q", "--events-queue-ttl", "5000000"],
     "events-queue-ttl must be below 4,294,967 seconds"),
], ids=["redis", "failover-to-redis", "demo", "blank-name", "max-length", "ttl-negative", "ttl-too-long"])
def test_events_queue_is_refused_where_it_cannot_work(argv, message):
    with pytest.raises(SettingsError) as raised:
        load_settings(argv, {})
    assert message in str(raised.value)


# -- merging: copies are not counted twice; gaps are counted ---------------------------------------

UUID_TAIL = "1111111-2222-4333-8444-555555555555"  # a uuid without its first character


def counters(feed) -> dict:
    """The worker's counters, checked against those /metrics serves: the same events, counted once."""
    worker = feed.worker()
    counts = {name: worker[name] for name in WORKER_COUNTERS}
    served = collections.Counter()
    for _worker, _name, event_type, count in feed.store.metric_counters()["events"]:
        served[event_type] += count
    assert served == {f"task-{name}": count for name, count in counts.items() if count}
    runtimes = feed.store.metric_counters()["runtimes"]
    assert sum(row[2] for row in runtimes) == counts["succeeded"]  # each success observed once
    return counts


def test_events_delivered_again_merge_but_count_once_whichever_collector_gets_them(tmp_path):
    queue = EventsQueue("q", 1000, 60.0)
    feed = Feed(tmp_path, events_queue=queue)
    feed.merge(*task_lifecycle(feed))
    once = {"received": 1, "started": 1, "succeeded": 1, "failed": 0, "retried": 0}
    assert counters(feed) == once
    feed.state = feed.collector.new_merge_state()  # started again after a kill: nothing in memory
    feed.merge(*task_lifecycle(feed))
    other = Feed(tmp_path, events_queue=queue)  # another collector on the same queue and store
    other.merge(*task_lifecycle(other), *task_lifecycle(other))  # twice in one batch, too
    assert counters(feed) == once
    assert feed.task()["state"] == "SUCCESS"
    # a later event of the task is new, wherever the earlier ones were merged
    other.merge(other.event("task-retried", T0 + 2, uuid=UUID))
    assert counters(feed) == {**once, "retried": 1}


def finished_alone(feed, uuid, at=T0, kind="task-succeeded"):
    return feed.event(kind, at + 1.5, uuid=uuid, result="5", runtime=1.0)


def test_tasks_finishing_without_their_earlier_events_are_counted_as_gaps(tmp_path):
    feed = Feed(tmp_path)
    whole, reversed_, late_start, only_end, failed_alone, revoked = (f"{n}{UUID_TAIL}" for n in range(6))
    assert feed.merge(*task_lifecycle(feed, uuid=whole))["gaps"] == 0
    assert feed.merge(*reversed(task_lifecycle(feed, uuid=reversed_)))["gaps"] == 0  # all in one batch
    received, started, succeeded = task_lifecycle(feed, uuid=late_start)
    feed.merge(received)
    feed.state = feed.collector.new_merge_state()  # let go of in memory: the store still shows it
    assert feed.merge(started, succeeded)["gaps"] == 0
    assert feed.merge(finished_alone(feed, only_end))["gaps"] == 1
    assert feed.merge(finished_alone(feed, failed_alone, kind="task-failed"))["gaps"] == 2
    assert feed.merge(finished_alone(feed, only_end))["gaps"] == 2  # the same event again is no new gap
    assert feed.merge(feed.event("task-revoked", T0, uuid=revoked))["gaps"] == 2  # revoked before it ran


def test_with_an_events_queue_nothing_is_published_unheard_so_no_gaps_are_counted(tmp_path):
    feed = Feed(tmp_path, events_queue=EventsQueue("q", 1000, 60.0))
    stats = feed.merge(finished_alone(feed, f"0{UUID_TAIL}"))
    assert (stats["gaps"], stats["events_queue"], stats["role"]) == (0, "q", "active")


# -- real RabbitMQ, real workers, real collector processes -----------------------------------------

@pytest.fixture(scope="module")
def broker(rabbitmq_url) -> str:
    if rabbitmq_url.endswith("//"):
        pytest.skip("rabbitmqctl could not create a vhost of this session's own (it needs root or the "
                    "rabbitmq user); a durable events queue would outlive the tests in the shared vhost")
    return rabbitmq_url


class CollectProcess:
    """`python cli.py collect --events-queue QUEUE` in a process of its own, with its status port."""

    def __init__(self, broker: str, db, queue: str, log_dir, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process([sys.executable, "cli.py", "collect", "--broker", broker, "--db", str(db),
                                "--events-queue", queue, "--port", str(self.port), "--inspect-seconds", "60"],
                               log_dir / f"collect-{name}.log")
        wait_started(self.process, lambda: get(f"{self.url}/healthcheck/ready")[0] == 200, 60,
                     f"collector {name} ready")

    def stats(self) -> dict:
        return get_json(f"{self.url}/api/collector")[1]

    def stop(self, sig=signal.SIGTERM) -> None:
        self.process.stop(sig)


@pytest.fixture
def collect(tmp_path, broker):
    """collect(db, queue, name) starts a CollectProcess; each is stopped at the end of the test."""
    stack = Stack()
    yield lambda db, queue, name: stack.add(CollectProcess(broker, db, queue, tmp_path, name))
    stack.stop_all()


@pytest.fixture
def web_side(tmp_path, broker):
    """web_side(db) starts `python cli.py web` on that store and returns its address; it is stopped at
    the end of the test."""
    stack = Stack()

    def start(db) -> str:
        port = free_port()
        web = stack.add(Process([sys.executable, "cli.py", "web", "--broker", broker, "--db", str(db), "--port",
                                 str(port)], tmp_path / "web.log"))
        wait_started(web, lambda: get(f"http://127.0.0.1:{port}/healthcheck/ready")[0] == 200, 60, "the web side")
        return f"http://127.0.0.1:{port}"
    yield start
    stack.stop_all()


def store_state(db, hostname: str) -> tuple[dict, dict]:
    """({uuid: state}, {counter: value} of the worker) as the store (SQLite or PostgreSQL) holds them."""
    with contextlib.closing(open_store(str(db))) as store:
        states = {row["uuid"]: row["state"] for row in store.query("SELECT uuid, state FROM tasks")}
        rows = store.query(f"SELECT {', '.join(WORKER_COUNTERS)} FROM workers WHERE hostname = ?", (hostname,))
    return states, dict(zip(WORKER_COUNTERS, tuple(rows[0]) if rows else (0,) * len(WORKER_COUNTERS)))


def served_counts(db, hostname: str) -> dict:
    """The worker's counts as /metrics serves them: {counter: value}, from flower_events_total's rows,
    and "runtimes" the observations of the runtime histogram."""
    with contextlib.closing(open_store(str(db))) as store:
        counters = store.metric_counters()
    served = dict.fromkeys(WORKER_COUNTERS, 0)
    for worker, _name, event_type, count in counters["events"]:
        if worker == hostname:
            served[event_type.removeprefix("task-")] += count
    served["runtimes"] = sum(row[2] for row in counters["runtimes"] if row[0] == hostname)
    return served


def wait_for_store(db, hostname: str, expected_states: dict, expected_counts: dict, timeout: float, *collectors):
    """Wait until the store holds every task in its expected state, the worker's counters have reached
    the expected counts and the collectors hold nothing more; returns what the store holds then."""
    def settled():
        states, counts = store_state(db, hostname)
        done = all(states.get(uuid) == state for uuid, state in expected_states.items())
        reached = all(counts[name] >= value for name, value in expected_counts.items())
        idle = all(collector.stats()["backlog"] == 0 for collector in collectors)
        return (states, counts) if done and reached and idle else None
    return wait_for(settled, timeout, f"{len(expected_states)} tasks and the counters {expected_counts} in {db}",
                    interval=0.5)


def queue_depth(broker: str, queue: str) -> int:
    """Messages ready in the queue (delivered but unacknowledged ones are not)."""
    with Connection(broker) as connection:
        return connection.default_channel.queue_declare(queue, passive=True).message_count


def stored_count(db, state: str = "SUCCESS") -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as connection:
        return connection.execute("SELECT count(*) FROM tasks WHERE state = ?", (state,)).fetchone()[0]


def collecting(collect, worker, tmp_path, tasks: int, stored: int):
    """A collector on a queue and store of its own, and `tasks` 10 ms tasks sent to `worker`, at
    least `stored` of them stored: (db, queue, collector, worker, {uuid: "SUCCESS"})."""
    db, queue = tmp_path / "store.db", f"flowerbed-{uuid_module.uuid4().hex[:8]}"
    first = collect(db, queue, "first")
    sent = {worker.send("sample.sleep", 0.01): "SUCCESS" for _ in range(tasks)}
    wait_for(lambda: stored_count(db) >= stored, 120, f"the first {stored} tasks stored", interval=0.05)
    return db, queue, first, worker, sent


@pytest.mark.integration
def test_a_collector_killed_with_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(collect, celery_worker,
                                                                                         broker, tmp_path):
    # 10 ms each on 4 threads: most are still to run when the collector is killed
    db, queue, first, worker, sent = collecting(collect, celery_worker(broker, "kill9@tests"), tmp_path, 2500, 500)
    # The worst moment for a kill: batches committed and not yet acknowledged. Stopping the receiving
    # process mid-stream makes it certain (it cannot acknowledge what its parent commits meanwhile).
    [receiving] = child_pids(first.process.proc.pid)
    os.kill(receiving, signal.SIGSTOP)
    wait_for(lambda: first.stats()["backlog"] == 0, 60, "what the receiving process sent committed")
    first.process.proc.send_signal(signal.SIGKILL)
    first.process.proc.wait(10)
    os.kill(receiving, signal.SIGCONT)
    wait_for(lambda: not alive(receiving), 10, "the receiving process gone with its parent")
    sent.update({worker.send("sample.sleep", 0.01): "SUCCESS" for _ in range(2500)})  # while nobody listens
    wait_for(lambda: queue_depth(broker, queue) > 0, 60, "events kept in the queue while no collector listens")

    second = collect(db, queue, "second")
    states, counts = wait_for_store(db, worker.hostname, sent, {"received": 5000, "started": 5000,
                                                                "succeeded": 5000}, 180, second)
    assert {uuid: states[uuid] for uuid in sent} == sent
    assert counts == {"received": 5000, "started": 5000, "succeeded": 5000, "failed": 0, "retried": 0}
    assert served_counts(db, worker.hostname) == {**counts, "runtimes": 5000}  # /metrics' counters, once each too
    assert second.stats()["gaps"] == 0


@pytest.mark.integration
def test_two_collectors_on_one_queue_end_with_the_state_one_alone_would(collect, celery_worker, broker, make_store,
                                                                        web_side):
    """On both stores: on PostgreSQL the two write at the same time, in transactions of their own."""
    shared_db, alone_db = make_store.url("shared"), make_store.url("alone")
    shared_queue, alone_queue = (f"flowerbed-{name}-{uuid_module.uuid4().hex[:8]}" for name in ("shared", "alone"))
    pair = [collect(shared_db, shared_queue, "a"), collect(shared_db, shared_queue, "b")]
    alone = collect(alone_db, alone_queue, "alone")  # its own queue: every event too
    worker = celery_worker(broker, "pair@tests")
    sent = {worker.send("sample.add", n, 1): "SUCCESS" for n in range(600)}
    sent.update({worker.send("sample.fail", f"boom {n}"): "FAILURE" for n in range(100)})
    sent.update({worker.send("sample.flaky", 3): "SUCCESS" for _ in range(50)})  # retried twice each
    expected = {"received": 850, "started": 850, "succeeded": 650, "failed": 100, "retried": 100}

    shared = wait_for_store(shared_db, worker.hostname, sent, expected, 150, *pair)
    single = wait_for_store(alone_db, worker.hostname, sent, expected, 60, alone)
    assert {uuid: shared[0][uuid] for uuid in sent} == {uuid: single[0][uuid] for uuid in sent} == sent
    assert shared[1] == single[1] == expected
    assert served_counts(shared_db, worker.hostname) == served_counts(alone_db, worker.hostname) == {
        **expected, "runtimes": 650}
    for collector in pair:  # both consumed: the broker split the messages between them
        stats = collector.stats()
        assert stats["stored"] > 0 and stats["role"] == "active", stats

    # The web side shows the broker's collectors together: they used to take turns at one report.
    web = web_side(shared_db)
    owners = sorted(collector.stats()["owner"] for collector in pair)

    def summed():  # heartbeats go on arriving: the pair's reports and the web's reading agree between two
        own = [collector.stats() for collector in pair]
        shown = get_json(f"{web}/api/collector")[1]
        return shown if shown["stored"] == sum(stats["stored"] for stats in own) else None
    shown = wait_for(summed, 60, "the web side's counters the sum of the pair's", interval=0.3)
    assert (shown["collectors"], shown["silent_collectors"], shown["role"]) == (owners, 0, "active"), shown


@pytest.mark.integration
def test_sigterm_writes_and_acknowledges_what_the_collector_holds_and_exits_within_10_s(collect, celery_worker,
                                                                                       broker, tmp_path):
    db, queue, first, worker, sent = collecting(collect, celery_worker(broker, "term@tests"), tmp_path, 500, 100)
    stopping = time.monotonic()
    first.stop(signal.SIGTERM)  # to the process group, as a terminal or a service manager sends it
    assert time.monotonic() - stopping < 10
    assert first.process.proc.returncode == 0, first.process.output()[-3000:]
    sent.update({worker.send("sample.sleep", 0.01): "SUCCESS" for _ in range(500)})  # while nobody listens

    second = collect(db, queue, "second")
    expected = {"received": 1000, "started": 1000, "succeeded": 1000}
    states, counts = wait_for_store(db, worker.hostname, sent, expected, 150, second)
    assert {uuid: states[uuid] for uuid in sent} == sent and counts["received"] == 1000

    # Once the worker is gone and everything is written, a stop acknowledges it all: nothing goes back
    # to the queue (what a collector does not acknowledge, the broker delivers again).
    worker.stop()
    wait_for(lambda: second.stats()["backlog"] == 0 and queue_depth(broker, queue) == 0, 60, "the queue drained")
    second.stop(signal.SIGTERM)
    assert second.process.proc.returncode == 0
    assert queue_depth(broker, queue) == 0


@pytest.mark.integration
def test_a_stop_writes_and_acknowledges_exactly_what_was_received(broker, tmp_path):
    queue, published = f"flowerbed-{uuid_module.uuid4().hex[:8]}", 20_000
    app = Celery("events-queue-tests", broker=broker, set_as_current=False)
    collector = Collector(app, Store(str(tmp_path / "stop.db")), events_queue=EventsQueue(queue, published, 600.0))
    collector.start()
    wait_for(lambda: collector.connected, 30, "the receiving process connected")
    publishing = threading.Thread(target=publish, args=(app, *(str(uuid_module.uuid4()) for _ in range(published))))
    publishing.start()  # one event a message, a task each
    try:
        wait_for(lambda: collector.stats()["stored"] >= 1000, 60, "the first events stored", interval=0.05)
        collector.stop()
    finally:
        publishing.join()
    stats = collector.stats()
    assert stats["stored"] == stats["received"] == collector.store.count_tasks()  # all it received is written
    # ... and acknowledged, and nothing else: the queue keeps exactly the rest
    wait_for(lambda: queue_depth(broker, queue) == published - stats["received"], 60,  # a busy broker: up to a minute
             f"{published - stats['received']:,} messages in the queue (received {stats['received']:,})")


@pytest.mark.integration
def test_a_process_that_collects_shows_its_collector_live_beside_the_others_of_its_queue(broker, tmp_path):
    queue = f"flowerbed-{uuid_module.uuid4().hex[:8]}"
    services = build_services(load_settings(["--broker", broker, "--db", str(tmp_path / "s.db"), "--events-queue",
                                             queue], {}))
    services.start()
    try:
        own = services.collector
        wait_for(lambda: own.stats()["connected"], 30, "the collector connected")
        other = {**own.stats(), "owner": "elsewhere:1:abcdef", "received": 40, "stored": 40, "updated_at": time.time()}
        services.store.set_meta(report_key(own.broker_name, other["owner"]), other)
        [shown] = services.broker_stats().values()
        assert shown["collectors"] == sorted([own.owner, other["owner"]])
        assert shown["stored"] >= 40 and shown["received"] >= 40
        assert list(services.own_reports()) == [own.broker_name]
        assert services.own_reports()[own.broker_name]["owner"] == own.owner  # what `collect --port` answers for
    finally:
        services.stop()
        with Connection(broker) as connection:
            connection.default_channel.queue_delete(queue)

"""End to end on real brokers: `python cli.py` watching a real `celery worker` subprocess that runs
tasks which succeed, fail with a traceback, retry and sleep; checked through the JSON API."""
from __future__ import annotations

import dataclasses
import json
import signal
import urllib.request

import pytest
from celery.events.event import get_exchange
from kombu import Producer

from helpers import (CeleryWorker, FlowerbedServer, Stack, get_json, tasks, wait_for, wait_for_tasks,
                     worker_status)

pytestmark = pytest.mark.integration

SHORT_SLEEP, LONG_SLEEP = 0.2, 1.0
# A sleep's runtime is its sleep plus the worker's own overhead, which stays well under this.
RUNTIME_SLACK = 0.5


@dataclasses.dataclass
class Cluster:
    broker: str
    server: FlowerbedServer
    worker: CeleryWorker
    sent: dict[str, str]  # what the task is for → its UUID


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def broker_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="module")
def cluster(broker_url, tmp_path_factory):
    """One monitor and one worker per broker, with the sample tasks already run. Tests that send
    more tasks through this worker come last in the file: the ones before assert the exact set."""
    tmp = tmp_path_factory.mktemp("cluster")
    stack = Stack()
    try:
        server = stack.add(FlowerbedServer.start(broker_url, tmp / "flowerbed.db", tmp / "flowerbed.log",
                                                 "--inspect-seconds", "2"))
        worker = stack.add(CeleryWorker(broker_url, "alpha@integration", tmp))
        # Events sent before the monitor subscribed are lost: wait until it hears the worker.
        wait_for(lambda: worker_status(server, worker.hostname), 20, "the worker online in the monitor")
        sent = {
            "add": worker.send("sample.add", 2, 3),
            "fail": worker.send("sample.fail", "boom"),
            "flaky": worker.send("sample.flaky", 2),  # fails once, retried, then succeeds
            "short": worker.send("sample.sleep", SHORT_SLEEP),
            "long": worker.send("sample.sleep", LONG_SLEEP),
        }
        wait_for_tasks(server, {sent["fail"]: "FAILURE", **{sent[k]: "SUCCESS" for k in ("add", "flaky", "short", "long")}})
        yield Cluster(broker_url, server, worker, sent)
    finally:
        stack.stop_all()


def test_api_lists_exactly_the_tasks_sent_with_state_result_and_worker(cluster):
    listed = tasks(cluster.server)
    assert set(listed) == set(cluster.sent.values())
    expected = {"add": ("sample.add", "SUCCESS", "5"), "fail": ("sample.fail", "FAILURE", None),
                "flaky": ("sample.flaky", "SUCCESS", "1"), "short": ("sample.sleep", "SUCCESS", str(SHORT_SLEEP)),
                "long": ("sample.sleep", "SUCCESS", str(LONG_SLEEP))}
    for purpose, (name, state, result) in expected.items():
        task = listed[cluster.sent[purpose]]
        assert (task["name"], task["state"], task["result"]) == (name, state, result), purpose
        assert task["worker"] == cluster.worker.hostname, purpose
        assert task["received"] <= task["started"], purpose


@pytest.mark.parametrize("purpose, seconds", [("short", SHORT_SLEEP), ("long", LONG_SLEEP)])
def test_sleep_task_runtime_matches_its_sleep(cluster, purpose, seconds):
    status, task = get_json(f"{cluster.server}/api/task/info/{cluster.sent[purpose]}")
    assert status == 200
    assert seconds <= task["runtime"] < seconds + RUNTIME_SLACK


def test_sorting_by_runtime_descending_puts_the_slowest_first(cluster):
    ordered = list(tasks(cluster.server, "sort_by=-runtime"))
    assert ordered[:2] == [cluster.sent["long"], cluster.sent["short"]]


def test_failed_task_has_exception_and_traceback(cluster):
    status, task = get_json(f"{cluster.server}/api/task/info/{cluster.sent['fail']}")
    assert status == 200
    assert task["exception"] == "ValueError('boom')"
    assert "Traceback (most recent call last)" in task["traceback"]
    assert "raise ValueError(message)" in task["traceback"]
    # failed - started (Flower answers null: celery's task-failed event carries no runtime); README, "What differs"
    assert task["runtime"] is not None and task["runtime"] >= 0


def test_retried_task_ends_successful_with_its_retry_counted(cluster):
    status, task = get_json(f"{cluster.server}/api/task/info/{cluster.sent['flaky']}")
    assert status == 200
    assert (task["state"], task["retries"]) == ("SUCCESS", 1)
    assert task["retried"] is not None
    assert "attempt 1 failed" in (task["exception"] or "")  # kept from the retry


def test_worker_is_online_with_counters_of_its_task_events(cluster):
    status, workers = get_json(f"{cluster.server}/api/workers")
    assert status == 200
    worker = workers[cluster.worker.hostname]
    assert worker["status"] is True
    # The retried task is received and started twice.
    assert worker["counters"] == {"received": 6, "started": 6, "succeeded": 4, "failed": 1, "retried": 1}
    # The inspector's replies are merged in (Flower's shape): the worker's registered tasks.
    wait_for(lambda: "sample.flaky" in get_json(f"{cluster.server}/api/workers")[1][cluster.worker.hostname]
             .get("registered", []), 15, "the inspect reply with registered tasks")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["goodbye", "killed"])
def test_worker_shows_offline_after_it_stops(cluster, tmp_path, sig):
    worker = CeleryWorker(cluster.broker, f"{sig.name.lower()}@integration", tmp_path)
    try:
        wait_for(lambda: worker_status(cluster.server, worker.hostname), 20, "the worker online")
    finally:
        worker.stop(sig)
    # Killed, it misses two one-second heartbeats; the margin covers the collector's batching.
    wait_for(lambda: worker_status(cluster.server, worker.hostname) is False, 8, "the worker offline")


@pytest.mark.parametrize("query, expected", [
    ("search=state:FAILURE", ["fail"]),
    ("search=name:sample.sleep", ["short", "long"]),
    ("search=boom", ["fail"]),
    ("state=SUCCESS&taskname=sample.add", ["add"]),
    ("search=retries", []),
])
def test_api_filters_tasks(cluster, query, expected):
    assert set(tasks(cluster.server, query)) == {cluster.sent[purpose] for purpose in expected}


def test_counts_match_the_tasks(cluster):
    with urllib.request.urlopen(f"{cluster.server}/api/tasks?limit=2&sort_by=-runtime", timeout=5) as response:
        assert response.headers["X-Total-Count"] == str(len(cluster.sent))
        assert list(json.load(response)) == [cluster.sent["long"], cluster.sent["short"]]
    assert get_json(f"{cluster.server}/api/tasks/count")[1] == {"count": len(cluster.sent)}
    assert get_json(f"{cluster.server}/api/tasks/count?state=FAILURE")[1] == {"count": 1}
    assert get_json(f"{cluster.server}/api/tasks/count?search=name:sample.sleep")[1] == {"count": 2}


def test_uuid_search_finds_exactly_that_task(cluster):
    uuid = cluster.sent["short"]
    assert list(tasks(cluster.server, f"search={uuid}")) == [uuid]
    assert list(tasks(cluster.server, f"search=uuid:{uuid[:8]}")) == [uuid]


@pytest.mark.parametrize("path, status, message", [
    ("/api/tasks?search=state:NOPE", 400, "unknown state NOPE"),
    ("/api/tasks?search=(name:sample.add", 400, "missing ')'"),
    ("/api/tasks?sort_by=-bogus", 400, "cannot sort by 'bogus'"),
    ("/api/tasks?limit=abc", 400, "limit must be a whole number"),
    ("/api/task/info/00000000-0000-0000-0000-000000000000", 404, "Unknown task"),
])
def test_api_errors_are_json_with_a_message(cluster, path, status, message):
    got_status, body = get_json(f"{cluster.server}{path}")
    assert got_status == status
    assert message in body["error"]


def test_history_comes_back_after_a_restart_with_the_same_db(cluster, flowerbed_server, tmp_path):
    first = flowerbed_server(cluster.broker, db=tmp_path / "history.db")
    wait_for(lambda: worker_status(first, cluster.worker.hostname), 20, "the worker in the first monitor")
    uuid = cluster.worker.send("sample.add", 20, 22)
    wait_for_tasks(first, {uuid: "SUCCESS"})
    first.stop()

    second = flowerbed_server(cluster.broker, db=tmp_path / "history.db")
    status, task = get_json(f"{second}/api/task/info/{uuid}")
    assert status == 200
    assert (task["state"], task["result"], task["worker"]) == ("SUCCESS", "42", cluster.worker.hostname)
    assert cluster.worker.hostname in get_json(f"{second}/api/workers")[1]


def test_tasks_sent_after_a_broker_restart_still_arrive(restartable_redis, flowerbed_server, celery_worker):
    server = flowerbed_server(restartable_redis.url)
    worker = celery_worker(restartable_redis.url, "gamma@restart")
    wait_for(lambda: worker_status(server, worker.hostname), 20, "the worker online")
    before = worker.send("sample.add", 1, 1)
    wait_for_tasks(server, {before: "SUCCESS"})

    restartable_redis.restart()
    wait_for(lambda: get_json(f"{server}/api/collector")[1]["disconnects"] >= 1, 20, "the collector to notice")
    wait_for(lambda: get_json(f"{server}/api/collector")[1]["connected"], 30, "the collector to reconnect")
    after = worker.send("sample.add", 2, 2)
    wait_for_tasks(server, {after: "SUCCESS"}, timeout=45)
    assert tasks(server, f"search={before}")[before]["state"] == "SUCCESS"  # history kept meanwhile


# Bodies a buggy or hostile producer could publish on the event exchange.
GARBAGE_EVENTS = [
    "not an event",
    {"type": "task-started"},  # no uuid, no hostname
    {"type": "worker-heartbeat", "hostname": "celery@garbage", "timestamp": "yesterday", "utcoffset": 0},
    [1, 2],  # a batch of two non-events
]


def test_garbage_on_the_event_bus_is_counted_as_malformed_and_collecting_goes_on(cluster):
    before = get_json(f"{cluster.server}/api/collector")[1]
    with cluster.worker.client.connection_for_write() as connection:
        producer = Producer(connection, exchange=get_exchange(connection), serializer="json")
        for body in GARBAGE_EVENTS:
            producer.publish(body, routing_key="task.garbage", declare=[producer.exchange])
    uuid = cluster.worker.send("sample.add", 7, 8)
    wait_for_tasks(cluster.server, {uuid: "SUCCESS"})
    garbage = sum(len(body) if isinstance(body, list) else 1 for body in GARBAGE_EVENTS)

    def all_counted():
        stats = get_json(f"{cluster.server}/api/collector")[1]
        return stats if stats["malformed"] - before["malformed"] == garbage else None
    after = wait_for(all_counted, 10, f"{garbage} malformed events counted")
    assert after["disconnects"] == before["disconnects"]
    assert after["connected"] is True

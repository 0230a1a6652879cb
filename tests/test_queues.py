"""Queue depths: read from a real Redis (priority sub-queues, a global_keyprefix) and a real RabbitMQ
(a vhost of the session's own; through its management API too where that runs), sampled by the
inspector beside a real celery worker, kept in both stores, and answered by /api/queues/length in
Flower's shape."""
from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import uuid

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Exchange, Producer, Queue

from helpers import CeleryWorker, FlowerbedServer, get, get_json, port_open, wait_for, worker_row, worker_status
from monitor.ingest import queues
from monitor.ingest.inspector import Inspector
from monitor.store import open_store

PREFIXED = {"global_keyprefix": "team1:"}


def client_app(broker: str, options: dict | None = None) -> Celery:
    app = Celery("flowerbed-tests-queues", broker=broker, set_as_current=False)
    app.conf.broker_transport_options = options or {}
    return app


def send(app: Celery, queue: str, count: int, priority: int | None = None) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task("sample.add", (1, 2), queue=queue, priority=priority, producer=producer)


@pytest.fixture
def redis_broker(redis_url):
    """The session's Redis, database 6, emptied after the test."""
    url = redis_url.rsplit("/", 1)[0] + "/6"
    yield url
    redis.Redis.from_url(url).flushdb()


def test_redis_depth_sums_the_priority_sub_queues_under_the_global_keyprefix(redis_broker):
    queue = f"q-{uuid.uuid4().hex[:6]}"
    app = client_app(redis_broker, PREFIXED)
    send(app, queue, 2)                  # priority 0: the queue's own list
    send(app, queue, 3, priority=5)      # step 3
    send(app, queue, 4, priority=9)      # step 9
    raw = redis.Redis.from_url(redis_broker)
    # kombu's own key names, read without kombu: the prefix, then queue, separator and step.
    assert {key: raw.llen(key) for key in raw.keys(f"team1:{queue}*")} == {
        f"team1:{queue}".encode(): 2, f"team1:{queue}\x06\x163".encode(): 3, f"team1:{queue}\x06\x169".encode(): 4}
    assert queues.read_depths(app, [queue, "celery"]) == [queues.Depth("celery", 0, None), queues.Depth(queue, 9, None)]
    # Without the workers' prefix the queue looks empty: what Flower shows (its issues #928, #1254).
    assert queues.read_depths(client_app(redis_broker), [queue]) == [queues.Depth(queue, 0, None)]


def test_redis_depth_follows_custom_priority_steps_and_separator(redis_broker):
    queue = f"q-{uuid.uuid4().hex[:6]}"
    options = {"priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"}
    app = client_app(redis_broker, options)
    send(app, queue, 1, priority=1)
    send(app, queue, 2, priority=7)
    raw = redis.Redis.from_url(redis_broker)
    assert sorted(raw.keys(f"{queue}*")) == [f"{queue}:1".encode(), f"{queue}:7".encode()]
    assert queues.read_depths(app, [queue]) == [queues.Depth(queue, 3, None)]


def test_redis_keys_name_every_priority_step():
    assert queues.redis_keys("video", "\x06\x16", [0, 3, 6, 9], "p:") == [
        "p:video", "p:video\x06\x163", "p:video\x06\x166", "p:video\x06\x169"]


@pytest.fixture
def rabbitmq_queues(rabbitmq_url):
    """Two queues on the session's vhost: one holding 5 messages, one with a consumer and none."""
    waiting, consumed = f"waiting-{uuid.uuid4().hex[:6]}", f"consumed-{uuid.uuid4().hex[:6]}"
    exchange = Exchange("flowerbed-tests", type="direct")
    with Connection(rabbitmq_url) as connection:
        channel = connection.channel()
        declared = [Queue(name, exchange, routing_key=name, channel=channel) for name in (waiting, consumed)]
        for queue in declared:
            queue.declare()
        producer = Producer(channel, exchange=exchange)
        for number in range(5):
            producer.publish({"n": number}, routing_key=waiting)
        consumer = Consumer(channel, [declared[1]], callbacks=[lambda body, message: None])
        consumer.consume()
        yield rabbitmq_url, waiting, consumed
        consumer.cancel()
        for queue in declared:
            queue.delete()


def test_rabbitmq_depth_and_consumers_from_a_passive_declare(rabbitmq_queues):
    url, waiting, consumed = rabbitmq_queues
    depths = wait_for(lambda: (lambda found: found if found[2].messages == 5 else None)(
        queues.read_depths(client_app(url), [waiting, consumed, "no-such-queue"])), 10, "5 messages counted")
    assert depths == [queues.Depth(consumed, 0, 1), queues.Depth("no-such-queue", None, None),
                      queues.Depth(waiting, 5, 0)]


def test_store_keeps_the_latest_depth_its_history_and_forgets_unwatched_queues(make_store):
    store = make_store(sample_days=1.0)
    store.save_queue_depths("main", 1000.0, [("celery", 0, 0, set(), True), ("orders", 7, 1, {"w@b"}, True),
                                             ("gone", None, None, set(), False)])
    store.save_queue_depths("main", 1010.0, [("orders", 9, 0, set(), True)])
    store.save_queue_depths("other", 1010.0, [], "ConnectionError: refused")
    assert [(q["name"], q["messages"], q["consumers"], q["workers"]) for q in store.queues()] == [
        ("celery", 0, 0, []), ("gone", None, None, []), ("orders", 9, 0, [])]
    assert store.queue_reports() == {"main": {"at": 1010.0, "error": None},
                                     "other": {"at": 1010.0, "error": "ConnectionError: refused"}}
    assert store.queue_names("main", since=500.0) == ["celery", "orders"]
    assert [(row["name"], row["bucket"], row["messages"]) for row in store.queue_history(0, 60, "main")] == [
        ("celery", 960, 0), ("orders", 960, 9)]
    store.enforce_retention(now=1000.0 + 86400 + 5)  # past the window for what was seen at 1000 only
    assert [q["name"] for q in store.queues()] == ["orders"]
    assert [row["messages"] for row in store.queue_history(0, 60)] == [9]


def test_inspector_samples_the_queues_a_worker_consumes_and_a_queue_nobody_does(redis_broker, tmp_path):
    worker = CeleryWorker(redis_broker, "sampled@queues", tmp_path)
    store = open_store(str(tmp_path / "store.db"))
    try:
        inspector = Inspector(client_app(redis_broker), store, broker_name="main", timeout=2.0)
        wait_for(lambda: inspector.inspect_once().get(worker.hostname), 20, "the worker's inspect replies")
        orphan = f"orphan-{uuid.uuid4().hex[:6]}"
        send(client_app(redis_broker), orphan, 3)
        store.save_queue_depths("main", 1.0, [(orphan, 3, 0, set(), True)])  # watched before: a worker stopped
        store.write_batch(workers=[worker_row(worker.hostname, freq=2.0, last_heartbeat=time.time(), active=0, processed=0,
                                              broker="main")])  # online, as its heartbeats would say
        inspector.sample_queues()
        found = {q["name"]: (q["messages"], q["consumers"], q["workers"]) for q in store.queues("main")}
        assert found == {"celery": (0, 0, []), worker.queue: (0, 1, [worker.hostname]), orphan: (3, 0, [])}
    finally:
        worker.stop()
        store.close()


def test_api_queue_lengths_in_flowers_shape(redis_broker, tmp_path):
    server = FlowerbedServer.start(redis_broker, tmp_path / "f.db", tmp_path / "f.log", "--inspect-seconds", "1")
    worker = CeleryWorker(redis_broker, "api@queues", tmp_path)
    try:
        wait_for(lambda: worker_status(server, worker.hostname), 20, "the worker online")
        body = wait_for(lambda: (lambda found: found if worker.queue in {q["name"] for q in found[1]["active_queues"]}
                                 else None)(get_json(f"{server}/api/queues/length")), 20, "the worker's queue listed")[1]
        assert {q["name"] for q in body["active_queues"]} == {"celery", worker.queue}
        entry = next(q for q in body["active_queues"] if q["name"] == worker.queue)
        assert entry == {"name": worker.queue, "messages": 0, "consumers": 1, "broker": entry["broker"]}
        assert get(f"{server}/api/queues/length?broker=nope")[1] == b'{"active_queues":[]}\n'
    finally:
        worker.stop()
        server.stop()


MANAGEMENT_API = "http://guest:guest@127.0.0.1:15672/api/"


def test_rabbitmq_depth_from_the_management_api(rabbitmq_queues):
    if not port_open("127.0.0.1", 15672):
        pytest.skip("RabbitMQ's management API is not listening on 127.0.0.1:15672 "
                    "(rabbitmq-plugins enable rabbitmq_management)")
    url, waiting, consumed = rabbitmq_queues
    # The management API's counts lag the broker by its statistics interval (5 s by default).
    depths = wait_for(lambda: (lambda found: found if found[2].messages == 5 and found[0].consumers == 1 else None)(
        queues.read_depths(client_app(url), [waiting, consumed, "no-such-queue"], MANAGEMENT_API)), 30,
        "the management API's counts")
    assert depths == [queues.Depth(consumed, 0, 1), queues.Depth("no-such-queue", None, None),
                      queues.Depth(waiting, 5, 0)]


class _ManagementApi(http.server.BaseHTTPRequestHandler):
    """Answers GET /api/queues/<vhost> as RabbitMQ's management API does, recording each request."""
    requests: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _ManagementApi.requests.append((self.path, self.headers.get("Authorization")))
        body = json.dumps([{"name": "orders", "messages": 12, "consumers": 2, "vhost": "shop"},
                           {"name": "other", "messages": 1, "consumers": 0, "vhost": "shop"}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_management_api_request_names_the_vhost_and_uses_the_api_credentials():
    # A unit test of the request only: the real API is checked above where RabbitMQ runs with it.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ManagementApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Connection("amqp://alice:secret@127.0.0.1:1/shop") as connection:
            api = f"http://ops:op%40ss@127.0.0.1:{server.server_port}/api/"
            depths = queues.management_api_depths(api, connection, ["missing", "orders"])
    finally:
        server.shutdown()
    assert depths == [queues.Depth("missing", None, None), queues.Depth("orders", 12, 2)]
    assert _ManagementApi.requests == [("/api/queues/shop", "Basic " + base64.b64encode(b"ops:op@ss").decode())]

"""The benchmark's event stream: real celery event messages, recorded once, replayed at scale.

- `PrivateRedis` starts a redis-server of our own on a free loopback port (never the shared one).
- `record_templates` publishes one event of each kind through celery's own `app.events.Dispatcher`
  and captures the raw PUBLISH payloads with PSUBSCRIBE: the templates.
- `synthetic_tasks` describes the tasks (names, args, kwargs, results, failures with tracebacks,
  log-normal runtimes); `task_events` turns them into the events workers send, interleaved like
  concurrent tasks, with K workers sending heartbeats; `Recording.encode` rewrites a template with an
  event's fields (uuid, timestamps, hostname, clock...) into the exact bytes kombu would publish.
- `replay` publishes those bytes with a pipelined redis-py client, paced to a rate or as fast as it goes
  (celery's dispatcher tops out near 3k events/s from one process, far below the rates we test).
"""
from __future__ import annotations

import base64
import json
import math
import random
import socket
import subprocess
import time
from typing import Iterable, Iterator
from uuid import UUID

import redis

TASK_NAMES = ("shop.checkout", "mail.send_receipt", "reports.build_daily", "images.resize", "search.reindex")
# Median runtime (seconds) per task name; runtimes are log-normal around it.
MEDIAN_RUNTIME = dict(zip(TASK_NAMES, (0.35, 0.08, 4.0, 0.6, 1.5)))
FAILURE_EVERY = 10  # one task in ten fails, with a traceback
CUSTOMERS = 10_000  # kwargs carry one of these customer ids; the text search looks one up
SEARCHED_CUSTOMER = "cust-04217"
HEARTBEAT_SECONDS = 2.0
EVENT_KINDS = ("task-received", "task-started", "task-succeeded", "task-failed", "worker-online", "worker-heartbeat")

_TRACEBACK = """Traceback (most recent call last):
  File "/app/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task
    R = retval = fun(*args, **kwargs)
  File "/app/venv/lib/python3.11/site-packages/celery/app/trace.py", line 736, in __protected_call__
    return self.run(*args, **kwargs)
  File "/app/shop/tasks.py", line 88, in {name}
    response = gateway.charge(order, amount=amount, currency=currency)
  File "/app/shop/gateway.py", line 141, in charge
    reply = self.session.post(self.url, json=payload, timeout=self.timeout)
  File "/app/venv/lib/python3.11/site-packages/requests/sessions.py", line 637, in post
    return self.request("POST", url, data=data, json=json, **kwargs)
  File "/app/venv/lib/python3.11/site-packages/requests/adapters.py", line 501, in send
    raise ConnectionError(err, request=request)
requests.exceptions.ConnectionError: ('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server started for this run on a free loopback port, stopped on exit."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = None

    def __enter__(self) -> "PrivateRedis":
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError("the private redis-server did not start")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc_info) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def limit_subscriber_buffer(self, limited: bool) -> None:
        """Redis's default (a subscriber more than 32 MB behind is disconnected) or no limit at all."""
        value = "pubsub 33554432 8388608 60" if limited else "pubsub 0 0 0"
        self.client().config_set("client-output-buffer-limit", value)

    def wait_for_subscriber(self, timeout: float = 30.0) -> None:
        """Until someone subscribed to the event exchange (kombu uses PSUBSCRIBE for fanout)."""
        client, deadline = self.client(), time.monotonic() + timeout
        while client.execute_command("PUBSUB", "NUMPAT") == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("no consumer subscribed to the events")
            time.sleep(0.05)


# -- recording ---------------------------------------------------------------------------------
def record_templates(redis_url: str) -> dict[str, tuple[str, dict, dict]]:
    """One real message per event kind: {kind: (channel, envelope, event body)}."""
    from celery import Celery

    client = redis.Redis.from_url(redis_url)
    subscriber = client.pubsub()
    subscriber.psubscribe("*")
    subscriber.get_message(timeout=5)  # the psubscribe confirmation
    app = Celery("bench-recorder", broker=redis_url, set_as_current=False)
    task = synthetic_tasks(1, workers=1)[0]
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname=task["worker"])
        try:
            for kind, fields in _recording_fields(task):
                dispatcher.send(kind, **fields)
        finally:
            dispatcher.close()
    templates = {}
    deadline = time.monotonic() + 10
    while len(templates) < len(EVENT_KINDS) and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=1)
        if not message or message["type"] != "pmessage":
            continue
        envelope = json.loads(message["data"])
        body = json.loads(base64.b64decode(envelope["body"]))
        templates[body["type"]] = (message["channel"].decode(), envelope, body)
    subscriber.close()
    missing = set(EVENT_KINDS) - set(templates)
    if missing:
        raise RuntimeError(f"recording missed {sorted(missing)}")
    return templates


def _recording_fields(task: dict) -> Iterator[tuple[str, dict]]:
    failed = dict(task, state="FAILURE", exception="ConnectionError()", traceback=_TRACEBACK)
    for kind, source in (("task-received", task), ("task-started", task), ("task-succeeded", task),
                         ("task-failed", failed)):
        yield kind, _event_fields(kind, source)
    yield "worker-online", _worker_fields(0, 0)
    yield "worker-heartbeat", _worker_fields(0, 0)


class Recording:
    """Rewrites recorded messages with new event fields, to the bytes kombu would publish."""

    def __init__(self, templates: dict[str, tuple[str, dict, dict]]):
        self.templates = templates

    def encode(self, event: dict) -> tuple[str, bytes]:
        channel, envelope, body = self.templates[event["type"]]
        body = {**body, **event}
        message = {**envelope, "body": base64.b64encode(json.dumps(body).encode()).decode(),
                   "headers": {**envelope["headers"], "hostname": event["hostname"]},
                   "properties": {**envelope["properties"], "delivery_tag": event.get("uuid") or str(event["clock"])}}
        return channel, json.dumps(message).encode()

    def messages(self, events: Iterable[dict]) -> list[tuple[str, bytes]]:
        return [self.encode(event) for event in events]


# -- the synthetic workload --------------------------------------------------------------------
def worker_name(index: int) -> str:
    return f"celery@bench-worker-{index:02d}"


def synthetic_tasks(count: int, workers: int, start: float | None = None, seed: int = 1) -> list[dict]:
    """`count` finished tasks as dicts keyed like the store's task columns."""
    rng = random.Random(seed)
    start = time.time() if start is None else start
    tasks = []
    for index in range(count):
        name = TASK_NAMES[index % len(TASK_NAMES)]
        uuid = str(UUID(int=rng.getrandbits(128), version=4))  # random, as celery's are
        received = start + index * 1e-3
        runtime = round(rng.lognormvariate(math.log(MEDIAN_RUNTIME[name]), 0.8), 6)
        failed = index % FAILURE_EVERY == FAILURE_EVERY - 1
        customer = f"cust-{rng.randrange(CUSTOMERS):05d}"
        task = {
            "uuid": uuid, "name": name, "worker": worker_name(index % workers),
            "args": repr((100_000 + index, "EUR")),
            "kwargs": repr({"customer": customer, "priority": rng.choice(("high", "normal", "low")),
                            "items": rng.randrange(1, 20)}),
            "retries": 0, "root_id": uuid, "parent_id": None,
            "received": received, "started": received + 0.002, "runtime": runtime,
            "state": "FAILURE" if failed else "SUCCESS",
            "result": None if failed else repr({"order": f"A-{index:07d}", "status": "done", "total": index % 997}),
            "exception": "ConnectionError(ProtocolError('Connection aborted.', ConnectionResetError(104, "
                         "'Connection reset by peer')))" if failed else None,
            "traceback": _TRACEBACK.replace("{name}", name.rpartition(".")[2]) if failed else None,
        }
        task["succeeded" if not failed else "failed"] = task["started"] + runtime
        task["timestamp"] = task["succeeded" if not failed else "failed"]
        tasks.append(task)
    return tasks


def _event_fields(kind: str, task: dict) -> dict:
    if kind == "task-received":
        return {"uuid": task["uuid"], "name": task["name"], "args": task["args"], "kwargs": task["kwargs"],
                "root_id": task["root_id"], "parent_id": task["parent_id"], "retries": task["retries"],
                "eta": None, "expires": None}
    if kind == "task-started":
        return {"uuid": task["uuid"]}
    if kind == "task-succeeded":
        return {"uuid": task["uuid"], "result": task["result"], "runtime": task["runtime"]}
    return {"uuid": task["uuid"], "exception": task["exception"], "traceback": task["traceback"]}


def _worker_fields(active: int, processed: int) -> dict:
    return {"freq": HEARTBEAT_SECONDS, "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux",
            "active": active, "processed": processed, "loadavg": [1.2, 0.9, 0.7]}


def task_events(tasks: list[dict], workers: int, rate: float, concurrency: int = 64) -> Iterator[dict]:
    """The events workers send for `tasks`, in stream order, stamped as if sent at `rate` events/s.

    Task i is received while task i-c starts and task i-2c finishes (c = concurrency), so events of
    different tasks interleave as they do on a busy cluster; every worker sends a heartbeat every
    HEARTBEAT_SECONDS of stream time.
    """
    start = time.time()
    clock = 0
    processed = [0] * workers
    next_heartbeat = start
    for worker in range(workers):
        clock += 1
        yield {"type": "worker-online", "hostname": worker_name(worker), "utcoffset": 0.0, "pid": 1000 + worker,
               "clock": clock, "timestamp": start, **_worker_fields(0, 0)}
    for step in range(len(tasks) + 2 * concurrency):
        for kind, index in (("task-received", step), ("task-started", step - concurrency),
                            ("task-succeeded", step - 2 * concurrency)):
            if not 0 <= index < len(tasks):
                continue
            task = tasks[index]
            if kind == "task-succeeded":
                kind = "task-failed" if task["state"] == "FAILURE" else kind
                processed[index % workers] += 1
            clock += 1
            now = start + clock / rate
            yield {**_event_fields(kind, task), "type": kind, "hostname": task["worker"], "utcoffset": 0.0,
                   "pid": 1000 + index % workers, "clock": clock, "timestamp": now}
        if start + clock / rate >= next_heartbeat:
            next_heartbeat += HEARTBEAT_SECONDS
            for worker in range(workers):
                clock += 1
                yield {"type": "worker-heartbeat", "hostname": worker_name(worker), "utcoffset": 0.0,
                       "pid": 1000 + worker, "clock": clock, "timestamp": start + clock / rate,
                       **_worker_fields(concurrency // workers, processed[worker])}


# -- replay ------------------------------------------------------------------------------------
def replay(client: redis.Redis, messages: list[tuple[str, bytes]], rate: float | None,
           max_seconds: float) -> tuple[int, float]:
    """Publish `messages` at `rate` events/s (None: as fast as it goes). Returns (published, seconds).

    Pipelined in slices of 10 ms worth of messages, each sent when the pace says it is due.
    """
    chunk = 1000 if rate is None else max(1, int(rate / 100))
    started = time.monotonic()
    published = 0
    while published < len(messages) and time.monotonic() - started < max_seconds:
        if rate is not None:
            due = started + published / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        pipe = client.pipeline(transaction=False)
        batch = messages[published:published + chunk]
        for channel, payload in batch:
            pipe.publish(channel, payload)
        pipe.execute()
        published += len(batch)
    return published, time.monotonic() - started


# -- figures -----------------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def stop_processes(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM to each, then SIGKILL to those still running after `timeout` seconds."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    cells = [tuple(_cell(value) for value in row) for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(ours, theirs, higher_is_better: bool = True) -> str | None:
    """How many times better Flowerbed is (>1 means better), from figures measured in this run."""
    if not ours or not theirs:
        return None
    value = ours / theirs if higher_is_better else theirs / ours
    return f"{value:.2f}x"

"""Under load, against a real server process (gunicorn, 1 worker, 8 threads, basic auth) whose store
holds 20k tasks of ~1 KB, so that each `/api/tasks?limit=10000` answer is ~15 MB: health checks go
ahead of heavy requests, a user over the limit waits or gets 429 without starving another, a client
that stops reading (or sending its head) loses its thread, and memory comes back after the load.

Nothing here asserts a time: a shared counter stamps when each request was sent and answered, and the
assertions are about that order."""
from __future__ import annotations

import base64
import dataclasses
import http.client
import itertools
import json
import select
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import FlowerbedServer, child_pids, get, rss_mb, task_row, wait_for
from monitor.serving.admission import MAX_WAITING, PER_USER, RETRY_AFTER_SECONDS, TOO_MANY_WAITING, WAITED_TOO_LONG
from monitor.store.sqlite import SqliteStore as Store

pytestmark = pytest.mark.integration

USERS = {name: f"{name}-secret" for name in ("ann", "bob", "cid", "dan")}
HEAVY = "/api/tasks?limit=10000"
STATIC = "/_dash-component-suites/plotly/package_data/plotly.min.js"  # 4.8 MB: more than a socket buffers
THREADS = 8  # gunicorn's, as app.serve() sets them
TASKS = 20_000
RSS_MARGIN_MB = 60  # measured: ~100 MB at rest, +20 MB after 100 heavy requests (bench/health_load.py)


def seed(db: Path) -> None:
    """TASKS finished tasks with ~1 KB of args, kwargs and result each."""
    store, now = Store(str(db), max_tasks=TASKS), time.time()
    rows = [task_row(uuid=str(uuid.UUID(int=index)), name="load.report", state="SUCCESS", worker="celery@load",
                     args=repr((index, "a" * 300)), kwargs=repr({"note": "k" * 300}),
                     result=repr({"value": "r" * 300}), received=now - 1000 + index * 0.01,
                     started=now - 999 + index * 0.01, succeeded=now - 998 + index * 0.01, runtime=1.0,
                     timestamp=now - 998 + index * 0.01)
            for index in range(TASKS)]
    for start in range(0, TASKS, 5000):
        store.write_batch(tasks=rows[start:start + 5000])


def start_server(redis_url: str, directory: Path) -> FlowerbedServer:
    seed(directory / "load.db")
    users = ",".join(f"{user}:{password}" for user, password in USERS.items())
    return FlowerbedServer.start(redis_url, directory / "load.db", directory / "server.log", "--basic-auth", users)


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    server = start_server(redis_url, tmp_path_factory.mktemp("load"))
    yield server
    server.stop()


def port_of(server: str) -> int:
    return int(server.rsplit(":", 1)[1])


def authorization(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()


@dataclasses.dataclass
class Answer:
    sent: int  # stamps from the shared counter
    done: int
    status: int
    retry_after: str | None
    size: int
    error: dict | None  # the JSON body of an error


def ask(server: str, user: str, stamps, path: str = HEAVY, on_sent=lambda: None) -> Answer:
    """One GET as `user` on a connection of its own, stamped when sent and when answered."""
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=120)
    try:
        connection.request("GET", path, headers={"Authorization": authorization(user)})
        sent = next(stamps)
        on_sent()
        response = connection.getresponse()
        body = response.read()
        error = json.loads(body) if response.status >= 400 else None
        return Answer(sent, next(stamps), response.status, response.getheader("Retry-After"), len(body), error)
    finally:
        connection.close()


class Flood:
    """`count` requests of `user` at once, each from a thread of its own."""

    def __init__(self, server: str, user: str, count: int, stamps, path: str = HEAVY):
        self.count = count
        self.sent = 0  # requests sent so far
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._ask, args=(server, user, stamps, path))
                        for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _ask(self, server, user, stamps, path):
        try:
            self.answers.append(ask(server, user, stamps, path, on_sent=self._sent))
        except BaseException as exc:  # reported by join()
            self.failures.append(exc)

    def _sent(self):
        with self._lock:
            self.sent += 1

    def join(self, timeout: float = 180) -> list[Answer]:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self.threads), f"requests still running after {timeout}s"
        assert not self.failures, self.failures[:3]
        return self.answers


def test_a_health_check_goes_ahead_of_two_hundred_heavy_requests(server):
    stamps = itertools.count()
    flood = Flood(server, "ann", 200, stamps)
    try:
        wait_for(lambda: flood.sent == flood.count, 60, "the 200 heavy requests sent")  # before the probe
        probe_sent = next(stamps)
        status, body = get(f"{server}/healthcheck", timeout=60)
        probe_done = next(stamps)
    finally:
        answers = flood.join()
    assert (status, body) == (200, b"OK")
    overtaken = [answer for answer in answers if answer.sent < probe_sent and answer.done > probe_done]
    # First come, first served on 8 threads, at most 7 earlier requests could still be unanswered.
    assert len(overtaken) > THREADS, f"the probe was answered after all but {len(overtaken)} heavy requests"
    assert any(answer.status == 200 for answer in overtaken), "no heavy request was running meanwhile"


def test_a_health_check_has_threads_of_its_own(server):
    full_size = ask(server, "ann", itertools.count(), STATIC).size
    # Static files are not held back: these take every thread of the pool, and more queue for one,
    # as long as their clients do not read.
    readers = [raw_request(server, "ann", STATIC) for _ in range(THREADS + 2)]
    try:
        wait_for(lambda: len(select.select(readers, [], [], 0)[0]) == THREADS, 60, "every thread sending")
        status, body = get(f"{server}/healthcheck", timeout=60)
        still_sending = len(select.select(readers, [], [], 0)[0])
        with ThreadPoolExecutor(len(readers)) as pool:  # only now, all at once
            answers = list(pool.map(read_to_end, readers))
    finally:
        for sock in readers:
            sock.close()
    assert (status, body) == (200, b"OK")
    assert still_sending == THREADS, "the probe was answered once some of those threads were free"
    # Had the probe waited for a thread, that thread would have been freed by giving up on its client.
    assert [len(answer.partition(b"\r\n\r\n")[2]) for answer in answers] == [full_size] * len(readers)


def test_users_over_their_limits_wait_or_are_refused_and_another_user_goes_first(server):
    stamps = itertools.count()
    # bob asks for more than he may run and have waiting together: the rest is refused at once.
    bob = Flood(server, "bob", PER_USER + MAX_WAITING + 40, stamps)
    ann = None
    try:
        refused = wait_for(lambda: [answer for answer in bob.answers if answer.status == 429], 60,
                           "a request of bob refused")
        ann = Flood(server, "ann", 100, stamps)  # ann takes the slots bob leaves: every slot is taken
        wait_for(lambda: ann.sent == ann.count, 60, "ann's requests sent")
        cid = ask(server, "cid", stamps)
    finally:
        answers = bob.join() + (ann.join() if ann else [])
    assert refused[0].retry_after == str(RETRY_AFTER_SECONDS)
    assert refused[0].error == {"error": TOO_MANY_WAITING}
    # Over his limit, bob's requests waited for a slot rather than failing.
    assert sum(answer.status == 200 for answer in bob.answers) > PER_USER
    # cid got the first slot free, ahead of requests that waited longer, and longer still in vain.
    assert cid.status == 200
    assert any(answer.sent < cid.sent and answer.done > cid.done and answer.error == {"error": WAITED_TOO_LONG}
               for answer in answers)


def test_a_client_that_stops_reading_its_answer_loses_its_thread(server):
    full = ask(server, "dan", itertools.count())
    assert full.status == 200
    # dan's every slot goes to an answer nobody reads past its status line.
    stalled = [raw_request(server, "dan") for _ in range(PER_USER)]
    try:
        for sock in stalled:
            assert sock.recv(12, socket.MSG_WAITALL) == b"HTTP/1.1 200"  # admitted: it holds a slot and a thread
        for sock in stalled:  # the worker logs each client it gives up on
            client = f"{sock.getsockname()[1]}) stalled"
            wait_for(lambda: client in server.output(), 60, f"the server giving up on {client}")
        for sock in stalled:
            assert len(read_to_end(sock)) < full.size, "the server sent a whole answer nobody read"
        # Were all his slots still held, this would wait for one in vain, and be refused.
        assert ask(server, "dan", itertools.count(), "/api/tasks?limit=1").status == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_request_head_sent_a_byte_at_a_time_loses_its_thread(server):
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=60) as sock:
        sock.sendall(b"GET /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # Never done: a byte whenever a second passes without the server closing the connection,
        # more often than a read gives up on a silent client (a bounded loop).
        for _ in range(60):
            if select.select([sock], [], [], 1.0)[0]:
                break
            sock.sendall(b"x")
        else:
            pytest.fail("the server kept reading a head that never ends")
        assert read_to_end(sock) == b"", "closed without an answer"


def raw_request(server: str, user: str, path: str = HEAVY) -> socket.socket:
    """A request on a connection that reads nothing yet, through a small window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # before connecting, to keep the window small
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port_of(server)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {authorization(user)}\r\n"
                 "Connection: close\r\n\r\n".encode())
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection."""
    chunks = []
    try:
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def worker_pid(server: FlowerbedServer) -> int:
    """gunicorn's worker: the only child of the process started (its arbiter)."""
    [worker] = child_pids(server.process.proc.pid)
    return worker


def test_memory_comes_back_near_its_baseline_after_the_load(redis_url, tmp_path):
    server = start_server(redis_url, tmp_path)
    try:
        worker = worker_pid(server)
        assert ask(server, "ann", itertools.count()).status == 200  # what the first request loads stays
        baseline = rss_mb(worker)
        stamps = itertools.count()
        floods = [Flood(server, user, 50, stamps) for user in ("ann", "bob")]
        answers = [answer for flood in floods for answer in flood.join()]
        assert any(answer.status == 200 for answer in answers)
        wait_for(lambda: rss_mb(worker) <= baseline + RSS_MARGIN_MB, 60,
                 f"the worker's RSS back under {baseline:.0f} + {RSS_MARGIN_MB} MB")
    finally:
        server.stop()

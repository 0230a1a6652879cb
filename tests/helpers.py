"""Plain helpers shared by the tests: free ports, bounded waits, HTTP, and the real processes the
tests run (Redis, celery workers, Flowerbed itself). Fixtures wrapping them live in conftest.py."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid as uuid_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:  # not listening yet, half-written JSON, not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def get(url: str, credentials: tuple[str, str] | None = None, timeout: float = 5.0, context=None) -> tuple[int, bytes]:
    """(status, body) of a GET, with basic auth when `credentials` are given; errors are returned.
    An https URL is verified with `context` (an ssl.SSLContext), else not at all (a test's own certificate)."""
    request = urllib.request.Request(url)
    if credentials:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    if context is None and url.startswith("https:"):
        import ssl

        context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str, credentials: tuple[str, str] | None = None, timeout: float = 5.0):
    """(status, decoded JSON body) of a GET."""
    status, body = get(url, credentials, timeout)
    return status, json.loads(body)


def child_pids(pid: int) -> list[int]:
    """The pids of a process's children, started by any of its threads (gunicorn's workers are its arbiter's)."""
    return [int(child) for thread in Path(f"/proc/{pid}/task").iterdir()
            for child in (thread / "children").read_text().split()]


def rss_mb(pid: int) -> float:
    """A process's resident memory, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS in /proc/{pid}/status")


class Process:
    """A subprocess in its own process group whose output goes to a file."""

    def __init__(self, command, log_path: Path, env=None, cwd=ROOT, shell=False):
        self.command = command
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     shell=shell, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def wait_started(process: Process, check, timeout: float, what: str):
    """wait_for, failing at once (with the log) when the process died instead."""
    def started():
        if not process.running():
            pytest.fail(f"{what} exited with {process.proc.returncode}:\n{process.output()[-3000:]}")
        return check()
    return wait_for(started, timeout, f"{what}\n{process.output()[-3000:]}")


class RedisServer:
    """A private redis-server on a free port (no persistence), which a test may restart."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        self.process = Process(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(self.workdir)], self.workdir / "redis.log")
        wait_started(self.process, lambda: port_open("127.0.0.1", self.port), 10, "redis-server")

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Stop and start again on the same port: every client loses its connection."""
        self.stop()
        self.start()


class PrivatePostgres:
    """A PostgreSQL server of the test session's own, from Debian's `postgresql` binaries: initdb
    into a temporary folder (trust auth, loopback only), pg_ctl on a free port; `.url` names it.
    As root it runs as the `postgres` user, since PostgreSQL refuses to run as root."""

    def __init__(self, folder: Path):
        import glob
        import shutil as shutil_module

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.skip("no PostgreSQL binaries to start a private server (apt-get install postgresql)")
        binaries = Path(found[-1]).parent
        self.port = free_port()
        self.data = folder / "pgdata"
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 and shutil_module.which("runuser") else []
        if as_user:
            os.chmod(folder, 0o777)
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        self._pg_ctl = [*as_user, str(binaries / "pg_ctl"), "-D", str(self.data)]
        subprocess.run([*self._pg_ctl, "-w", "-t", "60", "-l", str(folder / "postgres.log"), "-o",
                        f"-p {self.port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=90)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"

    def stop(self) -> None:
        subprocess.run([*self._pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)


class PostgresDatabase:
    """A database of the test session's own on a PostgreSQL server, dropped at stop(); each store
    the tests open lives in a schema of its own in it (`url(schema)`), so stores never share rows."""

    def __init__(self, server_url: str):
        import psycopg

        self.server_url = server_url.rstrip("/")
        self.name = f"flowerbed_tests_{uuid_module.uuid4().hex[:10]}"
        with psycopg.connect(f"{self.server_url}/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {self.name}")
        with psycopg.connect(self.url(), autocommit=True) as connection:  # one for every schema's stores
            connection.execute("CREATE EXTENSION pg_trgm SCHEMA public")
        self.schemas: set[str] = set()

    def url(self, schema: str | None = None) -> str:
        """The database's URL; with `schema`, one whose tables live in that schema (made if new)."""
        import psycopg

        if schema is None:
            return f"{self.server_url}/{self.name}"
        if schema not in self.schemas:
            with psycopg.connect(self.url(), autocommit=True) as connection:
                connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self.schemas.add(schema)
        return f"{self.server_url}/{self.name}?options=-csearch_path%3D{schema},public"

    def stop(self) -> None:
        import psycopg

        with psycopg.connect(f"{self.server_url}/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


class TcpProxy:
    """A TCP forwarder on a free loopback port to `target` (host, port) that a test can cut (every
    connection closed, nothing accepted) and restore: a server going away, on loopback only."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._connections: list[socket.socket] = []
        self._listener = None
        self.restore()

    def restore(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                return  # cut
            server.settimeout(None)
            self._connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        # shutdown() first: close() alone leaves a socket blocked in accept() listening.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._connections.clear()

    def stop(self) -> None:
        self.cut()


class CeleryWorker:
    """A real `celery worker` subprocess running tests/sample_tasks.py, consuming its own queue so
    tasks sent for one test never reach another test's worker; `send` routes tasks to it."""

    def __init__(self, broker: str, hostname: str, log_dir: Path, concurrency: int = 4, pool: str = "threads",
                 backend: str = ""):
        from celery import Celery

        self.broker = broker
        self.hostname = hostname
        self.queue = f"q-{hostname.replace('@', '-')}-{uuid_module.uuid4().hex[:6]}"
        env = {**os.environ, "SAMPLE_BROKER": broker, "SAMPLE_BACKEND": backend}
        # A one-second heartbeat lets the monitor see the worker go offline within ~2 s.
        self.process = Process(
            [sys.executable, "-m", "celery", "-A", "sample_tasks", "worker", "-E", "-P", pool,
             "-c", str(concurrency), "-n", hostname, "-Q", self.queue, "--heartbeat-interval", "1",
             "--without-mingle", "--without-gossip", "-l", "info"],
            log_dir / f"worker-{hostname}.log", env=env, cwd=TESTS)
        self.client = Celery("flowerbed-tests-client", broker=broker, set_as_current=False)
        self.client.conf.update(task_send_sent_event=True, broker_connection_retry_on_startup=True)
        wait_started(self.process, lambda: f"{hostname} ready." in self.process.output(), 30,
                     f"celery worker {hostname}")

    def send(self, task_name: str, *args, **kwargs) -> str:
        """Send a sample task to this worker's queue; returns the task's UUID."""
        return self.client.send_task(task_name, args, kwargs, queue=self.queue).id

    def output(self) -> str:
        return self.process.output()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM is a warm shutdown, where the worker says goodbye with a worker-offline event;
        after SIGKILL only its missing heartbeats tell."""
        self.process.stop(sig)
        self.client.close()


class FlowerbedServer(str):
    """The base URL of a running `python cli.py` (a str, so f"{server}/api/tasks" works), with
    `.stop()`, `.output()` and the `.db` it keeps its history in."""

    process: Process
    db: Path

    @classmethod
    def start(cls, broker: str, db: Path, log_path: Path, *flags: str, env: dict | None = None,
              scheme: str = "http") -> "FlowerbedServer":
        """`env`: variables added to the server's environment; `scheme` https for a server given
        --certfile (its health check is then not verified against any authority)."""
        port = free_port()
        process = Process([sys.executable, "cli.py", "--broker", broker, "--db", str(db), "--port", str(port),
                           "--refresh-seconds", "1", *flags], log_path, env={**os.environ, **(env or {})})
        server = cls(f"{scheme}://127.0.0.1:{port}")
        server.process, server.db = process, db
        wait_started(process, lambda: get(f"{server}/healthcheck")[0] == 200, 30, "the Flowerbed server")
        return server

    def output(self) -> str:
        return self.process.output()

    def stop(self) -> None:
        self.process.stop()

    def wait_for_rollups(self, timeout: float = 30) -> None:
        """Wait until the finished tasks stored are folded into the analytics rollups too: that fold
        changes the store version the pages refresh on, a few seconds after the tasks were stored."""
        from monitor.store import open_store

        store = open_store(str(self.db))
        try:
            wait_for(lambda: store.query("SELECT count(*) FROM rollup_inbox")[0][0] == 0, timeout,
                     "the finished tasks folded into the rollups")
        finally:
            store.close()


class Stack:
    """Things with a stop(), stopped in reverse order at the end of a fixture's scope."""

    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return item

    def stop_all(self) -> None:
        for item in reversed(self.items):
            item.stop()
        self.items.clear()


def tasks(base: str, query: str = "limit=1000", credentials=None) -> dict:
    """/api/tasks as {uuid: task}."""
    status, body = get_json(f"{base}/api/tasks?{query}", credentials)
    assert status == 200, body
    return body


def wait_for_tasks(base: str, expected: dict[str, str], timeout: float = 30, credentials=None) -> dict:
    """Wait until every {uuid: state} in `expected` is stored with that state; returns /api/tasks."""
    def arrived():
        seen = tasks(base, credentials=credentials)
        return seen if all(seen.get(uuid, {}).get("state") == state for uuid, state in expected.items()) else None
    return wait_for(arrived, timeout, f"tasks {expected} in {base}")


def worker_status(base: str, hostname: str, credentials=None):
    """A worker's `status` in /api/workers (True online, False offline), None when unknown."""
    status, workers = get_json(f"{base}/api/workers", credentials)
    return workers.get(hostname, {}).get("status") if status == 200 else None


def choose(page, dropdown: str, option: str) -> None:
    """Pick an option of a dcc.Dropdown in a browser page as a user does: open it, click the option."""
    page.click(dropdown)
    page.get_by_role("option", name=option, exact=True).click()


def worker_row(hostname: str, **fields) -> tuple:
    """A row for Store.write_batch(workers=...) from the fields given; the others are NULL."""
    from monitor.store.schema import WORKER_FIELDS

    unknown = set(fields) - set(WORKER_FIELDS)
    assert not unknown, f"not worker fields: {unknown}"
    return tuple(fields.get(field, hostname if field == "hostname" else None) for field in WORKER_FIELDS)


def task_row(**fields) -> tuple:
    """A row for Store.write_batch(tasks=...) from the fields given; the others are NULL."""
    from monitor.store.schema import TASK_FIELDS

    unknown = set(fields) - set(TASK_FIELDS)
    assert not unknown, f"not task fields: {unknown}"
    return tuple(fields.get(field) for field in TASK_FIELDS)


class EventPublisher:
    """Publishes on celery's event exchange as any producer on the bus could, on one connection.

    `publish` wraps a body in kombu's envelope: JSON by default, or `content_type`/`content_encoding`
    for a body already encoded. `publish_raw` (Redis only) PUBLISHes bytes with no envelope at all
    on the channel kombu's Redis transport delivers the exchange's messages on. Messages published
    through one EventPublisher reach a subscriber in the order they were published."""

    def __init__(self, broker: str):
        from celery import Celery
        from celery.events.event import get_exchange
        from kombu import Producer

        self.app = Celery("flowerbed-tests-publisher", broker=broker, set_as_current=False)
        self.connection = self.app.connection_for_write()
        self.producer = Producer(self.connection, exchange=get_exchange(self.connection))  # declares it

    def publish(self, body, routing_key: str = "task.multi", **options) -> None:
        if "content_type" not in options:
            options["serializer"] = "json"
        self.producer.publish(body, routing_key=routing_key, **options)

    def publish_raw(self, payload: bytes, routing_key: str = "task.multi") -> None:
        channel = self.connection.default_channel
        channel.client.publish(f"{channel.keyprefix_fanout}{self.producer.exchange.name}/{routing_key}", payload)

    def stop(self) -> None:  # named like the other helpers', for Stack
        self.connection.release()


def finished(uuid, name, runtime, at, state="SUCCESS", wait=0.01, worker="celery@a", queue="default", **extra):
    """A task row that finished at `at` after waiting `wait` and running `runtime` seconds."""
    started = at - runtime
    times = {"succeeded": at} if state == "SUCCESS" else {"failed": at} if state == "FAILURE" else {"revoked": at}
    return task_row(uuid=uuid, name=name, state=state, worker=worker, routing_key=queue, received=started - wait,
                    sent=started - wait - 0.001, started=started, runtime=runtime, timestamp=at, **times, **extra)


def router_body(pathname, search="", first_address=None) -> dict:
    """The body of the router's callback (callbacks/shell.py render_page) on a navigation to `pathname`;
    `first_address`: the address of the page the first layout came with."""
    return callback_body("..page.children...page-address.data..",
                         [{"id": "url", "property": "pathname", "value": pathname}],
                         [{"id": "url", "property": "search", "value": search},
                          {"id": "page-address", "property": "data", "value": first_address}])


def callback_body(output: str, inputs: list, state: list = ()) -> dict:
    """The body dash-renderer posts to /_dash-update-component for a callback."""
    outputs = [dict(zip(("id", "property"), part.split("."))) for part in output.strip(".").split("...")]
    changed = [f"{item['id']}.{item['property']}" for item in inputs]
    return {"output": output, "outputs": outputs if len(outputs) > 1 else outputs[0], "inputs": list(inputs),
            "changedPropIds": changed, "parsedChangedPropsIds": changed, **({"state": list(state)} if state else {})}

"""Shared fixtures: a private Redis, RabbitMQ, real celery workers, Flowerbed servers and chromium.

Factories are function-scoped and stop what they started at teardown; modules that want one
server and worker for all their tests build them from tests/helpers.py in a module fixture.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from helpers import (CeleryWorker, FlowerbedServer, PostgresDatabase, PrivatePostgres, Process, RedisServer, Stack,
                     port_open, wait_started)

RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server for the whole session, with `.url` and `.restart()` (a test that
    restarts the broker under a running cluster takes `restartable_redis`, so others are undisturbed)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture
def restartable_redis(tmp_path):
    """A redis-server of the test's own, for tests that restart the broker under a running cluster."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def _rabbitmqctl(*args: str) -> bool:
    try:
        return subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def rabbitmq_url(tmp_path_factory):
    """The local RabbitMQ (started when installed but not running), in a vhost of this session's
    own when rabbitmqctl may create one, so that concurrent test runs do not see each other's
    events; skips when there is no RabbitMQ."""
    started = None
    if not port_open(RABBITMQ_HOST, RABBITMQ_PORT):
        if not shutil.which("rabbitmq-server"):
            pytest.skip(f"RabbitMQ is not reachable on {RABBITMQ_HOST}:{RABBITMQ_PORT} and rabbitmq-server is "
                        "not installed (apt-get install rabbitmq-server)")
        started = Process(["rabbitmq-server"], tmp_path_factory.mktemp("rabbitmq") / "rabbitmq.log")
        wait_started(started, lambda: port_open(RABBITMQ_HOST, RABBITMQ_PORT), 120, "rabbitmq-server")
    vhost = f"flowerbed-tests-{uuid.uuid4().hex[:8]}"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"):
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
        _rabbitmqctl("delete_vhost", vhost)
    else:
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"
    if started is not None:
        started.stop()


@pytest.fixture(scope="session")
def postgres_database(tmp_path_factory):
    """A database of this session's own on the PostgreSQL at 127.0.0.1:5432 (FLOWERBED_TEST_POSTGRES
    names another server), else on a private server started from Debian's binaries; dropped at the
    end. Skips where there is neither."""
    server, private = os.environ.get("FLOWERBED_TEST_POSTGRES"), None
    if server is None:
        server = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}"
        if not port_open(POSTGRES_HOST, POSTGRES_PORT):
            private = PrivatePostgres(tmp_path_factory.mktemp("postgres"))
            server = private.url
    database = PostgresDatabase(server)
    yield database
    database.stop()
    if private is not None:
        private.stop()


class StoreMaker:
    """make(name, **options) opens the store `name` of one backend: a SQLite file in `folder`, or a
    schema of the session's PostgreSQL database; the same name again reopens it."""

    def __init__(self, backend: str, folder, request):
        self.backend, self.folder, self.request = backend, folder, request
        self.opened = []
        self.prefix = f"s{uuid.uuid4().hex[:8]}"

    def url(self, name: str = "store") -> str:
        if self.backend == "sqlite":
            return str(self.folder / f"{name}.db")
        return self.request.getfixturevalue("postgres_database").url(f"{self.prefix}_{name}")

    def __call__(self, name: str = "store", **options):
        from monitor.store import open_store

        store = open_store(self.url(name), **options)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def make_store(request, tmp_path):
    """A StoreMaker for each backend: a test taking it runs on SQLite and on PostgreSQL."""
    maker = StoreMaker(request.param, tmp_path, request)
    yield maker
    maker.close_all()


@pytest.fixture(scope="module", params=BACKENDS)
def make_module_store(request, tmp_path_factory):
    """make_store for module fixtures (one store filled once for all of a module's tests)."""
    maker = StoreMaker(request.param, tmp_path_factory.mktemp("stores"), request)
    yield maker
    maker.close_all()


@pytest.fixture
def celery_worker(tmp_path):
    """celery_worker(broker_url, hostname="alpha@tests") starts a real worker; see CeleryWorker."""
    stack = Stack()
    yield lambda broker, hostname="alpha@tests", **options: stack.add(CeleryWorker(broker, hostname, tmp_path, **options))
    stack.stop_all()


@pytest.fixture
def flowerbed_server(tmp_path):
    """flowerbed_server(broker_url, *flags, db=None, env=None, scheme="http") runs `python cli.py` and
    returns its base URL (a FlowerbedServer: a str with .stop()); the same `db` again brings the
    history back."""
    stack = Stack()
    count = 0

    def start(broker: str, *flags: str, db=None, **options) -> FlowerbedServer:
        nonlocal count
        count += 1
        return stack.add(FlowerbedServer.start(broker, db or tmp_path / f"flowerbed-{count}.db",
                                               tmp_path / f"flowerbed-{count}.log", *flags, **options))
    yield start
    stack.stop_all()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def watch_problems(page, problems: list, allowed_statuses=()) -> None:
    """Adds to `problems` each browser error `page` logs and each request of it that fails, except
    the statuses in `allowed_statuses`."""
    expected = tuple(f"the server responded with a status of {status} " for status in allowed_statuses)
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and not any(text in message.text for text in expected) else None)
    page.on("response", lambda response: problems.append(f"{response.status} {response.url}")
            if response.status >= 400 and response.status not in allowed_statuses else None)


@pytest.fixture
def open_page(browser, request):
    """open_page(credentials=None, width=1440, height=900) opens a fresh page (basic auth with
    `credentials` (user, password), downloads accepted, 20 s for any wait); the test fails if any
    of them logged a browser error or saw a request fail, except the statuses in `allowed_statuses`.
    FLOWERBED_SCREENSHOTS=DIR keeps a screenshot of each."""
    opened = []

    def open_one(credentials=None, width=1440, height=900, allowed_statuses=()):
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True,
                                      http_credentials=dict(zip(("username", "password"), credentials))
                                      if credentials else None)
        page = context.new_page()
        page.set_default_timeout(20_000)
        problems = []
        watch_problems(page, problems, allowed_statuses)
        opened.append((page, context, problems))
        return page
    yield open_one
    screenshots = os.environ.get("FLOWERBED_SCREENSHOTS")
    for number, (page, context, _problems) in enumerate(opened):
        if screenshots:
            page.screenshot(path=f"{screenshots}/browser-{request.node.name}{'-' * bool(number)}{number or ''}.png",
                            full_page=True)
        context.close()
    problems = [problem for _page, _context, page_problems in opened for problem in page_problems]
    assert not problems, problems


@pytest.fixture
def page(open_page):
    """A fresh page (1440 × 900, downloads accepted, 20 s for any wait); see open_page."""
    return open_page()

"""Three ways to run, one store: `flowerbed collect` and `flowerbed web --workers N` as separate
processes on one store (SQLite, and PostgreSQL with four web workers), with a real Redis, a real
`celery worker` and a real browser; and a PostgreSQL that goes away under them."""
from __future__ import annotations

import contextlib
import signal
import sys
import time
import urllib.parse

import pytest

from helpers import (CeleryWorker, Process, Stack, TcpProxy, child_pids, free_port, get, get_json, tasks, wait_for,
                     wait_for_tasks, wait_started, worker_status)

pytestmark = pytest.mark.integration


class Command:
    """`python cli.py <command> ...` in a process of its own, with its base URL (when it serves one)."""

    def __init__(self, log_dir, command: str, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process([sys.executable, "cli.py", command, "--port", str(self.port), *flags],
                               log_dir / f"{command}.log")

    def stop(self, sig=signal.SIGTERM) -> None:
        self.process.stop(sig)


@contextlib.contextmanager
def split_deployment(redis_url, tmp_path, db: str, web_workers: int):
    """A collector (inspecting every 60 s, so that only a Refresh explains an earlier inspect) and a
    web tier of `web_workers` gunicorn workers on the store `db`, and a worker both have seen."""
    stack = Stack()
    try:
        collector = stack.add(Command(tmp_path, "collect", "--broker", redis_url, "--db", db,
                                      "--inspect-seconds", "60", "--stall-seconds", "5"))
        wait_started(collector.process, lambda: get(f"{collector.url}/healthcheck/ready")[0] == 200, 60,
                     "the collector ready")
        web = stack.add(Command(tmp_path, "web", "--db", db, "--workers", str(web_workers), "--refresh-seconds", "1",
                                "--stall-seconds", "5"))
        wait_started(web.process, lambda: get(f"{web.url}/healthcheck")[0] == 200, 60, "the web tier")
        worker = stack.add(CeleryWorker(redis_url, "scale@tests", tmp_path))
        wait_for(lambda: worker_status(web.url, worker.hostname), 30, "the worker online through the web tier")
        yield collector, web, worker
    finally:
        stack.stop_all()


def test_collector_and_web_tier_apart(redis_url, tmp_path, browser, make_store):
    web_workers = 4 if make_store.backend == "postgresql" else 2
    with split_deployment(redis_url, tmp_path, make_store.url("shared"), web_workers) as (collector, web, worker):
        wait_for(lambda: len(child_pids(web.process.proc.pid)) == web_workers, 30, f"{web_workers} web workers")
        sent = {worker.send("sample.add", n, n): "SUCCESS" for n in range(20)}
        sent[worker.send("sample.fail", "boom")] = "FAILURE"
        wait_for_tasks(web.url, sent, 60)

        # Whichever web worker answers, the answer is the store's: the same every time.
        answers = {get(f"{web.url}/api/tasks?limit=1000&sort_by=uuid")[1] for _ in range(6 * web_workers)}
        assert len(answers) == 1
        stats = get_json(f"{web.url}/api/collector")[1]
        assert stats["role"] == "active" and stats["owner"] == get_json(f"{collector.url}/api/collector")[1]["owner"]
        assert get(f"{web.url}/healthcheck/ready")[0] == 200

        # Refresh from a web worker reaches the collector's inspector through the store, and answers
        # once that inspect is stored (as Flower's refresh=1 waits for its inspect).
        asked_at = time.time()
        status, refreshed = get_json(f"{web.url}/api/workers?refresh=1", timeout=60)
        assert status == 200 and refreshed[worker.hostname]["timestamp"] > asked_at

        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{web.url}/")
        page.locator("#workers-grid .ag-row [col-id=status]", has_text="Online").first.wait_for(timeout=30_000)
        page.goto(f"{web.url}/tasks")
        page.locator("#tasks-grid .ag-center-cols-container .ag-row [col-id=name]", has_text="sample.add").first \
            .wait_for(timeout=30_000)
        page.locator("#collector-status", has_text="Recording").wait_for(timeout=30_000)
        page.close()

        # A clean stop writes what the collector holds, and the web tier says so at once.
        collector.stop()
        assert collector.process.proc.returncode == 0, collector.process.output()[-2000:]
        assert "writing what the collector holds" in collector.process.output()
        status, body = wait_for(lambda: (lambda a: a if a[0] == 503 else None)(get_json(f"{web.url}/healthcheck/ready")),
                                15, "the web tier not ready once the collector stopped")
        assert body["problems"][0].startswith("the collector stopped")
        assert get_json(f"{web.url}/api/tasks/count")[1]["count"] >= len(sent)  # pages still read the store


def test_a_postgresql_that_goes_away_is_said_plainly_and_loses_nothing(redis_url, tmp_path, postgres_database, browser):
    """PostgreSQL reached through a proxy the test cuts: the API answers 503, the pages and the
    readiness check say the store is unreachable, the collector keeps what arrives meanwhile and
    writes it all once the server is back."""
    direct = postgres_database.url("outage")
    server = urllib.parse.urlsplit(direct)
    proxy = TcpProxy((server.hostname, server.port))
    db = direct.replace(f":{server.port}/", f":{proxy.port}/")
    try:
        with split_deployment(redis_url, tmp_path, db, 1) as (collector, web, worker):
            before = {worker.send("sample.add", n, n): "SUCCESS" for n in range(10)}
            wait_for_tasks(web.url, before, 60)

            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{web.url}/tasks")
            page.locator("#collector-status", has_text="Recording").wait_for(timeout=30_000)
            proxy.cut()
            page.locator("#collector-status", has_text="Store unreachable").wait_for(timeout=60_000)
            page.close()
            during = {worker.send("sample.add", n, 1): "SUCCESS" for n in range(30)}
            status, body = wait_for(lambda: (lambda a: a if a[0] == 503 else None)(get_json(f"{web.url}/api/tasks")),
                                    30, "503 from the API while the store is away")
            assert "store cannot be reached" in body["error"]
            ready = wait_for(lambda: (lambda a: a[1] if a[0] == 503 else None)(get_json(f"{web.url}/healthcheck/ready")),
                             30, "the web tier not ready")
            assert ready["problems"][0].startswith("the store cannot be read")
            metrics = get(f"{web.url}/metrics")  # a scrape is told, in its own plain text
            assert metrics[0] == 503 and metrics[1].startswith(b"the store cannot be read: ")
            wait_for(lambda: get_json(f"{collector.url}/api/collector")[1].get("writer_error"), 30,
                     "the collector saying it cannot write")
            assert get(f"{web.url}/healthcheck")[0] == 200  # the process itself is alive

            proxy.restore()
            wait_for(lambda: get(f"{web.url}/api/tasks")[0] == 200, 30, "the API answering again")
            wait_for_tasks(web.url, {**before, **during}, 90)
            assert len(tasks(web.url)) == 40
            stats = wait_for(lambda: (lambda s: s if not s.get("writer_error") else None)(
                get_json(f"{collector.url}/api/collector")[1]), 30, "the collector writing again")
            assert stats["dropped"] == 0 and stats["rejected"] == 0
            succeeded = [line for line in get(f"{web.url}/metrics")[1].decode().splitlines()
                         if line.startswith("flower_events_total") and 'type="task-succeeded"' in line]
            assert [float(line.rsplit(" ", 1)[1]) for line in succeeded] == [40.0]  # every one counted, once
    finally:
        proxy.stop()

"""Three ways to run, one store: `flowerbed collect` and `flowerbed web --workers 2` as separate
processes on one SQLite store, with a real Redis, a real `celery worker` and a real browser."""
from __future__ import annotations

import contextlib
import signal
import sys
import time

import pytest

from helpers import (CeleryWorker, Process, Stack, child_pids, free_port, get, get_json, wait_for, wait_for_tasks, wait_started,
                     worker_status)

pytestmark = pytest.mark.integration


class Command:
    """`python app.py <command> ...` in a process of its own, with its base URL (when it serves one)."""

    def __init__(self, log_dir, command: str, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process([sys.executable, "app.py", command, "--port", str(self.port), *flags],
                               log_dir / f"{command}.log")

    def stop(self, sig=signal.SIGTERM) -> None:
        self.process.stop(sig)


@contextlib.contextmanager
def split_deployment(redis_url, tmp_path):
    """A collector (inspecting every 60 s, so that only a Refresh explains an earlier inspect) and a
    web tier of two gunicorn workers on one store, and a worker both have seen."""
    db = str(tmp_path / "shared.db")
    stack = Stack()
    try:
        collector = stack.add(Command(tmp_path, "collect", "--broker", redis_url, "--db", db,
                                      "--inspect-seconds", "60", "--stall-seconds", "5"))
        wait_started(collector.process, lambda: get(f"{collector.url}/healthcheck/ready")[0] == 200, 60,
                     "the collector ready")
        web = stack.add(Command(tmp_path, "web", "--db", db, "--workers", "2", "--refresh-seconds", "1",
                                "--stall-seconds", "5"))
        wait_started(web.process, lambda: get(f"{web.url}/healthcheck")[0] == 200, 60, "the web tier")
        worker = stack.add(CeleryWorker(redis_url, "scale@tests", tmp_path))
        wait_for(lambda: worker_status(web.url, worker.hostname), 30, "the worker online through the web tier")
        yield collector, web, worker
    finally:
        stack.stop_all()


def test_collector_and_web_tier_apart(redis_url, tmp_path, browser):
    with split_deployment(redis_url, tmp_path) as (collector, web, worker):
        wait_for(lambda: len(child_pids(web.process.proc.pid)) == 2, 30, "two web workers")
        sent = {worker.send("sample.add", n, n): "SUCCESS" for n in range(20)}
        sent[worker.send("sample.fail", "boom")] = "FAILURE"
        wait_for_tasks(web.url, sent, 60)

        # Whichever web worker answers, the answer is the store's: the same every time.
        answers = {get(f"{web.url}/api/tasks?limit=1000&sort_by=uuid")[1] for _ in range(12)}
        assert len(answers) == 1
        stats = get_json(f"{web.url}/api/collector")[1]
        assert stats["role"] == "active" and stats["owner"] == get_json(f"{collector.url}/api/collector")[1]["owner"]
        assert get(f"{web.url}/healthcheck/ready")[0] == 200

        # Refresh from a web worker reaches the collector's inspector through the store.
        asked_at = time.time()
        assert get(f"{web.url}/api/workers?refresh=1")[0] == 200
        wait_for(lambda: (get_json(f"{web.url}/api/workers")[1][worker.hostname]["timestamp"] or 0) > asked_at, 30,
                 "an inspect run because the web tier asked")

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

"""Health that tells the truth: /healthcheck/ready and /api/collector under a held lock, a full disk,
and two collectors on one broker and store. Real Redis, real `celery worker`, real Flowerbed processes."""
from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
import subprocess

import pytest

from helpers import CeleryWorker, FlowerbedServer, Stack, get_json, wait_for, wait_for_tasks, worker_status
from monitor.serving.health import readiness_problems

pytestmark = pytest.mark.integration
NOW = 1_800_000_000.0
HEALTHY = {"connected": True, "backlog": 0, "lag_seconds": 0.1, "updated_at": NOW, "role": "active"}


@pytest.mark.parametrize("change, problem", [
    ({}, None),
    ({"writer_error": "OperationalError: database is locked", "writer_failing_since": NOW - 12},
     "the store cannot be written for 12 s: OperationalError: database is locked"),
    ({"connected": False, "broker_error": "ConnectionError: refused"}, "the broker is unreachable: ConnectionError"),
    ({"backlog": 500, "lag_seconds": 45.0}, "500 events wait and the oldest is 45 s old"),
    ({"backlog": 500, "lag_seconds": 5.0}, None),  # behind, but within the stall allowance
    ({"updated_at": NOW - 90}, "the collector last reported 90 s ago"),  # a separate collector gone silent
    ({"updated_at": NOW - 4, "running": False}, "the collector stopped 4 s ago"),  # and one stopped cleanly
    ({"role": "standby", "lease_holder": "b:7:x", "holder_reported_at": NOW - 5}, None),
    ({"role": "standby", "lease_holder": "b:7:x", "holder_reported_at": NOW - 60},
     "this collector stands by, and the one recording this broker (b:7:x) last reported 60 s ago"),
])
def test_readiness_names_each_problem(change, problem):
    problems = readiness_problems({**HEALTHY, **change}, NOW, stall_seconds=30)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_readiness_without_any_collector_report():
    assert readiness_problems({}, NOW, 30) == ["no collector has reported to this store yet"]


def ready(server) -> tuple[int, dict]:
    return get_json(f"{server}/healthcheck/ready")


@contextlib.contextmanager
def monitored_worker(redis_url, tmp_path, db, *flags):
    """A Flowerbed server (stall allowance 3 s) and a worker it has seen online."""
    stack = Stack()
    try:
        server = stack.add(FlowerbedServer.start(redis_url, db, tmp_path / "flowerbed.log", "--stall-seconds", "3",
                                                 *flags))
        worker = stack.add(CeleryWorker(redis_url, "health@tests", tmp_path))
        wait_for(lambda: worker_status(server, worker.hostname), 30, "the worker online")
        wait_for(lambda: ready(server)[0] == 200, 30, "ready")
        yield server, worker
    finally:
        stack.stop_all()


def test_a_held_lock_fails_readiness_shows_the_error_once_and_recovers(redis_url, tmp_path):
    with monitored_worker(redis_url, tmp_path, tmp_path / "locked.db") as (server, worker):
        lock = sqlite3.connect(server.db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            sent = {worker.send("sample.add", n, n): "SUCCESS" for n in range(20)}
            status, body = wait_for(lambda: (lambda answer: answer if answer[0] == 503 else None)(ready(server)),
                                    60, "/healthcheck/ready to fail while the store is locked")
            assert body["status"] == "not ready"
            stats = wait_for(lambda: (lambda s: s if s["writer_error"] else None)(
                get_json(f"{server}/api/collector")[1]), 60, "the writer's error in /api/collector")
            assert "locked" in stats["writer_error"] and stats["backlog"] > 0
            assert get_json(f"{server}/api/workers")[0] == 200  # pages still read while writes wait
        finally:
            lock.execute("COMMIT")
            lock.close()
        wait_for(lambda: ready(server)[0] == 200, 60, "ready again once the lock is gone")
        wait_for_tasks(server, sent, 60)
        stats = get_json(f"{server}/api/collector")[1]
        assert stats["writer_error"] is None and "locked" in stats["last_error"]
        log = server.output()
        assert log.count("writing to the store fails") == 1, log[-3000:]  # once, not every retry
        assert "writing to the store works again" in log


def _fill(directory) -> None:
    """Write a file until the file system is full."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        chunk = b"\0" * (1 << 20)
        for _ in range(4096):  # bounded: the tmpfs is far smaller than 4 GiB
            try:
                filler.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return
    pytest.fail("the disk never filled")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk case is then covered by "
                    "test_collector.py's max_page_count test only")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_fails_readiness_and_nothing_is_lost_once_space_returns(redis_url, tmp_path, small_disk):
    with monitored_worker(redis_url, tmp_path, small_disk / "full.db") as (server, worker):
        _fill(small_disk)
        try:
            sent = {worker.send("sample.add", "x" * 2000, str(n)): "SUCCESS" for n in range(300)}
            wait_for(lambda: ready(server)[0] == 503, 60, "/healthcheck/ready to fail on the full disk")
            stats = get_json(f"{server}/api/collector")[1]
            assert "full" in (stats["writer_error"] or ""), stats
        finally:
            (small_disk / "filler").unlink()
        wait_for(lambda: ready(server)[0] == 200, 60, "ready again once there is space")
        wait_for_tasks(server, sent, 60)


def test_two_collectors_on_one_broker_and_store_count_every_task_once(redis_url, tmp_path):
    db = tmp_path / "shared.db"
    with monitored_worker(redis_url, tmp_path, db) as (first, worker):
        second = FlowerbedServer.start(redis_url, db, tmp_path / "second.log")
        try:
            standby = wait_for(lambda: (lambda s: s if s.get("role") == "standby" else None)(
                get_json(f"{second}/api/collector")[1]), 30, "the second collector standing by")
            assert standby["lease_holder"] == get_json(f"{first}/api/collector")[1]["owner"]
            assert "stands by" in second.output()
            before = get_json(f"{first}/api/workers")[1][worker.hostname]["counters"]["succeeded"]
            sent = {worker.send("sample.add", n, n): "SUCCESS" for n in range(30)}
            wait_for_tasks(first, sent, 60)
            for server in (first, second):  # both read the one store
                wait_for(lambda: get_json(f"{server}/api/workers")[1][worker.hostname]["counters"]["succeeded"]
                         == before + 30, 30, "the worker's succeeded counter")
            wait_for(lambda: ready(second)[0] == 200, 30, "the standby ready (connected, able to take over)")

            first.stop()  # a clean stop hands the lease over at once
            wait_for(lambda: get_json(f"{second}/api/collector")[1].get("role") == "active", 30,
                     "the second collector taking over")
            more = {worker.send("sample.add", n, 1): "SUCCESS" for n in range(10)}
            wait_for_tasks(second, more, 60)
            wait_for(lambda: get_json(f"{second}/api/workers")[1][worker.hostname]["counters"]["succeeded"]
                     == before + 40, 30, "the counter after the takeover")
        finally:
            second.stop()

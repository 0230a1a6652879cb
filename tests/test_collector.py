"""The collector's merge: hand-made celery events (as the receiver delivers them) go through
Collector.merge_batch into a real Store on a temporary file."""
from __future__ import annotations

import itertools
import socket
import sqlite3
import subprocess
import threading
import time

import pytest
from celery import Celery

from helpers import wait_for
from monitor.ingest import receiving
from monitor.ingest.collector import TRUNCATED, Collector
from monitor.ingest.receiving import TOO_DEEP
from monitor.ingest.reports import GONE_REPORT_SECONDS, REPORT_PREFIX, by_broker, merged, report_key
from monitor.store.sqlite import SqliteStore as Store

T0 = 1_800_000_000.0
WORKER = "celery@alpha"
UUID = "11111111-2222-4333-8444-555555555555"


class Feed:
    """A collector over a real store, and celery's event dicts built the way the receiver hands
    them over (timestamp, local_received, a Lamport clock)."""

    def __init__(self, tmp_path, **collector_options):
        self.store = Store(str(tmp_path / "collector.db"))
        self.collector = Collector(Celery("collector-tests", broker="memory://", set_as_current=False), self.store,
                                   batch_seconds=0.01, **collector_options)
        self.state = self.collector.new_merge_state()
        self.clock = itertools.count(1)
        # The receiving thread's handler: the same path a real event takes to the writer.
        self.receive = self.collector._hand_over_function()

    def event(self, type_, at, **fields):
        return {"type": type_, "timestamp": at, "local_received": at, "clock": next(self.clock),
                "hostname": WORKER, "utcoffset": 0, "pid": 4242, **fields}

    def merge(self, *events):
        for event in events:
            self.receive(event)
        while self.collector.merge_batch(self.state):
            pass
        return self.collector.stats()

    def task(self, uuid=UUID):
        return self.store.get_task(uuid)

    def worker(self, hostname=WORKER, now=None):
        return {w["hostname"]: w for w in self.store.workers(now)}.get(hostname)


@pytest.fixture
def feed(tmp_path):
    return Feed(tmp_path)


def task_lifecycle(feed, uuid=UUID, start=T0):
    """received → started → succeeded, one second of runtime."""
    return [
        feed.event("task-received", start, uuid=uuid, name="sample.add", args="(2, 3)", kwargs="{}", retries=0),
        feed.event("task-started", start + 0.5, uuid=uuid),
        feed.event("task-succeeded", start + 1.5, uuid=uuid, result="5", runtime=1.0),
    ]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (2, 0, 1), (1, 2, 0)],
                         ids=["in-order", "reversed", "succeeded-first", "started-first"])
def test_out_of_order_events_end_in_the_final_state_with_every_field(feed, order):
    events = task_lifecycle(feed)
    feed.merge(*(events[i] for i in order))
    task = feed.task()
    assert task["state"] == "SUCCESS"
    assert (task["name"], task["args"], task["result"], task["runtime"]) == ("sample.add", "(2, 3)", "5", 1.0)
    assert (task["received"], task["started"], task["succeeded"]) == (T0, T0 + 0.5, T0 + 1.5)
    assert task["worker"] == WORKER


def test_late_events_in_a_later_batch_do_not_move_a_finished_task_back(feed):
    received, started, succeeded = task_lifecycle(feed)
    feed.merge(succeeded)
    feed.merge(received)
    feed.merge(started)
    task = feed.task()
    assert (task["state"], task["name"], task["started"]) == ("SUCCESS", "sample.add", T0 + 0.5)


def test_duplicate_events_are_merged_once_and_counted(feed):
    events = task_lifecycle(feed)
    stats = feed.merge(*events, *events)
    assert feed.store.count_tasks() == 1
    assert feed.task()["state"] == "SUCCESS"
    assert (stats["received"], stats["merged"], stats["stored"], stats["malformed"]) == (6, 6, 6, 0)


def test_failed_task_keeps_exception_and_traceback_and_gets_a_runtime(feed):
    feed.merge(
        feed.event("task-received", T0, uuid=UUID, name="sample.fail"),
        feed.event("task-started", T0 + 1, uuid=UUID),
        feed.event("task-failed", T0 + 3.25, uuid=UUID, exception="ValueError('boom')",
                   traceback="Traceback (most recent call last):\n  ...\nValueError: boom"),
    )
    task = feed.task()
    assert (task["state"], task["exception"], task["runtime"]) == ("FAILURE", "ValueError('boom')", 2.25)
    assert task["traceback"].startswith("Traceback")


def test_retry_then_success_ends_successful_with_retries_counted(feed):
    feed.merge(
        feed.event("task-received", T0, uuid=UUID, name="sample.flaky", retries=0),
        feed.event("task-started", T0 + 0.1, uuid=UUID),
        feed.event("task-retried", T0 + 0.2, uuid=UUID, exception="RuntimeError('attempt 1 failed')"),
        feed.event("task-received", T0 + 0.5, uuid=UUID, name="sample.flaky", retries=1),
        feed.event("task-started", T0 + 0.6, uuid=UUID),
        feed.event("task-succeeded", T0 + 0.7, uuid=UUID, result="1", runtime=0.1),
    )
    task = feed.task()
    assert (task["state"], task["retries"], task["retried"]) == ("SUCCESS", 1, T0 + 0.2)
    counters = feed.worker()
    assert {name: counters[name] for name in ("received", "started", "succeeded", "failed", "retried")} == {
        "received": 2, "started": 2, "succeeded": 1, "failed": 0, "retried": 1}


def test_worker_counters_add_up_across_batches(feed):
    for number in range(3):
        feed.merge(*task_lifecycle(feed, uuid=f"{UUID[:-1]}{number}", start=T0 + number))
    worker = feed.worker()
    assert (worker["received"], worker["started"], worker["succeeded"]) == (3, 3, 3)


def test_worker_is_online_from_heartbeats_and_offline_after_two_missed_or_a_goodbye(feed):
    feed.merge(feed.event("worker-online", T0, freq=1.0, sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux"),
               feed.event("worker-heartbeat", T0 + 1, freq=1.0, active=2, processed=10, loadavg=[0.5, 0.25, 0.1]))
    worker = feed.worker(now=T0 + 1.5)
    assert worker["online"] is True
    assert (worker["active"], worker["processed"], worker["loadavg"], worker["sw_ver"]) == (2, 10, [0.5, 0.25, 0.1], "5.7.0")
    assert feed.worker(now=T0 + 2.9)["online"] is True
    assert feed.worker(now=T0 + 3.1)["online"] is False  # two heartbeat periods without one

    feed.merge(feed.event("worker-offline", T0 + 2, freq=1.0))
    assert feed.worker(now=T0 + 2.1)["online"] is False
    feed.merge(feed.event("worker-online", T0 + 10, freq=1.0))
    assert feed.worker(now=T0 + 10.5)["online"] is True  # back again


def test_a_worker_keeps_when_it_last_came_online_in_its_own_clock(feed):
    # Received 0.4 s after the worker sent it, and followed by a heartbeat in the same batch.
    online = {**feed.event("worker-online", T0, freq=1.0, processed=0), "local_received": T0 + 0.4}
    feed.merge(online, {**feed.event("worker-heartbeat", T0 + 1, freq=1.0, processed=3), "local_received": T0 + 1.25})
    assert feed.worker(now=T0 + 1.5)["online_at"] == T0
    assert feed.worker(now=T0 + 1.5)["clock_offset"] == 0.25  # this host's clock ahead, as its last event says
    feed.merge(feed.event("worker-heartbeat", T0 + 2, freq=1.0, processed=5))
    assert feed.worker(now=T0 + 2.5)["online_at"] == T0  # a heartbeat does not move it
    # Back on the broker after losing it, the same process says offline and online, with what it ran:
    # its tasks go on, it did not start again.
    feed.merge(feed.event("worker-offline", T0 + 3, freq=1.0, processed=5),
               feed.event("worker-online", T0 + 4, freq=1.0, processed=5))
    assert feed.worker(now=T0 + 4.5)["online_at"] == T0
    feed.merge(feed.event("worker-offline", T0 + 5, freq=1.0), feed.event("worker-online", T0 + 9, freq=1.0, processed=0),
               feed.event("worker-heartbeat", T0 + 10, freq=1.0))
    assert feed.worker(now=T0 + 10.5)["online_at"] == T0 + 9  # restarted


def test_heartbeats_are_kept_as_samples(feed):
    feed.merge(*(feed.event("worker-heartbeat", T0 + i, freq=1.0, active=i, loadavg=[i, 0, 0]) for i in range(3)))
    samples = feed.store.query("SELECT at, active, load1 FROM worker_samples ORDER BY at")
    assert [tuple(row) for row in samples] == [(T0, 0, 0.0), (T0 + 1, 1, 1.0), (T0 + 2, 2, 2.0)]


# Events as they could reach the writer from a buggy or hostile producer on the event bus.
MALFORMED_EVENTS = {
    "not-a-dict": "task-succeeded",
    "no-type": {"uuid": UUID, "hostname": WORKER, "timestamp": T0, "clock": 1, "local_received": T0},
    "type-not-text": {"type": 42, "uuid": UUID, "hostname": WORKER, "timestamp": T0, "clock": 1,
                      "local_received": T0},
    "unknown-type": {"type": "flux-capacitor", "hostname": WORKER, "timestamp": T0, "clock": 1,
                     "local_received": T0},
    "task-without-uuid": {"type": "task-succeeded", "hostname": WORKER, "timestamp": T0, "clock": 1,
                          "local_received": T0},
    "task-without-hostname": {"type": "task-started", "uuid": UUID, "timestamp": T0, "clock": 1,
                              "local_received": T0},
    "worker-without-timestamp": {"type": "worker-heartbeat", "hostname": "celery@ghost", "local_received": T0},
    "uuid-not-hashable": {"type": "task-received", "uuid": ["x"], "hostname": WORKER, "timestamp": T0,
                          "clock": 1, "local_received": T0},
}


@pytest.mark.parametrize("event", MALFORMED_EVENTS.values(), ids=MALFORMED_EVENTS.keys())
def test_malformed_event_is_counted_and_the_next_events_still_merge(feed, event):
    stats = feed.merge(event, *task_lifecycle(feed))
    assert stats["malformed"] == 1
    assert feed.task()["state"] == "SUCCESS"


# Events whose fields exist but hold values of the wrong type: they merge, and what the store
# keeps stays usable (numbers stay numbers) instead of blocking every later write.
GARBAGE_VALUES = {
    "timestamp-text": lambda feed: feed.event("task-started", "soon", uuid=UUID),
    "retries-huge": lambda feed: feed.event("task-received", T0, uuid=UUID, name="sample.add", retries=10 ** 30),
    "result-huge-number": lambda feed: feed.event("task-succeeded", T0 + 2, uuid=UUID, result=10 ** 30),
    "loadavg-number": lambda feed: feed.event("worker-heartbeat", T0, freq=1.0, loadavg=7),
    "freq-text": lambda feed: feed.event("worker-heartbeat", T0, freq="often"),
    "lone-surrogate": lambda feed: feed.event("task-received", T0, uuid=UUID, name="sample.\ud800"),
    "worker-field": lambda feed: feed.event("task-received", T0, uuid=UUID, name="sample.add", worker=["w"]),
}


@pytest.mark.parametrize("make_event", GARBAGE_VALUES.values(), ids=GARBAGE_VALUES.keys())
def test_garbage_values_never_block_later_writes_nor_break_reads(feed, make_event):
    feed.merge(make_event(feed))
    other = "99999999-2222-4333-8444-555555555555"
    feed.merge(*task_lifecycle(feed, uuid=other))
    assert feed.task(other)["state"] == "SUCCESS"
    assert feed.collector.stats()["backlog"] == 0
    for task in feed.store.query("SELECT retries, received, started, runtime FROM tasks"):
        assert all(value is None or isinstance(value, (int, float)) for value in tuple(task))
    assert feed.worker(now=T0)["hostname"] == WORKER  # workers() computes online from numbers


def test_events_beyond_the_backlog_limit_are_dropped_and_counted(tmp_path):
    feed = Feed(tmp_path, max_backlog=2)
    stats = feed.merge(*task_lifecycle(feed))  # three events, room for two
    assert (stats["received"], stats["dropped"], stats["stored"]) == (3, 1, 2)
    assert feed.task()["state"] == "STARTED"


# -- one bad event or row never stops the rest (issue: a null uuid poisoned the store) --------

def test_task_events_without_a_text_uuid_or_hostname_are_counted_and_skipped(feed):
    bad = [feed.event("task-received", T0, uuid=None, name="x"), feed.event("task-received", T0, uuid=7),
           feed.event("task-received", T0, uuid=""), feed.event("task-started", T0, uuid=UUID, hostname=None),
           feed.event("worker-heartbeat", T0, hostname=5, freq=1.0)]
    stats = feed.merge(*bad, *task_lifecycle(feed))
    assert stats["malformed"] == len(bad)
    assert feed.task()["state"] == "SUCCESS"
    assert feed.store.count_tasks() == 1


class RefusingStore(Store):
    """A real store that refuses, as a constraint would, any task row named 'poison'."""

    def write_batch(self, tasks=(), **rows):
        if any(row[1] == "poison" for row in tasks):
            raise sqlite3.IntegrityError("CHECK constraint failed: poison")
        return super().write_batch(tasks=tasks, **rows)


def test_a_batch_the_store_refuses_is_split_until_the_bad_row_is_dropped_and_nothing_is_written_twice(tmp_path):
    feed = Feed(tmp_path)
    feed.collector.store = feed.store = RefusingStore(str(tmp_path / "refusing.db"))
    good = [f"{UUID[:-2]}{n:02d}" for n in range(40)]
    events = [event for uuid in good for event in task_lifecycle(feed, uuid=uuid)]
    events.insert(17, feed.event("task-received", T0, uuid="poison-id", name="poison"))
    stats = feed.merge(*events)
    assert stats["rejected"] == 1
    assert feed.store.count_tasks() == len(good)
    assert all(feed.task(uuid)["state"] == "SUCCESS" for uuid in good)
    assert (feed.worker()["received"], feed.worker()["succeeded"]) == (len(good) + 1, len(good))  # once each
    assert stats["backlog"] == 0 and stats["writer_error"] is None


def test_text_the_store_cannot_encode_is_repaired_not_lost(feed):
    feed.merge(feed.event("task-received", T0, uuid=UUID, name="sample.\ud800add", args="(\x00,)"))
    task = feed.task()
    # The row is repaired whole, the same on every store (PostgreSQL's text refuses NUL).
    assert (task["name"], task["args"]) == ("sample.\ufffdadd", "(\ufffd,)")
    assert feed.collector.stats()["rejected"] == 0


def test_long_fields_are_cut_to_the_limit_with_a_marker(tmp_path):
    feed = Feed(tmp_path, field_limit=1000)
    stats = feed.merge(feed.event("task-received", T0, uuid=UUID, name="sample.add", args="x" * 10_000_000,
                                  kwargs="{}"))
    args = feed.task()["args"]
    assert args == "x" * 1000 + TRUNCATED.format(10_000_000 - 1000)
    assert (feed.task()["kwargs"], stats["truncated"]) == ("{}", 1)


def test_values_nested_too_deeply_to_show_are_stored_as_a_note(feed):
    nested = []
    for _ in range(100_000):
        nested = [nested]
    feed.merge(feed.event("task-received", T0, uuid=UUID, name="sample.add", args=nested),
               *task_lifecycle(feed, uuid=UUID[:-1] + "9"))
    assert feed.task()["args"] == TOO_DEEP
    assert feed.task(UUID[:-1] + "9")["state"] == "SUCCESS"


def test_a_batch_too_deep_to_pickle_loses_only_the_deep_field():
    nested = []
    for _ in range(100_000):
        nested = [nested]
    good = {"type": "task-received", "uuid": UUID, "args": "(1,)"}
    assert receiving._picklable(good) is good
    assert receiving._picklable({**good, "args": nested}) == {**good, "args": TOO_DEEP}


# -- a store that cannot be written keeps what waits, says so, and catches up -----------------

def test_a_full_disk_keeps_the_batch_shows_the_error_and_lag_then_catches_up_exactly(feed):
    feed.merge(*task_lifecycle(feed, uuid=UUID[:-1] + "0"))
    connection = feed.store._connection()  # the writer's (this thread's) connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    for event in (event for n in range(1, 200) for event in task_lifecycle(feed, uuid=f"{UUID[:-3]}{n:03d}",
                                                                         start=time.time())):
        feed.receive(event)
    with pytest.raises(sqlite3.OperationalError, match="full") as refused:
        feed.collector.merge_batch(feed.state)
    assert feed.store.is_transient(refused.value)  # kept and retried, not split and dropped
    stats = feed.collector.stats(now=time.time() + 60)
    assert stats["backlog"] > 0 and stats["lag_seconds"] >= 59  # grows while writes fail

    connection.execute("PRAGMA max_page_count = 1073741823")
    while feed.collector.merge_batch(feed.state):
        pass
    assert feed.store.count_tasks() == 200
    assert feed.worker()["succeeded"] == 200  # the refused batch was written once, not twice
    assert feed.collector.stats()["backlog"] == 0


# -- a finished task stays finished ------------------------------------------------------------

@pytest.mark.parametrize("late", ["task-retried", "task-received", "task-started"])
@pytest.mark.parametrize("batches", ["one-batch", "two-batches"])
def test_late_events_never_move_a_finished_task_back(feed, late, batches):
    received, started, succeeded = task_lifecycle(feed)
    late_event = feed.event(late, T0 + 0.2, uuid=UUID, exception="Retry in 1s")
    if batches == "one-batch":
        feed.merge(received, started, succeeded, late_event)
    else:
        feed.merge(received, started, succeeded)
        feed.merge(late_event)
    assert feed.task()["state"] == "SUCCESS"
    # and in a fresh merge state (the task let go of), only the store's rule keeps it final
    feed.state = feed.collector.new_merge_state()
    feed.merge(feed.event(late, T0 + 0.3, uuid=UUID))
    assert feed.task()["state"] == "SUCCESS"


def test_a_retry_that_comes_before_success_still_shows_as_retry_until_it_succeeds(feed):
    feed.merge(feed.event("task-received", T0, uuid=UUID, name="sample.flaky"),
               feed.event("task-started", T0 + 0.1, uuid=UUID),
               feed.event("task-retried", T0 + 0.2, uuid=UUID))
    assert feed.task()["state"] == "RETRY"


# -- one collector per broker and store --------------------------------------------------------

def test_a_second_collector_on_the_same_broker_and_store_stands_by_and_takes_over_on_stop(tmp_path):
    first, second = Feed(tmp_path), Feed(tmp_path)
    first.collector._housekeeping()
    second.collector._housekeeping()
    assert (first.collector.active, second.collector.active) == (True, False)
    assert second.collector.stats()["role"] == "standby"
    assert second.collector.stats()["lease_holder"] == first.collector.owner

    events = task_lifecycle(first)
    for feed in (first, second):  # pub/sub: both receive every event
        for event in events:
            feed.receive(event)
    first.collector.merge_batch(first.state)
    second.collector._skip_waiting_events()  # what the writing loop does while it stands by
    assert second.collector.stats()["backlog"] == 0
    assert first.worker()["succeeded"] == 1
    # The standby's pages refresh when the holder stores tasks (its version is the holder's).
    first.collector._housekeeping()
    second.collector._housekeeping()
    assert second.collector.stats()["tasks_stored_at"] == first.collector.stats()["tasks_stored_at"] is not None

    first.collector.stop()
    second.collector._housekeeping()
    assert second.collector.active


def test_a_collector_killed_on_this_host_is_replaced_at_once_not_when_its_lease_expires(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    first, second = Feed(tmp_path), Feed(tmp_path)
    first.collector.owner = f"{socket.gethostname()}:{dead.pid}:killed"
    first.collector._housekeeping()
    assert first.collector.active
    second.collector._housekeeping()
    assert second.collector.active


def test_collectors_of_two_brokers_on_one_store_both_record_each_naming_its_broker(tmp_path):
    eu, us = Feed(tmp_path, broker_name="eu"), Feed(tmp_path, broker_name="us")
    for feed in (eu, us):
        feed.collector._housekeeping()
    assert eu.collector.active and us.collector.active  # their leases are their brokers'
    other = "99999999-2222-4333-8444-555555555555"
    eu.merge(*task_lifecycle(eu))
    us.merge(us.event("task-received", T0, uuid=other, name="sample.add", hostname="celery@beta"))
    us.store.save_inspection({"celery@gamma": {"stats": {}}}, T0, us.collector.broker_name)
    assert (eu.task()["broker"], eu.task(other)["broker"]) == ("eu", "us")
    assert {w["hostname"]: w["broker"] for w in eu.store.workers()} == {
        WORKER: "eu", "celery@beta": "us", "celery@gamma": "us"}
    assert {name: stats["broker"] for name, stats in eu.store.get_meta_prefixed("collector:").items()} == {
        "eu": "eu", "us": "us"}


# -- the counters /metrics serves ---------------------------------------------------------------------

def metric_counters(store) -> tuple[dict, dict, dict]:
    """({(worker, name, type): count}, {(worker, name): (count, seconds)}, {(worker, name, le): count})."""
    rows = store.metric_counters()
    return ({tuple(row[:3]): row[3] for row in rows["events"]},
            {tuple(row[:2]): (row[2], row[3]) for row in rows["runtimes"]},
            {tuple(row[:3]): row[3] for row in rows["buckets"]})


def test_task_events_are_counted_by_worker_name_and_type_and_successful_runtimes_in_buckets(tmp_path):
    feed = Feed(tmp_path, runtime_buckets=(0.5, 2.0, 10.0))
    feed.merge(
        # a client's task-sent counts under the client's name, as Flower's does
        {**feed.event("task-sent", T0 - 1, uuid=UUID, name="sample.add"), "hostname": "client@app"},
        *task_lifecycle(feed),  # 1 s of runtime
        feed.event("task-received", T0, uuid="fast", name="sample.add"),
        feed.event("task-started", T0 + 0.1, uuid="fast"),
        feed.event("task-succeeded", T0 + 0.2, uuid="fast", runtime=0.1),
        feed.event("task-received", T0, uuid="slow", name="sample.sleep"),
        feed.event("task-succeeded", T0 + 30, uuid="slow", runtime=30.0),  # above every bound: +Inf only
        feed.event("task-received", T0, uuid="broken", name="sample.fail"),
        feed.event("task-started", T0 + 0.1, uuid="broken"),
        feed.event("task-failed", T0 + 0.2, uuid="broken", exception="ValueError()"),  # no runtime: not observed
    )
    events, runtimes, buckets = metric_counters(feed.store)
    assert events == {("client@app", "sample.add", "task-sent"): 1,
                      (WORKER, "sample.add", "task-received"): 2, (WORKER, "sample.add", "task-started"): 2,
                      (WORKER, "sample.add", "task-succeeded"): 2, (WORKER, "sample.fail", "task-received"): 1,
                      (WORKER, "sample.fail", "task-started"): 1, (WORKER, "sample.fail", "task-failed"): 1,
                      (WORKER, "sample.sleep", "task-received"): 1, (WORKER, "sample.sleep", "task-succeeded"): 1}
    assert runtimes == {(WORKER, "sample.add"): (2, pytest.approx(1.1)), (WORKER, "sample.sleep"): (1, 30.0)}
    # each in its own bucket (/metrics adds them up): the 0.1 s run under 0.5, the 1 s one under 2
    assert buckets == {(WORKER, "sample.add", 0.5): 1, (WORKER, "sample.add", 2.0): 1}
    # the worker's own counters are unchanged by it
    assert (feed.worker()["received"], feed.worker()["succeeded"], feed.worker()["failed"]) == (4, 3, 1)


def test_an_event_of_a_task_whose_name_memory_let_go_is_labelled_with_its_stored_name(feed):
    received, started, succeeded = task_lifecycle(feed)
    feed.merge(received, started)
    feed.state = feed.collector.new_merge_state()  # the task let go (or the collector started again)
    feed.merge(succeeded)
    events, _runtimes, _buckets = metric_counters(feed.store)
    assert events[(WORKER, "sample.add", "task-succeeded")] == 1


def test_events_of_a_task_no_collector_knows_the_name_of_wait_for_it_then_count_under_it(tmp_path):
    # Two collectors on one events queue: the broker gives the task's success to one, its received
    # event to the other, whose batch commits later.
    queue = receiving.EventsQueue("q", 1000, 60.0)
    first, second = Feed(tmp_path, events_queue=queue), Feed(tmp_path, events_queue=queue)
    received, started, succeeded = task_lifecycle(first)
    second.merge(succeeded)
    assert metric_counters(second.store) == ({}, {}, {})  # waiting, not counted as ""
    assert second.worker()["succeeded"] == 1  # the worker's own counter does not wait
    first.merge(received, started)
    events, runtimes, _buckets = metric_counters(first.store)
    assert events == {(WORKER, "sample.add", "task-received"): 1, (WORKER, "sample.add", "task-started"): 1,
                      (WORKER, "sample.add", "task-succeeded"): 1}
    assert runtimes == {(WORKER, "sample.add"): (1, 1.0)}
    second.merge(succeeded)  # delivered again: counted once still
    assert metric_counters(second.store)[0] == events
    # The charts count it under its name as well, and each collector's pages refresh on the other's tasks.
    assert first.store.fold_rollups() == 1
    assert [tuple(row) for row in first.store.query("SELECT name, count FROM task_rollup WHERE grain = 60")] == [
        ("sample.add", 1)]
    for _turn in range(2):  # each reads the report the other wrote last, and takes a later change
        first.collector._housekeeping()
        second.collector._housekeeping()
    assert first.collector.stats()["tasks_stored_at"] == second.collector.stats()["tasks_stored_at"] is not None


def test_collectors_sharing_an_events_queue_report_apart_and_their_broker_shows_the_sum(tmp_path):
    # They used to take turns at one report: the top bar and /api/collector showed one collector's
    # counters, then the other's.
    queue = receiving.EventsQueue("q", 1000, 60.0)
    first, second = Feed(tmp_path, events_queue=queue), Feed(tmp_path, events_queue=queue)
    for feed in (first, second):  # running, as far as their reports go: the test hands them their events
        stand_in = threading.Thread(target=lambda: None)
        stand_in.start()
        feed.collector._threads = [stand_in]
    received, started, succeeded = task_lifecycle(first)
    first.merge(received, started)
    second.merge(succeeded, second.event("worker-heartbeat", time.time(), freq=2.0, active=0))

    def broker_report():
        [group] = by_broker(first.store.get_meta_prefixed(REPORT_PREFIX)).values()
        return merged(group, time.time(), 30.0)
    for feed in (first, second):
        feed.collector._housekeeping()
    report = broker_report()
    assert report["collectors"] == sorted([first.collector.owner, second.collector.owner])
    assert (report["received"], report["stored"], report["silent_collectors"]) == (4, 4, 0)
    assert report["role"] == "active" and report["connected"] is False  # neither listens to a broker here

    second.collector.stop()  # its last report says it stopped: the running one carries on alone
    assert broker_report()["collectors"] == [first.collector.owner]
    first.collector._housekeeping()
    assert list(first.store.get_meta_prefixed(REPORT_PREFIX)) == [
        f"{first.collector.broker_name} {first.collector.owner}"]

    # One killed without a stop goes silent: counted as such, and its report deleted once it is long gone.
    gone = {**first.collector.stats(), "owner": "elsewhere:1:abcdef", "updated_at": time.time() - 60}
    first.store.set_meta(report_key(first.collector.broker_name, gone["owner"]), gone)
    report = broker_report()
    assert (report["collectors"], report["silent_collectors"]) == ([first.collector.owner], 1)
    first.collector._housekeeping()
    assert broker_report()["silent_collectors"] == 1  # not gone for long yet
    long_gone = {**gone, "updated_at": time.time() - GONE_REPORT_SECONDS - 1}
    first.store.set_meta(report_key(first.collector.broker_name, gone["owner"]), long_gone)
    first.collector._housekeeping()
    assert broker_report()["silent_collectors"] == 0
    assert len(first.store.get_meta_prefixed(REPORT_PREFIX)) == 1


def test_a_brokers_report_sums_its_live_collectors_and_takes_the_worst_of_the_rest():
    now = 1000.0
    live = {"running": True, "updated_at": now, "connected": True, "role": "active", "broker": "b"}
    reports = [{**live, "owner": "a", "stored": 5, "backlog": 2, "lag_seconds": 0.5, "tasks_stored_at": 990.0},
               {**live, "owner": "b", "stored": 7, "backlog": 0, "lag_seconds": 3.0, "connected": False,
                "broker_error": "refused", "writer_failing_since": 980.0, "writer_error": "disk full"},
               {**live, "owner": "c", "stored": 100, "running": False, "updated_at": 999.0, "tasks_stored_at": 995.0},
               {**live, "owner": "d", "stored": 1, "updated_at": now - 60},  # silent: killed, say
               {**live, "owner": "e", "stored": 1, "updated_at": now - GONE_REPORT_SECONDS - 1}]  # long gone
    report = merged(reports, now, 30.0)
    assert (report["stored"], report["backlog"], report["lag_seconds"]) == (12, 2, 3.0)
    # One of them reaches the broker: it is recorded, and the other is counted as cut off.
    assert (report["connected"], report["disconnected_collectors"], report["broker_error"]) == (True, 1, "refused")
    assert (report["writer_error"], report["writer_failing_since"], report["tasks_stored_at"]) == (
        "disk full", 980.0, 995.0)
    assert (report["collectors"], report["owner"], report["silent_collectors"]) == (["a", "b"], None, 1)
    assert merged(reports[1:2], now, 30.0)["connected"] is False  # none reaches it
    ended = merged([{**reports[0], "updated_at": 900.0}, reports[2]], now, 30.0)  # none live: the latest says how
    assert (ended["owner"], ended["running"], ended["collectors"]) == ("c", False, [])
    alone = merged([reports[0]], now, 30.0)
    assert {key: alone[key] for key in reports[0]} == reports[0] and alone["collectors"] == ["a"]


def test_the_lease_holder_deletes_the_reports_an_events_queues_collectors_left_behind(tmp_path):
    feed = Feed(tmp_path)  # recording without an events queue, after some that shared one
    feed.collector._housekeeping()  # takes the lease
    broker = feed.collector.broker_name
    left = {**feed.collector.stats(), "events_queue": "q", "running": True}
    feed.store.set_meta(report_key(broker, "stopped:1:a"), {**left, "owner": "stopped:1:a", "running": False})
    feed.store.set_meta(report_key(broker, "killed:2:b"), {**left, "owner": "killed:2:b",
                                                         "updated_at": time.time() - GONE_REPORT_SECONDS - 1})
    feed.collector._housekeeping()
    assert list(feed.store.get_meta_prefixed(REPORT_PREFIX)) == [broker]


def test_other_runtime_buckets_start_the_histogram_again_and_leave_the_event_counts(tmp_path):
    def collector_with(buckets):  # one at a time: the one before stops and leaves the lease
        feed = Feed(tmp_path, runtime_buckets=buckets)
        feed.collector._housekeeping()  # takes the lease and agrees the buckets, before any batch
        return feed
    first = collector_with((1.0, 5.0))
    first.merge(*task_lifecycle(first))
    assert metric_counters(first.store)[2] == {(WORKER, "sample.add", 1.0): 1}
    first.collector.stop()
    same = collector_with((1.0, 5.0))  # the same buckets: counting goes on
    assert metric_counters(same.store)[1] == {(WORKER, "sample.add"): (1, 1.0)}
    same.collector.stop()
    other = collector_with((0.25, 2.0))
    events, runtimes, buckets = metric_counters(other.store)
    assert (runtimes, buckets) == ({}, {})
    assert events[(WORKER, "sample.add", "task-succeeded")] == 1
    assert other.store.get_meta("runtime_buckets") == [0.25, 2.0]


def _minutes_rolled_up(store) -> int:
    return store.query("SELECT coalesce(sum(count), 0) FROM task_rollup WHERE grain = 60")[0][0]


def test_a_fold_in_a_batch_of_heartbeats_changes_the_version_the_pages_refresh_on(feed):
    # The Dashboard's charts and the compare table are asked again when the version changes: a fold
    # that left it as it was kept them without the tasks it folded.
    feed.merge(*task_lifecycle(feed))
    written = feed.collector.stats()["tasks_stored_at"]
    assert _minutes_rolled_up(feed.store) == 0  # not due yet: a fold takes many batches' tasks at once
    heartbeat = lambda: feed.merge(feed.event("worker-heartbeat", time.time(), freq=2.0, active=0))
    wait_for(lambda: heartbeat() and _minutes_rolled_up(feed.store), 15, "a heartbeats batch folding the task")
    assert feed.collector.stats()["tasks_stored_at"] > written


def test_a_quiet_clusters_last_tasks_are_folded_without_another_event(feed):
    feed.merge(*task_lifecycle(feed))
    written = feed.collector.stats()["tasks_stored_at"]
    wait_for(lambda: feed.collector._housekeeping() or _minutes_rolled_up(feed.store), 15, "the quiet store's fold")
    assert feed.collector.stats()["tasks_stored_at"] > written

"""The store, on SQLite and on PostgreSQL: retention, history across re-opening, the upsert rules, leases."""
from __future__ import annotations

import sqlite3
import time

import pytest

from conftest import StoreMaker
from helpers import task_row, worker_row
from monitor.store import event_counts
from monitor.store.schema import SCHEMA_VERSION, StoreError, is_online
from monitor.store.sqlite import SqliteStore as Store

T0 = 1_800_000_000.0


def uuid(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


@pytest.fixture
def store(make_store):
    return make_store(max_tasks=5)


def test_retention_keeps_the_newest_max_tasks(store):
    for number in range(8):  # one batch per task, as they arrive
        store.write_batch(tasks=[task_row(uuid=uuid(number), name="t", state="SUCCESS", received=T0 + number)])
    assert store.enforce_retention() == 3
    kept = [row["uuid"] for row in store.query("SELECT uuid FROM tasks ORDER BY seq")]
    assert kept == [uuid(number) for number in range(3, 8)]
    assert store.enforce_retention() == 0  # nothing more to drop


def test_a_task_updated_late_keeps_its_place_in_the_retention_order(store):
    store.write_batch(tasks=[task_row(uuid=uuid(n), state="STARTED") for n in range(5)])
    store.write_batch(tasks=[task_row(uuid=uuid(0), state="SUCCESS")])  # the oldest finishes last
    store.write_batch(tasks=[task_row(uuid=uuid(5), state="RECEIVED")])
    store.enforce_retention()
    assert store.get_task(uuid(0)) is None  # first seen first, so first to go
    assert store.count_tasks() == 5


def test_worker_samples_older_than_the_window_are_dropped(make_store):
    store = make_store("samples", sample_days=1)
    store.write_batch(samples=[("w@a", T0 - 2 * 86400, 1, 0.1, 0.1, 0.1), ("w@a", T0 - 3600, 2, 0.2, 0.2, 0.2)])
    store.enforce_retention(now=T0)
    assert [row["active"] for row in store.query("SELECT active FROM worker_samples")] == [2]


def test_history_survives_reopening_the_store(make_store):
    first = make_store("history")
    first.write_batch(tasks=[task_row(uuid=uuid(1), name="sample.add", state="SUCCESS", result="5", runtime=0.25)],
                      workers=[worker_row("w@a", freq=2.0, last_heartbeat=T0)],
                      counters=[("w@a", 1, 1, 1, 0, 0)])
    first.set_meta("collector", {"stored": 3})

    first.close()
    reopened = make_store("history")
    task = reopened.get_task(uuid(1))
    assert (task["name"], task["state"], task["result"], task["runtime"]) == ("sample.add", "SUCCESS", "5", 0.25)
    worker = reopened.workers(now=T0 + 1)[0]
    assert (worker["hostname"], worker["succeeded"], worker["online"]) == ("w@a", 1, True)
    assert reopened.get_meta("collector") == {"stored": 3}


@pytest.mark.parametrize("final", ["SUCCESS", "FAILURE", "REVOKED"])
@pytest.mark.parametrize("late", ["PENDING", "RECEIVED", "STARTED", "RETRY", "PROGRESS"])
def test_upsert_never_moves_a_finished_task_back(store, final, late):
    store.write_batch(tasks=[task_row(uuid=uuid(1), name="t", state=final, succeeded=T0 + 2)])
    store.write_batch(tasks=[task_row(uuid=uuid(1), state=late, started=T0 + 1)])
    task = store.get_task(uuid(1))
    assert (task["state"], task["started"], task["succeeded"]) == (final, T0 + 1, T0 + 2)


def test_upsert_keeps_stored_fields_a_partial_row_lacks_and_takes_retries(store):
    store.write_batch(tasks=[task_row(uuid=uuid(1), name="t", args="(1,)", state="STARTED")])
    store.write_batch(tasks=[task_row(uuid=uuid(1), state="RETRY", retries=1)])
    task = store.get_task(uuid(1))
    assert (task["name"], task["args"], task["state"], task["retries"]) == ("t", "(1,)", "RETRY", 1)
    store.write_batch(tasks=[task_row(uuid=uuid(1), state="STARTED")])  # retried tasks do run again
    assert store.get_task(uuid(1))["state"] == "STARTED"


def test_worker_counters_accumulate_and_inspect_only_workers_are_listed(store):
    store.write_batch(counters=[("w@a", 2, 2, 1, 1, 0)])
    store.write_batch(counters=[("w@a", 1, 1, 1, 0, 1)])
    store.save_inspection({"w@b": {"stats": {"pid": 7}}}, at=T0)
    workers = {w["hostname"]: w for w in store.workers(now=T0)}
    assert {k: workers["w@a"][k] for k in ("received", "started", "succeeded", "failed", "retried")} == {
        "received": 3, "started": 3, "succeeded": 2, "failed": 1, "retried": 1}
    assert workers["w@b"]["inspect"] == {"stats": {"pid": 7}}
    assert workers["w@b"]["online"] is False  # inspect alone does not say it is alive now


@pytest.mark.parametrize("worker, now, online", [
    ({"last_heartbeat": T0, "freq": 2.0}, T0 + 3.9, True),
    ({"last_heartbeat": T0, "freq": 2.0}, T0 + 4.1, False),
    ({"last_heartbeat": T0, "freq": None}, T0 + 3.9, True),  # celery's default period: 2 s
    ({"last_heartbeat": T0, "freq": 2.0, "offline_at": T0 + 1}, T0 + 1.5, False),
    ({"last_heartbeat": T0 + 5, "freq": 2.0, "offline_at": T0 + 1}, T0 + 6, True),  # came back
    ({"last_heartbeat": None}, T0, False),
])
def test_online_means_a_heartbeat_within_two_periods_and_no_goodbye_since(worker, now, online):
    assert is_online(worker, now) is online


def test_a_store_written_by_a_newer_flowerbed_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "newer.db"
    Store(str(path)).write_batch(tasks=[task_row(uuid=uuid(1), name="t", state="SUCCESS")])
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(StoreError, match="written by a newer Flowerbed"):
        Store(str(path))


def test_a_postgresql_store_written_by_a_newer_flowerbed_is_refused(request, tmp_path):
    make_store = StoreMaker("postgresql", tmp_path, request)  # SQLite's own check is the test above
    make_store("newer").set_meta("schema_version", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="written by a newer Flowerbed"):
        make_store("newer")
    make_store.close_all()


def test_only_one_owner_holds_a_lease_until_it_expires_or_is_released(store):
    assert store.claim_lease("broker", "a", 30, now=T0)["owner"] == "a"
    assert store.claim_lease("broker", "b", 30, now=T0 + 1)["owner"] == "a"  # a holds it
    assert store.claim_lease("broker", "b", 30, now=T0 + 1, replacing="a")["owner"] == "b"  # a is known gone
    assert store.claim_lease("broker", "a", 30, now=T0 + 40)["owner"] == "a"  # b's expired
    store.release_lease("broker", "b")  # not b's to give up
    assert store.get_meta("lease:broker")["owner"] == "a"
    store.release_lease("broker", "a")
    assert store.get_meta("lease:broker") is None


# The tables of a version-1 store (Flowerbed 0.1), as it created them: no `broker` column.
VERSION_1 = """
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE,
    name TEXT, state TEXT, worker TEXT, args TEXT, kwargs TEXT, result TEXT, exception TEXT,
    traceback TEXT, retries INTEGER, sent REAL, received REAL, started REAL, succeeded REAL,
    failed REAL, retried REAL, revoked REAL, rejected REAL, runtime REAL, eta TEXT, expires TEXT,
    exchange TEXT, routing_key TEXT, root_id TEXT, parent_id TEXT, client TEXT, timestamp REAL
);
CREATE TABLE workers (
    hostname TEXT PRIMARY KEY, pid INTEGER, freq REAL, last_heartbeat REAL, offline_at REAL,
    active INTEGER, processed INTEGER, loadavg TEXT, sw_ident TEXT, sw_ver TEXT, sw_sys TEXT,
    received INTEGER NOT NULL DEFAULT 0, started INTEGER NOT NULL DEFAULT 0, succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, retried INTEGER NOT NULL DEFAULT 0, inspect TEXT, inspected_at REAL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO tasks (uuid, name, state, worker, result) VALUES ('00000000-0000-4000-8000-000000000001',
                                                               'sample.add', 'SUCCESS', 'w@a', '5');
INSERT INTO workers (hostname, freq, succeeded) VALUES ('w@a', 2.0, 1);
PRAGMA user_version = 1;
"""


def columns(store, table) -> list[str]:
    return [row[1] for row in store.query(f"PRAGMA table_info({table})")]


def test_a_version_1_store_gets_the_broker_columns_and_keeps_what_it_holds(tmp_path):
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(VERSION_1)
    store = Store(str(path))
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 7
    assert store.count_audit() == 0 and store.task_links(uuid(1)) == {"rerun_of": None, "reruns": []}  # version 3
    assert store.queues() == [] and store.queue_history(0, 60) == []  # version 4
    assert store.metric_counters() == {"events": [], "runtimes": [], "buckets": []}  # version 7
    assert columns(store, "tasks")[-2:] == ["broker", "clock"] and columns(store, "workers")[-3:] == ["broker", "online_at", "clock_offset"]  # 2, 5, 6
    for table in ("tasks", "workers"):  # as a new store has them, with their types
        assert (store.query(f"PRAGMA table_info({table})") and [tuple(row)[1:3] for row in store.query(f"PRAGMA table_info({table})")]
                == [tuple(row)[1:3] for row in Store(str(tmp_path / "new.db")).query(f"PRAGMA table_info({table})")])
    assert store.query("SELECT 1 FROM sqlite_master WHERE name = 'tasks_broker'")
    task = store.get_task(uuid(1))
    assert (task["name"], task["state"], task["result"], task["broker"]) == ("sample.add", "SUCCESS", "5", None)
    assert [(w["hostname"], w["succeeded"], w["broker"]) for w in store.workers()] == [("w@a", 1, None)]
    assert len(store.query("SELECT rowid FROM tasks_text WHERE tasks_text MATCH 'add'")) == 1  # text indexed
    # New rows carry their broker; the next opening migrates nothing again.
    store.write_batch(tasks=[task_row(uuid=uuid(2), name="t", state="STARTED", broker="eu")],
                      workers=[worker_row("w@b", broker="eu")])
    reopened = Store(str(path))
    assert [row["broker"] for row in reopened.query("SELECT broker FROM tasks ORDER BY seq")] == [None, "eu"]
    assert reopened.brokers() == ["eu"]


def test_a_version_2_store_gets_the_clock_column_and_keeps_what_it_holds(make_store):
    store = make_store("v2")
    store.write_batch(tasks=[task_row(uuid=uuid(1), name="t", state="SUCCESS", broker="eu")])
    # What a version-2 store is: the tasks without `clock`, and the version it says.
    store._write((("ALTER TABLE tasks DROP COLUMN clock", [()]), ("DROP INDEX tasks_parent_id", [()])))
    if make_store.backend == "sqlite":
        store.query("PRAGMA user_version = 2")
    else:
        store.set_meta("schema_version", 2)
    reopened = make_store("v2")
    assert (reopened.get_task(uuid(1))["clock"], reopened.get_task(uuid(1))["broker"]) == (None, "eu")
    reopened.write_batch(tasks=[task_row(uuid=uuid(2), name="t", state="STARTED", clock=42, parent_id=uuid(1))])
    assert reopened.get_task(uuid(2))["clock"] == 42
    assert reopened.children([uuid(1)]) == {uuid(1): [uuid(2)]}


def test_children_and_distinct_names_and_workers(make_store):
    store = make_store()
    store.write_batch(tasks=[
        task_row(uuid=uuid(1), name="shop.Checkout", worker="w@b", state="SUCCESS"),
        task_row(uuid=uuid(2), name="shop.email", worker="w@a", parent_id=uuid(1), root_id=uuid(1)),
        task_row(uuid=uuid(3), name="shop.email", worker="w@a", parent_id=uuid(1), root_id=uuid(1)),
        task_row(uuid=uuid(4), name="shop.invoice", parent_id=uuid(2), root_id=uuid(1)),
        task_row(uuid=uuid(5)),  # a task seen without a name or worker yet
    ])
    assert store.children([uuid(1), uuid(2), uuid(4)]) == {uuid(1): [uuid(2), uuid(3)], uuid(2): [uuid(4)]}
    assert store.children([]) == {}
    assert store.distinct_task_values("name") == ["shop.Checkout", "shop.email", "shop.invoice"]
    assert store.distinct_task_values("worker") == ["w@a", "w@b"]
    with pytest.raises(ValueError):
        store.distinct_task_values("args")


def test_worker_rows_keep_their_broker_when_an_inspect_or_a_later_row_does_not_say(store):
    store.write_batch(workers=[worker_row("w@a", broker="eu", last_heartbeat=T0)])
    store.write_batch(workers=[worker_row("w@a", last_heartbeat=T0 + 1)], counters=[("w@a", 1, 0, 0, 0, 0)])
    store.save_inspection({"w@a": {"stats": {}}}, at=T0)
    store.save_inspection({"w@b": {"stats": {}}}, at=T0, broker="us")
    assert {w["hostname"]: w["broker"] for w in store.workers(now=T0)} == {"w@a": "eu", "w@b": "us"}
    assert store.brokers() == ["eu", "us"]


def test_a_worker_started_while_no_collector_listened_gets_its_start_from_inspect(make_store):
    from monitor.ingest.inspector import CLOCK_MARGIN_SECONDS, before_start

    store = make_store("online-at")
    assert before_start({"stats": {"uptime": 42}}, T0) == T0 - 43 - CLOCK_MARGIN_SECONDS  # the worker's clock unknown
    assert before_start({"stats": {"uptime": 42}}, T0, clock_offset=-0.25) == T0 - 43 + 0.25  # its clock 0.25 s ahead
    assert before_start({"stats": "?"}, T0) is None and before_start({"stats": {"uptime": float("nan")}}, T0) is None
    store.write_batch(workers=[worker_row("w@a", online_at=T0)])  # its worker-online event
    store.save_inspection({"w@a": {}, "w@b": {}}, T0 + 60, online_since={"w@a": T0 - 1.5, "w@b": T0})
    # The same start told by uptime (to a second or two) leaves the event's; a worker without one takes it.
    assert {w["hostname"]: w["online_at"] for w in store.workers(T0 + 60)} == {"w@a": T0, "w@b": T0}
    store.save_inspection({"w@a": {}}, T0 + 600, online_since={"w@a": T0 + 500})  # restarted, unseen
    store.save_inspection({"w@a": {}}, T0 + 700)  # an inspect without stats changes nothing
    assert store.worker("w@a", T0 + 700)["online_at"] == T0 + 500
    store.write_batch(workers=[worker_row("w@a", online_at=T0 + 800)])  # the next event says exactly
    assert store.worker("w@a", T0 + 800)["online_at"] == T0 + 800


def test_meta_values_are_read_by_key_prefix(store):
    store.set_meta("collector:eu", {"stored": 1})
    store.set_meta("collector:us", {"stored": 2})
    store.set_meta("collector", {"stored": 3})  # what version 1 wrote: not under the prefix
    store.set_meta("lease:collector:eu", {"owner": "x"})
    assert store.get_meta_prefixed("collector:") == {"eu": {"stored": 1}, "us": {"stored": 2}}


def test_busy_floors_give_each_workers_fewest_active_and_first_heartbeat_since_a_time(make_store):
    store = make_store("floors")
    store.write_batch(samples=[("w@a", T0 - 400, 0, 0.1, 0.1, 0.1),  # before the window: not counted
                               ("w@a", T0 - 180, 3, 0.1, 0.1, 0.1), ("w@a", T0 - 90, 2, 0.1, 0.1, 0.1),
                               ("w@a", T0, 3, 0.1, 0.1, 0.1),
                               ("w@b", T0 - 10, 4, 0.1, 0.1, 0.1), ("w@c", T0 - 20, None, None, None, None)])
    assert store.busy_floors(T0 - 200) == {"w@a": (2, T0 - 180), "w@b": (4, T0 - 10)}


def test_the_metrics_counters_add_up_across_batches_and_survive_reopening(make_store):
    store = make_store()
    store.write_batch(events=[("w@a", "add", "task-succeeded", 2, T0)], runtimes=[("w@a", "add", 2, 0.5, T0)],
                      runtime_buckets=[("w@a", "add", 0.25, 1), ("w@a", "add", 1.0, 1)])
    store.write_batch(events=[("w@a", "add", "task-succeeded", 1, T0), ("w@a", "add", "task-failed", 1, T0)],
                      runtimes=[("w@a", "add", 1, 2.0, T0)], runtime_buckets=[("w@a", "add", 5.0, 1)])
    store.close()
    counters = make_store().metric_counters()
    assert counters["events"] == [("w@a", "add", "task-failed", 1), ("w@a", "add", "task-succeeded", 3)]
    assert counters["runtimes"] == [("w@a", "add", 3, 2.5)]
    assert counters["buckets"] == [("w@a", "add", 0.25, 1), ("w@a", "add", 1.0, 1), ("w@a", "add", 5.0, 1)]


def test_counters_nothing_added_to_for_the_sample_window_go_a_histogram_whole(make_store):
    store = make_store(sample_days=7)
    old, recent = T0 - 8 * 86400, T0 - 86400
    store.write_batch(events=[("gone@pod-1", "add", "task-received", 5, old), ("w@a", "add", "task-received", 5, old),
                              ("w@a", "add", "task-succeeded", 5, recent)],
                      runtimes=[("gone@pod-1", "add", 5, 1.0, old), ("w@a", "add", 5, 1.0, recent)],
                      runtime_buckets=[("gone@pod-1", "add", 0.25, 5), ("w@a", "add", 0.25, 5)])
    store.enforce_retention(now=T0)
    counters = store.metric_counters()
    assert counters["events"] == [("w@a", "add", "task-succeeded", 5)]
    assert counters["runtimes"] == [("w@a", "add", 5, 1.0)]
    assert counters["buckets"] == [("w@a", "add", 0.25, 5)]


def test_events_waiting_for_a_name_count_under_it_once_stored_or_under_nothing_after_the_wait(make_store):
    store = make_store()
    store.use_runtime_buckets((0.5, 2.0))
    now = time.time()
    waited_long = now - event_counts.UNNAMED_WAIT_SECONDS - 1
    store.write_batch(unnamed=[(uuid(1), "w@a", "succeeded", 1.0, now), (uuid(2), "w@a", "succeeded", 0.1, now),
                               (uuid(3), "w@a", "failed", None, waited_long)])
    # uuid(1)'s name is stored by a later batch; uuid(2)'s never is, and waits still; uuid(3)'s waited too long
    store.write_batch(tasks=[task_row(uuid=uuid(1), name="add", state="RECEIVED", worker="w@a")])
    counters = store.metric_counters()
    assert counters["events"] == [("w@a", "", "task-failed", 1), ("w@a", "add", "task-succeeded", 1)]
    assert counters["runtimes"] == [("w@a", "add", 1, 1.0)]
    assert counters["buckets"] == [("w@a", "add", 2.0, 1)]
    assert [tuple(row) for row in store.query("SELECT uuid FROM task_events_unnamed")] == [(uuid(2),)]


def test_tasks_at_workers_are_those_received_or_running_without_an_eta_and_not_lost(make_store):
    store = make_store()
    store.write_batch(
        tasks=[task_row(uuid=uuid(1), name="add", state="RECEIVED", worker="w@a", received=T0),
               task_row(uuid=uuid(2), name="add", state="RECEIVED", worker="w@a", received=T0),
               task_row(uuid=uuid(3), name="add", state="RECEIVED", worker="w@a", received=T0, eta="2027-01-01"),
               task_row(uuid=uuid(4), name="add", state="STARTED", worker="w@a", received=T0, started=T0 + 2),
               # started before its worker's last start: lost, not running
               task_row(uuid=uuid(5), name="add", state="STARTED", worker="w@b", received=T0, started=T0 + 1),
               task_row(uuid=uuid(6), name="add", state="SUCCESS", worker="w@a", received=T0, started=T0 + 1)],
        workers=[worker_row("w@a", online_at=T0 - 10), worker_row("w@b", online_at=T0 + 5)])
    found = store.tasks_at_workers()
    assert [tuple(row) for row in found["received"]] == [("w@a", "add", 2)]
    assert [tuple(row) for row in found["started"]] == [("w@a", "add", T0 + 2, T0)]

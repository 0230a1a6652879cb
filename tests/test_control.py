"""Worker and task control (monitor/control.py) and its audit log: the store's part on SQLite and
PostgreSQL, then the engine against a real `celery worker` on Redis, watched by a real Flowerbed."""
from __future__ import annotations

import dataclasses

import pytest
from celery import Celery

from helpers import (CeleryWorker, FlowerbedServer, Stack, finished, free_port, get_json, wait_for, wait_for_tasks,
                     worker_row, worker_status)
from monitor.control import ControlError, Controller
from monitor.query.tasks import TaskQuery
from monitor.store import open_store

T0 = 1_800_000_000.0


def entry(at, action="pool-grow", target="w@a", actor="ada", **fields):
    return {"at": at, "actor": actor, "action": action, "target": target, "arguments": {"n": 2}, "outcome": "ok",
            "message": "Growing", "replies": {"confirmed": {"w@a": "pool will grow"}}, **fields}


# -- the store ---------------------------------------------------------------------------------------
def test_audit_rows_come_back_newest_first_with_their_json(make_store):
    store = make_store()
    store.record_action(entry(T0, actor="ada"))
    store.record_action(entry(T0 + 1, action="revoke", target="t-1", actor="bob", arguments={"terminate": True}))
    rows = list(store.iter_audit())
    assert [(row["actor"], row["action"], row["target"]) for row in rows] == [("bob", "revoke", "t-1"),
                                                                              ("ada", "pool-grow", "w@a")]
    assert rows[0]["arguments"] == {"terminate": True}
    assert rows[1]["replies"] == {"confirmed": {"w@a": "pool will grow"}}
    assert rows[1]["at"] == T0 and store.count_audit() == 2
    assert [row["actor"] for row in store.iter_audit(limit=1, offset=1)] == ["ada"]


def test_audit_search_matches_every_word_in_any_column_ignoring_case(make_store):
    store = make_store()
    store.record_action(entry(T0, actor="ada", action="pool-grow", target="alpha@host"))
    store.record_action(entry(T0 + 1, actor="bob", action="revoke", target="t-1"))
    store.record_action(entry(T0 + 2, actor="ada", action="revoke", target="t-2", message="100%_done"))
    assert [row["target"] for row in store.iter_audit("ADA revoke")] == ["t-2"]
    assert [row["target"] for row in store.iter_audit("alpha")] == ["alpha@host"]
    assert [row["target"] for row in store.iter_audit("100%_")] == ["t-2"]  # % and _ are literal
    assert store.count_audit("revoke") == 2 and store.count_audit("nobody") == 0


def test_rerun_links_read_both_ways(make_store):
    store = make_store()
    store.record_action(entry(T0, action="rerun", target="orig"), reruns=[("new-1", "orig")])
    store.record_action(entry(T0 + 1, action="rerun", target="orig"), reruns=[("new-2", "orig")])
    assert store.task_links("orig") == {"rerun_of": None, "reruns": ["new-1", "new-2"]}
    assert store.task_links("new-2") == {"rerun_of": "orig", "reruns": []}
    assert store.count_audit() == 2


# -- the engine without a worker: refused before anything is sent --------------------------------------
@pytest.fixture
def offline_controller(make_store):
    store = make_store()
    store.write_batch(tasks=[finished("done", "sample.add", 0.1, T0, args="[1, 2]", kwargs="{}"),
                             finished("cut", "sample.add", 0.1, T0, args="[1, 'abc...", kwargs="{}"),
                             finished("running", "sample.add", 0.1, T0, state="STARTED")])
    return Controller(store, {"default": Celery("test", broker="memory://localhost/", set_as_current=False)})


@pytest.mark.parametrize("call, status, words", [
    (lambda c: c.pool_grow("ada", "nobody@host", 1), 404, "Unknown worker 'nobody@host'"),
    (lambda c: c.pool_grow("ada", "w@a", 0), 400, "n must be at least 1"),
    (lambda c: c.pool_grow("ada", "w@a", "two"), 400, "n must be a whole number"),
    (lambda c: c.autoscale("ada", "w@a", 2, 5), 400, "min (5) must not be above max (2)"),
    (lambda c: c.rate_limit("ada", "sample.add", "fast"), 400, "ratelimit must be"),
    (lambda c: c.time_limit("ada", "sample.add", "soon", None), 400, "soft must be a number of seconds"),
    (lambda c: c.time_limit("ada", "sample.add", None, None), 400, "give soft, hard or both"),
    (lambda c: c.revoke("ada", "done", terminate=True, signal="SIGNOPE"), 400, "unknown signal"),
    (lambda c: c.rerun("ada", "missing"), 404, "Unknown task 'missing'"),
    (lambda c: c.rerun("ada", "running"), 400, "only a finished task"),
    (lambda c: c.rerun("ada", "cut"), 400, "cannot be read back"),
    (lambda c: c.send_task("ada", "sample.add", "1, 2"), 400, "args must be an array"),
    (lambda c: c.send_task("ada", "sample.add", [1], {}, {"link": "x"}), 400, "unknown option(s) link"),
    (lambda c: c.abort("ada", "done"), 503, "needs a result backend"),
    (lambda c: c.rerun_preview(TaskQuery(states=("STARTED",))), 400, "state filter (STARTED) keeps none"),
])
def test_bad_requests_are_refused_with_a_reason_and_leave_no_audit_row(offline_controller, call, status, words):
    offline_controller.store.write_batch(workers=[worker_row("w@a")])
    with pytest.raises(ControlError) as refused:
        call(offline_controller)
    assert refused.value.status == status and words in str(refused.value)
    assert offline_controller.store.count_audit() == 0


def test_a_broker_that_cannot_be_reached_is_a_503_and_leaves_no_audit_row(make_store):
    store = make_store()
    store.write_batch(tasks=[finished("done", "sample.add", 0.1, T0, args="[1, 2]", kwargs="{}")],
                      workers=[worker_row("w@a")])
    away = Celery("away", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    away.conf.broker_connection_max_retries = 1
    controller = Controller(store, {"default": away})
    for call in (lambda: controller.pool_grow("ada", "w@a", 1), lambda: controller.rerun("ada", "done"),
                 lambda: controller.send_task("ada", "sample.add", [1, 2])):
        with pytest.raises(ControlError) as refused:
            call()
        assert refused.value.status == 503 and "the broker cannot be reached now" in str(refused.value)
    assert store.count_audit() == 0


# -- the engine against a real worker ---------------------------------------------------------------
@dataclasses.dataclass
class Rig:
    server: FlowerbedServer
    worker: CeleryWorker
    controller: Controller

    @property
    def store(self):
        return self.controller.store

    def inspect(self, method: str, *args):
        app = self.controller.apps["default"]
        return (getattr(app.control.inspect(destination=[self.worker.hostname], timeout=2), method)(*args) or {}).get(
            self.worker.hostname)


@pytest.fixture(scope="module")
def rig(redis_url, tmp_path_factory):
    """A Flowerbed collecting from a prefork worker (whose pool can grow and shrink), and a
    Controller on the store the Flowerbed writes."""
    tmp = tmp_path_factory.mktemp("control")
    stack = Stack()
    try:
        server = stack.add(FlowerbedServer.start(redis_url, tmp / "flowerbed.db", tmp / "flowerbed.log"))
        worker = stack.add(CeleryWorker(redis_url, "alpha@control", tmp, concurrency=2, pool="prefork"))
        wait_for(lambda: worker_status(server, worker.hostname), 20, "the worker online in the monitor")
        store = open_store(str(tmp / "flowerbed.db"))
        controller = Controller(store, {"default": Celery("control-tests", broker=redis_url, set_as_current=False)},
                                reply_timeout=3.0)
        yield Rig(server, worker, controller)
        store.close()
    finally:
        stack.stop_all()


def test_grow_then_shrink_changes_the_pool_as_inspect_sees_it(rig):
    processes = lambda: len(rig.inspect("stats")["pool"]["processes"])  # noqa: E731
    before = processes()
    grown = rig.controller.pool_grow("ada", rig.worker.hostname, 2)
    assert grown.outcome == "ok" and grown.confirmed == {rig.worker.hostname: "pool will grow"}, grown.as_dict()
    wait_for(lambda: processes() == before + 2, 20, "two more pool processes")
    shrunk = rig.controller.pool_shrink("ada", rig.worker.hostname, 1)
    assert shrunk.outcome == "ok", shrunk.as_dict()
    wait_for(lambda: processes() == before + 1, 20, "one pool process fewer")
    rows = list(rig.store.iter_audit(rig.worker.hostname))
    assert [(row["action"], row["arguments"], row["outcome"], row["actor"]) for row in rows[:2]] == [
        ("pool-shrink", {"n": 1}, "ok", "ada"), ("pool-grow", {"n": 2}, "ok", "ada")]


def test_an_action_a_worker_refuses_reports_its_error(rig):
    result = rig.controller.autoscale("ada", rig.worker.hostname, 4, 1)  # the worker runs without --autoscale
    assert result.outcome == "failed" and "Autoscale not enabled" in result.errors[rig.worker.hostname]
    assert next(rig.store.iter_audit("autoscale"))["replies"]["errors"] == result.errors


def test_add_consumer_makes_the_worker_take_tasks_from_a_new_queue(rig):
    queue = f"extra-{rig.worker.queue}"
    result = rig.controller.add_consumer("ada", rig.worker.hostname, queue)
    assert result.outcome == "ok" and result.confirmed[rig.worker.hostname] == f"add consumer {queue}"
    task_id = rig.worker.client.send_task("sample.add", (20, 22), queue=queue).id
    stored = wait_for_tasks(rig.server, {task_id: "SUCCESS"})[task_id]
    assert (stored["worker"], stored["result"]) == (rig.worker.hostname, "42")
    assert rig.controller.cancel_consumer("ada", rig.worker.hostname, queue).outcome == "ok"
    assert queue not in [q["name"] for q in rig.inspect("active_queues")]


def test_a_rate_limit_set_on_a_task_name_shows_in_inspect(rig):
    result = rig.controller.rate_limit("ada", "sample.add", "7/m", worker=rig.worker.hostname)
    assert result.outcome == "ok", result.as_dict()
    assert "rate_limit=7/m" in " ".join(rig.inspect("registered"))
    limited = rig.controller.time_limit("ada", "sample.sleep", soft=30, hard=60)  # every online worker
    assert limited.confirmed == {rig.worker.hostname: "time limits set successfully"}
    registered = " ".join(rig.inspect("registered", "soft_time_limit", "time_limit"))
    assert "sample.sleep [soft_time_limit=30.0 time_limit=60.0]" in registered, registered


def test_revoke_with_terminate_stops_a_running_task(rig):
    task_id = rig.worker.send("sample.sleep", 60)
    wait_for_tasks(rig.server, {task_id: "STARTED"})
    result = rig.controller.revoke("ada", task_id, terminate=True, signal="SIGKILL")
    assert result.outcome == "ok" and rig.worker.hostname in result.confirmed, result.as_dict()
    wait_for_tasks(rig.server, {task_id: "REVOKED"})
    assert next(rig.store.iter_audit(task_id))["arguments"] == {"terminate": True, "signal": "SIGKILL"}


def test_rerun_sends_a_new_task_with_the_same_args_linked_both_ways(rig):
    original = rig.worker.send("sample.add", 40, 2)
    wait_for_tasks(rig.server, {original: "SUCCESS"})
    result = rig.controller.rerun("ada", original)
    [new_id] = result.task_ids
    new = wait_for_tasks(rig.server, {new_id: "SUCCESS"})[new_id]
    assert (new["name"], new["args"], new["result"], new["worker"]) == ("sample.add", "(40, 2)", "42",
                                                                         rig.worker.hostname)
    assert rig.store.task_links(original)["reruns"] == [new_id]
    assert rig.store.task_links(new_id)["rerun_of"] == original
    assert [row["target"] for row in rig.store.iter_audit(original)] == [original]  # exactly one row


def test_bulk_rerun_of_twenty_failed_tasks_gives_twenty_new_tasks(rig):
    marker = f"bulk-{rig.worker.queue}"
    failed = [rig.worker.send("sample.fail", f"{marker}-{number}") for number in range(20)]
    wait_for_tasks(rig.server, dict.fromkeys(failed, "FAILURE"))
    query = TaskQuery(search=marker, states=("FAILURE",))
    preview = rig.controller.rerun_preview(query, cap=100)
    assert (preview.matched, preview.would_send) == (20, 20)
    assert rig.controller.rerun_preview(query, cap=5).would_send == 5
    audit_before = rig.store.count_audit()
    result = rig.controller.bulk_rerun("ada", query, cap=100)
    assert len(result.task_ids) == 20 and not result.errors and result.outcome == "sent"
    wait_for_tasks(rig.server, dict.fromkeys(result.task_ids, "FAILURE"))
    assert sorted(rig.store.task_links(new)["rerun_of"] for new in result.task_ids) == sorted(failed)
    assert rig.store.count_audit() == audit_before + 1


def test_send_task_and_apply_by_name(rig):
    sent = rig.controller.send_task("ada", "sample.add", [1, 2], {}, {"queue": rig.worker.queue})
    wait_for_tasks(rig.server, {sent.task_ids[0]: "SUCCESS"})
    applied, task = rig.controller.apply("ada", "sample.add", [2, 3], {}, {"queue": rig.worker.queue}, wait=30)
    assert task is not None and (task["state"], task["result"]) == ("SUCCESS", "5")
    assert [row["action"] for row in rig.store.iter_audit("sample.add", limit=2)] == ["apply", "send-task"]


def test_abort_stops_an_abortable_task_through_the_result_backend(redis_url, tmp_path):
    broker, backend = redis_url.rsplit("/", 1)[0] + "/5", redis_url.rsplit("/", 1)[0] + "/6"
    stack = Stack()
    try:
        server = stack.add(FlowerbedServer.start(broker, tmp_path / "abort.db", tmp_path / "abort.log",
                                                 "--result-backend", backend))
        worker = stack.add(CeleryWorker(broker, "delta@abort", tmp_path, backend=backend))
        wait_for(lambda: worker_status(server, worker.hostname), 20, "the worker online in the monitor")
        store = open_store(str(tmp_path / "abort.db"))
        controller = Controller(store, {"default": Celery("abort-tests", broker=broker, backend=backend,
                                                          set_as_current=False)})
        task_id = worker.send("sample.abortable", 60)
        wait_for_tasks(server, {task_id: "STARTED"})
        result = controller.abort("ada", task_id)
        assert (result.outcome, result.message) == ("sent", f"Aborted '{task_id}'")
        assert wait_for_tasks(server, {task_id: "SUCCESS"})[task_id]["result"] == "'aborted'"
        assert next(store.iter_audit(task_id))["action"] == "abort"
        store.close()
    finally:
        stack.stop_all()


def test_shutdown_takes_the_worker_offline(rig):  # last: the worker is gone afterwards
    result = rig.controller.shutdown("ada", rig.worker.hostname)
    assert result.outcome == "sent"
    wait_for(lambda: worker_status(rig.server, rig.worker.hostname) is False, 30, "the worker offline")
    status, workers = get_json(f"{rig.server}/api/workers")
    assert status == 200 and workers[rig.worker.hostname]["status"] is False

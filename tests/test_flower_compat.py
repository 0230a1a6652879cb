"""Flower 2.2's read API, asked of Flowerbed watching a real cluster: a `celery worker` subprocess
running tasks that succeed, fail, retry and start other tasks, on Redis and on RabbitMQ, with a Redis
result backend read through `--app`. Each assertion of Flower's behaviour names where Flower does it
(Flower 2.2's source; Flower itself is not needed to run these)."""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import re
import time
import urllib.parse
import zoneinfo

import pytest
from plotly.utils import PlotlyJSONEncoder
from prometheus_client.parser import text_string_to_metric_families

import app as flowerbed_app
from helpers import (TESTS, CeleryWorker, FlowerbedServer, Stack, get, get_json, task_row, wait_for, wait_for_tasks,
                     worker_row)
from monitor.settings import load_settings

pytestmark = pytest.mark.integration

# The server runs in a time zone of its own, away from UTC, so that "the server's time zone" of
# received_start/received_end is seen to be its own and not UTC.
SERVER_ZONE = "Asia/Kolkata"
MINUTE = "%Y-%m-%d %H:%M"  # Flower's received_start/received_end format (flower/utils/tasks.py _convert_datetime)


@dataclasses.dataclass
class Cluster:
    broker: str
    server: FlowerbedServer
    worker: CeleryWorker
    sent: dict[str, str]  # what the task is for → its UUID
    tmp: object


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def cluster(request, redis_server, tmp_path_factory):
    """Flowerbed (--app sample_tasks, a Redis result backend) and one worker on the broker, with the
    sample tasks run. Tests that change the cluster come last in the file."""
    broker = request.getfixturevalue(f"{request.param}_url")
    backend = redis_server.url.rsplit("/", 1)[0] + "/1"
    tmp = tmp_path_factory.mktemp(f"compat-{request.param}")
    stack = Stack()
    env = {"SAMPLE_BROKER": broker, "SAMPLE_BACKEND": backend, "PYTHONPATH": str(TESTS), "TZ": SERVER_ZONE}
    try:
        server = stack.add(FlowerbedServer.start(broker, tmp / "flowerbed.db", tmp / "flowerbed.log", "--app",
                                                 "sample_tasks", "--inspect-seconds", "2", env=env))
        worker = stack.add(CeleryWorker(broker, f"alpha@compat-{request.param}", tmp, backend=backend))
        wait_for(lambda: get_json(f"{server}/api/workers?status=true")[1].get(worker.hostname), 20,
                 "the worker online in the monitor")
        sent = {
            "add": worker.send("sample.add", 2, 3),
            "fail": worker.send("sample.fail", "boom"),
            "flaky": worker.send("sample.flaky", 2),  # fails once, retried, then succeeds
            "spawn": worker.send("sample.spawn", 2),  # starts two sample.add tasks: its children
        }
        expected = {sent["fail"]: "FAILURE", **{sent[k]: "SUCCESS" for k in ("add", "flaky", "spawn")}}
        listed = wait_for_tasks(server, expected)
        children = [uuid for uuid, task in listed.items() if task["parent_id"] == sent["spawn"]]
        wait_for_tasks(server, dict.fromkeys(children, "SUCCESS"))
        sent.update({f"child{at}": uuid for at, uuid in enumerate(children)})
        yield Cluster(broker, server, worker, sent, tmp)
    finally:
        stack.stop_all()


def api(cluster, path: str, http_timeout: float = 5.0, **query):
    return get_json(f"{cluster.server}{path}?{urllib.parse.urlencode(query)}", timeout=http_timeout)


# -- /api/workers -------------------------------------------------------------------------------------
def test_workers_status_true_maps_each_worker_to_online(cluster):
    # Flower: {name: worker.alive} for every worker it knows (flower/api/workers.py ListWorkers.get).
    assert api(cluster, "/api/workers", status="true") == (200, {cluster.worker.hostname: True})


def test_workers_full_objects_carry_inspect_replies(cluster):
    status, workers = api(cluster, "/api/workers")
    assert status == 200 and set(workers) == {cluster.worker.hostname}
    # Flower's worker objects are the inspect replies by method name (flower/inspector.py).
    replies = {"stats", "active_queues", "registered", "conf"}
    wait_for(lambda: replies <= set(api(cluster, "/api/workers")[1][cluster.worker.hostname]), 20, "inspect replies")
    worker = api(cluster, "/api/workers", workername=cluster.worker.hostname)[1][cluster.worker.hostname]
    assert "sample.add" in worker["registered"] and worker["stats"]["pid"]


def test_an_unknown_workername_is_a_404(cluster):
    # Flower: HTTPError(404, "Unknown worker '...'") (flower/api/workers.py ListWorkers.get).
    assert api(cluster, "/api/workers", workername="nobody@nowhere") == (404, {"error": "Unknown worker 'nobody@nowhere'"})


def test_refresh_waits_for_a_fresh_inspect_and_answers_with_it(cluster):
    # Flower awaits update_workers() before answering (flower/api/workers.py ListWorkers.get).
    for _ in range(2):  # twice: the second asks while the first's inspect may be the latest
        asked = time.time()
        # as long as the server's bound on the wait for an inspect (Services.inspect_wait_seconds)
        status, workers = api(cluster, "/api/workers", http_timeout=30, refresh=1)
        assert status == 200
        assert workers[cluster.worker.hostname]["timestamp"] >= asked


# -- /api/tasks ---------------------------------------------------------------------------------------
def test_tasks_without_limit_are_every_task_in_flowers_order(cluster):
    status, tasks = api(cluster, "/api/tasks")
    assert status == 200 and set(tasks) == set(cluster.sent.values())
    # Flower: no sort_by is the most recent event first, ties by task id, both descending
    # (flower/utils/search.py TaskSearchEngine.search).
    order = sorted(tasks.values(), key=lambda task: (task["timestamp"], task["uuid"]), reverse=True)
    assert list(tasks) == [task["uuid"] for task in order]


def test_tasks_have_flowers_keys_with_children_and_clock(cluster):
    tasks = api(cluster, "/api/tasks")[1]
    # celery's Task._fields, which Flower's task.as_dict() answers with (celery/events/state.py).
    flower_keys = {"uuid", "name", "state", "received", "sent", "started", "rejected", "succeeded", "failed",
                   "retried", "revoked", "args", "kwargs", "eta", "expires", "retries", "worker", "result",
                   "exception", "timestamp", "runtime", "traceback", "exchange", "routing_key", "clock", "client",
                   "root", "root_id", "parent", "parent_id", "children"}
    for task in tasks.values():
        assert flower_keys <= set(task), flower_keys - set(task)
        assert isinstance(task["clock"], int) and task["clock"] > 0
        assert task["worker"] == cluster.worker.hostname
    spawn = tasks[cluster.sent["spawn"]]
    assert sorted(spawn["children"]) == sorted([cluster.sent["child0"], cluster.sent["child1"]])
    child = tasks[cluster.sent["child0"]]
    assert (child["parent"], child["root"], child["children"]) == (spawn["uuid"], spawn["uuid"], [])
    assert api(cluster, f"/api/task/info/{spawn['uuid']}")[1]["children"] == spawn["children"]


def test_tasks_filters_take_flowers_all_and_any_case(cluster):
    adds = {cluster.sent[key] for key in ("add", "child0", "child1")}
    assert set(api(cluster, "/api/tasks", taskname="sample.add")[1]) == adds
    # Flower compares names casefolded (flower/utils/search.py TaskSearchEngine.search, _normalize).
    assert set(api(cluster, "/api/tasks", taskname="SAMPLE.Add")[1]) == adds
    assert set(api(cluster, "/api/tasks", workername=cluster.worker.hostname.upper())[1]) == set(cluster.sent.values())
    assert api(cluster, "/api/tasks", workername="nobody@nowhere")[1] == {}
    assert set(api(cluster, "/api/tasks", state="failure")[1]) == {cluster.sent["fail"]}
    # Flower: "All" is no filter (flower/api/tasks.py ListTasks.get).
    everything = set(api(cluster, "/api/tasks", state="All", taskname="All", workername="All")[1])
    assert everything == set(cluster.sent.values())
    assert list(api(cluster, "/api/tasks", taskname="sample.add", limit=1, offset=1)[1]) == [
        list(api(cluster, "/api/tasks", taskname="sample.add")[1])[1]]


def test_received_start_and_end_in_the_servers_time_zone_end_included(cluster):
    tasks = api(cluster, "/api/tasks")[1]
    received = sorted(task["received"] for task in tasks.values())
    zone = zoneinfo.ZoneInfo(SERVER_ZONE)

    def minute(epoch: float, zone=zone) -> str:
        return dt.datetime.fromtimestamp(epoch, zone).strftime(MINUTE)
    first_minute, last_minute = minute(received[0]), minute(received[-1] + 60)
    assert set(api(cluster, "/api/tasks", received_start=first_minute, received_end=last_minute)[1]) == set(tasks)
    # (Read as UTC, those minutes would be 5 h 30 min later and match nothing.)
    assert api(cluster, "/api/tasks", received_start=minute(received[0] + 3600))[1] == {}
    assert api(cluster, "/api/tasks", received_end=minute(received[0] - 60))[1] == {}
    # ISO 8601 with an offset names the moment whatever the server's zone.
    utc_start = dt.datetime.fromtimestamp(received[0], dt.timezone.utc).replace(second=0, microsecond=0)
    assert set(api(cluster, "/api/tasks", received_start=utc_start.isoformat())[1]) == set(tasks)
    # Flower's end is included (received <= received_end, flower/utils/search.py _task_in_time_range).
    last = max(tasks.values(), key=lambda task: task["received"])
    assert last["uuid"] in api(cluster, "/api/tasks", received_start=repr(last["received"]),
                               received_end=repr(last["received"]))[1]
    assert api(cluster, "/api/tasks", received_start="yesterday")[0] == 400


# -- /api/task/types and /api/task/result ------------------------------------------------------------
def test_task_types_list_every_task_of_the_app(cluster):
    # Flower: {"task-types": [...]} (flower/api/tasks.py ListTaskTypes.get); sample.sleep never ran.
    status, body = api(cluster, "/api/task/types")
    assert status == 200
    assert {"sample.add", "sample.fail", "sample.flaky", "sample.spawn", "sample.sleep"} <= set(body["task-types"])
    assert body["task-types"] == sorted(body["task-types"])


def test_task_result_reads_the_apps_result_backend(cluster):
    # Flower's answer (flower/api/tasks.py TaskResult.get and update_response_result).
    add, fail = cluster.sent["add"], cluster.sent["fail"]
    assert api(cluster, f"/api/task/result/{add}") == (200, {"task-id": add, "state": "SUCCESS", "result": 5})
    status, failed = api(cluster, f"/api/task/result/{fail}")
    assert (status, failed["state"]) == (200, "FAILURE")
    assert "boom" in failed["result"] and "ValueError" in failed["traceback"]
    unknown = "00000000-0000-4000-8000-000000000000"
    assert api(cluster, f"/api/task/result/{unknown}", timeout="0.2") == (200, {"task-id": unknown, "state": "PENDING"})
    assert api(cluster, f"/api/task/result/{add}", timeout="soon")[0] == 400


# -- /metrics ------------------------------------------------------------------------------------------
def scrape(server) -> dict:
    """{(sample name, labels as sorted pairs): value} of a /metrics scrape, parsed by Prometheus' own parser."""
    status, body = get(f"{server}/metrics")
    assert status == 200, body
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


def test_metrics_count_the_clusters_task_events_and_runtimes_under_flowers_names(cluster):
    # Flower's metrics (flower/events.py PrometheusMetrics): one count per task event by worker, type and
    # task name; a histogram of the runtime of task-succeeded events; the worker gauges.
    host = cluster.worker.hostname
    metrics = scrape(cluster.server)
    events = {(labels["task"], labels["type"]): value for (name, pairs), value in metrics.items()
              if name == "flower_events_total" for labels in [dict(pairs)] if labels["worker"] == host}
    assert events == {
        ("sample.add", "task-received"): 3, ("sample.add", "task-started"): 3, ("sample.add", "task-succeeded"): 3,
        ("sample.fail", "task-received"): 1, ("sample.fail", "task-started"): 1, ("sample.fail", "task-failed"): 1,
        # fails once: retried, received and started again, then succeeds
        ("sample.flaky", "task-received"): 2, ("sample.flaky", "task-started"): 2, ("sample.flaky", "task-retried"): 1,
        ("sample.flaky", "task-succeeded"): 1,
        ("sample.spawn", "task-received"): 1, ("sample.spawn", "task-started"): 1, ("sample.spawn", "task-succeeded"): 1,
    }
    # task-sent counts under the sender's name, as Flower's does: the test's client, and the worker's
    # producer for spawn's two children and flaky's retry
    sent = collections.Counter()
    for (name, pairs), value in metrics.items():
        labels = dict(pairs)
        if name == "flower_events_total" and labels["type"] == "task-sent":
            assert labels["worker"] != host
            sent[labels["task"]] += value
    assert sent == {"sample.add": 3, "sample.fail": 1, "sample.flaky": 2, "sample.spawn": 1}

    def runtime(sample: str, task: str, **labels) -> float:
        return metrics[(f"flower_task_runtime_seconds_{sample}",
                        tuple(sorted({"task": task, "worker": host, **labels}.items())))]
    api_runtimes = [task["runtime"] for task in api(cluster, "/api/tasks", taskname="sample.add")[1].values()]
    assert runtime("count", "sample.add") == runtime("bucket", "sample.add", le="+Inf") == 3
    assert runtime("sum", "sample.add") == pytest.approx(sum(api_runtimes))
    buckets = [runtime("bucket", "sample.add", le=le) for le in ("0.005", "0.1", "1.0", "10.0", "+Inf")]
    assert buckets == sorted(buckets) and buckets[-2] == 3  # cumulative; sample.add runs in microseconds
    assert ("flower_task_runtime_seconds_count", (("task", "sample.fail"), ("worker", host))) not in metrics
    assert metrics[("flower_worker_online", (("worker", host),))] == 1
    assert metrics[("flower_worker_number_of_currently_executing_tasks", (("worker", host),))] == 0
    prefetch = ("task", "sample.add"), ("worker", host)
    assert metrics[("flower_worker_prefetched_tasks", prefetch)] == 0  # nothing waits at the worker
    assert metrics[("flower_task_prefetch_time_seconds", prefetch)] == 0  # nothing of that name runs
    # Flowerbed's own: its collector records, and the queue the worker consumes is read
    broker = next(dict(pairs)["broker"] for (name, pairs) in metrics if name == "flowerbed_collector_ready")
    assert metrics[("flowerbed_collector_ready", (("broker", broker),))] == 1
    malformed = [value for (name, pairs), value in metrics.items() if name == "flowerbed_collector_events_total"
                 and dict(pairs)["outcome"] == "malformed" and dict(pairs)["broker"] == broker]
    assert malformed == [0]
    wait_for(lambda: ("flowerbed_queue_consumers", (("broker", broker), ("queue", cluster.worker.queue)))
             in scrape(cluster.server), 20, "the worker's queue read by the inspector")


# -- paths that are no page -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/nonsense", "/worker/nope", "/task/00000000-0000-4000-8000-00000000dead",
                                  "/api/task/info/00000000-0000-4000-8000-00000000dead", "/api/task/result/"])
def test_paths_that_are_no_page_answer_404(cluster, path):
    assert get(f"{cluster.server}{path}")[0] == 404


# -- what changes the cluster: last ------------------------------------------------------------------
def test_an_offline_worker_is_false_in_status_true(cluster):
    # The issue's own case: an "alert on offline worker" script must see the worker that left.
    second = CeleryWorker(cluster.broker, "beta@compat", cluster.tmp)
    try:
        wait_for(lambda: api(cluster, "/api/workers", status="true")[1].get(second.hostname), 20, "beta online")
    finally:
        second.stop()
    wait_for(lambda: api(cluster, "/api/workers", status="true")[1].get(second.hostname) is False, 20, "beta offline")
    assert api(cluster, "/api/workers", status="true")[1] == {cluster.worker.hostname: True, second.hostname: False}


def test_offline_workers_are_purged_after_purge_offline_workers_seconds(cluster, flowerbed_server):
    # Flower's purge_offline_workers hides workers offline that long (flower/views/workers.py).
    # Long enough to see the worker offline before it goes (its heartbeats come every second).
    purging = flowerbed_server(cluster.broker, "--purge-offline-workers", "6")
    wait_for(lambda: api_of(purging, status="true").get(cluster.worker.hostname), 20, "the worker in the new monitor")
    leaving = CeleryWorker(cluster.broker, "gamma@compat-purge", cluster.tmp)
    try:
        wait_for(lambda: api_of(purging, status="true").get(leaving.hostname), 20, "gamma online")
    finally:
        leaving.stop()
    wait_for(lambda: api_of(purging, status="true").get(leaving.hostname) is False, 20, "gamma offline, still shown")
    wait_for(lambda: leaving.hostname not in api_of(purging, status="true"), 20, "gamma purged")
    assert api_of(purging, status="true") == {cluster.worker.hostname: True}
    # and from /metrics, as Flower removes a purged worker's labels
    scraped = {dict(pairs).get("worker") for (_name, pairs) in scrape(purging)}
    assert cluster.worker.hostname in scraped and leaving.hostname not in scraped


def api_of(server, **query) -> dict:
    status, body = get_json(f"{server}/api/workers?{urllib.parse.urlencode(query)}")
    assert status == 200, body
    return body


# -- without a cluster: what needs none ----------------------------------------------------------------
def test_task_result_without_a_result_backend_is_a_503(tmp_path, monkeypatch):
    # Flower: HTTPError(503) when the backend is not configured (flower/api/tasks.py TaskResult.get).
    settings = load_settings(["--broker", "memory://localhost/", "--db", str(tmp_path / "none.db")], {})
    client = flowerbed_app.create_app(settings).server.test_client()
    response = client.get("/api/task/result/00000000-0000-4000-8000-000000000001")
    assert response.status_code == 503 and "--app" in response.get_json()["error"]
    # An app without a result backend: the same 503, naming what the app lacks.
    (tmp_path / "proj_without_backend.py").write_text("from celery import Celery\napp = Celery('proj')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = load_settings(["--broker", "memory://localhost/", "--db", str(tmp_path / "none.db"), "--app",
                              "proj_without_backend"], {})
    client = flowerbed_app.create_app(settings).server.test_client()
    response = client.get("/api/task/result/00000000-0000-4000-8000-000000000001")
    assert response.status_code == 503 and "sets no result_backend" in response.get_json()["error"]


def test_tasks_without_limit_stream_past_the_old_caps(make_store):
    """Flower returns every task when no limit is given (flower/api/tasks.py ListTasks.get passes
    limit=None): past the 1,000 rows and the 10,000 cap Flowerbed used to stop at, on both stores."""
    rows = 10_050
    store = make_store("many")
    store.write_batch(tasks=[task_row(uuid=f"{number:08d}-0000-4000-8000-000000000000", name="t", state="SUCCESS",
                                      timestamp=1_800_000_000 + number // 3) for number in range(rows)])
    settings = load_settings(["--broker", "memory://localhost/", "--db", make_store.url("many")], {})
    client = flowerbed_app.create_app(settings).server.test_client()
    response = client.get("/api/tasks")
    tasks = response.get_json()
    assert (response.status_code, len(tasks), response.headers["X-Total-Count"]) == (200, rows, str(rows))
    # Three tasks share each timestamp: the ties go by task id, descending, as Flower's.
    assert list(tasks)[:4] == [f"{number:08d}-0000-4000-8000-000000000000" for number in (10049, 10048, 10047, 10046)]
    assert len(client.get("/api/tasks?limit=10001").get_json()) == 10_001


def test_purge_offline_workers_hides_them_from_the_dashboard_and_the_api(make_store):
    """--purge-offline-workers N: a worker offline for N seconds or more (since its last heartbeat, or
    its last inspect reply when it sent none) leaves the Dashboard and /api/workers, on both stores."""
    from callbacks.shell import route
    now = time.time()

    def worker(hostname, heartbeat):
        return worker_row(hostname, freq=2.0, last_heartbeat=heartbeat)
    store = make_store("purge")
    store.write_batch(workers=[worker("up@a", now), worker("down-lately@a", now - 30), worker("down-long@a", now - 120)])
    store.save_inspection({"inspected-lately@a": {}}, now - 30)
    store.save_inspection({"inspected-long-ago@a": {}}, now - 120)
    kept = ["down-lately@a", "inspected-lately@a", "up@a"]
    for flags, listed in (((), sorted(kept + ["down-long@a", "inspected-long-ago@a"])),
                          (("--purge-offline-workers", "60"), kept)):
        settings = load_settings(["--broker", "memory://localhost/", "--db", make_store.url("purge"), *flags], {})
        dash_app = flowerbed_app.create_app(settings)
        client = dash_app.server.test_client()
        assert sorted(client.get("/api/workers?status=true").get_json()) == listed
        services = dash_app.server.config["flowerbed_services"]
        dashboard = json.dumps(route(dash_app, services, "/", ""), cls=PlotlyJSONEncoder)
        assert sorted(set(re.findall(r"[\w-]+@a", dashboard))) == listed

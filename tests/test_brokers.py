"""Several brokers in one Flowerbed: one `python cli.py` watching two Redis databases (two brokers to
celery: events, queues and inspect replies stay apart), each with a real `celery worker`. Every task
and worker carries its broker's name, and the API, the search and the pages filter by it. Then the
pieces without servers: what one broker shows (nothing new) and how several report their health."""
from __future__ import annotations

import dataclasses

import pytest

from components.tasks import tasks_layout
from components.workers import dashboard_layout
from helpers import (CeleryWorker, FlowerbedServer, Stack, choose, get_json, tasks, wait_for, wait_for_tasks,
                     worker_status)
from monitor.serving.health import brokers_problems
from monitor.services import build_services
from monitor.settings import load_settings

BROKERS = ("eu", "us")
WAIT_SECONDS = 20  # as long as the page fixture lets any browser wait last


@dataclasses.dataclass
class Cluster:
    server: FlowerbedServer
    sent: dict[str, dict[str, str]]  # broker name → {uuid: final state}


@pytest.fixture(scope="module")
def cluster(redis_url, tmp_path_factory):
    """Brokers eu and us (Redis databases 5 and 6, apart from the other modules'), a worker on each,
    and tasks run on both: three on eu (one fails), two on us."""
    tmp = tmp_path_factory.mktemp("brokers")
    base = redis_url.rsplit("/", 1)[0]
    urls = {name: f"{base}/{db}" for name, db in zip(BROKERS, (5, 6))}
    stack = Stack()
    try:
        server = stack.add(FlowerbedServer.start(f"eu={urls['eu']}", tmp / "flowerbed.db", tmp / "flowerbed.log",
                                                 "--broker", f"us={urls['us']}", "--inspect-seconds", "1"))
        workers = {name: stack.add(CeleryWorker(urls[name], f"worker@{name}", tmp)) for name in BROKERS}
        for worker in workers.values():
            wait_for(lambda: worker_status(server, worker.hostname), 20, f"{worker.hostname} online")
        eu, us = workers["eu"], workers["us"]
        sent = {
            "eu": {eu.send("sample.add", 1, 2): "SUCCESS", eu.send("sample.add", 3, 4): "SUCCESS",
                   eu.send("sample.fail", "boom"): "FAILURE"},
            "us": {us.send("sample.add", 5, 6): "SUCCESS", us.send("sample.sleep", 0.1): "SUCCESS"},
        }
        wait_for_tasks(server, {**sent["eu"], **sent["us"]})
        yield Cluster(server, sent)
    finally:
        stack.stop_all()


@pytest.mark.integration
def test_each_task_and_worker_carries_its_brokers_name(cluster):
    listed = tasks(cluster.server)
    assert {uuid: task["broker"] for uuid, task in listed.items()} == {
        uuid: broker for broker, sent in cluster.sent.items() for uuid in sent}
    workers = get_json(f"{cluster.server}/api/workers")[1]
    assert {host: worker["broker"] for host, worker in workers.items()} == {"worker@eu": "eu", "worker@us": "us"}
    # Each broker's inspector answers for its own workers (the inspect replies carry their stats).
    wait_for(lambda: all("stats" in w for w in get_json(f"{cluster.server}/api/workers")[1].values()), 15,
             "an inspect reply from each broker's worker")


@pytest.mark.integration
@pytest.mark.parametrize("broker", BROKERS)
def test_the_api_and_the_search_return_only_that_brokers_tasks(cluster, broker):
    expected = set(cluster.sent[broker])
    assert set(tasks(cluster.server, f"broker={broker}")) == expected
    assert set(tasks(cluster.server, f"search=broker:{broker}")) == expected
    assert get_json(f"{cluster.server}/api/tasks/count?broker={broker}")[1] == {"count": len(expected)}
    assert list(get_json(f"{cluster.server}/api/workers?broker={broker}")[1]) == [f"worker@{broker}"]
    failed = {uuid for uuid, state in cluster.sent[broker].items() if state == "FAILURE"}
    assert set(tasks(cluster.server, f"broker={broker}&state=FAILURE")) == failed
    assert tasks(cluster.server, "broker=nowhere") == {}


@pytest.mark.integration
def test_each_brokers_collector_records_and_reports(cluster):
    stats = get_json(f"{cluster.server}/api/collector")[1]
    assert sorted(stats["brokers"]) == list(BROKERS)
    assert {name: (s["role"], s["connected"], s["broker"]) for name, s in stats["brokers"].items()} == {
        name: ("active", True, name) for name in BROKERS}
    status, ready = get_json(f"{cluster.server}/healthcheck/ready")
    assert (status, ready["problems"], sorted(ready["brokers"])) == (200, [], list(BROKERS))


@pytest.mark.browser
def test_the_pages_filter_by_broker(page, cluster):
    page.goto(f"{cluster.server}/")
    page.wait_for_selector("#workers-grid .ag-row [col-id=broker]")
    assert page.inner_text("#stat-online") == "2 / 2"
    choose(page, "#workers-broker", "us")
    wait_for(lambda: page.inner_text("#stat-online") == "1 / 1", WAIT_SECONDS, "the workers of broker us only")
    # The grid takes its rows after the count is drawn.
    wait_for(lambda: page.locator("#workers-grid .ag-center-cols-container .ag-row [col-id=hostname]")
             .all_inner_texts() == ["worker@us"], WAIT_SECONDS, "the grid showing worker@us only")

    page.goto(f"{cluster.server}/tasks")
    page.wait_for_selector("#tasks-grid .ag-center-cols-container .ag-row [col-id=broker]")
    choose(page, "#tasks-broker", "eu")
    wait_for(lambda: shown_tasks(page) == {uuid: "eu" for uuid in cluster.sent["eu"]}, WAIT_SECONDS,
             f"the tasks of broker eu only; showing {shown_tasks(page)}")
    assert "broker=eu" in page.url  # the address keeps the filter, as it keeps the search
    page.reload()
    wait_for(lambda: shown_tasks(page) == {uuid: "eu" for uuid in cluster.sent["eu"]}, WAIT_SECONDS,
             "the filter restored from the address")


def shown_tasks(page) -> dict[str, str]:
    """The Tasks grid's rows as {uuid: broker}."""
    return page.evaluate("""() => Object.fromEntries(Array.from(
        document.querySelectorAll('#tasks-grid .ag-center-cols-container .ag-row'))
        .map(row => [row.querySelector('[col-id=uuid]')?.innerText, row.querySelector('[col-id=broker]')?.innerText])
        .filter(([uuid]) => uuid))""")


# -- without servers ------------------------------------------------------------------------------
def test_with_one_broker_the_pages_show_no_broker_filter_nor_column():
    for layout, grid in ((dashboard_layout([], ["only"]), "workers-grid"),
                         (tasks_layout("", "ALL", "", ["only"], "only"), "tasks-grid")):
        dropdown = next(c for c in walk(layout) if getattr(c, "id", "").endswith("-broker"))
        assert dropdown.style == {"display": "none"}
        columns = next(c for c in walk(layout) if getattr(c, "id", None) == grid).columnDefs
        assert next(c for c in columns if c.get("field") == "broker")["hide"] is True
    # A broker named in the address is not applied where no filter shows.
    query = next(c for c in walk(tasks_layout("", "ALL", "", ["only"], "only")) if getattr(c, "id", "") == "tasks-query")
    assert query.data["broker"] == ""


def test_with_two_brokers_the_pages_show_the_filter_and_the_column():
    layout = tasks_layout("", "ALL", "", ["eu", "us"], "us")
    dropdown = next(c for c in walk(layout) if getattr(c, "id", "") == "tasks-broker")
    assert (dropdown.style, dropdown.value, dropdown.options) == (None, "us", ["eu", "us"])
    columns = next(c for c in walk(layout) if getattr(c, "id", None) == "tasks-grid").columnDefs
    assert next(c for c in columns if c.get("field") == "broker")["hide"] is False


def walk(component):
    """A component and everything inside it."""
    yield component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if child is not None and not isinstance(child, (str, int, float)):
            yield from walk(child)


def test_one_collector_and_one_inspector_per_broker_each_with_its_name(tmp_path):
    settings = load_settings(["-b", "eu=redis://eu:6379/0", "-b", "redis://us:6379/1", "--db",
                              str(tmp_path / "flowerbed.db")], {})
    services = build_services(settings)
    assert [(c.broker_name, c.lease_name) for c in services.collectors] == [
        ("eu", "collector:eu"), ("us:6379/1", "collector:us:6379/1")]
    assert [(i.broker_name, i.app.conf.broker_url) for i in services.inspectors] == [
        ("eu", "redis://eu:6379/0"), ("us:6379/1", "redis://us:6379/1")]
    assert services.collector is services.collectors[0]


def test_readiness_names_the_broker_of_each_problem_when_there_are_several():
    healthy = {"running": True, "updated_at": 100.0, "connected": True, "role": "active"}
    unreachable = {**healthy, "connected": False, "broker_error": "refused"}
    assert brokers_problems({"eu": healthy, "us": unreachable}, 100.0, 30) == [
        "broker us: the broker is unreachable: refused"]
    assert brokers_problems({"eu": unreachable}, 100.0, 30) == ["the broker is unreachable: refused"]
    assert brokers_problems({}, 100.0, 30) == ["no collector has reported to this store yet"]

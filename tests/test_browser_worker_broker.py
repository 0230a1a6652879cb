"""The worker and broker pages in Debian's chromium, on a private Redis with a real prefork celery
worker, behind basic auth: what the worker page shows, a queue nobody consumes on the broker page,
and worker control for an admin but not for a read-only user."""
from __future__ import annotations

import dataclasses
import uuid

import pytest

from helpers import CeleryWorker, FlowerbedServer, RedisServer, Stack, wait_for, worker_status

pytestmark = pytest.mark.browser

ADMIN, VIEWER = ("ada", "admin-pass"), ("vic", "viewer-pass")
WAIT_SECONDS = 20


@dataclasses.dataclass
class Cluster:
    server: FlowerbedServer
    worker: CeleryWorker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker-broker")
    stack = Stack()
    try:
        redis = stack.add(RedisServer(tmp))  # its own: the broker page lists every queue of the broker
        server = stack.add(FlowerbedServer.start(
            redis.url, tmp / "flowerbed.db", tmp / "flowerbed.log", "--inspect-seconds", "1",
            "--basic-auth", ":".join(ADMIN), "--basic-auth-readonly", ":".join(VIEWER)))
        worker = stack.add(CeleryWorker(redis.url, "alpha@pages", tmp, concurrency=1, pool="prefork"))
        wait_for(lambda: worker_status(server, worker.hostname, ADMIN), WAIT_SECONDS, "the worker online")
        yield Cluster(server, worker)
    finally:
        stack.stop_all()


def open_worker(open_page, cluster, user=ADMIN):
    page = open_page(user)
    page.goto(f"{cluster.server}/worker/{cluster.worker.hostname}")
    wait_for_inspected(page)
    return page


def wait_for_inspected(page) -> None:
    """Until the page shows the worker's answers to inspect (its stats and queues)."""
    page.wait_for_selector("#worker-queues td")
    wait_for(lambda: kv(page, "#worker-pool")["implementation"] != "—", WAIT_SECONDS, "the worker's stats shown")


def kv(page, table: str) -> dict[str, str]:
    return dict(zip(page.locator(f"{table} th").all_inner_texts(), page.locator(f"{table} td").all_inner_texts()))


def pool_processes(page) -> list[str]:
    return kv(page, "#worker-pool")["processes"].split(", ")


def test_a_dashboard_row_opens_the_worker_page_with_pool_queues_and_registered_tasks(open_page, cluster):
    page = open_page(VIEWER)
    page.goto(f"{cluster.server}/")
    page.locator(f"#workers-grid .ag-row[row-id='{cluster.worker.hostname}'] [col-id=hostname]").click()
    wait_for_inspected(page)
    assert page.evaluate("decodeURIComponent(location.pathname)") == f"/worker/{cluster.worker.hostname}"
    assert page.inner_text("#worker-page .page-header h1") == cluster.worker.hostname
    pool = kv(page, "#worker-pool")
    assert (pool["implementation"], pool["concurrency"]) == ("prefork", "1")
    assert len(pool_processes(page)) == 1 and pool_processes(page)[0].isdigit()
    assert page.locator("#worker-queues td").first.inner_text() == cluster.worker.queue
    registered = page.locator("#worker-registered tbody tr td:first-child").all_inner_texts()
    assert {"sample.add", "sample.fail", "sample.flaky", "sample.sleep"} <= set(registered)
    assert kv(page, "#worker-broker")["transport"] == "redis"


def test_a_running_task_is_listed_active_and_links_to_its_page(open_page, cluster):
    page = open_worker(open_page, cluster, VIEWER)
    task_id = cluster.worker.send("sample.sleep", 20)  # running until the link was clicked, on a busy machine too
    link = page.locator(f"#worker-active a[href='/task/{task_id}']")
    link.wait_for()
    # The id's start shows, so that the Started column fits; the whole id on hover.
    assert link.get_attribute("title") == task_id and "short-id" in link.get_attribute("class")
    wait_for(lambda: link.evaluate("e => e.scrollWidth > e.clientWidth"), 10, "the id cut to its start")
    link.click()
    page.wait_for_selector("#task-detail")
    assert page.evaluate("location.pathname") == f"/task/{task_id}"


def test_a_read_only_user_sees_no_action_buttons(open_page, cluster):
    page = open_worker(open_page, cluster, VIEWER)
    labelled = [text for text in page.locator("#worker-page button").all_inner_texts() if text.strip()]
    assert labelled == []  # the charts' icon buttons aside, no button at all
    assert page.locator(".worker-controls").count() == 0
    assert open_worker(open_page, cluster, ADMIN).locator(".worker-controls button").count() >= 9


def test_an_admin_grows_the_pool_by_one_after_confirming(open_page, cluster):
    page = open_worker(open_page, cluster, ADMIN)
    before = len(pool_processes(page))
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.fill("#worker-pool-n", "1")
    page.get_by_role("button", name="Grow", exact=True).click()
    outcome = page.locator("#worker-action-outcome")
    outcome.wait_for()
    assert dialogs == [f"Grow the pool of {cluster.worker.hostname} by 1?"]
    assert outcome.locator(".badge").inner_text() == "ok"
    assert f"confirmed {cluster.worker.hostname}: pool will grow" in outcome.inner_text()
    assert f"by {ADMIN[0]}" in outcome.inner_text()
    # The worker's own answer to inspect (the pool starts its process in the background), then the page.
    def processes_inspected():
        stats = cluster.worker.client.control.inspect(destination=[cluster.worker.hostname], timeout=2).stats()
        return len(((stats or {}).get(cluster.worker.hostname) or {}).get("pool", {}).get("processes", ()))
    wait_for(lambda: processes_inspected() == before + 1, WAIT_SECONDS, "inspect showing one more process")
    wait_for(lambda: len(pool_processes(page)) == before + 1, WAIT_SECONDS, "the page showing one more process")


def test_the_broker_page_shows_the_depth_of_a_queue_nobody_consumes_with_a_warning(open_page, cluster):
    orphan = f"orphan-{uuid.uuid4().hex[:6]}"
    for number in range(7):  # some with priorities: they wait in the queue's priority sub-lists
        cluster.worker.client.send_task("sample.add", (number, 1), queue=orphan, priority=(number % 3) * 4)
    page = open_page(VIEWER)
    page.goto(f"{cluster.server}/broker")
    row = page.locator(f"tr[data-queue='{orphan}']")
    row.wait_for()
    wait_for(lambda: row.locator("td").nth(1).inner_text() == "7", WAIT_SECONDS, f"7 messages in {orphan}")
    assert row.locator("td").nth(2).inner_text() == "0"
    assert row.locator(".badge").inner_text() == "no consumer"
    assert f"{orphan}: 7 messages wait and no worker consumes this queue." in page.inner_text(".warning-box")
    consumed = page.locator(f"tr[data-queue='{cluster.worker.queue}']")
    assert consumed.locator("td").nth(3).inner_text() == cluster.worker.hostname
    wait_for(lambda: orphan in page.locator("#broker-depth-chart .legendtext").all_text_contents(), WAIT_SECONDS,
             f"{orphan} charted")


def test_a_control_with_a_missing_or_unreadable_value_is_refused_before_the_dialog(open_page, cluster):
    page = open_worker(open_page, cluster, ADMIN)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    outcome = page.locator("#worker-action-outcome")
    page.fill("#worker-rate", "10/m")
    page.get_by_role("button", name="Set rate limit").click()  # no task chosen
    wait_for(lambda: "task name is missing" in outcome.inner_text(), WAIT_SECONDS, "the missing task said")
    page.click("#worker-task")
    page.get_by_role("option", name="sample.add", exact=True).click()
    page.keyboard.press("Escape")
    page.fill("#worker-soft", "abc")
    page.get_by_role("button", name="Set time limits").click()
    wait_for(lambda: "soft must be a number of seconds, got 'abc'" in outcome.inner_text(), WAIT_SECONDS,
             "the unreadable limit said")
    assert outcome.locator(".badge").inner_text() == "not done" and dialogs == []
    page.fill("#worker-pool-n", "2")  # a good value asks first, and the refusal goes
    with page.expect_event("dialog") as asked:  # (the listener above dismisses it)
        page.get_by_role("button", name="Grow", exact=True).click()
    assert asked.value.message == f"Grow the pool of {cluster.worker.hostname} by 2?"
    wait_for(lambda: outcome.count() == 0, WAIT_SECONDS, "the refusal cleared")


def test_an_admin_sets_a_rate_limit_and_the_registered_tasks_show_it(open_page, cluster):
    page = open_worker(open_page, cluster, ADMIN)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#worker-task")
    page.get_by_role("option", name="sample.add", exact=True).click()
    page.keyboard.press("Escape")
    page.fill("#worker-rate", "10/m")
    page.get_by_role("button", name="Set rate limit").click()
    outcome = page.locator("#worker-action-outcome")
    outcome.wait_for()
    assert outcome.locator(".badge").inner_text() == "ok", outcome.inner_text()
    assert f"confirmed {cluster.worker.hostname}: new rate limit set successfully" in outcome.inner_text()
    row = page.locator("#worker-registered tbody tr", has_text="sample.add")
    wait_for(lambda: row.locator("td").nth(1).inner_text() == "10/m", WAIT_SECONDS, "the new rate limit shown")

"""Actions in Debian's chromium, on a real Redis with a real celery worker and basic auth: an admin
re-runs a failed task from its detail view and bulk re-runs a search, each after the browser's
confirmation, and finds them on the Audit page and in its CSV; a read-only user sees no action."""
from __future__ import annotations

import csv
import dataclasses
import io

import pytest

from helpers import CeleryWorker, FlowerbedServer, Stack, choose, wait_for, wait_for_tasks, worker_status

pytestmark = pytest.mark.browser

ADMIN = ("ada", "correct horse")
VIEWER = ("vic", "battery staple")


@dataclasses.dataclass
class Cluster:
    server: FlowerbedServer
    worker: CeleryWorker
    failed: str  # a failed task's UUID
    marker: str  # in the args of the tasks a bulk re-run finds


@pytest.fixture(scope="module")
def cluster(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-actions")
    stack = Stack()
    try:
        broker = redis_url.rsplit("/", 1)[0] + "/4"  # a Redis database of its own: other modules' tasks stay out
        server = stack.add(FlowerbedServer.start(broker, tmp / "flowerbed.db", tmp / "flowerbed.log",
                                                 "--basic-auth", f"{ADMIN[0]}:{ADMIN[1]}",
                                                 "--basic-auth-readonly", f"{VIEWER[0]}:{VIEWER[1]}"))
        # prefork: a threads pool cannot terminate a task (its worker answers NotImplementedError).
        worker = stack.add(CeleryWorker(broker, "gamma@browser", tmp, concurrency=2, pool="prefork"))
        wait_for(lambda: worker_status(server, worker.hostname, ADMIN), 20, "the worker online")
        marker = "bulk-in-browser"
        failed = worker.send("sample.fail", "boom")
        bulk = [worker.send("sample.fail", f"{marker}-{number}") for number in range(3)]
        wait_for_tasks(server, dict.fromkeys([failed, *bulk], "FAILURE"), credentials=ADMIN)
        yield Cluster(server, worker, failed, marker)
    finally:
        stack.stop_all()


def accept_dialogs(page, seen: list[str]) -> None:
    def accept(dialog):
        seen.append(dialog.message)
        dialog.accept()
    page.on("dialog", accept)


def test_an_admin_reruns_a_failed_task_from_its_detail_view(open_page, cluster):
    page = open_page(ADMIN)
    confirmations = []
    accept_dialogs(page, confirmations)
    page.goto(f"{cluster.server}/task/{cluster.failed}")
    page.click("#task-rerun-button")
    outcome = page.wait_for_selector(".action-outcome.tone-ok")
    assert "Re-ran" in outcome.inner_text() and confirmations and "Re-run task" in confirmations[0]
    new_id = page.inner_text(".action-outcome .new-task")
    wait_for_tasks(cluster.server, {new_id: "FAILURE"}, credentials=ADMIN)  # the same args: it fails the same way
    page.click(".action-outcome .new-task")
    page.wait_for_selector("#task-rerun-of")
    assert cluster.failed in page.inner_text("#task-rerun-of") and new_id in page.inner_text(".subtitle")
    page.click("#task-rerun-of a")
    page.wait_for_selector("#task-reruns")
    assert new_id in page.inner_text("#task-reruns")


def test_an_admin_terminates_a_running_task_and_sees_the_worker_confirm(open_page, cluster):
    running = cluster.worker.send("sample.sleep", 60)
    wait_for_tasks(cluster.server, {running: "STARTED"}, credentials=ADMIN)
    page = open_page(ADMIN)
    confirmations = []
    accept_dialogs(page, confirmations)
    page.goto(f"{cluster.server}/task/{running}")
    assert page.is_disabled("#task-rerun-button") and page.is_disabled("#task-abort-button")  # running; no backend
    choose(page, "#task-signal", "SIGKILL")
    page.click("#task-terminate-button")
    outcome = page.wait_for_selector(".action-outcome.tone-ok").inner_text()
    assert f"Revoked '{running}'" in outcome and f"Confirmed by {cluster.worker.hostname}" in outcome
    assert "Terminate task" in confirmations[0]
    wait_for_tasks(cluster.server, {running: "REVOKED"}, credentials=ADMIN)


def test_an_admin_bulk_reruns_what_a_search_matches_after_seeing_the_count(open_page, cluster):
    page = open_page(ADMIN)
    confirmations = []
    accept_dialogs(page, confirmations)
    page.goto(f"{cluster.server}/tasks?q={cluster.marker}")
    page.wait_for_selector("#tasks-grid .ag-row [col-id=uuid]")
    page.click("#bulk-rerun-preview")
    page.wait_for_selector("#act-bulk-confirm button")
    # Another search puts the preview away: its button re-ran the count it showed, not what matched now.
    page.click("#tasks-state label:has-text('Failed')")
    page.wait_for_selector("#act-bulk-confirm", state="detached")
    page.click("#bulk-rerun-preview")
    assert page.wait_for_selector("#act-bulk-panel p").inner_text().startswith("3 finished tasks match")
    page.click("#act-bulk-confirm button")
    outcome = page.wait_for_selector("#act-bulk-result .action-outcome")
    assert "Re-ran 3 of 3 tasks" in outcome.inner_text() and confirmations == ["Re-run 3 tasks now? This sends them "
                                                                                "to the workers again."]
    assert len(page.query_selector_all("#act-bulk-result .new-task")) == 3


def test_the_audit_page_lists_the_actions_and_downloads_them_as_csv(open_page, cluster):
    page = open_page(ADMIN)
    accept_dialogs(page, [])
    page.goto(f"{cluster.server}/task/{cluster.failed}")
    page.click("#task-rerun-button")
    page.wait_for_selector(".action-outcome")
    page.click("#nav-audit")
    page.fill("#audit-search", cluster.failed)
    page.wait_for_function(f"document.querySelector('#audit-csv').href.includes('{cluster.failed}')")
    row = page.wait_for_selector(f".audit-table tbody tr:has-text('{cluster.failed}')")
    assert "rerun" in row.inner_text() and ADMIN[0] in row.inner_text()
    with page.expect_download() as download:
        page.click("#audit-csv")
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert rows and all(row["target"] == cluster.failed and row["action"] == "rerun" for row in rows)
    assert rows[0]["actor"] == ADMIN[0] and rows[0]["at"].endswith("Z")
    page.fill("#audit-search", "no-such-action")
    page.wait_for_selector("#audit-table :text('No action matches this search.')")


def test_a_read_only_user_sees_no_action(open_page, cluster):
    page = open_page(VIEWER, allowed_statuses=(404,))
    page.goto(f"{cluster.server}/task/{cluster.failed}")
    page.wait_for_selector("#task-detail")
    assert page.query_selector(".actions-panel") is None and page.query_selector("#task-rerun-button") is None
    page.goto(f"{cluster.server}/tasks")
    page.wait_for_selector("#tasks-grid .ag-row [col-id=uuid]")
    assert page.query_selector("#bulk-rerun-preview") is None and page.query_selector("#nav-audit") is None
    page.goto(f"{cluster.server}/audit")
    assert "for admins" in page.wait_for_selector(".empty-state").inner_text()


def test_an_actions_outcome_is_shown_though_the_page_refreshed_while_it_was_asked(open_page, cluster):
    # The page of a running task refreshes at each change in the store, its buttons too. A refresh
    # while an action is under way used to replace that action's request, and its answer was dropped.
    running = cluster.worker.send("sample.sleep", 60)
    wait_for_tasks(cluster.server, {running: "STARTED"}, credentials=ADMIN)
    page = open_page(ADMIN)
    accept_dialogs(page, [])
    held, refreshed = [], []
    page.on("response", lambda answer: refreshed.append(answer)
            if "task-detail-body" in (answer.request.post_data or "") else None)

    def hold_the_action(route):
        if "act-task-result" in (route.request.post_data or "") and not held:
            held.append(route)
        else:
            route.continue_()
    page.route(lambda url: "/_dash-update-component" in url, hold_the_action)
    page.goto(f"{cluster.server}/task/{running}")
    page.click("#task-terminate-button")
    wait_for(lambda: page.wait_for_timeout(100) or held, 15, "the terminate asked")
    refreshes = len(refreshed)
    cluster.worker.send("sample.add", 1, 1)  # a change in the store: the page refreshes meanwhile
    wait_for(lambda: page.wait_for_timeout(100) or len(refreshed) > refreshes, 30, "the page refreshed")
    held[0].continue_()
    outcome = page.wait_for_selector(".action-outcome.tone-ok").inner_text()
    assert f"Revoked '{running}'" in outcome
    wait_for_tasks(cluster.server, {running: "REVOKED"}, credentials=ADMIN)

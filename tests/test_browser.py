"""The pages in Debian's chromium, on a real Redis with two real celery workers: the Dashboard's
worker rows and filter box, and the Tasks page's list, sorting, search, state chips, auto refresh
and detail view."""
from __future__ import annotations

import csv
import dataclasses
import itertools
import re

import pytest

from helpers import CeleryWorker, FlowerbedServer, Stack, tasks, wait_for, wait_for_tasks, worker_status

pytestmark = pytest.mark.browser

UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"
WAIT_SECONDS = 20  # as long as the page fixture lets any browser wait last


@dataclasses.dataclass
class Cluster:
    server: FlowerbedServer
    workers: list[CeleryWorker]
    sent: dict[str, str]  # what the task is for → its UUID; tests that send more add theirs
    sleeps: dict[str, float]  # the sample.sleep tasks among them → seconds

    def slowest_first(self) -> list[str]:
        return [self.sent[purpose] for purpose in sorted(self.sleeps, key=self.sleeps.get, reverse=True)]


@pytest.fixture(scope="module")
def cluster(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    stack = Stack()
    try:
        # Its own Redis database, so the other modules' workers and tasks stay out of these pages.
        broker = redis_url.rsplit("/", 1)[0] + "/3"
        server = stack.add(FlowerbedServer.start(broker, tmp / "flowerbed.db", tmp / "flowerbed.log"))
        workers = [stack.add(CeleryWorker(broker, hostname, tmp)) for hostname in ("alpha@browser", "beta@browser")]
        for worker in workers:
            wait_for(lambda: worker_status(server, worker.hostname), 20, f"{worker.hostname} online")
        alpha = workers[0]
        sleeps = {"short": 0.3, "medium": 0.6, "long": 1.2}
        sent = {
            "add": alpha.send("sample.add", 2, 3),
            "fail": alpha.send("sample.fail", "boom"),
            "flaky": alpha.send("sample.flaky", 2),
            **{purpose: alpha.send("sample.sleep", seconds) for purpose, seconds in sleeps.items()},
        }
        wait_for_tasks(server, {uuid: "FAILURE" if purpose == "fail" else "SUCCESS" for purpose, uuid in sent.items()})
        yield Cluster(server, workers, sent, sleeps)
    finally:
        stack.stop_all()



TASK_ROWS = "#tasks-grid .ag-center-cols-container .ag-row"
# Displayed rows in grid order (the DOM order of an infinite grid need not be), loaded ones only.
DISPLAYED_UUIDS = """() => Array.from(document.querySelectorAll('%s'))
    .map(row => [Number(row.getAttribute('row-index')), row.querySelector('[col-id=uuid]')?.innerText || ''])
    .filter(([, uuid]) => uuid).sort((a, b) => a[0] - b[0]).map(([, uuid]) => uuid)""" % TASK_ROWS


def displayed_uuids(page) -> list[str]:
    return page.evaluate(DISPLAYED_UUIDS)


def wait_for_rows(page, expected: list[str] | set[str], what: str) -> list[str]:
    """Wait until the Tasks grid shows exactly `expected` (a list: in that order)."""
    def shown():
        uuids = displayed_uuids(page)
        return uuids if (uuids if isinstance(expected, list) else set(uuids)) == expected else None
    return wait_for(shown, WAIT_SECONDS, f"{what}; showing {displayed_uuids(page)}")


def open_tasks(page, cluster, query: str = "") -> None:
    page.goto(f"{cluster.server}/tasks{query}")
    page.wait_for_selector(f"{TASK_ROWS} [col-id=uuid]")


def test_dashboard_shows_each_worker_online_with_its_counts(page, cluster):
    page.goto(f"{cluster.server}/")
    page.wait_for_selector("#workers-grid .ag-row [col-id=status]")
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('#workers-grid .ag-center-cols-container .ag-row'))
        .map(row => ({host: row.querySelector('[col-id=hostname]').innerText,
                      status: row.querySelector('[col-id=status]').innerText,
                      failed: row.querySelector('[col-id=failed]').innerText}))""")
    assert {row["host"]: row["status"] for row in rows} == {"alpha@browser": "Online", "beta@browser": "Online"}
    assert {row["host"]: row["failed"] for row in rows}["alpha@browser"] == "1"
    assert page.inner_text("#stat-online") == "2 / 2"


def refreshes_workers(response) -> bool:
    return "_dash-update-component" in response.url and "workers-grid.rowData" in (response.request.post_data or "")


def test_workers_search_box_filters_rows(page, cluster):
    page.goto(f"{cluster.server}/")
    hostnames = "#workers-grid .ag-center-cols-container .ag-row [col-id=hostname]"
    page.wait_for_selector(hostnames)
    page.fill("#workers-search", "beta")
    wait_for(lambda: page.locator(hostnames).all_inner_texts() == ["beta@browser"], 10, "only beta listed")
    with page.expect_response(refreshes_workers):  # a refresh tick replaces the rows: the filter must hold
        pass
    assert page.locator(hostnames).all_inner_texts() == ["beta@browser"]
    page.fill("#workers-search", "")
    wait_for(lambda: sorted(page.locator(hostnames).all_inner_texts()) == ["alpha@browser", "beta@browser"], 10,
             "both workers listed again")


def test_tasks_page_lists_exactly_the_tasks_with_state_and_worker(page, cluster):
    open_tasks(page, cluster)
    wait_for_rows(page, set(cluster.sent.values()), "every task sent")
    row = page.locator(f"{TASK_ROWS}[row-id='{cluster.sent['fail']}']")
    assert row.locator("[col-id=state]").inner_text() == "FAILURE"
    assert row.locator("[col-id=worker]").inner_text() == "alpha@browser"
    assert page.inner_text("#tasks-count") == f"{len(cluster.sent)} tasks"


def test_searching_a_uuid_leaves_exactly_that_row(page, cluster):
    open_tasks(page, cluster)
    page.fill("#tasks-search", cluster.sent["medium"])
    wait_for_rows(page, [cluster.sent["medium"]], "only the searched task")
    assert page.inner_text("#tasks-count") == "1 task"
    assert f"q={cluster.sent['medium']}" in page.url  # the search is kept in the address


def test_malformed_search_empties_the_grid_and_the_count_and_names_the_character(page, cluster):
    open_tasks(page, cluster)
    page.fill("#tasks-search", "state:FAILURE AND nmae:sample")
    message = page.locator("#tasks-search-message")
    message.wait_for(state="visible")
    assert message.inner_text().startswith("Search not understood at character 19: unknown field 'nmae:'")
    # The rows go first; the count comes with the answer for the rows.
    wait_for(lambda: displayed_uuids(page) == [] and page.inner_text("#tasks-count") == "", WAIT_SECONDS,
             "no rows and no count under the message")
    page.wait_for_selector("#tasks-grid .ag-overlay-no-rows-center", state="attached")
    assert not page.is_visible("#tasks-grid .ag-overlay-no-rows-center")  # not "No tasks match.": none was searched
    page.fill("#tasks-search", "state:FAILURE")
    wait_for_rows(page, [cluster.sent["fail"]], "the failed task once the search is fixed")
    assert message.inner_text() == ""
    assert page.inner_text("#tasks-count") == "1 task"


def test_malformed_search_in_the_address_shows_the_inline_message_and_no_task(page, cluster):
    page.goto(f"{cluster.server}/tasks?q=(name:sample")  # a shared link, or Back to a mistyped search
    page.wait_for_selector("#tasks-search-message:not(:empty)")
    assert page.inner_text("#tasks-search-message") == "Search not understood at character 13: missing ')'"
    page.wait_for_selector("#tasks-grid .ag-overlay-no-rows-center", state="attached")
    assert displayed_uuids(page) == [] and not page.is_visible("#tasks-grid .ag-overlay-no-rows-center")
    assert page.input_value("#tasks-search") == "(name:sample"


@pytest.mark.parametrize("chip, failed", [("Failed", True), ("Succeeded", False)])
def test_state_chip_filters_the_tasks(page, cluster, chip, failed):
    open_tasks(page, cluster)
    page.locator("#tasks-state label", has_text=chip).click()
    expected = {uuid for purpose, uuid in cluster.sent.items() if (purpose == "fail") == failed}
    wait_for_rows(page, expected, f"the {chip} tasks")
    assert f"state={'FAILURE' if failed else 'SUCCESS'}" in page.url


def test_sort_and_search_survive_the_auto_refresh_which_shows_new_tasks(page, cluster):
    open_tasks(page, cluster, "?q=name:sample.sleep")
    header = page.locator("#tasks-grid .ag-header-cell[col-id=runtime]")
    header.locator(".ag-header-cell-label").click()
    wait_for_rows(page, cluster.slowest_first(), "the sleep tasks, slowest first")
    # A slower task arrives while the page is open: the refresh shows it in place, sorted and filtered.
    cluster.sleeps["longest"] = max(cluster.sleeps.values()) + 0.4
    cluster.sent["longest"] = cluster.workers[1].send("sample.sleep", cluster.sleeps["longest"])
    cluster.sent["unrelated"] = cluster.workers[1].send("sample.add", 1, 1)
    wait_for_rows(page, cluster.slowest_first(), "the new slowest task on top")
    assert header.get_attribute("aria-sort") == "descending"
    assert page.input_value("#tasks-search") == "name:sample.sleep"


def test_an_idle_cluster_costs_the_tasks_grid_no_reload(page, cluster):
    wait_for_tasks(cluster.server, {uuid: "FAILURE" if purpose == "fail" else "SUCCESS"
                                    for purpose, uuid in cluster.sent.items()})
    cluster.server.wait_for_rollups()  # whose fold changes the store version once more
    open_tasks(page, cluster)
    wait_for_rows(page, set(cluster.sent.values()), "every task")
    reloads, ticks = [], []
    page.on("request", lambda request: (reloads if "tasks-grid.getRowsResponse" in (request.post_data or "")
                                        else ticks if "collector-status.children" in (request.post_data or "")
                                        else []).append(request))
    # The workers' heartbeats keep being stored meanwhile; only stored tasks reload the grid.
    # Playwright hands events over only while it is called: wait through it.
    wait_for(lambda: page.wait_for_timeout(100) or len(ticks) >= 3, WAIT_SECONDS, "three refresh ticks")
    assert reloads == []
    cluster.sent["while idle"] = cluster.workers[0].send("sample.add", 4, 4)
    wait_for_rows(page, set(cluster.sent.values()), "the task sent after the idle ticks")


def test_new_tasks_wait_while_the_pointer_moves_on_the_rows_so_the_row_aimed_at_stays_put(page, cluster):
    # Newest first, each refresh pushed the rows down under a pointer about to click one.
    open_tasks(page, cluster)
    before = wait_for_rows(page, set(cluster.sent.values()), "every task")
    hint = page.locator(".refresh-held-hint")
    box = page.locator(f"{TASK_ROWS}[row-index='1'] [col-id=name]").bounding_box()
    x, y = box["x"] + 10, box["y"] + box["height"] / 2
    moves = itertools.count()

    def held_while_aiming(purpose: str) -> None:
        cluster.sent[purpose] = cluster.workers[0].send("sample.add", 5, 5)
        wait_for_tasks(cluster.server, {cluster.sent[purpose]: "SUCCESS"})
        wait_for(lambda: page.mouse.move(x + next(moves) % 3, y)
                 or page.evaluate("!!window.flowerbedHeldRefreshes['tasks-grid']"),
                 WAIT_SECONDS, f"the refresh for {purpose} held while the pointer moves on a row")
        assert hint.is_visible()

    page.mouse.move(x, y)
    assert not hint.is_visible()  # nothing waits yet
    held_while_aiming("while aimed at")
    assert displayed_uuids(page) == before
    page.mouse.move(5, 5)  # off the rows: the held refresh comes
    assert wait_for_rows(page, set(cluster.sent.values()), "the new task once the pointer left")[0] == \
        cluster.sent["while aimed at"]
    assert not hint.is_visible()

    # A pointer that rests on the rows is not aiming: a screen watched so goes on refreshing.
    page.mouse.move(x, y)
    held_while_aiming("while resting")
    assert wait_for_rows(page, set(cluster.sent.values()), "the new task with the pointer resting")[0] == \
        cluster.sent["while resting"]
    assert page.evaluate("document.querySelector('#tasks-grid .ag-body').matches(':hover')")
    assert not hint.is_visible()


def test_row_click_opens_the_detail_with_exception_and_traceback(page, cluster):
    open_tasks(page, cluster, "?state=FAILURE")
    wait_for_rows(page, [cluster.sent["fail"]], "the failed task")
    page.locator(f"{TASK_ROWS} [col-id=name]").first.click()
    page.wait_for_selector("#task-detail")
    assert page.evaluate("location.pathname") == f"/task/{cluster.sent['fail']}"
    assert page.inner_text("#task-detail .page-header h1") == "sample.fail"
    assert page.inner_text("#task-detail .code.exception") == "ValueError('boom')"
    traceback = page.inner_text("#task-detail pre.code:not(.exception)")
    assert traceback.startswith("Traceback (most recent call last)") and "raise ValueError(message)" in traceback
    page.go_back()
    page.wait_for_selector(f"{TASK_ROWS} [col-id=uuid]")
    assert page.evaluate("location.pathname") == "/tasks"


@pytest.mark.parametrize("path, shown", [(f"/task/{UNKNOWN_UUID}", UNKNOWN_UUID), ("/worker/nope", "/worker/nope")])
def test_an_unknown_page_shows_not_found_and_answers_404(browser, cluster, path, shown):
    page = browser.new_page(viewport={"width": 1440, "height": 900})  # not `page`: the 404 is expected
    response = page.goto(f"{cluster.server}{path}")
    assert response.status == 404
    page.wait_for_selector(".empty-state h1")
    assert page.inner_text(".empty-state h1") == "Not found"
    assert shown in page.inner_text(".empty-state p")
    page.close()


def test_a_task_that_succeeded_after_a_retry_labels_the_exception_as_an_earlier_attempt(page, cluster):
    page.goto(f"{cluster.server}/task/{cluster.sent['flaky']}")
    page.wait_for_selector("#task-detail")
    headings = page.locator("#task-detail .panel h2").all_inner_texts()
    assert [h.lower() for h in headings if h.lower().startswith(("exception", "traceback"))] == [
        "exception of an earlier attempt", "traceback of an earlier attempt"]
    timeline = page.locator("#task-detail .panel").nth(1)
    events = timeline.locator("th").all_inner_texts()
    stamps = [text for text in timeline.locator("td").all_inner_texts() if text.endswith("UTC")]
    assert stamps == sorted(stamps)  # in the order they happened
    assert events.index("retried") < events.index("succeeded")


def test_the_first_click_on_runtime_sorts_slowest_first_and_tasks_without_one_go_last(page, cluster):
    # Sent to a queue no worker reads: recorded (task-sent), never run. Near the end of the file, as
    # the tests before count every task of the cluster.
    queued = cluster.workers[0].client.send_task("sample.add", (7, 7), queue="nobody-reads-this").id
    open_tasks(page, cluster, "?q=name:sample.sleep OR uuid:" + queued)
    header = page.locator("#tasks-grid .ag-header-cell[col-id=runtime]")
    header.locator(".ag-header-cell-label").click()
    assert header.get_attribute("aria-sort") == "descending"
    wait_for_rows(page, cluster.slowest_first() + [queued], "the sleeps slowest first, the queued task last")
    runtimes = page.locator(f"{TASK_ROWS} [col-id=runtime]").all_inner_texts()
    assert "1.2 s" in runtimes  # a duration with its unit, not bare seconds
    header.locator(".ag-header-cell-label").click()
    assert header.get_attribute("aria-sort") == "ascending"
    wait_for_rows(page, cluster.slowest_first()[::-1] + [queued], "the sleeps fastest first, the queued task last")


def test_the_column_chooser_adds_and_removes_a_column(page, cluster):
    open_tasks(page, cluster)
    headers = "#tasks-grid .ag-header-cell"
    assert page.locator(f"{headers}[col-id=exception]").count() == 0
    page.click(".column-chooser summary")
    page.locator("#tasks-columns label", has_text="Exception").click()
    page.wait_for_selector(f"{headers}[col-id=exception]")
    page.locator(f"{TASK_ROWS}[row-id='{cluster.sent['fail']}'] [col-id=exception]").scroll_into_view_if_needed()
    wait_for(lambda: page.inner_text(f"{TASK_ROWS}[row-id='{cluster.sent['fail']}'] [col-id=exception]")
             == "ValueError('boom')", WAIT_SECONDS, "the failed task's exception in its new column")
    page.locator("#tasks-columns label", has_text="Worker").click()
    page.wait_for_selector(f"{headers}[col-id=worker]", state="detached")
    # The choice is in the address (a shared link shows the same columns) ...
    wait_for(lambda: page.wait_for_timeout(100) or "exception" in page.url and "worker" not in page.url.split("cols=")[-1],
             WAIT_SECONDS, f"the chosen columns in the address; it is {page.url}")
    # ... and a wider window shows more columns (the width fitting), never one the user hid.
    page.set_viewport_size({"width": 2200, "height": 900})
    page.wait_for_selector(f"{headers}[col-id=started]")
    assert page.locator(f"{headers}[col-id=worker]").count() == 0
    page.reload()  # the choice is kept in this browser
    page.wait_for_selector(f"{TASK_ROWS} [col-id=uuid]")
    page.wait_for_selector(f"{headers}[col-id=exception]")
    assert page.locator(f"{headers}[col-id=worker]").count() == 0


def test_the_detail_of_a_running_task_turns_to_success_without_a_reload(page, cluster):
    uuid = cluster.workers[0].send("sample.sleep", 5)
    wait_for(lambda: tasks(cluster.server).get(uuid, {}).get("state") == "STARTED", 20, "the task started")
    page.goto(f"{cluster.server}/task/{uuid}")
    page.wait_for_selector("#task-detail")
    page.evaluate("window.notReloaded = true")
    badge = "#task-detail .page-header .badge"
    assert page.inner_text(badge) == "STARTED"
    wait_for(lambda: page.inner_text(badge) == "SUCCESS", WAIT_SECONDS, f"SUCCESS; showing {page.inner_text(badge)}")
    assert page.evaluate("window.notReloaded === true")
    assert page.inner_text("#task-runtime").endswith(" s")  # about 3 s, in seconds with the unit
    assert "succeeded" in page.locator("#task-detail .panel").nth(1).locator("th").all_inner_texts()


def test_the_detail_links_children_and_root_and_copies_the_id(page, cluster):
    parent = cluster.workers[0].send("sample.spawn", 2)

    def both_children_done():
        done = [task for task in tasks(cluster.server).values()
                if task.get("parent_id") == parent and task["state"] == "SUCCESS"]
        return done if len(done) == 2 else None
    stored = wait_for(both_children_done, 30, "the two children stored")
    children = sorted(child["uuid"] for child in stored)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"{cluster.server}/task/{parent}")
    links = "#task-children a"
    page.wait_for_selector(links)
    assert sorted(page.locator(links).all_inner_texts()) == children
    page.click("#task-uuid-text + .copy-button")
    wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == parent, 5, "the id copied")
    assert page.locator("#task-args-text + .copy-button").count() == 1
    page.locator(links).first.click()
    page.wait_for_selector("#task-detail .page-header .subtitle")
    wait_for(lambda: page.evaluate("location.pathname") in {f"/task/{child}" for child in children}, 10, "a child opened")
    for field in ("root_id", "parent_id"):
        link = page.locator("#task-detail tr", has=page.locator(f"th:text-is('{field}')")).locator("a")
        assert link.inner_text() == parent and link.get_attribute("href") == f"/task/{parent}"


def test_the_time_zone_switch_shows_local_times_and_survives_a_reload(browser, cluster):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, timezone_id="Asia/Kolkata")  # UTC+05:30
    try:
        page = context.new_page()
        page.goto(f"{cluster.server}/task/{cluster.sent['add']}")
        stamp = page.locator("#task-detail time.stamp").first
        utc_text = stamp.inner_text()
        assert utc_text.endswith(" UTC") and page.inner_text("#timezone-toggle") == "UTC"
        with page.expect_navigation():
            page.click("#timezone-toggle")
        page.wait_for_selector("#task-detail time.stamp")
        wait_for(lambda: page.locator("#task-detail time.stamp").first.inner_text().endswith(" UTC+05:30"), 10,
                 "the stamp in the browser's zone")
        local_text = page.locator("#task-detail time.stamp").first.inner_text()
        assert local_text[:16] != utc_text[:16] and local_text[-18:-10] == utc_text[-12:-4]  # same second, other hour
        assert page.inner_text("#timezone-toggle") == "Local"
        page.goto(f"{cluster.server}/tasks")
        page.wait_for_selector(f"{TASK_ROWS} [col-id=uuid]")
        assert page.inner_text("#tasks-grid .ag-header-cell[col-id=received]") == "Received (UTC+05:30)"
        page.reload()
        page.wait_for_selector(f"{TASK_ROWS} [col-id=uuid]")
        assert page.inner_text("#tasks-grid .ag-header-cell[col-id=received]") == "Received (UTC+05:30)"
    finally:
        context.close()


def test_the_tasks_csv_downloads_what_the_search_matches_with_raw_values(page, cluster):
    open_tasks(page, cluster, "?q=name:sample.sleep&state=SUCCESS")
    page.wait_for_function("document.querySelector('#tasks-csv').href.includes('state=SUCCESS')")
    with page.expect_download() as info:
        page.click("#tasks-csv")
    assert info.value.suggested_filename == "flowerbed-tasks_state-SUCCESS_search-name-sample.sleep.csv"
    with open(info.value.path(), encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    header, rows = rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]
    assert header[:4] == ["uuid", "name", "state", "worker"] and "runtime" in header and "received" in header
    stored = tasks(cluster.server, "search=name:sample.sleep&state=SUCCESS")
    assert {row["uuid"] for row in rows} == set(stored)
    for row in rows:
        assert float(row["runtime"]) == stored[row["uuid"]]["runtime"]  # seconds, as stored
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["received"])


def test_dashboard_shows_a_stopped_worker_offline(page, cluster):
    # Last in the file: it stops the second worker for good.
    page.goto(f"{cluster.server}/")
    status = "#workers-grid .ag-row[row-id='beta@browser'] [col-id=status]"
    page.wait_for_selector(status)
    assert page.inner_text(status) == "Online"
    cluster.workers[1].stop()
    wait_for(lambda: page.inner_text(status) == "Offline", 10, "beta shown Offline")
    assert page.inner_text("#stat-online") == "1 / 2"

"""What a user set is in the address, in Debian's chromium on a real Redis with real celery workers
(the cluster of test_browser.py): Back and a shared link give the same Tasks sort, filters and
columns and the same Analytics range and compare mode; and the Dashboard's charts cost no request
on a tick where nothing was stored."""
from __future__ import annotations

import urllib.parse

import pytest

from helpers import wait_for, wait_for_tasks
from test_browser import TASK_ROWS, WAIT_SECONDS, cluster, open_tasks, wait_for_rows  # noqa: F401 (a fixture)

pytestmark = pytest.mark.browser

RUNTIME_HEADER = "#tasks-grid .ag-header-cell[col-id=runtime]"


def query_of(page) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)


def sort_by_runtime_descending(page) -> None:
    label = page.locator(RUNTIME_HEADER).locator(".ag-header-cell-label")
    label.click()  # the first click sorts slowest first
    wait_for(lambda: page.wait_for_timeout(100) or query_of(page).get("sort") == ["-runtime"], WAIT_SECONDS,
             f"sort=-runtime in the address; it is {page.url}")


def shown_columns(page) -> list[str]:
    return page.eval_on_selector_all("#tasks-grid .ag-header-cell[col-id]", "cells => cells.map(c => c.getAttribute('col-id'))")


def test_back_from_a_task_restores_the_tasks_sort_and_search(page, cluster):
    open_tasks(page, cluster)
    page.fill("#tasks-search", "name:sample.sleep")
    wait_for_rows(page, set(cluster.slowest_first()), "the sleep tasks")
    sort_by_runtime_descending(page)
    wait_for_rows(page, cluster.slowest_first(), "the sleep tasks, slowest first")
    assert query_of(page)["q"] == ["name:sample.sleep"]
    page.locator(f"{TASK_ROWS} [col-id=name]").first.click()
    page.wait_for_selector("#task-detail")
    page.go_back()
    wait_for_rows(page, cluster.slowest_first(), "the sleep tasks, slowest first, after Back")
    assert page.locator(RUNTIME_HEADER).get_attribute("aria-sort") == "descending"
    assert page.input_value("#tasks-search") == "name:sample.sleep"


def test_a_shared_tasks_link_opens_the_same_sort_state_and_columns(page, open_page, cluster):
    open_tasks(page, cluster, "?cols=uuid,name,state,runtime")
    assert shown_columns(page) == ["name", "uuid", "state", "runtime"]  # in the table's order
    page.locator("#tasks-state label", has_text="Succeeded").click()
    sort_by_runtime_descending(page)
    succeeded = cluster.slowest_first() + [
        uuid for purpose, uuid in cluster.sent.items() if purpose not in cluster.sleeps and purpose != "fail"]
    wait_for(lambda: page.wait_for_timeout(100) or query_of(page).get("state") == ["SUCCESS"], WAIT_SECONDS,
             "state=SUCCESS in the address")
    shared = open_page()  # another user, opening the link they were sent
    shared.goto(page.url)
    shared.wait_for_selector(f"{TASK_ROWS} [col-id=runtime]")
    uuids = wait_for_rows(shared, set(succeeded), "the succeeded tasks")
    assert uuids[:len(cluster.sleeps)] == cluster.slowest_first()
    assert shown_columns(shared) == ["name", "uuid", "state", "runtime"]
    assert shared.locator(RUNTIME_HEADER).get_attribute("aria-sort") == "descending"
    assert shared.locator("#tasks-state input:checked").get_attribute("value") == "SUCCESS"


def test_a_sort_or_column_the_table_does_not_have_is_named_and_ignored(page, cluster):
    open_tasks(page, cluster, "?sort=-colour&cols=name,colour,uuid")
    assert "sort ignored" in page.inner_text(".page") and "'colour'" in page.inner_text(".page")
    assert shown_columns(page) == ["name", "uuid", "state"]  # name and state are always shown
    wait_for_rows(page, set(cluster.sent.values()), "every task")


def checked(page, radio_id: str) -> str:
    return page.locator(f"#{radio_id} input:checked").get_attribute("value")


def test_back_and_a_shared_link_restore_the_analytics_range_filter_and_compare_mode(page, open_page, cluster):
    page.goto(f"{cluster.server}/analytics")
    page.wait_for_selector("#analytics-stats .ag-row")
    page.locator("#analytics-range label", has_text="6 hours").click()
    page.locator("#compare-mode label", has_text="Same time last week").click()
    wait_for(lambda: page.wait_for_timeout(100) or query_of(page) == {"range": ["6h"], "compare": ["week"]},
             WAIT_SECONDS, f"range and compare in the address; it is {page.url}")
    page.locator("#nav-tasks").click()
    page.wait_for_selector(f"{TASK_ROWS} [col-id=uuid]")
    page.go_back()
    page.wait_for_selector("#analytics-stats .ag-row")
    assert (checked(page, "analytics-range"), checked(page, "compare-mode")) == ("6h", "week")
    assert "Finished in 6 h" in page.text_content("#analytics-cards")  # the range's data, not the default hour's

    shared = open_page()
    shared.goto(f"{cluster.server}/analytics?range=custom&from=2026-01-01 00:00&to=2026-01-02 00:00"
                f"&name=sample.add&compare=split&split=2026-01-01 12:00")
    shared.wait_for_selector("#analytics-from")
    assert (checked(shared, "analytics-range"), checked(shared, "compare-mode")) == ("custom", "split")
    assert (shared.input_value("#analytics-from"), shared.input_value("#analytics-to"),
            shared.input_value("#compare-split")) == ("2026-01-01 00:00", "2026-01-02 00:00", "2026-01-01 12:00")
    assert "sample.add" in shared.inner_text("#analytics-names")
    assert "Finished in 24 h" in shared.text_content("#analytics-cards")


def test_an_idle_cluster_costs_the_dashboard_charts_no_request(page, cluster):
    wait_for_tasks(cluster.server, {uuid: "FAILURE" if purpose == "fail" else "SUCCESS"
                                    for purpose, uuid in cluster.sent.items()})
    cluster.server.wait_for_rollups()  # whose fold changes the store version once more
    page.goto(f"{cluster.server}/")
    page.wait_for_selector("#dashboard-throughput .js-plotly-plot")
    charts, ticks = [], []
    page.on("request", lambda request: (charts if "dashboard-figures.data" in (request.post_data or "")
                                        else ticks if "collector-status.children" in (request.post_data or "")
                                        else []).append(request))
    # Heartbeats keep being stored meanwhile; only stored tasks make the charts ask again.
    wait_for(lambda: page.wait_for_timeout(100) or len(ticks) >= 3, WAIT_SECONDS, "three refresh ticks")
    assert charts == []
    cluster.sent["after the idle ticks"] = cluster.workers[0].send("sample.add", 5, 5)
    wait_for(lambda: page.wait_for_timeout(100) or charts, WAIT_SECONDS, "the charts asked again once a task was stored")

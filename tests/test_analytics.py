"""Runtime and failure analytics: the rollups the store keeps, the quantiles, bucketing, exception
groups, empty ranges and window comparison on a real store; then a real worker running tasks of known
durations and failures; then the page in a real browser, with a drill-down click."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from callbacks.analytics import (FIGURES, REFRESH_OUTPUTS, compare_windows, refresh_outputs, response_body,
                                 scope_from_controls)
from components import analytics as view
from helpers import (CeleryWorker, FlowerbedServer, Stack, finished, task_row, wait_for, wait_for_tasks,
                     worker_status)
from monitor.query import analytics, search
from monitor.store import rollup
from monitor.query.tasks import TaskQuery, fetch_tasks
from monitor.store.sqlite import SqliteStore as Store

NOW = 1_795_600_000.0  # 2026-11-25 08:26:40 UTC, a fixed "now" for the unit tests


@pytest.fixture
def store(make_store):
    return make_store("analytics")


def write(store, rows):
    """Write task rows as the collector does and fold them into the rollups now (not when due)."""
    store.write_batch(tasks=rows)
    store.fold_rollups()


# -- the rollups -----------------------------------------------------------------------------------
def test_a_task_is_counted_once_when_it_first_reaches_a_final_state(store):
    start = NOW - 100
    write(store, [task_row(uuid="u1", name="t", state="RECEIVED", received=start, worker="w")])
    write(store, [task_row(uuid="u1", name="t", state="STARTED", started=start + 2)])
    write(store, [task_row(uuid="u1", name="t", state="SUCCESS", succeeded=start + 5, runtime=3.0)])
    write(store, [task_row(uuid="u1", name="t", state="SUCCESS", succeeded=start + 5, runtime=3.0)])
    write(store, [task_row(uuid="u1", name="t", state="STARTED")])  # a late, out-of-order event
    stats = analytics.task_stats(store, analytics.last("1h", NOW), NOW)
    row = stats.iloc[0]
    assert (row["name"], row["finished"], row["failed"]) == ("t", 1, 0)
    assert row["runtime_max"] == pytest.approx(3.0) and row["wait_max"] == pytest.approx(2.0)
    assert store.query("SELECT sum(count) FROM task_rollup WHERE grain = 60")[0][0] == 1


def test_retention_trims_rollups_by_age_and_not_with_the_tasks_trimmed_by_count(make_store):
    store = make_store("retention", max_tasks=5)
    write(store, [finished(f"old{i}", "t", 0.1, NOW - 3 * 86400 + i) for i in range(5)]
                      + [finished(f"new{i}", "t", 0.1, NOW - 60 - i) for i in range(5)])
    store.enforce_retention(NOW)
    assert store.count_tasks() == 5  # the five oldest tasks are gone from the Tasks page...
    per_grain = dict(store.query("SELECT grain, sum(count) FROM task_rollup GROUP BY grain"))
    # ...the charts still count them where their grain is kept; minute rows go after two days.
    assert per_grain == {rollup.MINUTE: 5, rollup.FIVE_MINUTES: 10, rollup.QUARTER: 10, rollup.THREE_HOURS: 10,
                         rollup.DAY: 10}
    week = analytics.last("7d", NOW)
    assert analytics.task_stats(store, week, NOW)["finished"].iloc[0] == 10


def test_histogram_bins_follow_the_documented_rule():
    for seconds in (0.0, 0.0005, 0.001, 0.0123, 0.1, 0.5, 1.0, 7.5, 3600.0):
        index = rollup.bin_of(seconds)
        lower, upper = rollup.bin_bounds(index)
        assert lower <= seconds < upper or seconds == 0.0


# -- quantiles ------------------------------------------------------------------------------------
@pytest.mark.parametrize("median, spread", [(0.05, 0.3), (0.8, 0.6), (12.0, 1.0)])
def test_quantiles_from_histograms_are_within_the_bin_error_of_exact_ones(median, spread):
    values = np.random.default_rng(4).lognormal(np.log(median), spread, 20_000)
    bins, counts = np.unique([rollup.bin_of(v) for v in values], return_counts=True)
    estimated = analytics.quantiles_from_histogram(bins, counts)
    exact = np.quantile(values, analytics.QUANTILES, method="inverted_cdf")
    error_bound = math.sqrt(rollup.BIN_RATIO) - 1  # the geometric middle of the bin: ±4.4 %
    for q, got, want in zip(analytics.QUANTILES, estimated, exact):
        assert abs(got / want - 1) <= error_bound + 1e-9, f"p{q * 100:g}: {got} vs {want}"


def test_task_stats_per_name_against_known_runtimes(store):
    rows = []
    for i in range(100):  # 50 × 0.1 s, 30 × 0.2 s, 20 × 0.5 s, all finished in the last hour
        runtime = 0.1 if i < 50 else 0.2 if i < 80 else 0.5
        rows.append(finished(f"s{i}", "sample.sleep", runtime, NOW - 60 - i * 10, wait=0.05))
    rows += [finished(f"f{i}", "sample.fail", 0.01, NOW - 100 - i, state="FAILURE", exception=f"ValueError('boom {i}')")
             for i in range(7)]
    write(store, rows)
    stats = analytics.task_stats(store, analytics.last("1h", NOW), NOW).set_index("name")
    sleep = stats.loc["sample.sleep"]
    assert (sleep["finished"], sleep["failed"], sleep["runtime_count"]) == (100, 0, 100)
    for column, expected in (("runtime_p25", 0.1), ("runtime_p50", 0.1), ("runtime_p75", 0.2), ("runtime_p90", 0.5),
                             ("runtime_p99", 0.5), ("runtime_max", 0.5), ("wait_p50", 0.05)):
        assert sleep[column] == pytest.approx(expected, rel=0.045), column
    assert sleep["runtime_mean"] == pytest.approx((50 * 0.1 + 30 * 0.2 + 20 * 0.5) / 100)
    fail = stats.loc["sample.fail"]
    assert (fail["finished"], fail["failed"], fail["failure_rate"]) == (7, 7, 1.0)


# -- bucketing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("range_key, step", [("15m", 60), ("1h", 60), ("6h", 300), ("24h", 900), ("7d", 10800)])
def test_bucket_size_adapts_to_the_range(range_key, step):
    scope = analytics.last(range_key, NOW)
    assert analytics.bucket_seconds(scope, NOW) == step
    assert scope.span / step <= analytics.MAX_BUCKETS


def test_an_old_range_uses_a_grain_that_is_still_kept():
    old = analytics.Scope(NOW - 5 * 86400, NOW - 5 * 86400 + 3600)
    assert analytics.bucket_seconds(old, NOW) == rollup.FIVE_MINUTES


def test_throughput_counts_each_bucket_and_state(store):
    write(store, [
        finished("a", "t", 0.1, NOW - 3000), finished("b", "t", 0.1, NOW - 3000 + 10),
        finished("c", "t", 0.1, NOW - 1000, state="FAILURE"), finished("d", "t", 0.1, NOW - 90000),  # out of range
    ])
    frame = analytics.throughput(store, analytics.last("1h", NOW), NOW)
    counted = {(int(b), s): c for b, s, c in zip(frame["bucket"], frame["state"], frame["count"])}
    assert counted == {(int(NOW - 3000) // 60 * 60, "SUCCESS"): 2, (int(NOW - 1000) // 60 * 60, "FAILURE"): 1}
    rates = analytics.failure_rate(frame)
    assert list(rates["rate"]) == [0.0, 1.0]


def test_a_distribution_over_a_long_range_adds_up_across_grains(store):
    # One task per 7 minutes over two days: the 24-hour range mixes three-hour, quarter and 5-minute rows.
    rows = [finished(f"t{i}", "t", 0.2, NOW - i * 420) for i in range(1, 2 * 86400 // 420)]
    write(store, rows)
    scope = analytics.last("24h", NOW)
    step = analytics.bucket_seconds(scope, NOW)
    first_bucket = int(scope.start) // step * step
    expected = sum(first_bucket <= NOW - i * 420 < NOW for i in range(1, 2 * 86400 // 420))
    assert analytics.task_stats(store, scope, NOW)["finished"].iloc[0] == expected
    assert analytics.throughput(store, scope, NOW)["count"].sum() == expected


# -- exceptions -----------------------------------------------------------------------------------
def test_failures_are_grouped_by_type_and_message_without_ids(store):
    rows = [finished(f"d{i}", "payments.charge", 0.1, NOW - 500 + i, state="FAILURE",
                     exception=f"ValueError('card declined for customer {1000 + i}')", traceback=f"Traceback {i}")
            for i in range(5)]
    rows += [finished(f"t{i}", "email.send", 0.1, NOW - 400 + i, state="FAILURE",
                      exception="TimeoutError('smtp timed out')") for i in range(2)]
    rows += [finished("ok", "email.send", 0.1, NOW - 300)]
    write(store, rows)
    scope = analytics.last("1h", NOW)
    groups = analytics.exception_groups(store, scope)
    assert list(zip(groups["type"], groups["message"], groups["count"])) == [
        ("ValueError", "card declined for customer #", 5), ("TimeoutError", "smtp timed out", 2)]
    declined = groups.iloc[0]
    assert declined["sample_uuid"] == "d4" and declined["names"] == "payments.charge"
    assert (declined["first"], declined["last"]) == (pytest.approx(NOW - 500), pytest.approx(NOW - 496))
    assert analytics.tracebacks(store, ["d4"]) == {"d4": "Traceback 4"}
    # The drill-down the group's row opens finds exactly its five tasks.
    row = view.exception_rows(groups, {}, scope)[0]
    assert _tasks_page_uuids(store, row["drill"]) == {f"d{i}" for i in range(5)}


def test_exception_key_masks_numbers_and_ids_and_never_raises():
    assert rollup.exception_key("KeyError('sku-123')") == "KeyError: sku-#"
    assert rollup.exception_key("RuntimeError('lock 0x1f held by 3f2a9c1e-0000-4000-8000-00000000abcd')") == \
        "RuntimeError: lock # held by #"
    assert rollup.exception_key(None) == "Unknown: "
    assert rollup.exception_key(42) == "Unknown: 42"  # garbage in the store must not fail the write


# -- drill-down targets ---------------------------------------------------------------------------
def _tasks_page_uuids(store, target, values=()) -> set[str]:
    """The uuids the Tasks page lists for a drill-down target [q, state], its {0}.. filled from `values`
    as the page's clientside callback does."""
    text, state = target
    for index, value in enumerate(values):
        text = text.replace(f"{{{index}}}", value)
    page = fetch_tasks(store, TaskQuery(search=text, states=(state,) if state else (), limit=1000))
    return {row["uuid"] for row in page.rows}


def test_a_throughput_bar_opens_exactly_its_tasks(store):
    in_bucket = [finished(f"in{i}", "shop.checkout", 0.1, NOW - 600 + i) for i in range(3)]
    others = [finished("next", "shop.checkout", 0.1, NOW - 600 + 61), finished("other", "shop.cart", 0.1, NOW - 599),
              finished("failed", "shop.checkout", 0.1, NOW - 598, state="FAILURE")]
    write(store, in_bucket + others)
    scope = analytics.last("1h", NOW, names=("shop.checkout",))
    figure = view.throughput_figure(analytics.throughput(store, scope, NOW), scope, "test")
    success = next(trace for trace in figure["data"] if trace["name"] == "Success")
    bucket_start = view.compact_moment(int(NOW - 600) // 60 * 60)
    bounds = next(b for b in success["customdata"] if b[0] == bucket_start)
    assert _tasks_page_uuids(store, success["meta"], bounds) == {"in0", "in1", "in2"}


def test_a_broker_filter_keeps_what_the_workers_of_that_broker_did_and_opens_exactly_its_tasks(store):
    for worker, broker in (("w@eu", "eu"), ("w@us", "us")):  # workers are kept with their broker
        store.save_inspection({worker: {}}, NOW, broker)
    store.write_batch(samples=[("w@eu", NOW - 300, 1, 0.5, 0.5, 0.5), ("w@us", NOW - 300, 2, 1.0, 1.0, 1.0)])
    write(store, [finished(f"eu{i}", "t", 0.1 * (i + 1), NOW - 600 + i, worker="w@eu", broker="eu") for i in range(3)]
          + [finished(f"us{i}", "t", 5.0, NOW - 600 + i, worker="w@us", broker="us", state="FAILURE",
                      exception="ValueError('x')") for i in range(2)])
    scope = scope_from_controls("1h", None, None, None, None, None, NOW, ["eu"])
    stats = analytics.task_stats(store, scope, NOW)
    assert (stats["finished"].sum(), stats["failed"].sum(), stats["runtime_max"].max()) == (3, 0, pytest.approx(0.3))
    assert analytics.throughput(store, scope, NOW)["count"].sum() == 3
    assert analytics.exception_groups(store, scope).empty
    assert set(analytics.slowest_tasks(store, scope, stats)["uuid"]) == {"eu0", "eu1", "eu2"}
    assert set(analytics.worker_activity(store, scope, NOW)["worker"]) == {"w@eu"}
    assert analytics.filter_options(store)["broker"] == ["eu", "us"]
    success = next(t for t in view.throughput_figure(analytics.throughput(store, scope, NOW), scope, "test")["data"])
    bounds = next(bounds for bounds, count in zip(success["customdata"], success["y"]) if count)
    assert "broker=eu" in success["meta"][0]
    assert _tasks_page_uuids(store, success["meta"], bounds) == {"eu0", "eu1", "eu2"}


def test_search_comparisons_and_exact_names():
    assert search.compile_search("finished>=2026-11-25T08:00 name=a.b") == (
        f"({search.COMPARABLE['finished']} >= ? AND name = ?)", [search.parse_moment("2026-11-25T08:00"), "a.b"])
    assert search.compile_search("runtime>2.5")[1] == [2.5]
    assert search.compile_search("-received<1795600000") == ("NOT coalesce(received < ?, false)", [1795600000.0])
    for bad, message in (("received>=soon", "expected a UTC date/time"), ("runtime>fast", "a number of seconds"),
                         ("name=", "needs a value")):
        with pytest.raises(search.SearchError, match=message):
            search.compile_search(bad)
    assert search.parse("a<b") == search.Term(None, "a<b")  # not a known field: plain text
    assert search.format_moment(search.parse_moment("2026-11-25 10:30:05")) == "2026-11-25T10:30:05"


# -- empty ranges and bad input ---------------------------------------------------------------------
def test_an_empty_range_gives_empty_frames_and_a_clear_note(store):
    scope = analytics.last("15m", NOW)
    assert analytics.task_stats(store, scope, NOW).empty
    assert analytics.throughput(store, scope, NOW).empty
    assert analytics.exception_groups(store, scope).empty
    outputs = refresh_outputs(store, scope, now=NOW)
    assert set(outputs) == set(REFRESH_OUTPUTS)
    assert "No task finished between" in outputs[("analytics-message", "children")]
    throughput = outputs[FIGURES]["analytics-throughput"]
    assert throughput["layout"]["annotations"][0]["text"] == "No task finished in this range"
    assert json.loads(response_body(outputs))["response"]["analytics-stats"]["rowData"] == []
    assert set(outputs[FIGURES]) == set(view.GRAPHS)


def test_an_inverted_or_unreadable_custom_range_says_what_to_fix():
    with pytest.raises(analytics.AnalyticsError, match="ends before it starts"):
        scope_from_controls("custom", "2026-11-25 10:00", "2026-11-25 09:00", None, None, None)
    with pytest.raises(analytics.AnalyticsError, match="'to' should be a UTC date/time"):
        scope_from_controls("custom", "2026-11-25 10:00", "tomorrow", None, None, None)
    with pytest.raises(analytics.AnalyticsError, match="enter a 'from'"):
        scope_from_controls("custom", "", "2026-11-25 09:00", None, None, None)


def test_unknown_names_give_the_empty_state_not_an_error(store):
    write(store, [finished("a", "t", 0.1, NOW - 10)])
    outputs = refresh_outputs(store, analytics.last("1h", NOW, names=("no.such.task",)), now=NOW)
    assert "of the chosen names" in outputs[("analytics-message", "children")]


# -- comparing windows ----------------------------------------------------------------------------
def test_compare_two_windows_per_name(store):
    yesterday = [finished(f"y{i}", "t", 0.1, NOW - 86400 - 60 * i) for i in range(1, 41)]
    today = [finished(f"n{i}", "t", 0.4, NOW - 60 * i, state="FAILURE" if i <= 4 else "SUCCESS") for i in range(1, 41)]
    write(store, yesterday + today)
    scope = analytics.last("1h", NOW)
    before, after = compare_windows(scope, "day", None, NOW)
    assert (before.start, before.end) == (scope.start - 86400, scope.end - 86400)
    row = analytics.compare(store, before, after, NOW).set_index("name").loc["t"]
    assert (row["finished_before"], row["finished_after"]) == (40, 40)
    assert row["runtime_p50_ratio"] == pytest.approx(4.0, rel=0.09)
    assert row["failure_rate_change"] == pytest.approx(0.1)
    split_before, split_after = compare_windows(scope, "split", "2026-11-25 08:00", NOW)
    assert split_before.end == split_after.start == search.parse_moment("2026-11-25 08:00")
    with pytest.raises(analytics.AnalyticsError, match="in the past"):
        compare_windows(scope, "split", "2030-01-01", NOW)


# -- a real worker ------------------------------------------------------------------------------------
SLEEPS = {0.1: 10, 0.2: 10, 0.5: 5}
FAILURES = ("boom 1", "boom 22", "boom 333", "disk full")


@pytest.fixture(scope="module")
def cluster(redis_url, tmp_path_factory):
    """A monitor and a real worker that ran sleeps of known durations and known failures."""
    tmp = tmp_path_factory.mktemp("analytics")
    stack = Stack()
    try:
        server = stack.add(FlowerbedServer.start(redis_url, tmp / "flowerbed.db", tmp / "flowerbed.log"))
        worker = stack.add(CeleryWorker(redis_url, "analytics@tests", tmp, concurrency=4))
        wait_for(lambda: worker_status(server, worker.hostname), 20, "the worker online in the monitor")
        expected = {worker.send("sample.sleep", seconds): "SUCCESS"
                    for seconds, count in SLEEPS.items() for _ in range(count)}
        expected.update({worker.send("sample.fail", message): "FAILURE" for message in FAILURES})
        wait_for_tasks(server, expected, timeout=60)
        yield server, worker
    finally:
        stack.stop_all()


@pytest.mark.integration
def test_percentiles_and_failures_from_a_real_worker(cluster):
    server, worker = cluster
    store = Store(str(server.db))
    scope = analytics.last("15m")

    def folded():  # the collector folds finished tasks into the rollups within a few seconds
        stats = analytics.task_stats(store, scope).set_index("name")
        return [stats] if stats["finished"].sum() == 29 else None
    [stats] = wait_for(folded, 20, "the 29 finished tasks in the rollups")
    sleep, fail = stats.loc["sample.sleep"], stats.loc["sample.fail"]
    assert (sleep["finished"], sleep["failed"]) == (25, 0)
    assert (fail["finished"], fail["failed"], fail["failure_rate"]) == (4, 4, 1.0)
    # Ranks 1-10 slept 0.1 s, 11-20 0.2 s, 21-25 0.5 s. Each estimate is within the histogram's
    # ±4.4 % of the exact quantile of the runtimes the worker reported, and that is the sleep plus the
    # worker's own overhead (under 0.1 s even on a busy machine).
    exact = np.array([r["runtime"] for r in store.query("SELECT runtime FROM tasks WHERE name = 'sample.sleep'")])
    for column, q, slept in (("runtime_p25", 0.25, 0.1), ("runtime_p50", 0.5, 0.2), ("runtime_p75", 0.75, 0.2),
                             ("runtime_p90", 0.9, 0.5), ("runtime_p99", 0.99, 0.5)):
        assert sleep[column] == pytest.approx(np.quantile(exact, q, method="inverted_cdf"), rel=0.045), column
        assert slept * 0.96 <= sleep[column] <= slept * 1.05 + 0.1, (column, sleep[column])
    assert sleep["runtime_max"] == pytest.approx(exact.max())
    assert sleep["runtime_mean"] == pytest.approx(exact.mean())
    assert sleep["wait_count"] == 25 and sleep["sent_wait_count"] == 25
    groups = analytics.exception_groups(store, scope)
    assert list(zip(groups["type"], groups["message"], groups["count"])) == [
        ("ValueError", "boom #", 3), ("ValueError", "disk full", 1)]
    assert "ValueError" in analytics.tracebacks(store, [groups["sample_uuid"][0]])[groups["sample_uuid"][0]]
    options = analytics.filter_options(store)
    assert options["worker"] == [worker.hostname] and options["queue"] == [worker.queue]


@pytest.mark.browser
def test_page_renders_every_chart_and_a_drill_down_sets_the_tasks_filter(cluster, browser):
    server, _worker = cluster
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    problems = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("response", lambda response: response.status >= 400 and problems.append(f"{response.status} {response.url}"))
    try:
        page.goto(f"{server}/analytics")
        page.wait_for_function("document.querySelectorAll('#analytics-stats .ag-row').length >= 2", timeout=20_000)
        for graph in view.GRAPHS:
            page.wait_for_selector(f"#{graph} .main-svg", timeout=10_000)
        assert page.locator("#analytics-throughput .bars path").count() > 0
        assert page.locator("#analytics-runtime .boxlayer path").count() > 0
        assert page.locator("#analytics-exceptions .ag-row").count() == 2
        assert page.inner_text("#analytics-message") == ""
        # A zoom survives the refreshes (every second here): the figures keep a constant uirevision.
        drag = page.locator("#analytics-throughput .nsewdrag").first.bounding_box()
        middle_y = drag["y"] + drag["height"] / 2
        page.mouse.move(drag["x"] + drag["width"] * 0.3, middle_y)
        page.mouse.down()
        page.mouse.move(drag["x"] + drag["width"] * 0.6, middle_y, steps=8)
        page.mouse.up()
        range_now = "document.querySelector('#analytics-throughput .js-plotly-plot').layout.xaxis.range"
        zoomed = page.evaluate(range_now)
        updated = page.inner_text("#analytics-updated")
        wait_for(lambda: page.inner_text("#analytics-updated") != updated, 10, "a refresh")
        assert page.evaluate(range_now) == zoomed
        # Each table downloads as CSV, as shown.
        with page.expect_download() as download:
            page.click("#analytics-stats-csv")
        lines = open(download.value.path(), encoding="utf-8-sig").read().splitlines()
        assert lines[0].startswith('"","","","","Run time"')  # the column groups, as the table shows them
        assert lines[1].startswith('"Task name","Finished","Failed","Fail %","Mean","p50"') and len(lines) == 4
        # A row of the runtime table opens the Tasks page filtered to that name and the range.
        page.click("#analytics-stats .ag-row[row-index='0'] [col-id='finished']")
        page.wait_for_function("location.pathname.endsWith('/tasks')", timeout=10_000)
        query = page.input_value("#tasks-search")
        assert "name=sample.sleep" in query and "finished>=" in query and "finished<" in query
        wait_for(lambda: page.inner_text("#tasks-count").startswith("25 tasks"), 15, "the 25 sleeps listed")
        # A failures bar opens the failed tasks: the Failed chip and the name in the search.
        page.go_back()
        bar = page.wait_for_selector("#analytics-failures-by-name .bars path", timeout=10_000)
        bar.scroll_into_view_if_needed()
        box = bar.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function("location.pathname.endsWith('/tasks')", timeout=10_000)
        assert "name=sample.fail" in page.input_value("#tasks-search")
        assert page.locator(".chips [aria-selected='true']").inner_text().strip() == "Failed"
        wait_for(lambda: page.inner_text("#tasks-count").startswith("4 tasks"), 15, "the 4 failures listed")
        assert problems == []
    finally:
        page.close()

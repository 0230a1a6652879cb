"""Runtime and failure analytics: the rollups the store keeps, the quantiles, bucketing, exception
groups, empty ranges and window comparison on a real store; then a real worker running tasks of known
durations and failures; then the page in a real browser, with a drill-down click."""
from __future__ import annotations

import json
import math
import re
import signal
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from dash import no_update

from callbacks.analytics import (FIGURES, REFRESH_OUTPUTS, changed_only, compare_windows, digests, error_outputs,
                                 limits_from_controls, refresh_outputs, response_body, scope_from_controls)
from components import analytics as view
from helpers import (CeleryWorker, FlowerbedServer, Stack, finished, task_row, wait_for, wait_for_tasks,
                     worker_row, worker_status)
from monitor.query import analytics, search
from monitor.store import event_counts, rollup
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
ROLLED_UP = "SELECT name, state, worker, queue, count, wait_count, wait_sum FROM task_rollup WHERE grain = 60"


def test_a_task_whose_end_is_stored_before_its_name_is_counted_under_its_name(store):
    # Collectors sharing an events queue each write part of a task's events: its end may come first.
    start = NOW - 100
    store.write_batch(tasks=[task_row(uuid="u1", state="SUCCESS", worker="w", started=start + 2,
                                      succeeded=start + 5, runtime=3.0, timestamp=start + 5)])
    assert store.fold_rollups() == 0  # no name yet: the task waits for it
    write(store, [task_row(uuid="u1", name="t", state="RECEIVED", received=start, routing_key="q")])
    assert [tuple(row) for row in store.query(ROLLED_UP)] == [("t", "SUCCESS", "w", "q", 1, 1, pytest.approx(2.0))]
    assert store.query("SELECT count(*) FROM rollup_inbox")[0][0] == 0


def _age_rollup_inbox(store) -> None:
    """As if the tasks waiting in the rollup inbox were queued longer ago than a name is waited for
    (the inbox stamps its rows with the database's clock: days in SQLite, seconds in PostgreSQL)."""
    waited = event_counts.UNNAMED_WAIT_SECONDS + 1
    store._write((("UPDATE rollup_inbox SET queued = queued - ?",
                   [(waited / 86400 if store.dialect.name == "sqlite" else waited,)]),))


def test_a_task_that_never_gets_a_name_is_counted_under_none_after_the_wait(store):
    start = NOW - 100
    store.write_batch(tasks=[task_row(uuid="u1", state="FAILURE", worker="w", failed=start, timestamp=start)])
    assert store.fold_rollups() == 0
    _age_rollup_inbox(store)
    assert store.fold_rollups() == 1
    assert [tuple(row) for row in store.query(ROLLED_UP)] == [("", "FAILURE", "w", "", 1, 0, 0.0)]
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
    # A task seen finishing without its earlier events has no name: the row says so, and opens both.
    store.write_batch(tasks=[finished("lost", None, 0.1, NOW - 200, state="FAILURE",
                                      exception="ValueError('card declined for customer 7')")])
    _age_rollup_inbox(store)
    store.fold_rollups()
    row = view.exception_rows(analytics.exception_groups(store, scope), {}, scope)[0]
    assert row["names"] == f"{view.UNKNOWN_NAME}, payments.charge"
    assert _tasks_page_uuids(store, row["drill"]) == {"lost", *(f"d{i}" for i in range(5))}


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


def test_a_queue_filter_opens_exactly_the_tasks_of_its_queues(store):
    write(store, [finished(f"mail{i}", "t", 0.1, NOW - 600 + i, queue="mail") for i in range(2)]
          + [finished("other", "t", 0.1, NOW - 599, queue="celery"),
             task_row(uuid="mail-hung", name="t", state="STARTED", routing_key="mail", started=NOW - 900),
             task_row(uuid="other-hung", name="t", state="STARTED", routing_key="celery", started=NOW - 900)])
    scope, limits = analytics.last("1h", NOW, queues=("mail",)), analytics.Limits(floor=60)
    success = next(t for t in view.throughput_figure(analytics.throughput(store, scope, NOW), scope, "test")["data"])
    bounds = next(bounds for bounds, count in zip(success["customdata"], success["y"]) if count)
    assert "queue=mail" in success["meta"][0]
    assert _tasks_page_uuids(store, success["meta"], bounds) == {"mail0", "mail1"}
    stuck, lost = analytics.stuck_and_lost_tasks(store, scope, limits, NOW)
    attention = view.attention_counts(stuck, analytics.waiting_tasks(store, scope, limits, NOW), lost, scope, limits,
                                      NOW, "/")
    assert attention["stuck"][0] == 1 and _tasks_page_uuids(store, _target_of(attention["stuck"][1])) == {"mail-hung"}


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
    # The page says it once, under the range; each chart's box a short line that fits a phone's width.
    message = "Custom range: 'to' should be a UTC date/time such as 2026-11-25 10:00, not 'tomorrow'"
    outputs = error_outputs(message)
    assert outputs[("analytics-message", "children")] == message
    notes = {figure["layout"]["annotations"][0]["text"] for figure in outputs[FIGURES].values()}
    assert notes == {"Not drawn: see the message under the range"}


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


def test_dashboard_names_the_task_slower_than_yesterday_by_run_time(store):
    for name, before, after in (("steady", 0.2, 0.2), ("slowed", 0.1, 0.25)):
        write(store, [finished(f"{name}{window}{i}", name, runtime, window - 60 * (i + 1))
                      for window, runtime in ((NOW - 86400, before), (NOW, after)) for i in range(40)])
    scope = analytics.last("1h", NOW)
    frame = analytics.compare(store, *compare_windows(scope, "day", None, NOW), NOW)
    link = view.slower_link(frame, "/analytics#compare")
    assert re.fullmatch(r"Slower than yesterday: slowed p(50|95) ×2\.[3-6]\d", _text(link)), _text(link)
    assert "attention-bad" in link.className
    assert link.href == "/analytics#compare"
    unchanged = view.slower_link(frame[frame["name"] == "steady"], "/analytics#compare")
    assert _text(unchanged) == "Slower than yesterday: none" and "attention-ok" in unchanged.className
    assert _text(view.slower_link(frame.iloc[0:0], "/")) == "Slower than yesterday: no runs to compare"


def _text(component) -> str:
    children = component.children if hasattr(component, "children") else component
    if isinstance(children, (list, tuple)):
        return "".join(_text(child) for child in children)
    return str(children) if children is not None else ""


def test_windows_that_meet_inside_a_bucket_count_its_tasks_once(store):
    scope = analytics.last("1h", NOW)  # NOW is not on a minute: the previous hour ends inside one
    write(store, [finished("edge", "t", 0.1, scope.start - 20), finished("early", "t", 0.1, scope.start - 80)])
    row = analytics.compare(store, *compare_windows(scope, "previous", None, NOW), NOW).set_index("name").loc["t"]
    assert (row["finished_before"], row["finished_after"]) == (1, 1)  # the later window has the shared minute


def test_compare_windows_never_overlap_in_any_mode():
    for range_key in analytics.RANGES:
        for mode in ("previous", "day", "week", "split"):
            scope = analytics.last(range_key, NOW)
            before, after = compare_windows(scope, mode, "2026-11-25 06:00", NOW)
            assert before.end <= after.start, (range_key, mode)
            assert before.span == pytest.approx(after.span), (range_key, mode)
    week = analytics.last("7d", NOW)
    # "Same time yesterday" of a week goes back whole days until the windows part: 7 days.
    assert compare_windows(week, "day", None, NOW)[0].end == week.start
    custom = analytics.Scope(NOW - 36 * 3600, NOW)
    assert compare_windows(custom, "day", None, NOW)[0].start == custom.start - 2 * 86400


def test_compare_sorts_worst_change_first_and_names_a_window_without_tasks(store):
    before_window, after_window = NOW - 86400, NOW
    rows = []
    for name, (runtime_before, runtime_after, failures_before, failures_after) in {
            "slower": (0.1, 0.3, 0, 0), "same": (0.2, 0.2, 0, 0), "failing": (0.1, 0.1, 0, 4),
            "faster": (0.4, 0.2, 0, 0)}.items():
        for window, runtime, failures in ((before_window, runtime_before, failures_before),
                                          (after_window, runtime_after, failures_after)):
            rows += [finished(f"{name}{window}{i}", name, runtime, window - 60 * (i + 1),
                              state="FAILURE" if i < failures else "SUCCESS") for i in range(40)]
    rows += [finished(f"new{i}", "brand.new", 0.1, NOW - 60 * (i + 1)) for i in range(3)]
    write(store, rows)
    scope = analytics.last("1h", NOW)
    before, after = compare_windows(scope, "day", None, NOW)
    frame = analytics.compare(store, before, after, NOW)
    # failing: 0 → 10 % (ten times 1 %); slower: p50 × 3; then unchanged, faster; a name new since has no change.
    assert list(frame["name"]) == ["failing", "slower", "same", "faster", "brand.new"]
    rows = {row["name"]: row for row in view.compare_rows(frame, before, after)}
    assert rows["brand.new"]["note"] == "no tasks in the earlier window" and rows["same"]["note"] == ""
    assert rows["brand.new"]["finished_before"] is None and rows["brand.new"]["finished_after"] == 3
    caption = view.compare_caption(frame, before, after)
    assert caption.endswith("1 of 5 names had no tasks in the earlier window")
    # A click on a Before cell opens the name's tasks of the earlier window, any other cell the later one's.
    assert _tasks_page_uuids(store, rows["slower"]["drill_before"]) == {f"slower{before_window}{i}" for i in range(40)}
    assert _tasks_page_uuids(store, rows["slower"]["drill"]) == {f"slower{after_window}{i}" for i in range(40)}
    earlier_empty = analytics.compare(store, *compare_windows(scope, "week", None, NOW), NOW)
    assert view.compare_caption(earlier_empty, before, after).endswith(" · no tasks in the earlier window")
    # The cells of a window without tasks say so rather than stay blank (the grid's formatters).
    before_cells = [column for group in view.COMPARE_COLUMNS for column in group.get("children", [])
                    if column["field"].endswith("_before")]
    assert before_cells and all("'no tasks'" in column["valueFormatter"]["function"] for column in before_cells)


def test_the_compare_cache_answers_again_until_the_store_or_the_buckets_read_change(store, monkeypatch):
    computed = []
    monkeypatch.setattr(analytics, "compare", lambda *args: computed.append(args) or analytics.pd.DataFrame())
    answers, version = analytics.CompareCache(size=2), [["localhost", NOW - 5]]

    def ask(now, version):
        return answers.compare(store, *compare_windows(analytics.last("1h", now), "day", None, now), version, now)

    minute = NOW // 60 * 60
    first = ask(minute + 1, version)
    assert ask(minute + 50, version) is first and len(computed) == 1  # same store, same minute buckets
    ask(minute + 61, version)  # the windows moved into the next minute
    ask(minute + 62, [["localhost", NOW - 1]])  # a collector stored tasks
    assert len(computed) == 3
    ask(minute + 1, version)  # the oldest answer went: the cache keeps `size`
    assert len(computed) == 4


# -- stuck and waiting --------------------------------------------------------------------------------
def _stream(rng, start: float, end: float, per_second: float, prefix: str):
    """Tasks of one name starting evenly in [start, end), with log-normal runtimes (median 1 s, p99 10 s)."""
    count = int((end - start) * per_second)
    return [(f"{prefix}{i}", start + i / per_second, float(rng.lognormal(0.0, 1.0))) for i in range(count)]


def test_the_stuck_count_holds_steady_on_a_steady_stream(store):
    rng = np.random.default_rng(7)
    # A day of history of the name, then the same stream while the page refreshes every 15 s.
    history = _stream(rng, NOW - 86400, NOW - 600, 0.05, "h")
    write(store, [finished(uuid, "t", runtime, begun + runtime) for uuid, begun, runtime in history])
    stream = _stream(rng, NOW - 120, NOW + 300, 10.0, "s")
    write(store, [task_row(uuid="hung", name="t", state="STARTED", worker="celery@a", received=NOW - 900,
                           started=NOW - 900)])
    scope = analytics.last("15m", NOW)
    counts, p99_counts, written = [], [], set()
    for now in np.arange(NOW, NOW + 300, 15.0):
        started = [(u, b, r) for u, b, r in stream if b <= now and u not in written]
        done = [(u, b, r) for u, b, r in stream if b + r <= now and u in written | {x[0] for x in started}]
        write(store, [task_row(uuid=u, name="t", state="STARTED", worker="celery@a", received=b, started=b)
                      for u, b, r in started if b + r > now] + [finished(u, "t", r, b + r) for u, b, r in done])
        written |= {u for u, _b, _r in started}
        stuck = analytics.stuck_and_lost_tasks(store, scope, analytics.Limits(), now)[0]
        counts.append(len(stuck))
        # The rule it replaces: past the p99 itself. One run in a hundred does that on any healthy day.
        p99_counts.append(len(analytics.stuck_and_lost_tasks(store, scope, analytics.Limits(factor=1, floor=0.001),
                                                             now)[0]))
        assert list(stuck["uuid"]) == ["hung"]
    assert set(counts) == {1}
    assert len(set(p99_counts)) > 1  # the stream is one where the old rule flapped
    # The Tasks search the count links to lists exactly the stuck task.
    attention = view.attention_counts(stuck, analytics.waiting_tasks(store, scope, now=now),
                                      analytics.stuck_and_lost_tasks(store, scope)[1], scope, analytics.Limits(), now, "/")
    assert attention["stuck"][0] == 1
    assert _tasks_page_uuids(store, _target_of(attention["stuck"][1])) == {"hung"}


def _target_of(href: str) -> list[str]:
    """[q, state] of a Tasks page address, as the page reads them."""
    from urllib.parse import parse_qs, urlsplit
    query = parse_qs(urlsplit(href).query)
    return [query.get("q", [""])[0], query.get("state", [""])[0]]


def test_a_name_without_history_is_stuck_past_the_floor_and_limits_must_be_positive(store):
    write(store, [task_row(uuid="young", name="new.task", state="STARTED", started=NOW - 50),
                  task_row(uuid="old", name="new.task", state="STARTED", started=NOW - 70)])
    stuck = analytics.stuck_and_lost_tasks(store, analytics.last("1h", NOW), analytics.Limits(floor=60), NOW)[0]
    assert list(stuck["uuid"]) == ["old"] and stuck["limit"].iloc[0] == 60
    with pytest.raises(analytics.AnalyticsError, match="factor must be a positive number"):
        analytics.Limits(factor=0)


def test_tasks_a_restarted_worker_left_started_are_lost_not_stuck_and_each_link_lists_its_own(store):
    restarted = NOW - 600.0004  # the worker's start, 0.8 ms after the last task it left behind
    store.write_batch(workers=[worker_row("celery@a", online_at=restarted)])
    write(store, [
        task_row(uuid="long-ago", name="t", state="STARTED", worker="celery@a", started=NOW - 90_000),
        task_row(uuid="left", name="t", state="STARTED", worker="celery@a", started=NOW - 3000),
        task_row(uuid="just-before", name="t", state="STARTED", worker="celery@a", started=NOW - 600.0012),
        task_row(uuid="just-after", name="t", state="STARTED", worker="celery@a", started=restarted + 0.0003),
        task_row(uuid="hung", name="t", state="STARTED", worker="celery@a", started=NOW - 590),
        task_row(uuid="elsewhere", name="t", state="STARTED", worker="celery@b", started=NOW - 3000),
    ])
    scope, limits = analytics.last("1h", NOW), analytics.Limits(floor=60)
    stuck, lost = analytics.stuck_and_lost_tasks(store, scope, limits, NOW)
    assert list(lost["uuid"]) == ["just-before", "left", "long-ago"]
    assert set(stuck["uuid"]) == {"just-after", "hung", "elsewhere"}
    attention = view.attention_counts(stuck, analytics.waiting_tasks(store, scope, limits, NOW), lost, scope, limits,
                                      NOW, "/")
    # Counted as lost when started in the last day; before, neither lost nor stuck.
    assert attention["lost"][:3:2] == (2, "lost in a restart") and attention["stuck"][0] == 3
    assert _tasks_page_uuids(store, _target_of(attention["lost"][1])) == {"left", "just-before"}
    assert _tasks_page_uuids(store, _target_of(attention["stuck"][1])) == {"just-after", "hung", "elsewhere"}
    # Shown on the Dashboard only when there are some.
    assert [link.id for link in view.attention_links(attention)] == ["dashboard-stuck", "dashboard-waiting", "dashboard-lost"]
    none_lost = view.attention_counts(stuck, lost.iloc[0:0], lost.iloc[0:0], scope, limits, NOW, "/")
    assert [link.id for link in view.attention_links(none_lost)] == ["dashboard-stuck", "dashboard-waiting"]


def test_the_limit_controls_fall_back_to_the_configured_limits_and_say_what_is_wrong():
    configured = analytics.Limits(factor=5, floor=30, waiting=10)
    assert limits_from_controls(None, "", 20, defaults=configured) == analytics.Limits(5, 30, 20.0)
    with pytest.raises(analytics.AnalyticsError, match="expected numbers"):
        limits_from_controls("lots", None, None, defaults=configured)
    with pytest.raises(analytics.AnalyticsError, match="the waiting must be a positive number"):
        limits_from_controls(None, None, -1, defaults=configured)


def test_tasks_received_or_sent_and_not_started_past_the_limit_are_waiting(store):
    write(store, [
        task_row(uuid="queued", name="t", state="RECEIVED", received=NOW - 120, worker="celery@a"),
        task_row(uuid="fresh", name="t", state="RECEIVED", received=NOW - 10, worker="celery@a"),
        task_row(uuid="in-broker", name="t", state="PENDING", sent=NOW - 300),
        task_row(uuid="running", name="t", state="STARTED", received=NOW - 400, started=NOW - 390),
        finished("done", "t", 0.1, NOW - 100, wait=200),
    ])
    scope = analytics.last("1h", NOW)
    waiting = analytics.waiting_tasks(store, scope, analytics.Limits(waiting=60), NOW)
    assert list(waiting["uuid"]) == ["in-broker", "queued"]  # the longest wait first
    assert list(waiting["waiting"]) == [pytest.approx(300), pytest.approx(120)]
    stuck, lost = analytics.stuck_and_lost_tasks(store, scope, now=NOW)
    attention = view.attention_counts(stuck, waiting, lost, scope, analytics.Limits(waiting=60), NOW, "/flower/")
    count, href, label, _meaning = attention["waiting"]
    assert (count, label) == (2, "waiting > 60 s") and href.startswith("/flower/tasks?q=")
    assert _tasks_page_uuids(store, _target_of(href)) == {"in-broker", "queued"}


# -- the figures ------------------------------------------------------------------------------------
def test_a_time_series_spans_its_range_with_every_bucket_and_whole_time_ticks(store):
    write(store, [finished("a", "t", 0.1, NOW - 3000), finished("b", "t", 0.1, NOW - 1000, state="FAILURE")])
    scope = analytics.last("1h", NOW)
    series = analytics.throughput(store, scope, NOW)
    figure = view.throughput_figure(series, scope, "test")
    axis = figure["layout"]["xaxis"]
    assert axis["range"] == [round(scope.start * 1000), round(scope.end * 1000)] and axis["autorange"] is False
    assert [stop["value"] for stop in axis["tickformatstops"]] == ["%H:%M", "%d %b"]
    starts = list(range(int(scope.start) // 60 * 60, math.ceil(scope.end), 60))
    for trace in figure["data"]:  # one bar per bucket, zero where none finished, over its bucket
        assert trace["x"] == [start * 1000 for start in starts]
        assert (trace["offset"], trace["width"]) == (3000, 54000)
        assert sum(trace["y"]) == 1 and trace["y"].count(0) == len(starts) - 1
    success = next(trace for trace in figure["data"] if trace["name"] == "Success")
    assert success["y"][starts.index(int(NOW - 3000) // 60 * 60)] == 1
    rates = view.failure_rate_figure(analytics.failure_rate(series), scope, "test")
    failures, rate = rates["data"]
    assert failures["y"].count(0) == len(starts) - 1 and rates["layout"]["xaxis"] == axis
    assert rate["y"].count(None) == len(starts) - 2 and rate["connectgaps"] is False  # no rate without tasks
    week = view.throughput_figure(analytics.throughput(store, analytics.last("7d", NOW), NOW),
                                  analytics.last("7d", NOW), "test")
    assert week["layout"]["xaxis"]["tickformatstops"][0]["value"] == "%d %b %H:%M"


def test_a_range_longer_than_the_history_shows_where_it_begins(store):
    write(store, [finished("a", "t", 0.1, NOW - 1000)])
    history = analytics.history_start(store, NOW)
    assert history == int(NOW - 1000) // 60 * 60
    figure = view.throughput_figure(analytics.throughput(store, analytics.last("6h", NOW), NOW),
                                    analytics.last("6h", NOW), "test", history=history)
    [shade] = figure["layout"]["shapes"]
    assert (shade["x0"], shade["x1"]) == (round((NOW - 6 * 3600) * 1000), history * 1000)
    assert figure["layout"]["annotations"][0]["text"] == f"history begins {search.format_moment(history)[11:16]}"
    inside = view.throughput_figure(analytics.throughput(store, analytics.last("15m", NOW), NOW),
                                    analytics.last("15m", NOW), "test", history=history)
    assert "shapes" not in inside["layout"]


def test_a_box_hovers_in_one_line_and_workers_with_the_same_load_share_a_line(store):
    write(store, [finished(f"e{i}", "email.send", 0.05 + i / 1000, NOW - 100 - i) for i in range(50)])
    scope = analytics.last("1h", NOW)
    figure = view.distribution_figure(analytics.task_stats(store, scope, NOW), "runtime", scope, "test")
    *boxes, hover = figure["data"]
    assert all(box["type"] == "box" and box["hoverinfo"] == "skip" for box in boxes)
    [[name, text]] = hover["customdata"]
    assert name == "email.send" and "<br>" not in text
    assert text.startswith("email.send p50 ") and " · p95 " in text and " · p99 " in text and text.endswith(" · n 50")
    assert hover["base"][0] < hover["base"][0] + hover["x"][0]  # it covers the whiskers: a click anywhere opens them
    # Two workers of one host report its load; a third runs elsewhere. Active tasks: a and c alike.
    store.write_batch(samples=[(worker, NOW - 300, active, load, 2.0, 1.5)
                               for worker, active, load in (("a@host", 1, 2.5), ("b@host", 2, 2.5), ("c@other", 1, 0.7))])
    activity = analytics.worker_activity(store, scope, NOW)
    load = view.worker_figure(activity, "load1", "load", scope, "test")
    assert sorted(trace["name"] for trace in load["data"]) == ["a@host<br>b@host", "c@other"]
    assert load["data"][0]["hovertemplate"].startswith("a, b @host<br>")
    active = view.worker_figure(activity, "active_mean", "active tasks", scope, "test")
    assert sorted(trace["name"] for trace in active["data"]) == ["a@host<br>c@other", "b@host"]
    assert len({trace["line"]["color"] for trace in active["data"]}) == 2
    # Five workers of one more host share a line: the legend names three, the hover all five.
    store.write_batch(samples=[(f"w{number}@many", NOW - 300, 1, 4.0, 2.0, 1.5) for number in range(5)])
    many = view.worker_figure(analytics.worker_activity(store, scope, NOW), "load1", "load", scope, "test")
    shared = next(trace for trace in many["data"] if "many" in trace["name"])
    assert shared["name"] == "w0@many<br>w1@many<br>w2@many<br>and 2 more"
    assert shared["hovertemplate"].startswith("w0, w1, w2, w3, w4 @many<br>")


def test_first_seen_of_a_failure_is_not_clipped_to_the_range(store):
    write(store, [finished("early", "t", 0.1, NOW - 3 * 3600, state="FAILURE", exception="ValueError('x')"),
                  finished("late", "t", 0.1, NOW - 100, state="FAILURE", exception="ValueError('x')")])
    [group] = analytics.exception_groups(store, analytics.last("1h", NOW)).to_dict("records")
    assert group["count"] == 1 and group["first"] == pytest.approx(NOW - 3 * 3600)
    assert group["last"] == pytest.approx(NOW - 100)


# -- a real worker ------------------------------------------------------------------------------------
SLEEPS = {0.1: 10, 0.2: 10, 0.5: 5}
FAILURES = ("boom 1", "boom 22", "boom 333", "disk full")


@pytest.fixture(scope="module")
def cluster(redis_url, tmp_path_factory):
    """A monitor and a real worker that ran sleeps of known durations and known failures."""
    tmp = tmp_path_factory.mktemp("analytics")
    stack = Stack()
    try:
        # Short stuck and waiting limits, for the Dashboard's counts to show within a test.
        server = stack.add(FlowerbedServer.start(redis_url, tmp / "flowerbed.db", tmp / "flowerbed.log",
                                                 "--stuck-floor", "2", "--waiting-seconds", "2"))
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
        # One header row: each column named with its group and the unit of its raw values.
        assert lines[0].startswith('"Task name","Finished","Failed","Fail % (fraction)","Run time Mean (s)",'
                                   '"Run time p50 (s)"') and len(lines) == 3
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


GRID_CELL = "#%s .ag-center-cols-container .ag-row[row-index='%d'] [col-id='%s']"


def _grid_row_index(page, grid: str, name: str) -> int:
    """The row-index of the row of a task name in an Analytics grid (the name column is pinned apart)."""
    [index] = wait_for(lambda: page.evaluate("""([grid, name]) => {
        const cell = Array.from(document.querySelectorAll(`#${grid} .ag-row [col-id=name]`))
            .find(cell => cell.innerText.trim() === name);
        return cell ? [Number(cell.closest('.ag-row').getAttribute('row-index'))] : null; }""", [grid, name]),
        15, f"a row of {name} in {grid}")
    return index


# Recorded as the page is built: whether the first screen was once drawn (its cards, its charts) without
# the foot; the foot's CSV button is plain HTML, on the page as soon as the foot mounts. And the page's idle
# moments, when the foot mounts, wait for the answer of the callback that gives the foot's limit inputs their
# placeholders: the foot then surely mounts after that answer came.
_FOOT_WATCH = """
new MutationObserver(() => {
    const charts = [...document.querySelectorAll('.dash-graph')];
    if (document.getElementById('analytics-cards')?.childElementCount && charts.length
            && charts.every(graph => graph.querySelector('.main-svg'))
            && !document.getElementById('analytics-stats-csv')) { window.firstScreenAlone = true; }
}).observe(document, {childList: true, subtree: true});
const fetched = window.fetch;
window.fetch = (...request) => fetched(...request).then(response => {
    if (String(request[1]?.body).includes('analytics-stuck-factor.placeholder')) {
        response.clone().json().then(() => setTimeout(() => { window.limitsAnswered = true; }));
    }
    return response;
});
const whenIdle = window.requestIdleCallback;
window.requestIdleCallback = (run, options) => whenIdle(function held(deadline) {
    if (window.limitsAnswered) { run(deadline); } else { whenIdle(held, options); }
}, options);
"""


@pytest.mark.browser
def test_the_foot_of_the_page_mounts_after_the_first_screen_with_what_callbacks_gave_it_meanwhile(cluster, page):
    server, _worker = cluster
    page.add_init_script(_FOOT_WATCH)
    page.goto(f"{server}/analytics")
    page.wait_for_selector("#analytics-stats .ag-row", timeout=20_000)
    assert page.evaluate("window.firstScreenAlone === true")
    # The limits' placeholders were given before the foot mounted (the cluster's monitor runs with a floor
    # of 2 s and waiting after 2 s): they show.
    limits = "['analytics-stuck-factor', 'analytics-stuck-floor', 'analytics-waiting-limit']"
    assert page.evaluate(f"{limits}.map(id => document.getElementById(id).placeholder)") == ["3", "2", "2"]


@pytest.mark.browser
def test_an_address_naming_the_foot_mounts_it_at_once(cluster, page):
    server, _worker = cluster
    # Recorded when the compare panel first appears: how many of the first screen's charts were drawn.
    first_screen = ", ".join(f"#{graph} .main-svg" for graph in view.GRAPHS[:4])
    page.add_init_script("""new MutationObserver(() => {
        if (document.getElementById('compare') && window.chartsWhenFootCame === undefined) {
            window.chartsWhenFootCame = document.querySelectorAll('%s').length; }
    }).observe(document, {childList: true, subtree: true});""" % first_screen)
    page.goto(f"{server}/analytics#compare")
    # Scrolled to it (as far as the page goes: the panel is the last on the page), and kept there while
    # the grids and charts above it were drawn.
    in_view = "(box => box.top >= 0 && box.top < innerHeight)(document.getElementById('compare').getBoundingClientRect())"
    wait_for(lambda: page.evaluate("window.scrollY") > 0 and page.evaluate(in_view), 20, "the page at #compare")
    assert page.evaluate("window.chartsWhenFootCame") == 0  # it did not wait for the charts above


@pytest.mark.browser
def test_the_time_axes_span_the_range_with_empty_buckets_and_whole_time_ticks(cluster, page):
    server, worker = cluster
    page.goto(f"{server}/analytics?range=6h")
    plot = "document.querySelector('#%s .js-plotly-plot')"
    page.wait_for_function(f"{plot % 'analytics-throughput'}?.data?.length > 0")
    # plotly keeps a date axis's range as epoch milliseconds or as UTC date text, as it was given
    seconds = page.evaluate(f"""() => {{ const [start, end] = {plot % 'analytics-throughput'}.layout.xaxis.range
        .map(edge => typeof edge === 'number' ? edge : Date.parse(edge.replace(' ', 'T') + 'Z'));
        return (end - start) / 1000; }}""")
    assert seconds == pytest.approx(6 * 3600, abs=2)  # the whole range, though the tasks ran minutes ago
    counts = page.evaluate(f"() => {plot % 'analytics-throughput'}.data.map(trace => trace.y)")
    assert all(len(y) in (72, 73) for y in counts)  # every 5-minute bucket, drawn
    assert sum(count == 0 for count in counts[0]) >= len(counts[0]) - 3
    def ticks(graph):
        return page.locator(f"#{graph} .xtick text").evaluate_all("texts => texts.map(text => text.textContent)")
    shown = ticks("analytics-throughput")
    assert shown and all(len(tick) == 5 and tick[2] == ":" and tick.replace(":", "").isdigit() for tick in shown)
    assert ticks("analytics-failure-rate") == shown  # alike, side by side
    assert page.locator(".modebar").count() == 0
    assert "history begins" in page.inner_text("#analytics-throughput")
    # A box says its figures in one line, and a click on its whisker opens its tasks.
    whiskers = page.locator("#analytics-runtime .bars path").first  # p5 to p99 of a name
    whiskers.scroll_into_view_if_needed()
    box = whiskers.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2)
    hover = page.locator("#analytics-runtime .hoverlayer .hovertext")
    hover.wait_for()
    [text] = hover.evaluate_all("labels => labels.map(label => label.textContent)")
    name = text.split(" ")[0]
    assert re.fullmatch(rf"{re.escape(name)} p50 [\d.]+ m?s · p95 [\d.]+ m?s · p99 [\d.]+ m?s · n \d+", text), text
    assert name in ("sample.sleep", "sample.fail")
    page.mouse.click(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2)
    page.wait_for_function("location.pathname.endsWith('/tasks')")
    assert f"name={name}" in page.input_value("#tasks-search")
    # Where the ticks stand, as their words say, though plotly puts them under the bars of a short range.
    wait_for_tasks(server, {worker.send("sample.add", 1, 2): "SUCCESS"}, timeout=30)
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=5)
    end = start + timedelta(minutes=7)
    page.goto(f"{server}/analytics?range=custom&from={start:%Y-%m-%d %H:%M}&to={end:%Y-%m-%d %H:%M}")
    page.wait_for_function(f"{plot % 'analytics-throughput'}?.data?.length > 0")
    for graph in ("analytics-throughput", "analytics-failure-rate"):
        places = page.evaluate(f"() => {plot % graph}._fullLayout.xaxis._vals.map(tick => [tick.x, tick.text])")
        assert places and all(at % 60000 == 0 for at, _text in places), places
        assert [text for _at, text in places] == [
            datetime.fromtimestamp(at / 1000, timezone.utc).strftime("%H:%M") for at, _text in places]
    # Both ends' labels shown on both charts, though only one has a right axis (plotly hid those past the edge).
    shown = {graph: page.locator(f"#{graph} .xtick text").evaluate_all(
        "texts => texts.filter(text => getComputedStyle(text).display !== 'none').map(text => text.textContent)")
        for graph in ("analytics-throughput", "analytics-failure-rate")}
    assert shown["analytics-throughput"] == shown["analytics-failure-rate"] == [text for _at, text in places], shown


@pytest.mark.browser
def test_a_refresh_updates_a_tables_rows_in_place(cluster, page):
    # Built again, a row would drop a click landing on it (seen under load), the keyboard's focus and a
    # text selection, at every refresh.
    server, worker = cluster
    page.goto(f"{server}/analytics#compare")
    index = _grid_row_index(page, "analytics-compare", "sample.sleep")
    row = page.query_selector(f"#analytics-compare .ag-center-cols-container .ag-row[row-index='{index}']")
    page.focus(GRID_CELL % ("analytics-compare", index, "finished_after"))
    wait_for_tasks(server, {worker.send("sample.add", 1, 2): "SUCCESS"}, timeout=30)
    _grid_row_index(page, "analytics-compare", "sample.add")  # a refresh that changed the rows came
    assert row.evaluate("row => row.isConnected && row.getAttribute('row-id')") == "sample.sleep"
    assert page.evaluate("document.activeElement.getAttribute('col-id')") == "finished_after"


@pytest.mark.browser
def test_compare_says_when_a_window_had_no_tasks_and_a_row_opens_each_window(cluster, page):
    server, _worker = cluster
    page.goto(f"{server}/analytics")  # compares with the same time yesterday: the cluster ran today only
    index = _grid_row_index(page, "analytics-compare", "sample.sleep")
    assert page.inner_text(GRID_CELL % ("analytics-compare", index, "runtime_p50_before")) == "no tasks"
    assert page.inner_text(GRID_CELL % ("analytics-compare", index, "runtime_p50_ratio")) == "new"
    windows = page.inner_text("#compare-windows")
    assert windows.endswith("no tasks in the earlier window")
    shown_start = datetime.fromisoformat(windows.split(" – ")[0])  # to the minute
    page.click(GRID_CELL % ("analytics-compare", index, "finished_before"))
    page.wait_for_function("location.pathname.endsWith('/tasks')")
    query = page.input_value("#tasks-search")
    assert "name=sample.sleep" in query
    # The windows slide with every refresh: the click may come a tick (and a minute boundary) later.
    [opened_start] = re.findall(r"finished>=(\S+)", query)
    assert timedelta(0) <= datetime.fromisoformat(opened_start) - shown_start < timedelta(minutes=2), query
    wait_for(lambda: page.inner_text("#tasks-count").startswith("0 tasks"), 15, "no sleeps yesterday")
    page.go_back()
    index = _grid_row_index(page, "analytics-compare", "sample.sleep")
    page.click(GRID_CELL % ("analytics-compare", index, "finished_after"))
    page.wait_for_function("location.pathname.endsWith('/tasks')")
    assert "name=sample.sleep" in page.input_value("#tasks-search")
    wait_for(lambda: page.inner_text("#tasks-count").startswith("25 tasks"), 15, "today's 25 sleeps")


@pytest.mark.browser
def test_the_dashboard_counts_stuck_and_waiting_tasks_and_links_to_them(cluster, page, tmp_path):
    # Last in the file: its worker is killed with a task running and one waiting, which stay so (the one
    # running is lost once the worker starts again under its name).
    server, running = cluster
    worker = CeleryWorker(running.broker, "stuck@tests", tmp_path, concurrency=1)

    def listed() -> list[str]:
        return page.evaluate("() => Array.from(document.querySelectorAll('#tasks-grid .ag-row [col-id=uuid]'))"
                             ".map(c => c.innerText)")

    try:
        hung = worker.send("sample.sleep", 120)  # past max(3 × p99 of sample.sleep, 2 s): stuck
        queued = worker.send("sample.add", 1, 2)  # held by the worker behind it: waiting
        page.goto(f"{server}/")
        wait_for(lambda: page.inner_text("#dashboard-stuck") == "1 stuck", 30, "one stuck task on the Dashboard")
        wait_for(lambda: page.inner_text("#dashboard-waiting") == "1 waiting > 2 s", 30, "one waiting task")
        page.click("#dashboard-stuck")
        wait_for(lambda: [hung] == listed(), 15, "the stuck task listed, alone")
        page.go_back()
        page.click("#dashboard-waiting")
        wait_for(lambda: [queued] == listed(), 15, "the waiting task listed, alone")
        page.goto(f"{server}/analytics")
        wait_for(lambda: page.inner_text("#analytics-stuck-count") == "1", 20, "the stuck count on Analytics")
        assert page.inner_text("#analytics-waiting-count") == "1" and not page.locator("#analytics-lost-count").count()
        # The worker is killed and started again under its name: the task it ran will never finish.
        worker.stop(signal.SIGKILL)
        (tmp_path / "again").mkdir()
        worker = CeleryWorker(running.broker, "stuck@tests", tmp_path / "again", concurrency=1)
        wait_for(lambda: page.locator("#analytics-lost-count").all_inner_texts() == ["1 lost in a restart"], 30,
                 "the task lost in the restart, under the stuck count")
        assert page.inner_text("#analytics-stuck-count") == "0"
        page.goto(f"{server}/")
        wait_for(lambda: page.locator("#dashboard-lost").all_inner_texts() == ["1 lost in a restart"], 20,
                 "the lost task on the Dashboard")
        assert page.inner_text("#dashboard-stuck") == "0 stuck" and page.inner_text("#dashboard-waiting") == "1 waiting > 2 s"
        page.click("#dashboard-lost")
        wait_for(lambda: [hung] == listed(), 15, "the lost task listed, alone")
        # Its timeline says when the worker started again. Each refresh of the page (its task has not
        # finished) puts its action buttons in anew, which asks nothing of the server.
        page.goto(f"{server}/task/{hung}")
        assert "lost, it will not finish" in page.inner_text("#task-lost")  # waits for the page
        acts = []
        page.on("request", lambda request: acts.append(request) if "act-task-result" in (request.post_data or "")
                else None)
        with page.expect_response(lambda answer: "task-detail-body" in (answer.request.post_data or ""),
                                  timeout=20_000):
            worker.send("sample.add", 2, 2)  # a change in the store
        page.on("dialog", lambda dialog: dialog.accept())  # a lost task can be re-run
        page.click("#task-rerun-button")
        wait_for(lambda: "Re-ran" in page.inner_text("#act-task-result"), 15, "the lost task re-run")
        assert len(acts) == 1  # the click's
    finally:
        worker.stop(signal.SIGKILL)


def test_a_refresh_sends_only_the_outputs_and_figures_that_changed():
    first = error_outputs("no data yet")
    values, shown = changed_only(first, None)
    assert values == [first[key] for key in REFRESH_OUTPUTS] and shown == digests(first)
    same, _ = changed_only(error_outputs("no data yet"), shown)
    assert all(value is no_update for value in same)
    later = error_outputs("no data yet")
    later[FIGURES] = {**later[FIGURES], "analytics-runtime": view.empty_figure("something else")}
    later[("analytics-updated", "children")] = "updated 10:00:03 UTC"
    values, _ = changed_only(later, shown)
    changed = {key: value for key, value in zip(REFRESH_OUTPUTS, values) if value is not no_update}
    assert changed == {("analytics-updated", "children"): "updated 10:00:03 UTC",
                       FIGURES: {"analytics-runtime": later[FIGURES]["analytics-runtime"]}}


def test_single_task_rows_without_a_name_say_so():
    import pandas as pd

    frame = pd.DataFrame([{"uuid": "a", "name": None, "runtime": 20.0, "state": "SUCCESS", "worker": "w",
                           "received": 1.0}, {"uuid": "b", "name": "email.send", "runtime": 1.0,
                                              "state": "SUCCESS", "worker": "w", "received": 2.0}])
    assert [row["name"] for row in view.task_rows(frame, analytics.SLOWEST_COLUMNS)] == [view.UNKNOWN_NAME, "email.send"]

"""Task queries in SQL: AG Grid column filters, sorting on any column, paging, counts, and the
QueryError a user gets for what cannot be understood."""
from __future__ import annotations

import pytest

from helpers import task_row
from monitor.query.tasks import (COUNT_CAP, MAX_ROW, NULLS_LAST, QueryError, TaskQuery, fetch_tasks, grid_request_query, parse_sort,
                             parse_time, stream_tasks)
from monitor.store.schema import TASK_FIELDS

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
TASKS = {  # short name → fields
    "add": dict(name="tasks.add", state="SUCCESS", worker="w@alpha", args="(2, 3)", result="5", received=T0,
                started=T0 + 1, runtime=0.5, retries=0),
    "slow": dict(name="reports.build", state="SUCCESS", worker="w@beta", args="('daily',)", result="ok",
                 received=T0 + 60, started=T0 + 61, runtime=9.0, retries=2),
    "fail": dict(name="payments.charge", state="FAILURE", worker="w@alpha", args="(1,)", received=T0 + 120,
                 started=T0 + 121, runtime=0.1, retries=0, exception="ValueError('declined')"),
    "queued": dict(name="tasks.add", state="RECEIVED", worker="w@beta", args="(1, 1)", received=T0 + 180),
}
UUIDS = {key: f"00000000-0000-4000-8000-{index:012d}" for index, key in enumerate(TASKS)}


@pytest.fixture(scope="module")
def store(make_module_store):
    store = make_module_store("queries")
    store.write_batch(tasks=[task_row(uuid=UUIDS[key], **fields) for key, fields in TASKS.items()])
    return store


def keys(store, **query) -> list[str]:
    by_uuid = {uuid: key for key, uuid in UUIDS.items()}
    return [by_uuid[row["uuid"]] for row in fetch_tasks(store, TaskQuery(**query)).rows]


@pytest.mark.parametrize("column, model, expected", [
    ("name", {"filterType": "text", "type": "contains", "filter": "add"}, {"add", "queued"}),
    ("name", {"filterType": "text", "type": "notContains", "filter": "add"}, {"slow", "fail"}),
    ("name", {"filterType": "text", "type": "equals", "filter": "reports.build"}, {"slow"}),
    ("name", {"filterType": "text", "type": "notEqual", "filter": "tasks.add"}, {"slow", "fail"}),
    ("name", {"filterType": "text", "type": "startsWith", "filter": "pay"}, {"fail"}),
    ("worker", {"filterType": "text", "type": "endsWith", "filter": "@beta"}, {"slow", "queued"}),
    ("args", {"filterType": "text", "type": "contains", "filter": "_"}, set()),  # _ is literal
    ("result", {"filterType": "text", "type": "blank"}, {"fail", "queued"}),
    ("exception", {"filterType": "text", "type": "notBlank"}, {"fail"}),
    ("runtime", {"filterType": "number", "type": "greaterThan", "filter": 1}, {"slow"}),
    ("runtime", {"filterType": "number", "type": "lessThanOrEqual", "filter": 0.5}, {"add", "fail"}),
    ("runtime", {"filterType": "number", "type": "inRange", "filter": 0.2, "filterTo": 1}, {"add"}),
    ("retries", {"filterType": "number", "type": "equals", "filter": 2}, {"slow"}),
    ("runtime", {"filterType": "number", "type": "blank"}, {"queued"}),
    ("received", {"filterType": "date", "type": "greaterThan", "dateFrom": "2027-01-15 08:01:30"}, {"fail", "queued"}),
    ("received", {"filterType": "date", "type": "inRange", "dateFrom": "2027-01-15 08:00:30",
                  "dateTo": "2027-01-15 08:02:30"}, {"slow", "fail"}),
    ("name", {"filterType": "text", "operator": "OR", "conditions": [
        {"filterType": "text", "type": "startsWith", "filter": "pay"},
        {"filterType": "text", "type": "startsWith", "filter": "rep"}]}, {"slow", "fail"}),
    ("runtime", {"filterType": "number", "operator": "AND", "conditions": [
        {"filterType": "number", "type": "greaterThan", "filter": 0.2},
        {"filterType": "number", "type": "lessThan", "filter": 5}]}, {"add"}),
])
def test_column_filter(store, column, model, expected):
    assert set(keys(store, column_filters={column: model})) == expected


def test_filters_combine_with_search_states_and_received_range(store):
    assert keys(store, search="name:tasks.add", states=("RECEIVED",)) == ["queued"]
    assert keys(store, workers=("w@alpha",), column_filters={
        "runtime": {"filterType": "number", "type": "lessThan", "filter": 1}}, sort=(("runtime", False),)) == ["fail", "add"]
    # both ends included, as Flower's received_start and received_end are ("queued" came at T0 + 180)
    assert set(keys(store, received_from=T0 + 60, received_to=T0 + 180)) == {"slow", "fail", "queued"}
    assert set(keys(store, received_from=T0 + 60, received_to=T0 + 179.999)) == {"slow", "fail"}


@pytest.mark.parametrize("column", TASK_FIELDS + ("seq",))
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_every_column_sorts(store, column, descending):
    rows = fetch_tasks(store, TaskQuery(sort=((column, descending),)), columns=(column,)).rows
    values = [row[column] for row in rows]
    present = [value for value in values if value is not None]
    assert present == sorted(present, reverse=descending)
    # SQLite's NULL order (first ascending, last descending); runtime's NULLs last both ways.
    nulls = [value is None for value in values]
    assert nulls == sorted(nulls, reverse=not descending and column not in NULLS_LAST)


def test_runtime_descending_puts_the_slowest_first_and_ties_follow_arrival(store):
    assert keys(store, sort=(("runtime", True),)) == ["slow", "add", "fail", "queued"]
    assert keys(store, sort=(("runtime", False),)) == ["fail", "add", "slow", "queued"]  # not yet run: last
    assert keys(store, sort=(("name", False),)) == ["fail", "slow", "add", "queued"]
    assert keys(store) == ["queued", "fail", "slow", "add"]  # newest first by default


def test_paging_and_counts(store):
    page = fetch_tasks(store, TaskQuery(sort=(("seq", False),), offset=1, limit=2))
    assert [row["uuid"] for row in page.rows] == [UUIDS["slow"], UUIDS["fail"]]
    assert (page.total, page.total_is_exact) == (4, True)
    filtered = fetch_tasks(store, TaskQuery(states=("SUCCESS",), limit=1))
    assert (len(filtered.rows), filtered.total) == (1, 2)


def test_a_count_past_the_cap_says_it_is_not_exact(make_store):
    store = make_store("many", max_tasks=COUNT_CAP * 2)
    store.write_batch(tasks=[task_row(uuid=f"u{n}", name="bulk", state="SUCCESS") for n in range(COUNT_CAP + 5)])
    page = fetch_tasks(store, TaskQuery(search="name:bulk", limit=10))
    assert (page.total, page.total_is_exact, len(page.rows)) == (COUNT_CAP, False, 10)
    assert fetch_tasks(store, TaskQuery(limit=10)).total == COUNT_CAP + 5  # no filter: exact count


@pytest.mark.parametrize("query, message", [
    (TaskQuery(sort=(("colour", True),)), "cannot sort by 'colour'"),
    (TaskQuery(sort=(("uuid; DROP TABLE tasks", False),)), "cannot sort by"),
    (TaskQuery(column_filters={"colour": {"type": "contains", "filter": "x"}}), "cannot filter on 'colour'"),
    (TaskQuery(column_filters={"name": "contains x"}), "malformed filter for 'name'"),
    (TaskQuery(column_filters={"name": {"filterType": "text", "type": "regex", "filter": "x"}}), "unsupported filter 'regex'"),
    (TaskQuery(column_filters={"runtime": {"filterType": "number", "type": "equals", "filter": "fast"}}),
     "runtime: expected a number"),
    (TaskQuery(column_filters={"runtime": {"filterType": "number", "type": "inRange", "filter": 1}}),
     "a range needs both ends"),
    (TaskQuery(column_filters={"received": {"filterType": "date", "type": "equals", "dateFrom": "last tuesday"}}),
     "received: expected epoch seconds or a date"),
    (TaskQuery(search="state:NOPE"), "unknown state NOPE"),
    (TaskQuery(search="(a"), "missing ')'"),
    (TaskQuery(column_filters="name"), "malformed column filters"),
    (TaskQuery(column_filters={"name": {"type": ["contains"]}}), "malformed filter for 'name': its type is"),
    (TaskQuery(column_filters={"name": {"conditions": []}}), "1 to 10 simple conditions"),
    (TaskQuery(column_filters={"name": {"conditions": [{"conditions": [{"type": "blank"}]}]}}), "simple conditions"),
    (TaskQuery(column_filters={"name": {"conditions": [{"type": "blank"}] * 11}}), "1 to 10 simple conditions"),
    (TaskQuery(column_filters={"name": {"type": "contains", "filter": "a\x00"}}), "the name filter contains a NUL"),
    (TaskQuery(column_filters={"name": {"type": "contains", "filter": 5}}), "the name filter must be text"),
    (TaskQuery(column_filters={"runtime": {"type": "equals", "filter": float("nan")}}), "runtime: expected a number"),
    (TaskQuery(column_filters={"runtime": {"type": "equals", "filter": 10**400}}), "runtime: expected a number"),
    (TaskQuery(column_filters={"runtime": {"type": "equals", "filter": True}}), "runtime: expected a number"),
    (TaskQuery(column_filters={"received": {"type": "equals", "dateFrom": 5}}), "received: expected epoch seconds"),
    (TaskQuery(sort=(("name", False),) * 100), "sort columns"),
])
def test_what_cannot_be_understood_is_a_query_error(store, query, message):
    with pytest.raises(QueryError) as raised:
        fetch_tasks(store, query)
    assert message in str(raised.value)


def test_offsets_and_limits_past_what_sqlite_takes_are_clamped(store):
    assert fetch_tasks(store, TaskQuery(offset=10**30)).rows == []
    assert len(fetch_tasks(store, TaskQuery(limit=10**30)).rows) == len(TASKS)
    assert len(fetch_tasks(store, TaskQuery(offset=-5, limit=-5)).rows) == 0


def test_streamed_rows_are_the_fetched_ones_read_as_consumed(store):
    query = TaskQuery(sort=(("runtime", True),))
    streamed = stream_tasks(store, query, chunk=1)
    assert not isinstance(streamed.rows, list)
    assert list(streamed.rows) == fetch_tasks(store, query).rows
    assert (streamed.total, streamed.total_is_exact) == (len(TASKS), True)


def test_a_grid_request_becomes_a_query():
    request = {"startRow": 200, "endRow": 300.0, "sortModel": [{"colId": "runtime", "sort": "desc"}],
               "filterModel": {"name": {"type": "contains", "filter": "add"}}}
    query = grid_request_query(request, "state:FAILURE", ("FAILURE",))
    assert (query.offset, query.limit, query.sort) == (200, 100, (("runtime", True),))
    assert (query.search, query.states, query.column_filters) == ("state:FAILURE", ("FAILURE",), request["filterModel"])
    assert grid_request_query({}).offset == 0 and grid_request_query({}).limit == 100
    assert grid_request_query({"startRow": 10**30, "endRow": 10**30 + 5}).offset == MAX_ROW
    assert grid_request_query({"startRow": -7, "endRow": 5000}).limit == 1000


@pytest.mark.parametrize("request_, message", [
    ("rows", "malformed rows request"),
    ({"startRow": "0"}, "startRow must be a whole number"),
    ({"startRow": 1.5}, "startRow must be a whole number"),
    ({"endRow": float("inf")}, "endRow must be a whole number"),
    ({"endRow": True}, "endRow must be a whole number"),
    ({"sortModel": "name"}, "malformed sort"),
    ({"sortModel": [{"sort": "asc"}]}, "malformed sort"),
    ({"sortModel": [{"colId": 5}]}, "malformed sort"),
])
def test_a_malformed_grid_request_is_a_query_error(request_, message):
    with pytest.raises(QueryError, match=message):
        grid_request_query(request_)


def test_unknown_columns_to_fetch_are_refused(store):
    with pytest.raises(QueryError, match="unknown column 'password'"):
        fetch_tasks(store, TaskQuery(), columns=("uuid", "password"))


@pytest.mark.parametrize("text, expected", [
    (None, (("seq", True),)),
    ("-runtime", (("runtime", True),)),
    ("name,-received", (("name", False), ("received", True))),
])
def test_parse_sort_takes_any_column_with_minus_for_descending(text, expected):
    assert parse_sort(text) == expected


@pytest.mark.parametrize("text", ["colour", "-", "name,,runtime"])
def test_parse_sort_refuses_unknown_columns(text):
    with pytest.raises(QueryError, match="cannot sort by"):
        parse_sort(text)


@pytest.mark.parametrize("text, expected", [
    ("1800000000", T0),
    ("1800000000.5", T0 + 0.5),
    ("2027-01-15", T0 - 8 * 3600),
    ("2027-01-15 08:00", T0),
    ("2027-01-15T10:00+02:00", T0),
    ("", None),
])
def test_parse_time_takes_epoch_or_iso_in_utc(text, expected):
    assert parse_time(text, "received_start") == expected


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "1e20", "2027-13-01", 5, ["2027-01-15"]])
def test_parse_time_refuses_what_no_date_shows(text):
    with pytest.raises(QueryError, match="received_start: expected epoch seconds or a date"):
        parse_time(text, "received_start")

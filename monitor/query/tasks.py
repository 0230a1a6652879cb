"""Task queries: search, column filters, sorting and paging, done in SQL by the store.

The Tasks page and the JSON API both describe what they want as a TaskQuery; this module is the
only place that turns one into SQL, so the two can never disagree.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

from monitor.query import search
from monitor.store.schema import NUMERIC_FIELDS, TASK_FIELDS, TIME_FIELDS
from monitor.store.base import Store
from monitor.store.dialect import Dialect, like_escaped

SORTABLE = frozenset(TASK_FIELDS) | {"seq"}
# Flower's order for task lists: the most recent event first, ties by task id, both descending
# (flower/utils/search.py TaskSearchEngine.search, with no sort_by).
FLOWER_ORDER = (("timestamp", True), ("uuid", True))
# Counting every match of a slow (unindexed) filter would scan the whole table on every scroll;
# past this many the page says "more than".
COUNT_CAP = 10_000
# Sorted with their NULLs last both ways: a task without a runtime (still queued or running) is
# never the answer to "which were fastest?". Ascending, the store sorts instead of walking the index.
NULLS_LAST = frozenset({"runtime"})


class QueryError(ValueError):
    """A query the user can fix; the message is shown to them as it is."""


@dataclasses.dataclass(frozen=True)
class TaskQuery:
    search: str = ""
    states: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    brokers: tuple[str, ...] = ()  # broker names
    received_from: float | None = None
    received_to: float | None = None  # included, as Flower's received_end is
    column_filters: dict = dataclasses.field(default_factory=dict)  # AG Grid filterModel
    sort: tuple[tuple[str, bool], ...] = (("seq", True),)  # (column, descending)
    offset: int = 0
    limit: int = 100

    def where(self, dialect: Dialect) -> tuple[str, list]:
        clauses, params = [], []

        def add(sql, values):
            clauses.append(sql)
            params.extend(values)

        try:
            sql, values = search.compile_search(self.search, dialect)
        except search.SearchError as exc:
            raise QueryError(str(exc)) from None
        if sql:
            add(sql, values)
        for column, values in (("state", self.states), ("name", self.names), ("worker", self.workers),
                               ("broker", self.brokers)):
            if values:
                add(f"{column} IN ({', '.join('?' * len(values))})", list(values))
        if self.received_from is not None:
            add("received >= ?", [self.received_from])
        if self.received_to is not None:
            add("received <= ?", [self.received_to])
        if not isinstance(self.column_filters, dict):
            raise QueryError(f"malformed column filters: {shown(self.column_filters)}")
        for column, model in self.column_filters.items():
            add(*_column_filter_sql(column, model, dialect))
        return " AND ".join(clauses), params

    def order_by(self, dialect: Dialect) -> str:
        # SQLite's own NULL order (first ascending, last descending, PostgreSQL's indexes are built
        # to match) and a tie-break on seq in the same direction let the store walk the column's
        # index instead of sorting the table.
        if len(self.sort) > len(SORTABLE):  # SQLite caps the terms of an ORDER BY
            raise QueryError(f"at most {len(SORTABLE)} sort columns")
        parts = []
        for column, descending in self.sort:
            if column not in SORTABLE:
                raise QueryError(f"cannot sort by {column!r}; sortable: {', '.join(sorted(SORTABLE))}")
            parts.append(dialect.order(column, descending, nulls_last=column in NULLS_LAST))
        if not any(column == "seq" for column, _ in self.sort):
            parts.append(dialect.order("seq", not self.sort or self.sort[-1][1]))
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class TaskPage:
    rows: list[dict] | Iterator[dict]  # fetch_tasks: a list; stream_tasks: read from the store as consumed
    total: int | None  # None: not counted
    total_is_exact: bool


def stream_tasks(store: Store, query: TaskQuery, columns: Sequence[str] = TASK_FIELDS, chunk: int = 500,
                 counted: bool = True) -> TaskPage:
    """The query's page with its rows read from the store `chunk` at a time as they are consumed,
    so that a large answer (the API's 10,000 rows) never sits whole in memory; `counted`: with the number
    of tasks the query matches (up to COUNT_CAP under a search)."""
    unknown = [c for c in columns if c not in SORTABLE]
    if unknown:
        raise QueryError(f"unknown column {unknown[0]!r}")
    where, params = query.where(store.dialect)
    where_sql = f"WHERE {where}" if where else ""
    order = query.order_by(store.dialect)
    if not counted:
        total, exact = None, False
    elif not where:
        total, exact = store.count_tasks(), True
    else:
        total = store.query(f"SELECT count(*) FROM (SELECT 1 FROM tasks {where_sql} LIMIT ?) AS matched",
                            [*params, COUNT_CAP + 1])[0][0]
        exact = total <= COUNT_CAP
        total = min(total, COUNT_CAP)
    rows = store.iter_query(
        f"SELECT {', '.join(columns)} FROM tasks {where_sql} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, _clamped_row(query.limit), _clamped_row(query.offset)], chunk)
    # Run the statement now: an error then reaches the caller, not the middle of a streamed answer.
    first = next(rows, None)
    return TaskPage(_resumed(first, rows), total, exact)


def _resumed(first: dict | None, rows: Iterator[dict]) -> Iterator[dict]:
    """`first`, then the rest of `rows`; closing this closes `rows` and the cursor it reads."""
    if first is not None:
        yield first
        yield from rows


def fetch_tasks(store: Store, query: TaskQuery, columns: Sequence[str] = TASK_FIELDS, counted: bool = True) -> TaskPage:
    """The query's page with its rows in a list (stream_tasks)."""
    page = stream_tasks(store, query, columns, counted=counted)
    return dataclasses.replace(page, rows=list(page.rows))


def child_tasks(store: Store, uuid: str, limit: int = 50) -> TaskPage:
    """The tasks `uuid` started (their parent_id), oldest first: the detail view's children."""
    return fetch_tasks(store, TaskQuery(
        column_filters={"parent_id": {"filterType": "text", "type": "equals", "filter": uuid}},
        sort=(("seq", False),), limit=limit), ("uuid", "name", "state", "runtime"))


# SQLite's largest integer: a LIMIT or OFFSET past it cannot be bound.
MAX_ROW = 2**63 - 1


def _clamped_row(number: int) -> int:
    return min(max(0, int(number)), MAX_ROW)


def grid_request_query(request, search: str = "", states: tuple[str, ...] = (), max_rows: int = 1000) -> TaskQuery:
    """A TaskQuery from AG Grid's infinite-model getRowsRequest (startRow, endRow, sortModel,
    filterModel); whatever else a browser sends in its place is a QueryError."""
    if not isinstance(request, dict):
        raise QueryError(f"malformed rows request: {shown(request)}")
    start = _row_number(request.get("startRow"), "startRow", 0)
    end = _row_number(request.get("endRow"), "endRow", start + 100)
    sort_model = request.get("sortModel") or []
    if not isinstance(sort_model, list) or not all(
            isinstance(item, dict) and isinstance(item.get("colId"), str) for item in sort_model):
        raise QueryError("malformed sort: expected a list of {colId, sort}")
    sort = tuple((item["colId"], item.get("sort") == "desc") for item in sort_model)
    return TaskQuery(search=search, states=states, column_filters=request.get("filterModel") or {},
                     sort=sort or TaskQuery.sort, offset=start, limit=max(1, min(end - start, max_rows)))


def _row_number(value, name: str, default: int) -> int:
    """A row number of the grid's request (a whole number, clamped to what SQLite takes)."""
    if value is None:
        return default
    whole = isinstance(value, int) or isinstance(value, float) and value.is_integer()  # not NaN nor infinite
    if isinstance(value, bool) or not whole:
        raise QueryError(f"{name} must be a whole number, got {shown(value)}")
    return _clamped_row(value)


def spelled_as_stored(store: Store, column: str, wanted: str) -> tuple[str, ...]:
    """The task names or workers (`column`) stored that are `wanted` whatever their case (Flower
    compares them case-insensitively), so that the filter stays an indexed IN; `wanted` itself
    when none is (it then matches nothing)."""
    folded = wanted.casefold()
    return tuple(value for value in store.distinct_task_values(column) if value.casefold() == folded) or (wanted,)


Sort = tuple[tuple[str, bool], ...]


def parse_sort(text: str | None, default: Sort = TaskQuery.sort) -> Sort:
    """'-runtime' or 'name,-received' (Flower's sort_by, any column) to TaskQuery.sort."""
    if not text:
        return default
    sort = []
    for part in text.split(","):
        part = part.strip()
        column = part.lstrip("-")
        if column not in SORTABLE:
            raise QueryError(f"cannot sort by {column!r}; sortable: {', '.join(sorted(SORTABLE))}")
        sort.append((column, part.startswith("-")))
    return tuple(sort)


def parse_time(text: str | None, name: str, local: bool = False) -> float | None:
    """Epoch seconds, or an ISO date/time such as 2026-11-24 or 2026-11-24T10:30: UTC unless it says,
    or in the server's time zone when `local` (Flower's received_start and received_end)."""
    if text is None or text == "":
        return None
    if isinstance(text, str):
        try:
            return search.parse_moment(text, local=local)
        except ValueError:
            pass
    raise QueryError(f"{name}: expected epoch seconds or a date such as 2026-11-24 10:30, got {shown(text)}")


def shown(value, width: int = 60) -> str:
    """`value` as an error message quotes it: its repr, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


_TEXT_OPS = {
    "contains": ("LIKE", "%{}%"), "notContains": ("NOT LIKE", "%{}%"), "equals": ("=", "{}"),
    "notEqual": ("!=", "{}"), "startsWith": ("LIKE", "{}%"), "endsWith": ("LIKE", "%{}"),
}
_NUMBER_OPS = {
    "equals": "=", "notEqual": "!=", "lessThan": "<", "lessThanOrEqual": "<=", "greaterThan": ">",
    "greaterThanOrEqual": ">=",
}


# AG Grid combines a few conditions per column (maxNumConditions, 2 on the Tasks page), one level deep.
MAX_CONDITIONS = 10


def _column_filter_sql(column: str, model: dict, dialect: Dialect, nested: bool = False) -> tuple[str, list]:
    """One AG Grid column filter (simple or combined with AND/OR conditions) as SQL."""
    if column not in SORTABLE:
        raise QueryError(f"cannot filter on {shown(column)}")
    if not isinstance(model, dict):
        raise QueryError(f"malformed filter for {column!r}")
    if "conditions" in model:
        conditions = model["conditions"]
        if nested or not isinstance(conditions, list) or not 0 < len(conditions) <= MAX_CONDITIONS:
            raise QueryError(f"malformed filter for {column!r}: expected 1 to {MAX_CONDITIONS} simple conditions")
        operator = "OR" if str(model.get("operator", "AND")).upper() == "OR" else "AND"
        parts = [_column_filter_sql(column, condition, dialect, nested=True) for condition in conditions]
        return "(" + f" {operator} ".join(sql for sql, _ in parts) + ")", [p for _, ps in parts for p in ps]
    kind = model.get("type")
    if not isinstance(kind, str):
        raise QueryError(f"malformed filter for {column!r}: its type is {shown(kind)}")
    if kind in ("blank", "notBlank"):
        blank = f"{column} IS NULL" if column in NUMERIC_FIELDS else f"({column} IS NULL OR {column} = '')"
        return (blank if kind == "blank" else f"NOT {blank}"), []
    if model.get("filterType") == "date" or column in TIME_FIELDS and "dateFrom" in model:
        low = parse_time(model.get("dateFrom"), column)
        high = parse_time(model.get("dateTo"), column)
        return _range_sql(column, kind, low, high)
    if model.get("filterType") == "number" and column not in NUMERIC_FIELDS:
        raise QueryError(f"{column} holds text: it takes a text filter, not a number filter")
    if column in NUMERIC_FIELDS:
        return _range_sql(column, kind, _number(model.get("filter"), column), _number(model.get("filterTo"), column))
    if kind not in _TEXT_OPS:
        raise QueryError(f"unsupported filter {kind!r} on {column}")
    operator, pattern = _TEXT_OPS[kind]
    try:
        value = search.check_text(model.get("filter") or "", f"the {column} filter")
    except search.SearchError as exc:
        raise QueryError(str(exc)) from None
    if "LIKE" in operator:
        escaped = like_escaped(value)
        return f"coalesce({column}, '') {operator.replace('LIKE', dialect.like)} ? ESCAPE '\\'", [pattern.format(escaped)]
    return f"{column} {operator} ?", [value]


def _number(value, column: str) -> float | None:
    """A filter's number; NaN and infinities are refused (SQLite would bind NaN as NULL)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise QueryError(f"{column}: expected a number, got {shown(value)}")
    return number


def _range_sql(column: str, kind: str, low, high) -> tuple[str, list]:
    if kind == "inRange":
        if low is None or high is None:
            raise QueryError(f"{column}: a range needs both ends")
        return f"{column} BETWEEN ? AND ?", [low, high]
    if kind not in _NUMBER_OPS or low is None:
        raise QueryError(f"unsupported filter {kind!r} on {column}")
    return f"{column} {_NUMBER_OPS[kind]} ?", [low]

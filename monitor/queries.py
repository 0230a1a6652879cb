"""Task queries: search, column filters, sorting and paging, done in SQL by the store.

The Tasks page and the JSON API both describe what they want as a TaskQuery; this module is the
only place that turns one into SQL, so the two can never disagree.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Sequence

from . import search
from .store import NUMERIC_FIELDS, TASK_FIELDS, TIME_FIELDS, Store

SORTABLE = frozenset(TASK_FIELDS) | {"seq"}
# Counting every match of a slow (unindexed) filter would scan the whole table on every scroll;
# past this many the page says "more than".
COUNT_CAP = 10_000


class QueryError(ValueError):
    """A query the user can fix; the message is shown to them as it is."""


@dataclasses.dataclass(frozen=True)
class TaskQuery:
    search: str = ""
    states: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    received_from: float | None = None
    received_to: float | None = None
    column_filters: dict = dataclasses.field(default_factory=dict)  # AG Grid filterModel
    sort: tuple[tuple[str, bool], ...] = (("seq", True),)  # (column, descending)
    offset: int = 0
    limit: int = 100

    def where(self) -> tuple[str, list]:
        clauses, params = [], []

        def add(sql, values):
            clauses.append(sql)
            params.extend(values)

        try:
            sql, values = search.compile_search(self.search)
        except search.SearchError as exc:
            raise QueryError(str(exc)) from None
        if sql:
            add(sql, values)
        for column, values in (("state", self.states), ("name", self.names), ("worker", self.workers)):
            if values:
                add(f"{column} IN ({', '.join('?' * len(values))})", list(values))
        if self.received_from is not None:
            add("received >= ?", [self.received_from])
        if self.received_to is not None:
            add("received < ?", [self.received_to])
        for column, model in self.column_filters.items():
            add(*_column_filter_sql(column, model))
        return " AND ".join(clauses), params

    def order_by(self) -> str:
        # SQLite's own NULL order (first ascending, last descending) and a tie-break on seq in the
        # same direction let it walk the column's index instead of sorting the table.
        parts = []
        for column, descending in self.sort:
            if column not in SORTABLE:
                raise QueryError(f"cannot sort by {column!r}; sortable: {', '.join(sorted(SORTABLE))}")
            parts.append(f"{column} {'DESC' if descending else 'ASC'}")
        if not any(column == "seq" for column, _ in self.sort):
            parts.append(f"seq {'DESC' if not self.sort or self.sort[-1][1] else 'ASC'}")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class TaskPage:
    rows: list[dict]
    total: int
    total_is_exact: bool


def fetch_tasks(store: Store, query: TaskQuery, columns: Sequence[str] = TASK_FIELDS) -> TaskPage:
    unknown = [c for c in columns if c not in SORTABLE]
    if unknown:
        raise QueryError(f"unknown column {unknown[0]!r}")
    where, params = query.where()
    where_sql = f"WHERE {where}" if where else ""
    order = query.order_by()
    rows = store.query(
        f"SELECT {', '.join(columns)} FROM tasks {where_sql} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, max(0, int(query.limit)), max(0, int(query.offset))],
    )
    if not where:
        total, exact = store.count_tasks(), True
    else:
        total = store.query(f"SELECT count(*) FROM (SELECT 1 FROM tasks {where_sql} LIMIT ?)",
                            [*params, COUNT_CAP + 1])[0][0]
        exact = total <= COUNT_CAP
        total = min(total, COUNT_CAP)
    return TaskPage([dict(r) for r in rows], total, exact)


def parse_sort(text: str | None) -> tuple[tuple[str, bool], ...]:
    """'-runtime' or 'name,-received' (Flower's sort_by, any column) to TaskQuery.sort."""
    if not text:
        return TaskQuery.sort
    sort = []
    for part in text.split(","):
        part = part.strip()
        column = part.lstrip("-")
        if column not in SORTABLE:
            raise QueryError(f"cannot sort by {column!r}; sortable: {', '.join(sorted(SORTABLE))}")
        sort.append((column, part.startswith("-")))
    return tuple(sort)


def parse_time(text: str | None, name: str) -> float | None:
    """Epoch seconds, or an ISO date/time such as 2026-11-24 or 2026-11-24T10:30 (UTC unless it says)."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise QueryError(f"{name}: expected epoch seconds or a date such as 2026-11-24 10:30, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


_TEXT_OPS = {
    "contains": ("LIKE", "%{}%"), "notContains": ("NOT LIKE", "%{}%"), "equals": ("=", "{}"),
    "notEqual": ("!=", "{}"), "startsWith": ("LIKE", "{}%"), "endsWith": ("LIKE", "%{}"),
}
_NUMBER_OPS = {
    "equals": "=", "notEqual": "!=", "lessThan": "<", "lessThanOrEqual": "<=", "greaterThan": ">",
    "greaterThanOrEqual": ">=",
}


def _column_filter_sql(column: str, model: dict) -> tuple[str, list]:
    """One AG Grid column filter (simple or combined with AND/OR conditions) as SQL."""
    if column not in SORTABLE:
        raise QueryError(f"cannot filter on {column!r}")
    if not isinstance(model, dict):
        raise QueryError(f"malformed filter for {column!r}")
    if "conditions" in model:
        operator = "OR" if str(model.get("operator", "AND")).upper() == "OR" else "AND"
        parts = [_column_filter_sql(column, condition) for condition in model["conditions"]]
        return "(" + f" {operator} ".join(sql for sql, _ in parts) + ")", [p for _, ps in parts for p in ps]
    kind = model.get("type")
    if kind == "blank":
        return f"({column} IS NULL OR {column} = '')", []
    if kind == "notBlank":
        return f"({column} IS NOT NULL AND {column} != '')", []
    if model.get("filterType") == "date" or column in TIME_FIELDS and "dateFrom" in model:
        low = parse_time(model.get("dateFrom"), column)
        high = parse_time(model.get("dateTo"), column)
        return _range_sql(column, kind, low, high)
    if column in NUMERIC_FIELDS or model.get("filterType") == "number":
        try:
            low = None if model.get("filter") is None else float(model["filter"])
            high = None if model.get("filterTo") is None else float(model["filterTo"])
        except (TypeError, ValueError):
            raise QueryError(f"{column}: expected a number") from None
        return _range_sql(column, kind, low, high)
    if kind not in _TEXT_OPS:
        raise QueryError(f"unsupported filter {kind!r} on {column}")
    operator, pattern = _TEXT_OPS[kind]
    value = str(model.get("filter", ""))
    if "LIKE" in operator:
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"coalesce({column}, '') {operator} ? ESCAPE '\\'", [pattern.format(escaped)]
    return f"{column} {operator} ?", [value]


def _range_sql(column: str, kind: str, low, high) -> tuple[str, list]:
    if kind == "inRange":
        if low is None or high is None:
            raise QueryError(f"{column}: a range needs both ends")
        return f"{column} BETWEEN ? AND ?", [low, high]
    if kind not in _NUMBER_OPS or low is None:
        raise QueryError(f"unsupported filter {kind!r} on {column}")
    return f"{column} {_NUMBER_OPS[kind]} ?", [low]

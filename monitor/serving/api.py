"""The JSON API, on Flower's routes and shapes so existing scripts keep working.

It reads the store only: listing workers waits on an inspect only when asked to (`refresh=1`), and
every worker the monitor knows is listed, whether it was seen through events or through inspect.
Where Flower's behaviour is matched, the Flower 2.2 source it follows is named (flower/api/…).
"""
from __future__ import annotations

import functools
import itertools
import math
import time
from typing import Callable, Iterable, Iterator

from flask import Blueprint, current_app, jsonify, request

from monitor.query.tasks import (FLOWER_ORDER, MAX_ROW, QueryError, TaskQuery, parse_sort, parse_time, shown,
                                 spelled_as_stored, stream_tasks)
from monitor.store.schema import TASK_FIELDS
from monitor.user_app import MAX_RESULT_WAIT, NoResultBackend

# Longer than any task id a client makes (celery's are UUIDs); refused before the store is asked.
MAX_TASK_ID = 1_000
# Rows whose children are looked up together while /api/tasks streams: few, since they are held
# meanwhile (the answer's memory stays that of a few rows), many enough that the lookups cost little.
CHILDREN_CHUNK = 100
# Flower's word for "no filter" in a list filter (flower/api/tasks.py ListTasks.get).
ALL = "All"


def _error(status: int, message: str):
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _flower_task(row: dict, children: list[str]) -> dict:
    """A task as Flower answers it: celery's Task.as_dict(), where root, parent and children are ids."""
    task = {field: row.get(field) for field in TASK_FIELDS}
    task["root"] = row.get("root_id")
    task["parent"] = row.get("parent_id")
    task["children"] = children
    return task


def _with_children(store, rows: Iterable[dict]) -> Iterator[tuple[dict, list[str]]]:
    """Each row with the ids of its children, looked up for CHILDREN_CHUNK rows at a time."""
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, CHILDREN_CHUNK)):
        children = store.children([row["uuid"] for row in chunk])
        for row in chunk:
            yield row, children.get(row["uuid"], [])


def _flower_worker(worker: dict) -> dict:
    return {
        **worker.get("inspect", {}),
        "status": worker["online"],
        "hostname": worker["hostname"],
        "broker": worker.get("broker"),
        "heartbeat": worker.get("last_heartbeat"),
        "active_count": worker.get("active"),
        "loadavg": worker.get("loadavg"),
        "counters": {name: worker.get(name) or 0 for name in ("received", "started", "succeeded", "failed", "retried")},
        "timestamp": worker.get("inspected_at"),
    }


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:  # also past int()'s 4,300 digits; a merely huge number is clamped by the query
        raise QueryError(f"{name} must be a whole number, got {shown(raw)}") from None
    if value < 0:
        raise QueryError(f"{name} must not be negative")
    return value


def _seconds_arg(name: str, high: float) -> float | None:
    """A number of seconds, at most `high`; None when not given."""
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise QueryError(f"{name} must be a number of seconds, got {shown(raw)}")
    return min(value, high)


def _flag_arg(name: str) -> bool:
    raw = request.args.get(name, "").lower()
    if raw not in ("", "0", "1", "false", "true"):
        raise QueryError(f"{name} must be true or false, got {shown(raw)}")
    return raw in ("1", "true")


def _json_object(members: Iterable[tuple[str, object]], dumps: Callable[[object], str],
                 piece_size: int = 1 << 16) -> Iterator[str]:
    """The text json.dumps gives for {key: value...} of `members`, in pieces of about `piece_size`
    characters: a large answer is sent as it is read instead of being built whole in memory."""
    parts, size, separator = ["{"], 1, ""
    for key, value in members:
        part = f"{separator}{dumps(key)}: {dumps(value)}"
        parts.append(part)
        size += len(part)
        separator = ", "
        if size >= piece_size:
            yield "".join(parts)
            parts, size = [], 0
    parts.append("}")
    yield "".join(parts)


def _states_arg() -> tuple[str, ...]:
    return tuple(s.strip().upper() for s in _filter_arg("state").split(",") if s.strip())


def _filter_arg(name: str) -> str:
    """A list filter's value; Flower's `All` is no filter."""
    value = request.args.get(name, "")
    return "" if value == ALL else value


def _brokers_arg() -> tuple[str, ...]:
    """?broker=NAME: only what was recorded from that broker (as ?workername= takes one worker)."""
    return (request.args["broker"],) if request.args.get("broker") else ()


def create_blueprint(services, prefix: str, may_act=lambda: True) -> Blueprint:
    """Routes under `prefix` ('/' or '/flower/'), reading `services.store`; `may_act()` says
    whether the current user may trigger actions."""
    api = Blueprint("flowerbed_api", __name__, url_prefix=prefix.rstrip("/") or None)
    store = services.store

    @api.errorhandler(QueryError)
    def bad_query(exc):
        return _error(400, str(exc))

    @api.get("/api/workers")
    def workers():
        only = request.args.get("workername")
        brokers = _brokers_arg()
        status_only, refresh = _flag_arg("status"), _flag_arg("refresh")
        if refresh:
            # Flower waits for a fresh inspect and answers with it (flower/api/workers.py ListWorkers.get,
            # 503 when it fails); here the collector's inspector runs it (see Services.inspect_now).
            if not may_act():
                return _error(403, "read-only users cannot trigger an inspect")
            if not services.inspect_now():
                return _error(503, f"no fresh inspect within {services.inspect_wait_seconds():g} s: is the "
                                   "broker up, and is a collector running?")
        listed = [worker for worker in services.workers(time.time())
                  if (not only or worker["hostname"] == only) and (not brokers or worker["broker"] in brokers)]
        if only and not listed:
            return _error(404, f"Unknown worker '{only}'")  # Flower's 404 and message
        if status_only:  # Flower: {hostname: alive} for every worker, online or not
            return jsonify({worker["hostname"]: worker["online"] for worker in listed})
        return jsonify({worker["hostname"]: _flower_worker(worker) for worker in listed})

    @api.get("/api/tasks")
    def tasks():
        args = request.args
        # Flower (flower/api/tasks.py ListTasks.get, flower/utils/search.py TaskSearchEngine.search):
        # no limit is every task; taskname and workername match whatever their case; received_start
        # and received_end are 'YYYY-MM-DD HH:MM' in the server's time zone, both ends included; the
        # most recent event first, ties by task id (both descending).
        name, worker = _filter_arg("taskname"), _filter_arg("workername")
        query = TaskQuery(
            search=args.get("search", ""),
            states=_states_arg(),
            names=spelled_as_stored(store, "name", name) if name else (),
            workers=spelled_as_stored(store, "worker", worker) if worker else (),
            brokers=_brokers_arg(),
            received_from=parse_time(args.get("received_start"), "received_start", local=True),
            received_to=parse_time(args.get("received_end"), "received_end", local=True),
            sort=parse_sort(args.get("sort_by"), default=FLOWER_ORDER),
            offset=_int_arg("offset", 0),
            limit=_int_arg("limit", MAX_ROW),  # none: every task, streamed
        )
        page = stream_tasks(store, query)
        # Flask's jsonify sorts keys, which would undo `sort_by`: keep the rows in query order.
        dumps = functools.partial(current_app.json.dumps, sort_keys=False)
        body = _json_object(((row["uuid"], _flower_task(row, children))
                             for row, children in _with_children(store, page.rows)), dumps)
        response = current_app.response_class(body, mimetype="application/json")
        response.headers["X-Total-Count"] = str(page.total) + ("" if page.total_is_exact else "+")
        return response

    @api.get("/api/tasks/count")
    def task_count():
        where, params = TaskQuery(
            search=request.args.get("search", ""),
            states=_states_arg(),
            brokers=_brokers_arg(),
        ).where(store.dialect)
        return jsonify({"count": store.count_tasks(where, params)})

    @api.get("/api/task/info/<task_id>")
    def task_info(task_id):
        if len(task_id) > MAX_TASK_ID:
            return _error(400, f"a task id has at most {MAX_TASK_ID:,} characters")
        row = store.get_task(task_id)
        if row is None:
            return _error(404, f"Unknown task '{task_id}'")
        return jsonify(_flower_task(row, store.children([task_id]).get(task_id, [])))

    @api.get("/api/task/types")
    def task_types():
        # Flower: {"task-types": [the names seen]} (flower/api/tasks.py ListTaskTypes.get); here also
        # those the workers and the --app registered, so that they show before any task ran.
        return jsonify({"task-types": services.task_types()})

    @api.get("/api/task/result/<task_id>")
    def task_result(task_id):
        # Flower's answer and its 503 without a result backend (flower/api/tasks.py TaskResult.get).
        if len(task_id) > MAX_TASK_ID:
            return _error(400, f"a task id has at most {MAX_TASK_ID:,} characters")
        timeout = _seconds_arg("timeout", MAX_RESULT_WAIT)
        try:
            return jsonify(services.task_result(task_id, timeout))
        except NoResultBackend as exc:
            return _error(503, str(exc))
        except Exception as exc:  # noqa: BLE001 - the backend's own errors (Redis down, a refused login…)
            return _error(503, f"the result backend cannot be read: {type(exc).__name__}: {shown(str(exc), 200)}")

    @api.get("/api/collector")
    def collector():
        return jsonify(services.collector_stats())

    return api

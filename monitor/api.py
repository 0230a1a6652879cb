"""The JSON API, on Flower's routes and shapes so existing scripts keep working.

It reads the store only: listing workers never waits on an inspect broadcast, and every worker the
monitor knows is listed, whether it was seen through events or through inspect.
"""
from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request

from .queries import QueryError, TaskQuery, fetch_tasks, parse_sort, parse_time
from .store import TASK_FIELDS

MAX_LIMIT = 10_000


def _error(status: int, message: str):
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _flower_task(row: dict) -> dict:
    task = {field: row.get(field) for field in TASK_FIELDS}
    task["root"] = row.get("root_id")
    task["parent"] = row.get("parent_id")
    return task


def _flower_worker(worker: dict) -> dict:
    return {
        **worker.get("inspect", {}),
        "status": worker["online"],
        "hostname": worker["hostname"],
        "heartbeat": worker.get("last_heartbeat"),
        "active_count": worker.get("active"),
        "loadavg": worker.get("loadavg"),
        "counters": {name: worker.get(name) or 0 for name in ("received", "started", "succeeded", "failed", "retried")},
        "timestamp": worker.get("inspected_at"),
    }


def _int_arg(name: str, default: int | None, high: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise QueryError(f"{name} must not be negative")
    return min(value, high) if high else value


def _states_arg() -> tuple[str, ...]:
    return tuple(s.strip().upper() for s in request.args.get("state", "").split(",") if s.strip())


def create_blueprint(services, prefix: str, may_act=lambda: True) -> Blueprint:
    """Routes under `prefix` ('/' or '/flower/'), reading `services.store`; `may_act()` says
    whether the current user may trigger actions."""
    api = Blueprint("flowerbed_api", __name__, url_prefix=prefix.rstrip("/") or None)
    store = services.store

    @api.errorhandler(QueryError)
    def bad_query(exc):
        return _error(400, str(exc))

    @api.get("/healthcheck")
    def healthcheck():
        return "OK", 200, {"Content-Type": "text/plain; charset=utf-8"}

    @api.get("/api/workers")
    def workers():
        only = request.args.get("workername")
        status = request.args.get("status")
        result = {}
        for worker in store.workers(time.time()):
            if only and worker["hostname"] != only:
                continue
            if status in ("true", "1") and not worker["online"]:
                continue
            result[worker["hostname"]] = _flower_worker(worker)
        if request.args.get("refresh") in ("1", "true"):
            if not may_act():
                return _error(403, "read-only users cannot trigger an inspect")
            services.inspector.request_refresh()
        return jsonify(result)

    @api.get("/api/tasks")
    def tasks():
        args = request.args
        query = TaskQuery(
            search=args.get("search", ""),
            states=_states_arg(),
            names=(args["taskname"],) if args.get("taskname") else (),
            workers=(args["workername"],) if args.get("workername") else (),
            received_from=parse_time(args.get("received_start"), "received_start"),
            received_to=parse_time(args.get("received_end"), "received_end"),
            sort=parse_sort(args.get("sort_by")),
            offset=_int_arg("offset", 0),
            limit=_int_arg("limit", 1000, MAX_LIMIT),
        )
        page = fetch_tasks(store, query)
        # Flask's jsonify sorts keys, which would undo `sort_by`: keep the rows in query order.
        body = current_app.json.dumps({row["uuid"]: _flower_task(row) for row in page.rows}, sort_keys=False)
        response = current_app.response_class(body, mimetype="application/json")
        response.headers["X-Total-Count"] = str(page.total) + ("" if page.total_is_exact else "+")
        return response

    @api.get("/api/tasks/count")
    def task_count():
        where, params = TaskQuery(
            search=request.args.get("search", ""),
            states=_states_arg(),
        ).where()
        return jsonify({"count": store.count_tasks(where, params)})

    @api.get("/api/task/info/<task_id>")
    def task_info(task_id):
        row = store.get_task(task_id)
        if row is None:
            return _error(404, f"Unknown task '{task_id}'")
        return jsonify(_flower_task(row))

    @api.get("/api/collector")
    def collector():
        return jsonify(services.collector_stats())

    return api

"""The JSON API, on Flower's routes and shapes so existing scripts keep working.

It reads the store only: listing workers never waits on an inspect broadcast, and every worker the
monitor knows is listed, whether it was seen through events or through inspect.
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Iterable, Iterator

from flask import Blueprint, current_app, jsonify, request

from monitor.query.tasks import QueryError, TaskQuery, parse_sort, parse_time, shown, stream_tasks
from monitor.store.schema import TASK_FIELDS

MAX_LIMIT = 10_000
# Longer than any task id a client makes (celery's are UUIDs); refused before the store is asked.
MAX_TASK_ID = 1_000


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
        "broker": worker.get("broker"),
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
    except ValueError:  # also past int()'s 4,300 digits; a merely huge number is clamped by the query
        raise QueryError(f"{name} must be a whole number, got {shown(raw)}") from None
    if value < 0:
        raise QueryError(f"{name} must not be negative")
    return min(value, high) if high else value


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
    return tuple(s.strip().upper() for s in request.args.get("state", "").split(",") if s.strip())


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
        online_only, refresh = _flag_arg("status"), _flag_arg("refresh")
        result = {}
        for worker in store.workers(time.time()):
            if only and worker["hostname"] != only:
                continue
            if brokers and worker["broker"] not in brokers:
                continue
            if online_only and not worker["online"]:
                continue
            result[worker["hostname"]] = _flower_worker(worker)
        if refresh:
            if not may_act():
                return _error(403, "read-only users cannot trigger an inspect")
            services.request_inspect()
        return jsonify(result)

    @api.get("/api/tasks")
    def tasks():
        args = request.args
        query = TaskQuery(
            search=args.get("search", ""),
            states=_states_arg(),
            names=(args["taskname"],) if args.get("taskname") else (),
            workers=(args["workername"],) if args.get("workername") else (),
            brokers=_brokers_arg(),
            received_from=parse_time(args.get("received_start"), "received_start"),
            received_to=parse_time(args.get("received_end"), "received_end"),
            sort=parse_sort(args.get("sort_by")),
            offset=_int_arg("offset", 0),
            limit=_int_arg("limit", 1000, MAX_LIMIT),
        )
        page = stream_tasks(store, query)
        # Flask's jsonify sorts keys, which would undo `sort_by`: keep the rows in query order.
        dumps = functools.partial(current_app.json.dumps, sort_keys=False)
        body = _json_object(((row["uuid"], _flower_task(row)) for row in page.rows), dumps)
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
        return jsonify(_flower_task(row))

    @api.get("/api/queues/length")
    def queue_lengths():
        """Flower's shape, {"active_queues": [{"name", "messages"}]}, from the inspector's latest
        reading (never a broker round trip); each entry also says its consumers and broker, and a
        queue the broker does not have is left out. ?broker=NAME keeps one broker's queues."""
        brokers = _brokers_arg()
        return jsonify({"active_queues": [
            {"name": queue["name"], "messages": queue["messages"], "consumers": queue["consumers"],
             "broker": queue["broker"]}
            for queue in store.queues() if queue["messages"] is not None and (not brokers or queue["broker"] in brokers)]})

    @api.get("/api/collector")
    def collector():
        return jsonify(services.collector_stats())

    return api

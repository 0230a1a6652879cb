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

from monitor.control import BULK_RERUN_CAP, ActionResult, ControlError
from monitor.ingest.reports import collector_answer
from monitor.query.tasks import (FLOWER_ORDER, MAX_ROW, QueryError, TaskQuery, parse_sort, parse_time, shown,
                                 spelled_as_stored, stream_tasks)
from monitor.serving.csv_export import csv_lines, file_name, iso_utc
from monitor.store.schema import TASK_FIELDS, TIME_FIELDS
from monitor.user_app import MAX_RESULT_WAIT, NoResultBackend

# The filters of /api/tasks, in the order a CSV's file name names them.
TASK_FILTER_ARGS = ("state", "search", "taskname", "workername", "broker", "received_start", "received_end", "sort_by")

# Audit entries per page of /api/audit.
MAX_AUDIT_PAGE = 10_000
# The longest /api/task/apply waits for the task to finish (it holds a web thread meanwhile).
MAX_APPLY_WAIT = 300.0
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


def _action_answer(result: ActionResult, failure: str | None = None):
    """Flower's answer to a control action ({"message"} when it worked), with the workers' replies
    (outcome, confirmed, errors, silent, task_ids) beside it. An action every asked worker refused
    is a 403 and one no worker answered a 504, as Flower's are, with the reason in "error"."""
    body = result.as_dict()
    if result.outcome != "failed":
        return jsonify(body)
    if result.errors:
        reasons = "; ".join(f"{worker}: {error}" for worker, error in result.errors.items())
        response = jsonify({**body, "error": f"{failure or 'Failed'}: '{reasons}'"})
        response.status_code = 403
    else:
        response = jsonify({**body, "error": f"No response from worker '{', '.join(result.silent)}'"})
        response.status_code = 504
    return response


AUDIT_CSV_COLUMNS = ("at", "actor", "action", "target", "outcome", "message", "arguments", "confirmed", "errors",
                     "silent", "task_ids")
# The tasks CSV: what a task is, its times (ISO 8601 UTC) and runtime (seconds), as stored.
TASKS_CSV_COLUMNS = ("uuid", "name", "state", "worker", "args", "kwargs", "result", "exception", "retries", "sent",
                     "received", "started", "succeeded", "failed", "revoked", "runtime", "eta", "routing_key",
                     "parent_id", "root_id", "broker")
# The most rows one tasks CSV holds (streamed: memory stays flat); a wider search is cut there.
MAX_CSV_ROWS = 100_000


def audit_csv_lines(rows: Iterable[dict]) -> Iterator[str]:
    """The audit rows as CSV, a line at a time: arguments and replies as JSON."""
    return csv_lines(AUDIT_CSV_COLUMNS, (
        [iso_utc(row["at"]), *(row.get(field) for field in ("actor", "action", "target", "outcome", "message",
                                                             "arguments")),
         *((row.get("replies") or {}).get(field) for field in ("confirmed", "errors", "silent", "task_ids"))]
        for row in rows))


def tasks_csv_lines(rows: Iterable[dict]) -> Iterator[str]:
    return csv_lines(TASKS_CSV_COLUMNS, ([iso_utc(row[field]) if field in TIME_FIELDS else row[field]
                                          for field in TASKS_CSV_COLUMNS] for row in rows))


def _json_body() -> dict:
    """The JSON object a task route is posted (args, kwargs and apply_async options), {} when empty."""
    if not request.get_data():
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object such as {\"args\": [1, 2], \"kwargs\": {}}")
    return body


def _value(name: str, default=None):
    """A parameter from the query string or a form body, as Flower's get_argument reads them."""
    value = request.values.get(name)
    return default if value in (None, "") else value


def create_blueprint(services, prefix: str, may_act=lambda: True, current_user=lambda: "anonymous") -> Blueprint:
    """Routes under `prefix` ('/' or '/flower/'), reading `services.store`; `may_act()` says
    whether the current user may trigger actions, `current_user()` who they are (for the audit log)."""
    api = Blueprint("flowerbed_api", __name__, url_prefix=prefix.rstrip("/") or None)
    store = services.store
    control = services.controller

    @api.errorhandler(QueryError)
    def bad_query(exc):
        return _error(400, str(exc))

    @api.errorhandler(ControlError)
    def refused_action(exc):
        return _error(exc.status, str(exc))

    def action(rule: str, methods=("POST",)):
        """A route that acts: admins only (403 with the reason for anyone else)."""
        def register(view):
            @functools.wraps(view)
            def guarded(**kwargs):
                if not may_act():
                    return _error(403, "read-only users cannot act on workers or tasks")
                return view(**kwargs)
            return api.route(rule, methods=list(methods))(guarded)
        return register

    # -- worker control, on Flower's routes ----------------------------------------------------
    @action("/api/worker/shutdown/<workername>")
    def worker_shutdown(workername):
        return _action_answer(control.shutdown(current_user(), workername))

    @action("/api/worker/pool/restart/<workername>")
    def pool_restart(workername):
        return _action_answer(control.pool_restart(current_user(), workername),
                              f"Failed to restart the '{workername}' pool")

    @action("/api/worker/pool/grow/<workername>")
    def pool_grow(workername):
        return _action_answer(control.pool_grow(current_user(), workername, _value("n", 1)),
                              f"Failed to grow '{workername}' worker's pool")

    @action("/api/worker/pool/shrink/<workername>")
    def pool_shrink(workername):
        return _action_answer(control.pool_shrink(current_user(), workername, _value("n", 1)),
                              f"Failed to shrink '{workername}' worker's pool")

    @action("/api/worker/pool/autoscale/<workername>")
    def pool_autoscale(workername):
        if _value("min") is None or _value("max") is None:
            raise ControlError(400, "give min and max (pool processes)")
        return _action_answer(control.autoscale(current_user(), workername, _value("max"), _value("min")),
                              f"Failed to autoscale '{workername}' worker")

    @action("/api/worker/queue/add-consumer/<workername>")
    def add_consumer(workername):
        queue = _value("queue")
        return _action_answer(control.add_consumer(current_user(), workername, queue),
                              f"Failed to add '{queue}' consumer to '{workername}' worker")

    @action("/api/worker/queue/cancel-consumer/<workername>")
    def cancel_consumer(workername):
        queue = _value("queue")
        return _action_answer(control.cancel_consumer(current_user(), workername, queue),
                              f"Failed to cancel '{queue}' consumer from '{workername}' worker")

    # -- per task name -------------------------------------------------------------------------
    @action("/api/task/rate-limit/<taskname>")
    def task_rate_limit(taskname):
        if _value("ratelimit") is None:
            raise ControlError(400, "give ratelimit (such as 10/s, 100/m; 0 lifts the limit)")
        return _action_answer(control.rate_limit(current_user(), taskname, _value("ratelimit"), _value("workername")),
                              "Failed to set rate limit")

    @action("/api/task/timeout/<taskname>")
    def task_timeout(taskname):
        return _action_answer(control.time_limit(current_user(), taskname, _value("soft"), _value("hard"),
                                                 _value("workername")), "Failed to set timeouts")

    # -- tasks ---------------------------------------------------------------------------------
    @action("/api/task/revoke/<taskid>")
    def task_revoke(taskid):
        terminate = str(_value("terminate", "false")).lower() in ("1", "true", "yes", "on")
        return _action_answer(control.revoke(current_user(), taskid, terminate, _value("signal", "SIGTERM")))

    @action("/api/task/abort/<taskid>")
    def task_abort(taskid):
        return _action_answer(control.abort(current_user(), taskid))

    def send(taskname, action_name):
        body = _json_body()
        options = {key: value for key, value in body.items() if key not in ("args", "kwargs")}
        result = control.send_task(current_user(), taskname, body.get("args"), body.get("kwargs"), options,
                                   action=action_name)
        return jsonify({"task-id": result.task_ids[0], **result.as_dict()})

    @action("/api/task/async-apply/<taskname>")
    def task_async_apply(taskname):
        return send(taskname, "async-apply")

    @action("/api/task/send-task/<taskname>")
    def task_send(taskname):
        return send(taskname, "send-task")

    @action("/api/task/apply/<taskname>")
    def task_apply(taskname):
        body = _json_body()
        options = {key: value for key, value in body.items() if key not in ("args", "kwargs")}
        try:
            wait = min(float(_value("timeout", 30)), MAX_APPLY_WAIT)
        except ValueError:
            raise ControlError(400, "timeout must be a number of seconds") from None
        if not wait >= 0:
            raise ControlError(400, "timeout must be a number of seconds, at least 0")
        result, task = control.apply(current_user(), taskname, body.get("args"), body.get("kwargs"), options, wait=wait)
        answer = {"task-id": result.task_ids[0], "state": task["state"] if task else "PENDING"}
        if task and task["state"] in ("SUCCESS", "FAILURE"):
            answer["result"] = task["result"] if task["state"] == "SUCCESS" else task["exception"]
            if task["state"] == "FAILURE":
                answer["traceback"] = task["traceback"]
        return jsonify(answer)

    @action("/api/task/rerun/<taskid>")
    def task_rerun(taskid):
        result = control.rerun(current_user(), taskid)
        return jsonify({"task-id": result.task_ids[0], **result.as_dict()})

    @action("/api/tasks/rerun")
    def tasks_rerun():
        """A bulk re-run of the finished tasks ?search= and ?state= match, at most ?cap= of them;
        ?dry_run=1 only counts them."""
        query = TaskQuery(search=_value("search", ""), states=_states_arg(), brokers=_brokers_arg(),
                          sort=parse_sort(_value("sort_by")))
        cap = _value("cap", BULK_RERUN_CAP)
        if str(_value("dry_run", "")).lower() in ("1", "true"):
            preview = control.rerun_preview(query, cap)
            return jsonify({"matched": preview.matched, "would_send": preview.would_send, "cap": preview.cap})
        return _action_answer(control.bulk_rerun(current_user(), query, cap))

    @api.get("/api/task/links/<taskid>")
    def task_links(taskid):
        if len(taskid) > MAX_TASK_ID:
            return _error(400, f"a task id has at most {MAX_TASK_ID:,} characters")
        return jsonify(store.task_links(taskid))

    # -- the audit log (admins only: it names users and what they did) -------------------------
    @action("/api/audit", methods=("GET",))
    def audit():
        search = request.args.get("search", "")
        rows = list(store.iter_audit(search, limit=min(_int_arg("limit", 100), MAX_AUDIT_PAGE), offset=_int_arg("offset", 0)))
        return jsonify({"total": store.count_audit(search), "entries": rows})

    @action("/api/audit.csv", methods=("GET",))
    def audit_csv():
        search = request.args.get("search", "")
        response = current_app.response_class(audit_csv_lines(store.iter_audit(search)), mimetype="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="flowerbed-audit.csv"'
        return response

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

    def task_query(default_limit: int, max_limit: int) -> TaskQuery:
        """The TaskQuery of /api/tasks's parameters (Flower's, plus search and broker)."""
        args = request.args
        # Flower (flower/api/tasks.py ListTasks.get, flower/utils/search.py TaskSearchEngine.search):
        # no limit is every task; taskname and workername match whatever their case; received_start
        # and received_end are 'YYYY-MM-DD HH:MM' in the server's time zone, both ends included; the
        # most recent event first, ties by task id (both descending).
        name, worker = _filter_arg("taskname"), _filter_arg("workername")
        return TaskQuery(
            search=args.get("search", ""),
            states=_states_arg(),
            names=spelled_as_stored(store, "name", name) if name else (),
            workers=spelled_as_stored(store, "worker", worker) if worker else (),
            brokers=_brokers_arg(),
            received_from=parse_time(args.get("received_start"), "received_start", local=True),
            received_to=parse_time(args.get("received_end"), "received_end", local=True),
            sort=parse_sort(args.get("sort_by"), default=FLOWER_ORDER),
            offset=_int_arg("offset", 0),
            limit=min(_int_arg("limit", default_limit), max_limit),
        )

    @api.get("/api/tasks")
    def tasks():
        page = stream_tasks(store, task_query(MAX_ROW, MAX_ROW))  # no limit: every task, streamed
        # Flask's jsonify sorts keys, which would undo `sort_by`: keep the rows in query order.
        dumps = functools.partial(current_app.json.dumps, sort_keys=False)
        body = _json_object(((row["uuid"], _flower_task(row, children))
                             for row, children in _with_children(store, page.rows)), dumps)
        response = current_app.response_class(body, mimetype="application/json")
        response.headers["X-Total-Count"] = str(page.total) + ("" if page.total_is_exact else "+")
        return response

    @api.get("/api/tasks.csv")
    def tasks_csv():
        """What /api/tasks?search=&state=&broker=&sort_by= (and its other filters) match, as CSV, up to
        MAX_CSV_ROWS rows (?limit= fewer), read from the store as the download goes."""
        page = stream_tasks(store, task_query(MAX_CSV_ROWS, MAX_CSV_ROWS), TASKS_CSV_COLUMNS)
        response = current_app.response_class(tasks_csv_lines(page.rows), mimetype="text/csv")
        name = file_name("tasks", [(key, request.args.get(key, "")) for key in TASK_FILTER_ARGS])
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
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
        return jsonify(collector_answer(services.broker_stats()))

    return api

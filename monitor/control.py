"""Worker and task control, and the audit log of every action.

Every entry point takes the acting user first, does one thing through the broker, writes exactly
one audit row (who, when, what, on what, with which arguments, what the workers answered) and
returns an ActionResult saying who confirmed, who did not answer and who answered with an error.
A request that cannot be carried out as given (an unknown worker, a bad number, a task whose
arguments cannot be read back) raises ControlError with an HTTP status and a one-line reason
before anything is sent; it leaves no audit row. Nothing here checks who may act: the API and the
pages do (auth.can_act), before they call in.

    controller = services.controller        # one per process, built by monitor.services

Worker control (`worker` is a hostname the store knows; that worker's reply is reported):
    controller.shutdown(user, worker)                   # a worker does not answer a shutdown: "sent"
    controller.pool_restart(user, worker)               # needs worker_pool_restarts on the worker
    controller.pool_grow(user, worker, n=1)
    controller.pool_shrink(user, worker, n=1)
    controller.autoscale(user, worker, max, min)        # needs --autoscale on the worker
    controller.add_consumer(user, worker, queue)
    controller.cancel_consumer(user, worker, queue)
Per task name (`worker=None`: every online worker of every broker):
    controller.rate_limit(user, task_name, rate, worker=None)          # "10/s", "100/m", "0" = none
    controller.time_limit(user, task_name, soft=None, hard=None, worker=None)   # seconds
Tasks:
    controller.revoke(user, task_id, terminate=False, signal="SIGTERM")  # every online worker answers
    controller.abort(user, task_id)                     # AbortableTask; needs a result backend
    controller.rerun(user, task_id)                     # same name, args, kwargs, routing; a new id
    controller.rerun_preview(query, cap=BULK_RERUN_CAP) -> RerunPreview   # no action, no audit row
    controller.bulk_rerun(user, query, cap=BULK_RERUN_CAP)
    controller.send_task(user, name, args, kwargs, options, action="send-task")  # also async-apply
    controller.apply(user, name, args, kwargs, options, wait=30.0)   # sends, waits for the store's row

The re-run links are in the store: store.task_links(task_id) -> {"rerun_of": id, "reruns": [ids]}.
The audit rows: store.iter_audit(search, limit, offset), store.count_audit(search).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import re
import time
import uuid as uuid_module
from typing import Callable

from celery.backends.base import DisabledBackend
from celery.contrib.abortable import AbortableAsyncResult
from celery.platforms import signals
from kombu.exceptions import OperationalError

from monitor.query.tasks import TaskQuery, fetch_tasks
from monitor.store.base import Store
from monitor.store.schema import TERMINAL_STATES, lost_at

# The most tasks one bulk re-run sends, whatever the search matches.
BULK_RERUN_CAP = 1_000
# The most pool processes one grow, shrink or autoscale asks for: a typo must not fork a million.
MAX_POOL_PROCESSES = 1_000
# Longer than any task id or name a client makes; refused before the broker is asked.
MAX_NAME = 1_000
# A rate celery's worker reads: a number per second, or per s, m or h ("0" lifts the limit).
_RATE = re.compile(r"^\d+(\.\d+)?(/[smh])?$")
# The apply_async options a caller may pass by name (Flower's async-apply and send-task).
_SEND_OPTIONS = {"queue", "routing_key", "exchange", "priority", "countdown", "eta", "expires", "headers"}
_RERUN_COLUMNS = ("uuid", "name", "state", "args", "kwargs", "exchange", "routing_key", "broker")


class ControlError(ValueError):
    """An action that cannot be carried out as asked: `status` (400, 404, 503) and the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class ActionResult:
    """What an action did, as the API answers it and the pages show it."""
    action: str
    target: str
    arguments: dict
    user: str
    at: float
    message: str  # one line: what was done
    asked: list[str] = dataclasses.field(default_factory=list)  # the workers a reply was awaited from
    confirmed: dict[str, str] = dataclasses.field(default_factory=dict)  # worker: its "ok" message
    errors: dict[str, str] = dataclasses.field(default_factory=dict)  # worker (or task id): the error
    task_ids: list[str] = dataclasses.field(default_factory=list)  # the tasks the action sent
    expects_replies: bool = True
    reruns: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (new id, original id)

    @property
    def silent(self) -> list[str]:
        """The workers asked that did not answer in time."""
        return [worker for worker in self.asked if worker not in self.confirmed and worker not in self.errors]

    @property
    def outcome(self) -> str:
        """"ok" (every worker asked confirmed), "partial", "failed" (no one confirmed), or "sent"
        (an action no worker answers: the broker took it)."""
        if not self.expects_replies:
            if self.errors:  # tasks a bulk re-run could not send
                return "partial" if self.task_ids else "failed"
            return "sent"
        if not self.asked:  # no worker online to answer: the broker took it
            return "sent"
        if self.confirmed and not self.errors and not self.silent:
            return "ok"
        return "partial" if self.confirmed else "failed"

    def as_dict(self) -> dict:
        return {"action": self.action, "target": self.target, "arguments": self.arguments, "user": self.user,
                "at": self.at, "message": self.message, "outcome": self.outcome, "confirmed": self.confirmed,
                "errors": self.errors, "silent": self.silent, "task_ids": self.task_ids}

    def replies(self) -> dict:
        """What the audit row keeps of the answers."""
        return {"confirmed": self.confirmed, "errors": self.errors, "silent": self.silent,
                "task_ids": self.task_ids}


@dataclasses.dataclass
class RerunPreview:
    """What a bulk re-run of a search would send: how many finished tasks match, and the cap."""
    matched: int
    cap: int

    @property
    def would_send(self) -> int:
        return min(self.matched, self.cap)


class Controller:
    """Sends control actions through each broker's celery app and records them in the store."""

    def __init__(self, store: Store, apps: dict, reply_timeout: float = 1.0, clock: Callable[[], float] = time.time):
        self.store = store
        self.apps = apps  # broker name: celery app, the first one for workers of no recorded broker
        self.reply_timeout = reply_timeout
        self.clock = clock

    # -- worker control ------------------------------------------------------------------------
    def shutdown(self, user: str, worker: str) -> ActionResult:
        app = self._worker_app(worker)
        # A worker leaves without answering a shutdown: the result says "sent", the worker's
        # status (its offline event) tells the rest.
        with _broker_reachable():
            app.control.broadcast("shutdown", destination=[worker])
        return self._record(ActionResult("shutdown", worker, {}, user, self.clock(), "Shutting down!",
                                         expects_replies=False))

    def pool_restart(self, user: str, worker: str) -> ActionResult:
        return self._worker_command(user, worker, "pool_restart", {"reload": False},
                                    f"Restarting '{worker}' worker's pool", action="pool-restart")

    def pool_grow(self, user: str, worker: str, n: int = 1) -> ActionResult:
        n = pool_change(n)
        return self._worker_command(user, worker, "pool_grow", {"n": n}, f"Growing '{worker}' worker's pool by {n}",
                                    action="pool-grow")

    def pool_shrink(self, user: str, worker: str, n: int = 1) -> ActionResult:
        n = pool_change(n)
        return self._worker_command(user, worker, "pool_shrink", {"n": n},
                                    f"Shrinking '{worker}' worker's pool by {n}", action="pool-shrink")

    def autoscale(self, user: str, worker: str, max: int, min: int) -> ActionResult:  # noqa: A002 - celery's names
        high, low = autoscale_bounds(max, min)
        return self._worker_command(user, worker, "autoscale", {"max": high, "min": low},
                                    f"Autoscaling '{worker}' worker (min={low}, max={high})")

    def add_consumer(self, user: str, worker: str, queue: str) -> ActionResult:
        queue = queue_name(queue)
        return self._worker_command(user, worker, "add_consumer", {"queue": queue}, f"add consumer {queue}",
                                    action="add-consumer")

    def cancel_consumer(self, user: str, worker: str, queue: str) -> ActionResult:
        queue = queue_name(queue)
        return self._worker_command(user, worker, "cancel_consumer", {"queue": queue},
                                    f"no longer consuming from {queue}", action="cancel-consumer")

    def rate_limit(self, user: str, task_name: str, rate: str, worker: str | None = None) -> ActionResult:
        task_name, rate = rate_limit_arguments(task_name, rate)
        return self._task_name_command(user, task_name, worker, "rate_limit",
                                       {"task_name": task_name, "rate_limit": rate},
                                       "new rate limit set successfully", action="rate-limit")

    def time_limit(self, user: str, task_name: str, soft: float | None = None, hard: float | None = None,
                   worker: str | None = None) -> ActionResult:
        task_name, soft, hard = time_limit_arguments(task_name, soft, hard)
        return self._task_name_command(user, task_name, worker, "time_limit",
                                       {"task_name": task_name, "soft": soft, "hard": hard},
                                       "time limits set successfully", action="timeout")

    # -- task actions --------------------------------------------------------------------------
    def revoke(self, user: str, task_id: str, terminate: bool = False, signal: str = "SIGTERM") -> ActionResult:
        task_id = _name(task_id, "task id")
        signal = _signal_name(signal) if terminate else None
        task = self.store.get_task(task_id)
        app = self._app_of(task.get("broker") if task else None)
        # Revoking reaches every worker (any may hold the task, or get it later): each online one answers.
        asked = self._online_workers(app)
        arguments = {"task_id": task_id, "terminate": bool(terminate), "signal": signal}
        with _broker_reachable():
            replies = app.control.broadcast("revoke", arguments=arguments, reply=True, timeout=self.reply_timeout,
                                            limit=len(asked) or None)
        result = ActionResult("revoke", task_id, {"terminate": bool(terminate), "signal": signal}, user, self.clock(),
                              f"Revoked '{task_id}'", asked=asked)
        return self._record(_with_replies(result, replies))

    def abort(self, user: str, task_id: str) -> ActionResult:
        task_id = _name(task_id, "task id")
        task = self.store.get_task(task_id)
        app = self._app_of(task.get("broker") if task else None)
        aborting = AbortableAsyncResult(task_id, app=app)
        if isinstance(aborting.backend, DisabledBackend):
            raise ControlError(503, "aborting a task needs a result backend (an AbortableTask reads its state "
                                    "there), and none is configured")
        with _broker_reachable():
            aborting.abort()
        return self._record(ActionResult("abort", task_id, {}, user, self.clock(), f"Aborted '{task_id}'",
                                         expects_replies=False))

    def rerun(self, user: str, task_id: str) -> ActionResult:
        task_id = _name(task_id, "task id")
        task = self.store.get_task(task_id)
        if task is None:
            raise ControlError(404, f"Unknown task '{task_id}'")
        if task["state"] not in TERMINAL_STATES and lost_at(task, self.store.worker(task["worker"] or "")) is None:
            raise ControlError(400, f"task '{task_id}' is {task['state'] or 'of unknown state'}; only a finished "
                                    f"task ({', '.join(TERMINAL_STATES)}) or one lost in its worker's restart "
                                    f"can be re-run")
        new_id = self._resend(task)  # ControlError when its arguments cannot be read back
        result = ActionResult("rerun", task_id, {"name": task["name"]}, user, self.clock(),
                              f"Re-ran '{task_id}' as '{new_id}'", expects_replies=False, task_ids=[new_id],
                              reruns=[(new_id, task_id)])
        return self._record(result)

    def rerun_preview(self, query: TaskQuery, cap: int = BULK_RERUN_CAP) -> RerunPreview:
        """How many finished tasks a bulk re-run of `query` would find (counted up to cap + 1)."""
        cap = _capped(cap)
        where, params = _finished(query).where(self.store.dialect)
        matched = self.store.query(f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE {where} LIMIT ?) AS found",
                                   [*params, cap + 1])[0][0]
        return RerunPreview(matched=matched, cap=cap)

    def bulk_rerun(self, user: str, query: TaskQuery, cap: int = BULK_RERUN_CAP) -> ActionResult:
        """Re-run the first `cap` finished tasks `query` matches (in its order); one audit row for all."""
        cap = _capped(cap)
        finished = dataclasses.replace(_finished(query), offset=0, limit=cap)
        tasks = fetch_tasks(self.store, finished, columns=_RERUN_COLUMNS).rows
        result = ActionResult("bulk-rerun", query.search or "(every task)",
                              {"search": query.search, "states": list(query.states), "cap": cap},
                              user, self.clock(), "", expects_replies=False)
        for task in tasks:
            try:
                new_id = self._resend(task)
            except ControlError as exc:
                result.errors[task["uuid"]] = str(exc)
                if exc.status == 503:  # the broker is away: the rest would wait for it one by one
                    break
                continue
            result.task_ids.append(new_id)
            result.reruns.append((new_id, task["uuid"]))
        skipped = f", {len(result.errors)} could not be" if result.errors else ""
        result.message = f"Re-ran {len(result.task_ids)} of {len(tasks)} tasks{skipped}"
        return self._record(result)

    def send_task(self, user: str, name: str, args=(), kwargs=None, options: dict | None = None,
                  action: str = "send-task") -> ActionResult:
        """Send the task `name` (the monitor needs no task code: celery's send_task)."""
        name = _name(name, "task name")
        args, kwargs, options = _call(args, kwargs, options)
        app = self._app_of(None)
        with _broker_reachable():
            task_id = app.send_task(name, args=args, kwargs=kwargs, **options).id
        return self._record(ActionResult(action, name, {"args": args, "kwargs": kwargs, "options": options}, user,
                                         self.clock(), f"Sent '{name}' as '{task_id}'", expects_replies=False,
                                         task_ids=[task_id]))

    def apply(self, user: str, name: str, args=(), kwargs=None, options: dict | None = None,
              wait: float = 30.0, poll: float = 0.1) -> tuple[ActionResult, dict | None]:
        """send_task, then wait up to `wait` seconds for the collector to store the task finished;
        returns the result and the stored task (None when it did not finish in time)."""
        result = self.send_task(user, name, args, kwargs, options, action="apply")
        deadline = time.monotonic() + wait
        while True:
            task = self.store.get_task(result.task_ids[0])
            if task is not None and task["state"] in TERMINAL_STATES or time.monotonic() >= deadline:
                return result, task
            time.sleep(poll)

    # -- the parts -----------------------------------------------------------------------------
    def _worker_command(self, user: str, worker: str, command: str, arguments: dict, message: str,
                        action: str | None = None) -> ActionResult:
        app = self._worker_app(worker)
        with _broker_reachable():
            replies = app.control.broadcast(command, arguments=arguments, destination=[worker], reply=True,
                                            timeout=self.reply_timeout, limit=1)
        result = ActionResult(action or command, worker, arguments, user, self.clock(), message, asked=[worker])
        return self._record(_with_replies(result, replies))

    def _task_name_command(self, user: str, task_name: str, worker: str | None, command: str, arguments: dict,
                           message: str, action: str) -> ActionResult:
        # One worker, or every online worker of every broker.
        targets = ([(self._worker_app(worker), [worker])] if worker else
                   [(app, self._online_workers(app)) for app in {id(app): app for app in self.apps.values()}.values()])
        replies = []
        for app, asked in targets:
            with _broker_reachable():
                replies += app.control.broadcast(command, arguments=arguments,
                                                 destination=[worker] if worker else None, reply=True,
                                                 timeout=self.reply_timeout, limit=len(asked) or None) or []
        result = ActionResult(action, task_name, {key: value for key, value in arguments.items() if key != "task_name"}
                              | ({"workername": worker} if worker else {}), user, self.clock(), message,
                              asked=[name for _app, asked in targets for name in asked])
        return self._record(_with_replies(result, replies))

    def _resend(self, task: dict) -> str:
        """Send a stored task again: same name, args, kwargs and routing, a new id."""
        args, kwargs = _literal(task["args"], "args", task["uuid"]), _literal(task["kwargs"], "kwargs", task["uuid"])
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise ControlError(400, f"task '{task['uuid']}': its stored args or kwargs are not a list and a dict")
        if not task.get("name"):
            raise ControlError(400, f"task '{task['uuid']}' has no name in the store")
        new_id = str(uuid_module.uuid4())
        with _broker_reachable():
            self._app_of(task.get("broker")).send_task(task["name"], args=args, kwargs=kwargs, task_id=new_id,
                                                       **_routing(task))
        return new_id

    def _record(self, result: ActionResult) -> ActionResult:
        self.store.record_action({"at": result.at, "actor": result.user, "action": result.action,
                                  "target": result.target, "arguments": result.arguments, "outcome": result.outcome,
                                  "message": result.message, "replies": result.replies()}, result.reruns)
        return result

    def _worker_app(self, worker: str):
        """The celery app of the broker a known worker was recorded from; 404 for a worker not known."""
        worker = _name(worker, "worker name")
        rows = self.store.query("SELECT broker FROM workers WHERE hostname = ?", (worker,))
        if not rows:
            raise ControlError(404, f"Unknown worker '{worker}'")
        return self._app_of(rows[0]["broker"])

    def _app_of(self, broker: str | None):
        return self.apps.get(broker) or next(iter(self.apps.values()))

    def _online_workers(self, app) -> list[str]:
        """The online workers reached through `app` (its broker's): those whose answer is awaited."""
        return [worker["hostname"] for worker in self.store.workers(self.clock())
                if worker["online"] and self._app_of(worker["broker"]) is app]


@contextlib.contextmanager
def _broker_reachable():
    """A broker that cannot be reached (after kombu's own retries) as a 503 with the reason."""
    try:
        yield
    except (OperationalError, OSError) as exc:
        raise ControlError(503, f"the broker cannot be reached now ({type(exc).__name__}: {exc}); "
                                "nothing was sent") from None


def _with_replies(result: ActionResult, replies) -> ActionResult:
    """Fold celery's reply list ([{worker: {"ok": ...} or {"error": ...}}]) into the result."""
    for reply in replies or ():
        for worker, answer in (reply.items() if isinstance(reply, dict) else ()):
            if isinstance(answer, dict) and "ok" in answer:
                result.confirmed[worker] = str(answer["ok"])
            else:
                error = answer.get("error") if isinstance(answer, dict) else answer
                result.errors[worker] = str(error or "Unknown reason")
            if worker not in result.asked:
                result.asked.append(worker)
    return result


# The checks of the worker actions' arguments: the controller's, and the worker page's before it asks for
# confirmation. Each gives the arguments as they are sent, or raises ControlError(400) saying what is wrong.
def pool_change(n) -> int:
    return _pool_size(n, "n")


def autoscale_bounds(high, low) -> tuple[int, int]:
    high, low = _pool_size(high, "max"), _whole(low, "min")
    if low > high:
        raise ControlError(400, f"min ({low}) must not be above max ({high})")
    return high, low


def queue_name(queue) -> str:
    return _name(queue, "queue")


def rate_limit_arguments(task_name, rate) -> tuple[str, str]:
    task_name, rate = _name(task_name, "task name"), str(rate).strip()
    if not _RATE.match(rate):
        raise ControlError(400, f"ratelimit must be a number of tasks per second, or like 10/s, 100/m, "
                                f"1000/h (0 lifts the limit); got {rate[:40]!r}")
    return task_name, rate


def time_limit_arguments(task_name, soft, hard) -> tuple[str, float | None, float | None]:
    task_name, soft, hard = _name(task_name, "task name"), _seconds(soft, "soft"), _seconds(hard, "hard")
    if soft is None and hard is None:
        raise ControlError(400, "give soft, hard or both (seconds)")
    return task_name, soft, hard


def _routing(task: dict) -> dict:
    """The send options that route a task as the original was: its exchange and routing key as
    recorded (a queue declared by name has both equal to its name); none recorded, celery's default."""
    exchange, routing_key = task.get("exchange"), task.get("routing_key")
    if routing_key and (not exchange or exchange == routing_key):
        return {"queue": routing_key}
    if routing_key:
        return {"exchange": exchange, "routing_key": routing_key}
    return {}


def _literal(text: str | None, field: str, task_id: str):
    if text in (None, ""):
        return [] if field == "args" else {}
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ControlError(400, f"task '{task_id}': its stored {field} cannot be read back as Python values "
                                f"(cut by --max-field-size, or an object's repr), so it cannot be re-run") from None


def _finished(query: TaskQuery) -> TaskQuery:
    """The query narrowed to finished tasks: only those can be re-run."""
    states = tuple(state for state in query.states if state in TERMINAL_STATES) if query.states else TERMINAL_STATES
    if not states:
        raise ControlError(400, f"only finished tasks ({', '.join(TERMINAL_STATES)}) can be re-run, and the "
                                f"state filter ({', '.join(query.states)}) keeps none of them")
    return dataclasses.replace(query, states=states)


def _call(args, kwargs, options) -> tuple[list, dict, dict]:
    args = [] if args is None else args
    kwargs = {} if kwargs is None else kwargs
    options = dict(options or {})
    if not isinstance(args, (list, tuple)):
        raise ControlError(400, "args must be an array")
    if not isinstance(kwargs, dict):
        raise ControlError(400, "kwargs must be an object")
    unknown = set(options) - _SEND_OPTIONS
    if unknown:
        raise ControlError(400, f"unknown option(s) {', '.join(sorted(map(str, unknown)))[:200]}; "
                                f"known: {', '.join(sorted(_SEND_OPTIONS))}")
    for key in ("queue", "routing_key", "exchange"):
        if key in options:
            options[key] = _name(options[key], key)
    if "priority" in options and (not isinstance(options["priority"], int) or not 0 <= options["priority"] <= 255):
        raise ControlError(400, "priority must be a whole number from 0 to 255")
    if "headers" in options and not isinstance(options["headers"], dict):
        raise ControlError(400, "headers must be an object")
    try:
        if "countdown" in options:
            options["countdown"] = _seconds(options["countdown"], "countdown")
        if "eta" in options:
            options["eta"] = datetime.datetime.fromisoformat(str(options["eta"]))
        if "expires" in options:
            expires = options["expires"]
            options["expires"] = (_seconds(expires, "expires") if isinstance(expires, (int, float))
                                  else datetime.datetime.fromisoformat(str(expires)))
    except ControlError:
        raise
    except (TypeError, ValueError):
        raise ControlError(400, "countdown must be seconds; eta and expires an ISO 8601 time "
                                "(expires may also be seconds)") from None
    return list(args), kwargs, options


def _name(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ControlError(400, f"{what} is missing")
    if len(value) > MAX_NAME or not value.isprintable():
        raise ControlError(400, f"a {what} has at most {MAX_NAME:,} printable characters")
    return value


def _whole(value, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ControlError(400, f"{what} must be a whole number, got {str(value)[:40]!r}") from None
    if number < 0:
        raise ControlError(400, f"{what} must not be negative")
    return number


def _positive(value, what: str) -> int:
    number = _whole(value, what)
    if number == 0:
        raise ControlError(400, f"{what} must be at least 1")
    return number


def _pool_size(value, what: str) -> int:
    number = _positive(value, what)
    if number > MAX_POOL_PROCESSES:
        raise ControlError(400, f"{what} must be at most {MAX_POOL_PROCESSES:,} pool processes")
    return number


def _capped(cap) -> int:
    return min(_positive(cap, "cap"), BULK_RERUN_CAP)


def _seconds(value, what: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ControlError(400, f"{what} must be a number of seconds, got {str(value)[:40]!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ControlError(400, f"{what} must be a number of seconds, at least 0")
    return seconds


def _signal_name(value) -> str:
    """A signal as celery's worker takes it ("SIGKILL", "KILL", "9"), refused when no signal is named."""
    text = str(value or "SIGTERM").strip().upper()
    try:
        signals.signum(int(text) if text.isdigit() else text)
    except (TypeError, ValueError, AttributeError):
        raise ControlError(400, f"unknown signal {str(value)[:40]!r}") from None
    return text

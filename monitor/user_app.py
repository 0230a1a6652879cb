"""The user's own Celery app (`flowerbed --app proj`, as `celery -A proj flower`): loaded once, it
gives its broker and broker settings, its task names and its result backend."""
from __future__ import annotations

import json
import os
import sys

from celery import Celery
from celery.backends.base import DisabledBackend


class AppNotLoaded(Exception):
    """The app --app names cannot be loaded; the message says why, in one line."""


def load_user_app(spec: str) -> Celery:
    """The app `spec` names, found as celery's `-A` finds it (a module holding `app` or `celery`, or
    module:attribute), with the modules it lists (`include`, `imports`) imported so that its tasks
    are registered. AppNotLoaded when it cannot be loaded."""
    from celery.app.utils import find_app

    if os.getcwd() not in sys.path:  # as `celery -A` does: the project is where the command runs
        sys.path.insert(0, os.getcwd())
    try:
        app = find_app(spec)
        if not isinstance(app, Celery):
            raise TypeError(f"{spec} is a {type(app).__name__}, not a Celery app")
        app.loader.import_default_modules()
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything while it loads
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise AppNotLoaded(f"--app {spec}: cannot load it: {type(exc).__name__}: {first_line}") from None
    return app


def broker_url(app: Celery) -> str:
    """The URL the app's workers connect to (celery's default when the app sets none)."""
    if app.conf.broker_url:
        return app.conf.broker_url
    with app.connection_for_write() as connection:
        return connection.as_uri(include_password=True)


def broker_settings(app: Celery) -> dict:
    """What a monitor of the app's broker needs of its configuration: SSL, transport options, login,
    heartbeat, failover and the event settings (serializer, exchange), not the broker URL itself."""
    return {key: value for key, value in app.conf.items()
            if key.startswith(("broker_", "event_", "security_")) and key not in ("broker_url", "broker_read_url",
                                                                                  "broker_write_url")
            or key == "accept_content"}


def task_names(app: Celery) -> list[str]:
    """The names of the app's own tasks (celery's built-ins left out, as workers list theirs)."""
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def has_result_backend(app: Celery | None) -> bool:
    return app is not None and not isinstance(app.backend, DisabledBackend)



# The longest a /api/task/result request may wait for a task to finish: a thread is held meanwhile.
MAX_RESULT_WAIT = 30.0


class NoResultBackend(LookupError):
    """The app has no result backend (or there is no app): results cannot be read."""


def read_result(app: Celery | None, task_id: str, timeout: float | None = None) -> dict:
    """Flower's answer for a task's result from the app's result backend: {"task-id", "state"}, with
    "result" (and "traceback" for a failure) once the task is done. With `timeout`, wait up to that
    many seconds (at most MAX_RESULT_WAIT) for it to be done. Raises NoResultBackend, or what the
    backend raises when it cannot be reached."""
    from celery.exceptions import TimeoutError as ResultTimeout

    if app is None:
        raise NoResultBackend("no result backend: start Flowerbed with --result-backend URL, or with --app "
                              "(your Celery app), whose result_backend is then read")
    if not has_result_backend(app):
        raise NoResultBackend(f"no result backend: the app {app.main or ''} (--app) sets no result_backend")
    result = app.AsyncResult(task_id)
    answer = {"task-id": task_id, "state": result.state}
    if timeout:
        try:
            result.get(timeout=min(timeout, MAX_RESULT_WAIT), propagate=False, disable_sync_subtasks=False)
        except ResultTimeout:
            return answer
    elif not result.ready():
        return answer
    answer["state"] = result.state
    answer["result"] = _json_safe(result.result)
    if result.state == "FAILURE":
        answer["traceback"] = result.traceback
    return answer


def _json_safe(value):
    """The value when JSON can hold it, else its repr (an exception, a custom object)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value

"""The worker page: its inspect replies, counters and charts, refreshed on the interval; and, for
admins, its control actions, each confirmed in a dialog, run by the control engine, and answered
with the workers' replies."""
from __future__ import annotations

import logging
import time

from dash import ALL, Input, Output, State, ctx, no_update

import auth
from components import analytics as charts
from components.worker import action_refused, action_result, control_choices, last_hour, worker_live
from monitor import control
from monitor.query import analytics

log = logging.getLogger(__name__)

# What each action does, in the confirmation dialog ({w} the worker, then the page's inputs).
QUESTIONS = {
    "pool-grow": "Grow the pool of {w} by {n}?",
    "pool-shrink": "Shrink the pool of {w} by {n}?",
    "pool-restart": "Restart the pool of {w}? Its running tasks are lost unless they are acknowledged late.",
    "autoscale": "Autoscale {w} between {low} and {high}?",
    "add-consumer": "Make {w} consume from the queue {queue}?",
    "cancel-consumer": "Make {w} stop consuming from the queue {queue}?",
    "rate-limit": "Set the rate limit of {task} on {w} to {rate}?",
    "time-limit": "Set the time limits of {task} on {w} to soft {soft} s, hard {hard} s?",
    "shutdown": "Shut {w} down? It stops taking tasks and exits.",
}


# Each action: the check of its values, as the controller checks them, and its call through the control
# engine. The page checks before the dialog asks: a rate limit with no task, or "abc" seconds, is refused at
# once rather than after the user confirmed it.
ACTIONS = {
    "pool-grow": (lambda values: control.pool_change(values["n"]),
                  lambda controller, user, worker, values: controller.pool_grow(user, worker, values["n"])),
    "pool-shrink": (lambda values: control.pool_change(values["n"]),
                    lambda controller, user, worker, values: controller.pool_shrink(user, worker, values["n"])),
    "pool-restart": (None, lambda controller, user, worker, values: controller.pool_restart(user, worker)),
    "autoscale": (lambda values: control.autoscale_bounds(values["high"], values["low"]),
                  lambda controller, user, worker, values: controller.autoscale(user, worker, values["high"],
                                                                                values["low"])),
    "add-consumer": (lambda values: control.queue_name(values["queue"]),
                     lambda controller, user, worker, values: controller.add_consumer(user, worker, values["queue"])),
    "cancel-consumer": (lambda values: control.queue_name(values["queue"]),
                        lambda controller, user, worker, values: controller.cancel_consumer(user, worker,
                                                                                            values["queue"])),
    "rate-limit": (lambda values: control.rate_limit_arguments(values["task"], values["rate"]),
                   lambda controller, user, worker, values: controller.rate_limit(user, values["task"], values["rate"],
                                                                                  worker=worker)),
    "time-limit": (lambda values: control.time_limit_arguments(values["task"], values["soft"], values["hard"]),
                   lambda controller, user, worker, values: controller.time_limit(user, values["task"], values["soft"],
                                                                                  values["hard"], worker=worker)),
    "shutdown": (None, lambda controller, user, worker, values: controller.shutdown(user, worker)),
}


def check_action(action, values: dict) -> None:
    """ControlError(400) when the action is unknown or one of its values is not one the controller takes."""
    if action not in ACTIONS:
        raise control.ControlError(400, f"unknown action {str(action)[:40]!r}")
    check = ACTIONS[action][0]
    if check:
        check(values)


def run_action(controller, user: str, worker: str, pending: dict):
    """Carry out a confirmed action (a `worker-pending` record, kept by the browser: checked again) through the
    control engine."""
    action = pending["action"]
    check_action(action, pending["values"])
    return ACTIONS[action][1](controller, user, worker, pending["values"])


def worker_figures(store, hostname: str, now: float) -> dict:
    """The worker's charts of the last hour, by graph id: the router puts them in the page's layout
    (components.common.filled), the refresh replaces them."""
    scope = analytics.last("1h", now, workers=(hostname,))
    activity = analytics.worker_activity(store, scope, now)
    return {("worker-active-chart", "figure"): last_hour(charts.worker_figure(
                activity, "active_mean", "active tasks", scope, "worker", height=220), now),
            ("worker-load-chart", "figure"): last_hour(charts.worker_figure(
                activity, "load1", "load", scope, "worker", height=220), now)}


def register(app, services) -> None:
    @app.callback(
        Output("worker-live", "children"),
        Output("worker-active-chart", "figure"),
        Output("worker-load-chart", "figure"),
        Input("refresh-tick", "n_intervals"),
        State("worker-name", "data"),
        prevent_initial_call=True,  # the page came with its data (worker_figures)
    )
    def refresh_worker(_tick, hostname):
        now = time.time()
        worker = services.store.worker(hostname, now) if isinstance(hostname, str) else None
        if worker is None:
            return no_update, no_update, no_update
        return (worker_live(worker, now, app.get_relative_path), *worker_figures(services.store, hostname, now).values())

    @app.callback(
        Output("worker-task", "options"),
        Output("worker-queues-consumed", "children"),
        Input("refresh-tick", "n_intervals"),
        State("worker-name", "data"),
        State("worker-task", "options"),
        State("worker-queues-consumed", "children"),
    )
    def refresh_control_choices(_tick, hostname, shown_tasks, shown_queues):
        # Only on an admin's page (where the panel is); new choices appear as the worker reports them,
        # and choices that did not change are not sent again (an open dropdown would flicker).
        worker = services.store.worker(hostname) if isinstance(hostname, str) else None
        if worker is None:
            return no_update, no_update
        tasks, queues = control_choices(worker)
        shown_names = [option.get("props", {}).get("value") for option in shown_queues or () if isinstance(option, dict)]
        return (tasks if tasks != shown_tasks else no_update,
                queues if [option.value for option in queues] != shown_names else no_update)

    @app.callback(
        Output("worker-confirm", "message"),
        Output("worker-confirm", "displayed"),
        Output("worker-pending", "data"),
        Output("act-worker-result", "children", allow_duplicate=True),
        Input({"type": "worker-action", "action": ALL}, "n_clicks"),
        State("worker-name", "data"),
        State("worker-pool-n", "value"),
        State("worker-autoscale-min", "value"),
        State("worker-autoscale-max", "value"),
        State("worker-queue", "value"),
        State("worker-task", "value"),
        State("worker-rate", "value"),
        State("worker-soft", "value"),
        State("worker-hard", "value"),
        prevent_initial_call=True,
    )
    def ask(clicks, hostname, n, low, high, queue, task, rate, soft, hard):
        if not any(clicks) or not isinstance(ctx.triggered_id, dict):
            return no_update, no_update, no_update, no_update
        action = ctx.triggered_id.get("action")
        values = {"n": n, "low": low, "high": high, "queue": queue, "task": task, "rate": rate, "soft": soft,
                  "hard": hard}
        try:
            check_action(action, values)
        except control.ControlError as exc:
            return no_update, False, None, action_refused(str(exc))
        shown = {key: "—" if value in (None, "") else value for key, value in values.items()}
        question = QUESTIONS[action].format(w=hostname, **shown)
        return question, True, {"action": action, "values": values}, None

    # Its output's "act-" id has auth refuse a read-only user's request (auth.guard_action_callbacks).
    @app.callback(
        Output("act-worker-result", "children"),
        Input("worker-confirm", "submit_n_clicks"),
        State("worker-pending", "data"),
        State("worker-name", "data"),
        prevent_initial_call=True,
    )
    def act(_submitted, pending, hostname):
        if not isinstance(pending, dict) or not isinstance(pending.get("values"), dict) or not isinstance(hostname, str):
            return action_refused("nothing to confirm: pick an action again")
        try:
            result = run_action(services.controller, auth.current_user(), hostname, pending)
        except control.ControlError as exc:
            return action_refused(str(exc))
        except Exception as exc:  # noqa: BLE001 - the broker away: said on the page, details in the log
            log.warning("worker control %s on %s failed: %s", pending.get("action"), hostname, exc)
            return action_refused(f"the broker could not be asked: {type(exc).__name__}: {exc}")
        services.request_inspect()  # the page shows the change with the next inspect
        return action_result(result)

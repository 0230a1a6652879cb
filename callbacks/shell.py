"""The router and the collector status in the top bar."""
from __future__ import annotations

import time
import urllib.parse

from dash import Input, Output, State

from components import shell as shell_components
from components.tasks import task_detail, tasks_layout
from components.workers import dashboard_layout, worker_rows


def register(app, services) -> None:
    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    def render_page(pathname, search):
        return route(app, services, pathname, search)

    @app.callback(Output("collector-status", "children"), Input("refresh-tick", "n_intervals"))
    def show_collector_status(_tick):
        return shell_components.collector_status(services.collector_stats())


def route(app, services, pathname: str | None, search: str | None):
    """The page for a path (without the URL prefix)."""
    prefix = app.config.requests_pathname_prefix
    pathname = pathname or prefix
    if not (pathname + "/").startswith(prefix):
        return shell_components.not_found(f"There is no page at {pathname}.", app.get_relative_path)
    path = app.strip_relative_path(pathname) or ""
    params = urllib.parse.parse_qs((search or "").lstrip("?"))
    if path == "":
        return dashboard_layout(worker_rows(services.store.workers(), time.time()))
    if path == "tasks":
        return tasks_layout(params.get("q", [""])[0], params.get("state", [""])[0])
    if path.startswith("task/"):
        uuid = path.split("/", 1)[1]
        task = services.store.get_task(uuid)
        if task is None:
            return shell_components.not_found(f"No task with UUID {uuid} is in the store.", app.get_relative_path)
        return task_detail(task, app.get_relative_path)
    return shell_components.not_found(f"There is no page at /{path}.", app.get_relative_path)

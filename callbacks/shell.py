"""The router and the collector status in the top bar."""
from __future__ import annotations

import time
import urllib.parse

import flask
from dash import Input, Output, State, no_update

import auth
from components import shell as shell_components
from components.audit import audit_layout
from monitor.query import analytics
from monitor.services import store_version
from components.analytics import analytics_layout
from callbacks.analytics import analytics_view, configured_limits, first_outputs as analytics_first_outputs
from components.common import filled
from callbacks.tasks import detail_page, grid_view, search_message
from callbacks.broker import broker_outputs
from callbacks.worker import worker_figures
from callbacks.workers import first_outputs as dashboard_first_outputs
from components.tasks import tasks_layout
from components.broker import broker_layout
from components.worker import worker_controls, worker_layout
from components.workers import busy_window_start, dashboard_layout, worker_rows


def register(app, services) -> None:
    @app.callback(Output("page", "children"), Output("page-address", "data"), Input("url", "pathname"),
                  State("url", "search"), State("page-address", "data"))
    def render_page(pathname, search, first_address):
        """The page at the browser's address; not again the one the first layout came with (first_page):
        that address is forgotten once the page is shown, so that coming back to it renders it anew."""
        forget = None if first_address is not None else no_update
        if first_address is not None and first_address == page_address(pathname, search):
            return no_update, forget
        return route(app, services, pathname, search), forget

    nav_ids = [f"nav-{path or 'dashboard'}" for _label, path in shell_components.NAV_ITEMS]

    @app.callback(Output("nav-audit", "className"), Input("url", "pathname"))
    def highlight_audit_nav(pathname):  # the Audit link is an admin's only (components/shell.py)
        return "nav-link active" if current_nav(app, pathname) == "nav-audit" else "nav-link"

    @app.callback([Output(nav_id, "className") for nav_id in nav_ids], Input("url", "pathname"))
    def highlight_nav(pathname):
        current = current_nav(app, pathname)
        return ["nav-link active" if nav_id == current else "nav-link" for nav_id in nav_ids]

    # The layout comes with the line and the version (app.py _layout): the first tick brings the next.
    @app.callback(Output("collector-status", "children"), Output("store-version", "data"),
                  Input("refresh-tick", "n_intervals"), State("store-version", "data"), prevent_initial_call=True)
    def show_collector_status(_tick, version_shown):
        reports = services.broker_stats()
        version = store_version(reports)
        return collector_status(services, reports), no_update if version == version_shown else version


def collector_status(services, reports: dict) -> list:
    """The top bar's line on the collectors of `reports` (Services.broker_stats)."""
    return shell_components.brokers_status(reports, time.time(), services.settings.stall_seconds)


def current_nav(app, pathname: str | None) -> str:
    """The id of the navigation's link for the page at `pathname`: a task is under Tasks, a worker under
    the Dashboard."""
    section = (safe_strip(app, pathname) or "").split("/")[0] or "dashboard"
    return {"task": "nav-tasks", "worker": "nav-dashboard"}.get(section, f"nav-{section}")


def safe_strip(app, pathname: str | None) -> str | None:
    """The path without the URL prefix ('' for the home page), None when outside the prefix."""
    prefix = app.config.requests_pathname_prefix
    pathname = pathname or prefix
    if not (pathname + "/").startswith(prefix):
        return None
    return app.strip_relative_path(pathname) or ""


def encodable(text: str | None) -> str | None:
    """The text with lone surrogates replaced: the browser can send them, JSON cannot carry them back."""
    return text if text is None else text.encode("utf-8", "replace").decode("utf-8")


def page_address(pathname, search) -> str:
    """The address a page is rendered for, path and query, as the browser's location gives it; decoded,
    since the HTML's request and the browser's location may encode it differently."""
    return urllib.parse.unquote(f"{pathname}{search or ''}")


def first_page(app, services) -> tuple[object, str | None]:
    """The page the first layout comes with, and its address: the page's own when the layout comes with
    its HTML (app.py, for assets/first_screen.js), the one the browser asks from (the Referer) on Dash's
    _dash-layout request; so that the page opens without the router's round trip. (None, None) when the
    browser did not say or the store cannot be read now: the router renders it then (and says why it
    cannot)."""
    if flask.request.path == f"{app.config.routes_pathname_prefix}_dash-layout":
        referrer = urllib.parse.urlsplit(flask.request.referrer or "")
        path, query = referrer.path, referrer.query
    else:  # the page's HTML: its address as the browser has it, with the URL prefix a proxy may have stripped
        below_prefix = flask.request.path[len(app.config.routes_pathname_prefix):]
        path = app.config.requests_pathname_prefix + urllib.parse.quote(below_prefix)
        query = flask.request.query_string.decode("latin-1")
    if not path:
        return None, None
    search = f"?{query}" if query else ""
    try:
        return route(app, services, path, search), page_address(path, search)
    except Exception as exc:
        if not services.store.is_transient(exc):
            raise
        return None, None


def route(app, services, pathname: str | None, search: str | None):
    """The page for a path (without the URL prefix)."""
    if not isinstance(pathname, (str, type(None))) or not isinstance(search, (str, type(None))):
        return shell_components.not_found("That address cannot be read.", app.get_relative_path)
    pathname, search = encodable(pathname), encodable(search)
    path = safe_strip(app, pathname)
    if path is None:
        return shell_components.not_found(f"There is no page at {pathname}.", app.get_relative_path)
    params = urllib.parse.parse_qs((search or "").lstrip("?"))
    if path == "":
        now = time.time()
        rows = worker_rows(services.workers(now), now, services.store.busy_floors(busy_window_start(now)))
        return filled(dashboard_layout(rows, services.store.brokers(), app.get_relative_path("/worker/")),
                      dashboard_first_outputs(services, app.get_relative_path("/")))
    if path == "analytics":
        view = analytics_view(params)
        return filled(analytics_layout(analytics.filter_options(services.store), view),
                      analytics_first_outputs(services.store, view, configured_limits(services.settings),
                                              app.get_relative_path("/")))
    if path == "tasks":
        text, brokers = params.get("q", [""])[0], services.store.brokers()
        columns, view_message = grid_view(params, brokers)
        return tasks_layout(text, params.get("state", [""])[0], search_message(text), brokers,
                            params.get("broker", [""])[0], can_act=auth.can_act(), columns=columns,
                            view_message=view_message,
                            task_base=app.get_relative_path("/task/"))
    if path.startswith("task/"):
        task = stored_task(services, path)
        if task is None:
            return shell_components.not_found(f"No task with UUID {path.split('/', 1)[1]} is in the store.",
                                              app.get_relative_path)
        return detail_page(app, services, task)
    if path == "audit":
        if not auth.can_act():
            return shell_components.not_found("The audit log is for admins.", app.get_relative_path)
        return audit_layout(params.get("q", [""])[0])
    if path == "broker":
        return filled(broker_layout(), broker_outputs(services.store, app.get_relative_path))
    if path.startswith("worker/"):
        worker = stored_worker(services, path)
        if worker is None:
            return shell_components.not_found(f"No worker named {worker_name(path)} is known at /{path}.",
                                              app.get_relative_path)
        return filled(worker_layout(worker, app.get_relative_path, controls=worker_controls(worker) if auth.can_act() else None),
                      worker_figures(services.store, worker["hostname"], time.time()))
    return shell_components.not_found(f"There is no page at /{path}.", app.get_relative_path)


PAGES = ("", "tasks", "analytics", "audit", "broker")


def worker_name(path: str) -> str:
    """The hostname a `worker/<name>` path names."""
    return urllib.parse.unquote(path.split("/", 1)[1])


def stored_worker(services, path: str) -> dict | None:
    """The stored worker a `worker/<name>` path names, else None."""
    name = worker_name(path)
    return services.store.worker(name) if name.isprintable() and len(name) <= 1000 else None


def stored_task(services, path: str) -> dict | None:
    """The stored task a `task/<uuid>` path names, else None."""
    uuid = path.split("/", 1)[1]
    return services.store.get_task(uuid) if uuid.isprintable() and len(uuid) <= 1000 else None


def is_page(services, path: str) -> bool:
    """Whether a path (without the URL prefix) shows something; a plain GET of any other is a 404."""
    path = path.strip("/")
    if path == "audit":
        return auth.can_act()
    return (path in PAGES or path.startswith("task/") and stored_task(services, path) is not None
            or path.startswith("worker/") and stored_worker(services, path) is not None)

"""Flowerbed: builds the Dash app from Settings; `server` for gunicorn; `main()` is the CLI."""
from __future__ import annotations

import functools
import logging
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import dash
import flask
from dash.exceptions import DependencyException
from werkzeug.exceptions import HTTPException

import auth
from callbacks import analytics as analytics_callbacks
from callbacks import shell as shell_callbacks
from callbacks import tasks as tasks_callbacks
from callbacks import workers as workers_callbacks
from components.shell import shell
from monitor.serving import admission
from monitor.serving.api import create_blueprint
from monitor.serving.health import create_health_blueprint, serve_collector_status
from monitor.services import Services, build_services
from monitor.settings import Settings, SettingsError, load_settings, normalized_prefix, without_password
from monitor.store import store_error_text
from monitor.store.schema import StoreError

HERE = Path(__file__).resolve().parent
log = logging.getLogger("flowerbed")


def create_app(settings: Settings, services: Services | None = None) -> dash.Dash:
    """The Dash app; background services start with the first request (or `start_services`)."""
    services = services or build_services(settings)
    requests_prefix = normalized_prefix(settings.url_prefix)
    # Behind a proxy that strips the prefix, routes live at / while links keep the prefix.
    routes_prefix = "/" if settings.url_prefix_stripped else requests_prefix
    app = dash.Dash(
        __name__,
        routes_pathname_prefix=routes_prefix,
        requests_pathname_prefix=requests_prefix,
        assets_folder=str(HERE / "assets"),
        title="Flowerbed",
        update_title=None,
        suppress_callback_exceptions=True,  # pages are rendered by the router callback
        serve_locally=True,
    )
    app.layout = lambda: shell(app.get_relative_path, int(settings.refresh_seconds * 1000))
    for module in (shell_callbacks, workers_callbacks, tasks_callbacks, analytics_callbacks):
        module.register(app, services)
    auth.install(app, settings, services.store, public_paths=(f"{routes_prefix}healthcheck", f"{routes_prefix}healthcheck/ready"))
    app.server.register_blueprint(create_health_blueprint(services, routes_prefix))
    app.server.register_blueprint(create_blueprint(services, routes_prefix, may_act=auth.can_act))
    app.server.before_request(services.start)
    app.server.config["flowerbed_services"] = services
    admission.install(app.server, routes_prefix, by_credentials=settings.auth_enabled)
    app.server.register_error_handler(Exception, _callback_request_not_understood)
    app.server.after_request(functools.partial(_unknown_paths_are_not_found, services, routes_prefix))
    return app


def _unknown_paths_are_not_found(services, routes_prefix: str, response):
    """Dash answers every path with the app's page: a path that is no page keeps that page (which
    shows "not found") but answers 404, and an unknown API path a JSON 404, so that a probe or a
    scraper is never told "up" by a page that is not there."""
    if flask.request.endpoint != f"{routes_prefix}<path:path>" or response.status_code != 200:
        return response
    path = flask.request.path[len(routes_prefix):]
    try:
        known = shell_callbacks.is_page(services, path)
    except Exception as exc:
        if not services.store.is_transient(exc):
            raise
        known = True  # the page then says the store is unreachable
    if known:
        return response
    if path.startswith("api/"):
        response = flask.jsonify(error=f"no API route at /{path}")
    response.status_code = 404
    return response


def _callback_request_not_understood(error):
    """A callback request Dash itself cannot take (JSON nested too deeply, an output the page does
    not have) is the client's fault: 400 with a reason, the details in the log; an asset Dash does
    not have is a 404; anything else a 500 without a stack trace."""
    if isinstance(error, HTTPException):
        return error
    if isinstance(error, DependencyException):  # a component file that is not there
        return flask.jsonify(error="not found"), 404
    if flask.current_app.config["flowerbed_services"].store.is_transient(error):
        log.warning("the store cannot be read (%s %s): %s", flask.request.method, flask.request.path,
                    store_error_text(error))
        return flask.jsonify(error=f"the store cannot be reached now; try again shortly ({store_error_text(error)})"), 503
    log.exception("a request failed: %s %s", flask.request.method, flask.request.path)
    if flask.request.path.endswith("_dash-update-component"):
        return flask.jsonify(error="the page's request could not be understood; reload the page"), 400
    return flask.jsonify(error="internal error; the details are in the server's log"), 500


def start_services(flask_server) -> None:
    """Start the collector and inspector of an app built by create_app (gunicorn's worker hook)."""
    flask_server.config["flowerbed_services"].start()


def stop_services(flask_server) -> None:
    """Stop them cleanly (gunicorn's worker_exit hook): the collector writes what it holds and
    hands its lease over at once."""
    flask_server.config["flowerbed_services"].stop()


def __getattr__(name):
    # `gunicorn app:server` builds the app from the environment on first access, not at import.
    if name == "server":
        global server
        server = _or_exit(create_app, _settings_or_exit([])).server
        return server
    raise AttributeError(name)


def _settings_or_exit(argv) -> Settings:
    try:
        return load_settings(argv, os.environ)
    except SettingsError as exc:
        print(f"flowerbed: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _or_exit(build, settings: Settings):
    """build(settings), or a one-line error and exit status 2 when the store cannot be used."""
    try:
        return build(settings)
    except (sqlite3.Error, OSError, StoreError) as exc:
        print(f"flowerbed: error: cannot use --db {without_password(settings.db)!r}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings_or_exit(sys.argv[1:] if argv is None else argv)
    if settings.command == "collect":
        collect(settings)
    else:
        serve(settings)


def collect(settings: Settings) -> None:
    """`flowerbed collect`: the collector and the inspector, no web server, until SIGTERM or Ctrl-C;
    then what the collector holds is written and its lease handed over."""
    services = _or_exit(build_services, settings)
    status = serve_collector_status(services, settings.address, settings.port) if settings.port else None
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    services.start()
    log.info("Flowerbed collector: broker %s, store %s%s", _brokers_shown(settings), without_password(settings.db),
             f", status on http://{settings.address}:{settings.port}/healthcheck/ready" if status else "")
    stopping.wait()
    log.info("stopping: writing what the collector holds")
    services.stop()
    if status is not None:
        status.shutdown()


def serve(settings: Settings) -> None:
    """`flowerbed` (the collector in the one web process) and `flowerbed web` (pages and API only)."""
    app = _or_exit(create_app, settings)
    from gunicorn.app.base import BaseApplication  # the CLI serves with the same server as the Procfile

    class _Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings.address}:{settings.web_port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("threads", 8)
            self.cfg.set("worker_class", "monitor.serving.gunicorn_worker.HealthFirstWorker")  # health lane, admission control
            self.cfg.set("accesslog", None)
            self.cfg.set("control_socket_disable", True)  # one path per user: several monitors would clash
            # Threads do not survive a fork: start them in the worker that serves the pages.
            self.cfg.set("post_worker_init", lambda worker: start_services(app.server))
            self.cfg.set("worker_exit", lambda server, worker: stop_services(app.server))

        def load(self):
            return app.server

    log.info("Flowerbed %son http://%s:%s%s (broker %s, store %s)", "web " if settings.command == "web" else "",
             settings.address, settings.web_port, normalized_prefix(settings.url_prefix),
             _brokers_shown(settings) if not settings.demo else "embedded demo", without_password(settings.db))
    _Gunicorn().run()


def _brokers_shown(settings: Settings) -> str:
    """The broker's URL without its password; with several, each one's name and URL."""
    brokers = settings.named_brokers
    if len(brokers) == 1:
        return without_password(brokers[0][1])
    return ", ".join(f"{name} = {without_password(url)}" for name, url in brokers)


if __name__ == "__main__":
    main()

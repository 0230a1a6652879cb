"""Flowerbed's pages: builds the Dash app from Settings, serves it with gunicorn (`serve`); `server` for
`gunicorn app:server`. The command line is cli.py."""
from __future__ import annotations

import functools
import html
import logging
import urllib.parse
from pathlib import Path

import dash
import flask
import plotly
from plotly.io.json import to_json_plotly
from dash.exceptions import DependencyException
from dash.fingerprint import build_fingerprint
from werkzeug.exceptions import HTTPException

import auth
from callbacks import analytics as analytics_callbacks
from callbacks import audit as audit_callbacks
from callbacks import broker as broker_callbacks
from callbacks import shell as shell_callbacks
from callbacks import tasks as tasks_callbacks
from callbacks import worker as worker_callbacks
from callbacks import workers as workers_callbacks
from components.shell import shell
from monitor.serving import admission, compressed_once, crosssite
from monitor.serving.api import create_blueprint
from monitor.serving.health import create_health_blueprint
from monitor.serving.metrics import create_metrics_blueprint
from monitor.services import Services, build_services, store_version
from monitor.settings import Settings, normalized_prefix, without_password
from monitor.startup import brokers_shown, or_exit, settings_or_exit
from monitor.store import store_error_text

HERE = Path(__file__).resolve().parent
log = logging.getLogger("flowerbed")
# The code Dash loads when a grid or a dropdown first shows, fetched with the page's scripts instead of after them.
EARLY_CHUNKS = ("dash_ag_grid/async-community.js", "dash/dcc/async-dropdown.js")
# Assets the page's HTML loads itself, before Dash's scripts (Dash adds the others after them): the theme before
# anything is drawn; the grids' formatters and the time zone's rewriting of times, which the drawing of the
# first screen (assets/first_screen.js) uses.
HEAD_ASSETS = ("theme.js",)
FIRST_SCREEN_ASSETS = ("dashAgGridFunctions.js", "timezone.js", "first_screen.js")
# plotly.js is left to the first chart: fetched or started before the layout is drawn (a second of the
# browser's time on a 2-core machine), it delayed the first grid by as much (bench/README.md, "First screen").


class _Dash(dash.Dash):
    """Dash whose page comes with its first screen's layout, drawn before Dash's scripts have run, and
    fetches early what its first screen needs (interpolate_index, Dash's hook for it)."""

    def interpolate_index(self, **kwargs):
        prefix = f"{self.config.requests_pathname_prefix}_dash-component-suites/"
        head = "".join(f'<link rel="preload" as="script" href="{prefix}{chunk}">' for chunk in EARLY_CHUNKS)
        head += "".join(map(self._asset_script, HEAD_ASSETS))
        return super().interpolate_index(**{**kwargs, "css": kwargs.get("css", "") + head,
                                            "app_entry": kwargs.get("app_entry", "") + self._first_screen()})

    def _asset_script(self, name: str) -> str:
        modified = (Path(self.config.assets_folder) / name).stat().st_mtime
        return f'<script src="{self.get_asset_url(name)}?m={modified}"></script>'

    def _first_screen(self) -> str:
        """The layout Dash would ask for next (`_dash-layout`), and the first rows of a grid that asks for
        its own (Tasks), for assets/first_screen.js to draw the page at once and hand the layout to Dash.
        Not for a HEAD request (a probe reads no page) nor under api/ (a 404). Without them (the store
        unreachable now) Dash asks for the layout, which says why."""
        services = self.server.config["flowerbed_services"]
        scripts = "".join(map(self._asset_script, FIRST_SCREEN_ASSETS))
        below_prefix = flask.request.path[len(self.config.routes_pathname_prefix):]
        if flask.request.method != "GET" or below_prefix.startswith("api/"):
            return scripts
        try:
            layout = self.get_layout()
            rows = tasks_callbacks.first_rows(services, layout)
        except Exception as exc:  # the page still loads: the layout's own request then fails as it did before
            if not services.store.is_transient(exc):
                log.exception("the first screen of %s could not be built", flask.request.path)
            return scripts
        address = html.escape(f"{self.config.requests_pathname_prefix}_dash-layout")
        return (f'<script type="application/json" id="first-layout" data-address="{address}">'
                f'{_in_script(to_json_plotly(layout))}</script><script type="application/json" id="first-rows">'
                f'{_in_script(to_json_plotly(rows))}</script>' + scripts)

    def _config(self):
        # Served locally, plotly.js has an address without its version, which the browser asks about again on
        # every load (a round trip, and the server hashes 4.8 MB to answer 304). The renderer takes
        # `plotlyjs_url` when not told `serve_locally` (its only use of that flag): given the versioned
        # address Dash gives its other scripts, plotly.js is kept for a year, with the code the browser
        # compiled from it.
        config = super()._config()
        config["serve_locally"] = False
        config["plotlyjs_url"] = self._plotly_address
        return config

    @functools.cached_property
    def _plotly_address(self) -> str:
        path = "package_data/plotly.min.js"
        modified = int((Path(plotly.__file__).parent / path).stat().st_mtime)
        return (f"{self.config.requests_pathname_prefix}_dash-component-suites/plotly/"
                f"{build_fingerprint(path, plotly.__version__, modified)}")


def _in_script(text: str) -> str:
    """JSON that a <script> element holds as it is: no "</script>" (a task's args may say it) ends it early."""
    return text.replace("<", "\\u003c")


def create_app(settings: Settings, services: Services | None = None) -> dash.Dash:
    """The Dash app; background services start with the first request (or `start_services`)."""
    services = services or build_services(settings)
    requests_prefix = normalized_prefix(settings.url_prefix)
    # Behind a proxy that strips the prefix, routes live at / while links keep the prefix.
    routes_prefix = "/" if settings.url_prefix_stripped else requests_prefix
    app = _Dash(
        __name__,
        routes_pathname_prefix=routes_prefix,
        requests_pathname_prefix=requests_prefix,
        assets_folder=str(HERE / "assets"),
        assets_ignore="^(" + "|".join(name.replace(".", r"\.") for name in HEAD_ASSETS + FIRST_SCREEN_ASSETS) + ")$",
        title="Flowerbed",
        update_title=None,
        suppress_callback_exceptions=True,  # pages are rendered by the router callback
        serve_locally=True,
        compress=True,  # plotly.js and AG Grid are ~6 MB as sent uncompressed, ~1.8 MB compressed
    )
    app.layout = functools.partial(_layout, app, services, int(settings.refresh_seconds * 1000))
    for module in (shell_callbacks, workers_callbacks, worker_callbacks, tasks_callbacks, analytics_callbacks,
                   broker_callbacks, audit_callbacks):
        module.register(app, services)
    auth.install(app, settings, services.store, public_paths=(f"{routes_prefix}healthcheck", f"{routes_prefix}healthcheck/ready"))
    app.server.register_blueprint(create_health_blueprint(services.broker_stats, services.settings.stall_seconds,
                                                          routes_prefix))
    crosssite.install(app.server, routes_prefix, auth.current_user)
    auth.guard_action_callbacks(app.server, routes_prefix)
    app.server.register_blueprint(create_blueprint(services, routes_prefix, may_act=auth.can_act,
                                                   current_user=auth.current_user))
    app.server.register_blueprint(create_metrics_blueprint(services, routes_prefix))
    app.server.before_request(services.start)
    app.server.config["flowerbed_services"] = services
    admission.install(app.server, routes_prefix, by_credentials=settings.auth_enabled)
    app.server.register_error_handler(Exception, _callback_request_not_understood)
    app.server.after_request(functools.partial(_unknown_paths_are_not_found, services, routes_prefix))
    app.server.after_request(functools.partial(_versioned_assets_are_kept, routes_prefix))
    app.server.after_request(functools.partial(_pages_are_not_kept, routes_prefix))
    compressed_once.install(app.server, routes_prefix)
    return app


def _layout(app: dash.Dash, services: Services, refresh_ms: int):
    reports = services.broker_stats()  # its version before the page's data: a write in between shows at the next tick
    page, address = shell_callbacks.first_page(app, services)
    return shell(app.get_relative_path, refresh_ms, admin=auth.can_act(), store_version=store_version(reports),
                 page=page, page_address=address, status=shell_callbacks.collector_status(services, reports),
                 current_nav=address and shell_callbacks.current_nav(app, urllib.parse.urlsplit(address).path))


def _versioned_assets_are_kept(routes_prefix: str, response):
    """An asset Dash links with its modification time (?m=) is kept by the browser for a year: a
    change gives it another address. A 304 says so too: its headers replace those the browser kept."""
    if (response.status_code in (200, 304) and flask.request.path.startswith(f"{routes_prefix}assets/")
            and "m" in flask.request.args):
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


def _pages_are_not_kept(routes_prefix: str, response):
    """A page's HTML holds its data (its first screen): the browser asks again rather than show a kept one."""
    if flask.request.endpoint in (routes_prefix, f"{routes_prefix}<path:path>"):
        response.headers["Cache-Control"] = "no-cache, private"
    return response


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
        server = or_exit(create_app, settings_or_exit([])).server
        return server
    raise AttributeError(name)


def serve(settings: Settings) -> None:
    """`flowerbed` (the collector in the one web process) and `flowerbed web` (pages and API only)."""
    app = or_exit(create_app, settings)
    from gunicorn.app.base import BaseApplication  # the CLI serves with the same server as the Procfile

    class _Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings.address}:{settings.web_port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("threads", 8)
            self.cfg.set("worker_class", "monitor.serving.gunicorn_worker.HealthFirstWorker")  # health lane, admission control
            self.cfg.set("accesslog", None)
            self.cfg.set("control_socket_disable", True)  # one path per user: several monitors would clash
            if settings.tls:  # gunicorn terminates TLS (its health lane and admission control are then off)
                self.cfg.set("certfile", settings.certfile)
                self.cfg.set("keyfile", settings.keyfile)
                if settings.ca_certs:
                    self.cfg.set("ca_certs", settings.ca_certs)
            # Threads do not survive a fork: start them in the worker that serves the pages.
            self.cfg.set("post_worker_init", lambda worker: start_services(app.server))
            self.cfg.set("worker_exit", lambda server, worker: stop_services(app.server))

        def load(self):
            return app.server

    log.info("Flowerbed %son http%s://%s:%s%s (broker %s, store %s)", "web " if settings.command == "web" else "",
             "s" if settings.tls else "", settings.address, settings.web_port, normalized_prefix(settings.url_prefix),
             brokers_shown(settings) if not settings.demo else "embedded demo", without_password(settings.db))
    _Gunicorn().run()

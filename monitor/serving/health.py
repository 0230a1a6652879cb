"""Health endpoints, open without auth: `/healthcheck` says the web process answers (no I/O, so it
stays fast under any load), `/healthcheck/ready` (or `/healthcheck?strict=1`) says whether
Flowerbed is doing its job, with 503 and the reasons when it is not, so an orchestrator can act."""
from __future__ import annotations

import threading
import time
from typing import Callable

from flask import Blueprint, Flask, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from monitor.ingest.reports import collector_answer

_STRICT = ("1", "true", "yes")


def readiness_problems(stats: dict, now: float, stall_seconds: float) -> list[str]:
    """Why the collector is not doing its job, from its counters; empty when it is."""
    if stats.get("store_error"):
        return [f"the store cannot be read: {stats['store_error']}"]
    if not stats:
        return ["no collector has reported to this store yet"]
    problems = []
    # A collector in this process reports now; one in another process through the store.
    silent = now - (stats.get("updated_at") or 0)
    if stats.get("running") is False:  # its last report, on a clean stop: nothing else in it is current
        return [f"the collector stopped {silent:.0f} s ago"]
    if silent > stall_seconds:
        problems.append(f"the collector last reported {silent:.0f} s ago")
    holder_silent = now - (stats.get("holder_reported_at") or now)
    if stats.get("role") == "standby" and holder_silent > stall_seconds:
        problems.append(f"this collector stands by, and the one recording this broker ({stats.get('lease_holder')}) "
                        f"last reported {holder_silent:.0f} s ago")
    if stats.get("writer_error"):
        since = stats.get("writer_failing_since")
        problems.append("the store cannot be written"
                        + (f" for {now - since:.0f} s" if since else "") + f": {stats['writer_error']}")
    if not stats.get("connected"):
        problems.append(f"the broker is unreachable: {stats.get('broker_error') or 'not connected yet'}")
    if stats.get("backlog") and (stats.get("lag_seconds") or 0) > stall_seconds:
        problems.append(f"{stats['backlog']:,} events wait and the oldest is {stats['lag_seconds']:.0f} s old "
                        f"(more than {stall_seconds:g} s)")
    return problems


def brokers_problems(reports: dict[str, dict], now: float, stall_seconds: float) -> list[str]:
    """readiness_problems of every broker's collector (`reports` by broker name), each named by its
    broker when there are several."""
    if len(reports) <= 1:
        return readiness_problems(next(iter(reports.values()), {}), now, stall_seconds)
    return [f"broker {name}: {problem}" for name, stats in reports.items()
            for problem in readiness_problems(stats, now, stall_seconds)]


_SHOWN = ("role", "connected", "backlog", "lag_seconds", "last_stored_at", "dropped", "rejected", "malformed")


def create_health_blueprint(broker_reports: Callable[[], dict[str, dict]], stall_seconds: float,
                            prefix: str) -> Blueprint:
    """The health checks of what `broker_reports()` says: each broker's collector report by its name."""
    health = Blueprint("flowerbed_health", __name__, url_prefix=prefix.rstrip("/") or None)

    def ready():
        reports = broker_reports()
        problems = brokers_problems(reports, time.time(), stall_seconds)
        body = {"status": "not ready" if problems else "ready", "problems": problems}
        if len(reports) > 1:
            body["brokers"] = {name: {key: stats.get(key) for key in _SHOWN} for name, stats in reports.items()}
        else:
            stats = next(iter(reports.values()), {})
            body["collector"] = {key: stats.get(key) for key in _SHOWN}
        return jsonify(body), 503 if problems else 200

    @health.get("/healthcheck")
    def alive():
        if request.args.get("strict", "").lower() in _STRICT:
            return ready()
        return "OK", 200, {"Content-Type": "text/plain; charset=utf-8"}

    health.add_url_rule("/healthcheck/ready", "ready", ready)
    return health


class _Unlogged(WSGIRequestHandler):
    """No line per request: a probe asking every second would fill the collector's log."""

    def log_request(self, code="-", size="-") -> None:
        pass


def serve_collector_status(services, address: str, port: int):
    """`flowerbed collect --port`: the health checks and the counters of a collector that runs without
    the web side, served from a thread. Returns the server (its shutdown() stops it)."""
    app = Flask("flowerbed-collector")
    # This process's collectors, whatever the others sharing their events queue do: its own probes.
    app.register_blueprint(create_health_blueprint(services.own_reports, services.settings.stall_seconds, "/"))
    app.add_url_rule("/api/collector", "collector", lambda: jsonify(collector_answer(services.own_reports())))
    server = make_server(address, port, app, threaded=True, request_handler=_Unlogged)
    threading.Thread(target=server.serve_forever, name="flowerbed-collector-status", daemon=True).start()
    return server

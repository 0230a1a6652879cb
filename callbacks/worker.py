"""The worker page: its inspect replies, counters and charts, refreshed on the interval."""
from __future__ import annotations

import time

from dash import Input, Output, State, no_update

from components import analytics as charts
from components.worker import last_hour, worker_live
from monitor.query import analytics


def register(app, services) -> None:
    @app.callback(
        Output("worker-live", "children"),
        Output("worker-active-chart", "figure"),
        Output("worker-load-chart", "figure"),
        Input("refresh-tick", "n_intervals"),
        State("worker-name", "data"),
    )
    def refresh_worker(_tick, hostname):
        now = time.time()
        worker = services.store.worker(hostname, now) if isinstance(hostname, str) else None
        if worker is None:
            return no_update, no_update, no_update
        scope = analytics.last("1h", now, workers=(hostname,))
        activity = analytics.worker_activity(services.store, scope, now)
        return (worker_live(worker, now, app.get_relative_path),
                last_hour(charts.worker_figure(activity, "active_mean", "active tasks", scope, "worker", height=220), now),
                last_hour(charts.worker_figure(activity, "load1", "load", scope, "worker", height=220), now))

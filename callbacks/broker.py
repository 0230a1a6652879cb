"""The broker page: each broker's queues and their depth over time, as the collector last read them."""
from __future__ import annotations

import time

from dash import Input, Output

from components.broker import HISTORY_SECONDS, HISTORY_STEP, broker_sections, depth_figure
from components.worker import last_hour


def register(app, services) -> None:
    @app.callback(
        Output("broker-live", "children"),
        Output("broker-depth-chart", "figure"),
        Input("refresh-tick", "n_intervals"),
    )
    def refresh_broker(_tick):
        now = time.time()
        store = services.store
        queues, reports = store.queues(), store.queue_reports()
        history = store.queue_history(now - HISTORY_SECONDS, HISTORY_STEP)
        several = len({q["broker"] for q in queues} | set(reports)) > 1
        return (broker_sections([], queues, reports, now, app.get_relative_path), last_hour(depth_figure(history, several), now))

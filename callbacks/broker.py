"""The broker page: each broker's queues and their depth over time, as the collector last read them."""
from __future__ import annotations

import time

from dash import Input, Output

from components.broker import HISTORY_SECONDS, HISTORY_STEP, broker_sections, depth_figure
from components.worker import last_hour


def broker_outputs(store, relative_path) -> dict:
    """Each broker's queues and the depth chart, by (component id, property): the router puts them in
    the page's layout (components.common.filled), the refresh replaces them."""
    now = time.time()
    queues, reports = store.queues(), store.queue_reports()
    history = store.queue_history(now - HISTORY_SECONDS, HISTORY_STEP)
    several = len({q["broker"] for q in queues} | set(reports)) > 1
    return {("broker-live", "children"): broker_sections([], queues, reports, now, relative_path),
            ("broker-depth-chart", "figure"): last_hour(depth_figure(history, several), now)}


def register(app, services) -> None:
    @app.callback(
        Output("broker-live", "children"),
        Output("broker-depth-chart", "figure"),
        Input("refresh-tick", "n_intervals"),
        prevent_initial_call=True,  # the page came with its data (broker_outputs)
    )
    def refresh_broker(_tick):
        return tuple(broker_outputs(services.store, app.get_relative_path).values())

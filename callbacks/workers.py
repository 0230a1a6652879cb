"""The Dashboard: worker rows and totals, refreshed on the interval or by the Refresh button; a row
opens its worker's page."""
from __future__ import annotations

import time

from dash import Input, Output, Patch, ctx

import auth
from callbacks.analytics import configured_limits, dashboard_attention, dashboard_figures, first_figures
from components.common import stat_card_class
from components.workers import busy_window_start, failed_tone, online_tone, summary, worker_rows


def inspected_text(last: float | None, now: float) -> str:
    return f"inspected {now - last:.0f} s ago" if last else "not inspected yet"


def first_outputs(services, base: str) -> dict:
    """The Dashboard's charts, stuck and waiting counts and inspect age, for its layout
    (components.common.filled): the page opens with them instead of asking for them."""
    now = time.time()
    limits = configured_limits(services.settings)
    return {**first_figures(dashboard_figures(services.store, None, now)),
            ("dashboard-attention", "children"): dashboard_attention(services.store, None, limits, base, now),
            ("workers-inspected", "children"): inspected_text(services.store.last_inspected(), now)}


def register(app, services) -> None:
    @app.callback(
        Output("workers-grid", "rowData"),
        Output("stat-online", "children"),
        Output("stat-online-card", "className"),
        Output("stat-active", "children"),
        Output("stat-succeeded", "children"),
        Output("stat-failed", "children"),
        Output("stat-failed-card", "className"),
        Output("workers-inspected", "children"),
        Input("refresh-tick", "n_intervals"),
        Input("workers-refresh", "n_clicks"),
        Input("workers-broker", "value"),
        prevent_initial_call=True,  # the page came with its rows (first_outputs)
    )
    def refresh_workers(_tick, _clicks, broker):
        refresh_clicked = ctx.triggered_id == "workers-refresh"
        allowed = refresh_clicked and auth.can_act()
        if allowed:
            services.request_inspect()  # runs in the background; the next tick shows it
        now = time.time()
        rows = worker_rows(services.workers(now), now, services.store.busy_floors(busy_window_start(now)))
        if broker:  # the cards count the chosen broker's workers too
            rows = [row for row in rows if row["broker"] == broker]
        totals = summary(rows)
        inspected = inspected_text(services.store.last_inspected(), now)
        if refresh_clicked:
            inspected = "inspect requested…" if allowed else "read-only users cannot trigger an inspect"
        return (rows, totals["online"], stat_card_class(online_tone(rows)), totals["active"], totals["succeeded"],
                totals["failed"], stat_card_class(failed_tone(rows)), inspected)

    @app.callback(Output("workers-grid", "dashGridOptions"), Input("workers-search", "value"),
                  prevent_initial_call=True)
    def filter_workers(text):
        # AG Grid's quick filter matches any column in the browser; the worker list is small.
        options = Patch()
        options["quickFilterText"] = text or ""
        return options

    app.clientside_callback(
        """function(cell) {
            if (cell && cell.rowId) { window.flowerbedNavigate('%s' + encodeURIComponent(cell.rowId)); }
            return window.dash_clientside.no_update;
        }""" % app.get_relative_path("/worker/"),
        Output("workers-grid", "id"),
        Input("workers-grid", "cellClicked"),
        prevent_initial_call=True,
    )

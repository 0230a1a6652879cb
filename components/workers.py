"""The Dashboard: summary cards and the workers grid."""
from __future__ import annotations

import dash_ag_grid as dag
from dash import dcc, html

from .analytics import compact_row
from .common import broker_columns, broker_filter, page_header, stat_card

WORKER_COLUMNS = [
    {"field": "hostname", "headerName": "Worker", "minWidth": 220, "flex": 2,
     "cellClass": "mono link-cell", "tooltipValueGetter": {"function": "'Open ' + params.value"}},
    {"field": "broker", "headerName": "Broker", "width": 170, "hide": True},  # shown with several brokers
    {"field": "status", "headerName": "Status", "width": 110,
     "cellClassRules": {"cell-online": "params.value == 'Online'", "cell-offline": "params.value == 'Offline'"}},
    {"field": "active", "headerName": "Active", "type": "numericColumn", "width": 100},
    {"field": "processed", "headerName": "Processed", "type": "numericColumn", "width": 120},
    {"field": "failed", "headerName": "Failed", "type": "numericColumn", "width": 100},
    {"field": "succeeded", "headerName": "Succeeded", "type": "numericColumn", "width": 120},
    {"field": "retried", "headerName": "Retried", "type": "numericColumn", "width": 100},
    {"field": "loadavg", "headerName": "Load average", "width": 160, "sortable": False},
    {"field": "heartbeat_age", "headerName": "Last heartbeat", "width": 140, "hide": False,
     "type": "numericColumn", "valueFormatter": {"function": "flowerbedAge(params.value)"}},
]


def worker_rows(workers: list[dict], now: float) -> list[dict]:
    """Grid rows for the workers table, from Store.workers()."""
    rows = []
    for w in workers:
        load = w.get("loadavg")
        rows.append({
            "hostname": w["hostname"],
            "broker": w.get("broker") or "",
            "status": "Online" if w["online"] else "Offline",
            "active": w.get("active") or 0,
            "processed": w.get("received") or 0,
            "failed": w.get("failed") or 0,
            "succeeded": w.get("succeeded") or 0,
            "retried": w.get("retried") or 0,
            "loadavg": ", ".join(f"{x:.2f}" for x in load) if load else "—",
            "heartbeat_age": round(now - w["last_heartbeat"], 1) if w.get("last_heartbeat") else None,
        })
    return rows


def summary(rows: list[dict]) -> dict:
    return {
        "online": f"{sum(r['status'] == 'Online' for r in rows)} / {len(rows)}",
        "active": f"{sum(r['active'] for r in rows):,}",
        "succeeded": f"{sum(r['succeeded'] for r in rows):,}",
        "failed": f"{sum(r['failed'] for r in rows):,}",
    }


def dashboard_layout(rows: list[dict], brokers: tuple[str, ...] | list[str] = ()) -> html.Div:
    """`brokers`: the names of the brokers workers were recorded from; with several, a filter and a column."""
    totals = summary(rows)
    return html.Div([
        page_header("Workers", subtitle="Every worker seen through events or inspect; status from heartbeats."),
        html.Div([
            stat_card("Online workers", totals["online"], "stat-online", "tone-ok"),
            stat_card("Active tasks", totals["active"], "stat-active", "tone-info"),
            stat_card("Succeeded", totals["succeeded"], "stat-succeeded", "tone-ok"),
            stat_card("Failed", totals["failed"], "stat-failed", "tone-bad"),
        ], className="stat-row"),
        compact_row(),
        html.Div([
            dcc.Input(id="workers-search", type="search", placeholder="Filter workers by name, status or any column…",
                      debounce=False, className="search-input"),
            broker_filter("workers-broker", brokers),
            html.Button("Refresh", id="workers-refresh", className="button", n_clicks=0,
                        title="Inspect the workers now and reload the table"),
            html.Span(id="workers-inspected", className="muted"),
        ], className="toolbar"),
        dag.AgGrid(
            id="workers-grid",
            rowData=rows,
            columnDefs=broker_columns(WORKER_COLUMNS, brokers),
            defaultColDef={"sortable": True, "resizable": True, "filter": True},
            getRowId="params.data.hostname",
            dashGridOptions={"rowHeight": 38, "headerHeight": 38, "animateRows": False, "domLayout": "autoHeight",
                             "localeText": {"noRowsToShow": "No workers seen yet: start a worker with events enabled (-E)."}},
            style={"width": "100%"},
            className="grid",
        ),
    ])

"""The Dashboard: summary cards and the workers grid."""
from __future__ import annotations

import dash_ag_grid as dag
from dash import dcc, html

from .analytics import compact_row
from .common import broker_columns, broker_filter, openable_fitting_grid, page_header, stat_card, trouble_tone

WORKER_COLUMNS = [
    {"field": "hostname", "headerName": "Worker", "minWidth": 130, "flex": 2,
     "cellClass": "mono link-cell", "tooltipValueGetter": {"function": "'Open ' + params.value"}},
    {"field": "broker", "headerName": "Broker", "width": 170, "hide": True},  # shown with several brokers
    {"field": "status", "headerName": "Status", "width": 96,
     "cellClassRules": {"cell-online": "params.value == 'Online'", "cell-offline": "params.value == 'Offline'"}},
    {"field": "utilisation", "headerName": "Utilisation", "width": 128, "type": "numericColumn",
     "valueFormatter": {"function": "flowerbedUtilisation(params)"},
     "tooltipValueGetter": {"function": "params.data.busy ? 'Over ' + params.data.busy_share + ' % busy for "
                                        "the last ' + params.data.busy_minutes + ' min' : null"},
     "cellClassRules": {"cell-busy": "params.data.busy"},
     "sortingOrder": ["desc", "asc", None]},  # a click asks "who is busiest?": highest first
    {"field": "active", "headerName": "Active", "type": "numericColumn", "width": 90},
    {"field": "concurrency", "headerName": "Concurrency", "type": "numericColumn", "width": 124,
     "headerTooltip": "Pool size, from the last inspect"},
    {"field": "processed", "headerName": "Processed", "type": "numericColumn", "width": 116},
    {"field": "failed", "headerName": "Failed", "type": "numericColumn", "width": 90},
    {"field": "succeeded", "headerName": "Succeeded", "type": "numericColumn", "width": 116},
    {"field": "retried", "headerName": "Retried", "type": "numericColumn", "width": 96},
    {"field": "loadavg", "headerName": "Load average", "width": 140, "sortable": False},
    {"field": "heartbeat_age", "headerName": "Last heartbeat", "width": 136, "hide": False,
     "type": "numericColumn", "valueFormatter": {"function": "flowerbedAge(params.value)"}},
]
# What the Succeeded and Failed cards add up ("Successes", "Failures"): unlike Analytics' counts, not of a time range.
CARD_COUNT_MEANING = ("{} the workers reported since this store began recording (not of tasks run while nothing "
                      "recorded); Analytics counts within a time range")
# The columns in the order a narrow screen gives them up last (assets/dashAgGridFunctions.js).
WORKER_COLUMN_PRIORITY = ("hostname", "status", "utilisation", "active", "concurrency", "heartbeat_age",
                          "processed", "failed", "succeeded", "retried", "loadavg")
BUSY_SHARE = 0.9  # of the pool: a worker this busy ...
BUSY_MINUTES = 3  # ... for this long (every heartbeat in the window) is marked on the Dashboard


def busy_window_start(now: float) -> float:
    """Where the heartbeats that tell whether a worker stays busy start (Store.busy_floors)."""
    return now - BUSY_MINUTES * 60


def concurrency(worker: dict) -> int | None:
    """The pool size the worker last reported to inspect (celery's stats: pool.max-concurrency)."""
    size = ((worker.get("inspect") or {}).get("stats") or {}).get("pool", {}).get("max-concurrency")
    return size if isinstance(size, int) and size > 0 else None


def is_busy(pool_size: int | None, floor: tuple[int, float] | None, now: float, freq: float | None) -> bool:
    """Whether every heartbeat of the busy window had the pool over BUSY_SHARE full; `floor` is
    (fewest active, first heartbeat) in that window, and the window must be covered from its start
    (a heartbeat or two of slack), so a worker that just started or came back is not judged yet."""
    if not pool_size or floor is None:
        return False
    fewest, first_at = floor
    covered = first_at <= busy_window_start(now) + 2 * (freq or 2.0)
    return covered and fewest is not None and fewest >= BUSY_SHARE * pool_size


def worker_rows(workers: list[dict], now: float, floors: dict[str, tuple[int, float]] | None = None) -> list[dict]:
    """Grid rows for the workers table, from Store.workers() and, to mark the busy ones,
    Store.busy_floors(busy_window_start(now))."""
    rows = []
    for w in workers:
        load = w.get("loadavg")
        active = w.get("active") or 0
        pool_size = concurrency(w)
        busy = w["online"] and is_busy(pool_size, (floors or {}).get(w["hostname"]), now, w.get("freq"))
        rows.append({
            "hostname": w["hostname"],
            "broker": w.get("broker") or "",
            "status": "Online" if w["online"] else "Offline",
            "active": active,
            "concurrency": pool_size,
            "utilisation": round(active / pool_size, 3) if pool_size and w["online"] else None,
            "busy": busy,
            "busy_share": round(BUSY_SHARE * 100), "busy_minutes": BUSY_MINUTES,
            "processed": w.get("received") or 0,
            "failed": w.get("failed") or 0,
            "succeeded": w.get("succeeded") or 0,
            "retried": w.get("retried") or 0,
            "loadavg": ", ".join(f"{x:.2f}" for x in load) if load else "—",
            "heartbeat_age": round(now - w["last_heartbeat"], 1) if w.get("last_heartbeat") else None,
        })
    return rows


def online_tone(rows: list[dict]) -> str:
    """The online card's colour: green only when every known worker is online; amber when some are
    offline, or none is known yet; red when all are offline."""
    online = sum(r["status"] == "Online" for r in rows)
    if rows and online == len(rows):
        return "tone-ok"
    return "tone-bad" if rows and online == 0 else "tone-warn"


def failed_tone(rows: list[dict]) -> str:
    """The Failed card's colour (trouble_tone of the rows' failures)."""
    return trouble_tone(sum(r["failed"] for r in rows))


def summary(rows: list[dict]) -> dict:
    return {
        "online": f"{sum(r['status'] == 'Online' for r in rows)} / {len(rows)}",
        "active": f"{sum(r['active'] for r in rows):,}",
        "succeeded": f"{sum(r['succeeded'] for r in rows):,}",
        "failed": f"{sum(r['failed'] for r in rows):,}",
    }


def dashboard_layout(rows: list[dict], brokers: tuple[str, ...] | list[str] = (),
                     worker_base: str = "/worker/") -> html.Div:
    """`brokers`: the names of the brokers workers were recorded from; with several, a filter and a
    column. `worker_base`: the path a worker's name is appended to for its page (with the URL prefix)."""
    totals = summary(rows)
    return html.Div([
        page_header("Workers", subtitle="Every worker seen through events or inspect; status from heartbeats."),
        html.Div([
            stat_card("Online workers", totals["online"], "stat-online", online_tone(rows), box_id="stat-online-card"),
            stat_card("Active tasks", totals["active"], "stat-active", "tone-info"),
            stat_card("Succeeded", totals["succeeded"], "stat-succeeded", "tone-ok",
                      meaning=CARD_COUNT_MEANING.format("Successes")),
            stat_card("Failed", totals["failed"], "stat-failed", failed_tone(rows), box_id="stat-failed-card",
                      meaning=CARD_COUNT_MEANING.format("Failures")),
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
            **openable_fitting_grid(worker_base, WORKER_COLUMN_PRIORITY, {
                "rowHeight": 38, "headerHeight": 38, "animateRows": False, "domLayout": "autoHeight",
                "localeText": {"noRowsToShow": "No workers seen yet: start a worker with events enabled (-E)."}}),
            style={"width": "100%"},
            className="grid",
        ),
    ])

"""The Tasks page (search, state chips, infinite grid) and the task detail view."""
from __future__ import annotations

import dash_ag_grid as dag
from dash import dcc, html

from .common import broker_columns, broker_filter, format_time, page_header, state_badge

STATE_CHIPS = (("All", "ALL"), ("Started", "STARTED"), ("Succeeded", "SUCCESS"), ("Failed", "FAILURE"),
               ("Retried", "RETRY"), ("Received", "RECEIVED"))

_TIME = {"valueFormatter": {"function": "flowerbedTime(params.value)"}, "filter": "agDateColumnFilter",
         "tooltipValueGetter": {"function": "flowerbedTimeMs(params.value)"}, "width": 160}
_TEXT = {"filter": "agTextColumnFilter"}
_FREE_FORM = {"minWidth": 100, "flex": 1, "cellClass": "mono", **_TEXT}
# Fixed widths for the columns whose content has a known length; name and the free-form columns
# share what is left, so that Runtime and Worker stay on screen at common laptop widths.
TASK_COLUMNS = [
    {"field": "name", "headerName": "Name", "minWidth": 140, "flex": 1.4, **_TEXT},
    {"field": "uuid", "headerName": "UUID", "width": 225, "cellClass": "mono", "tooltipField": "uuid", **_TEXT},
    {"field": "state", "headerName": "State", "width": 108, **_TEXT,
     "cellClassRules": {f"cell-{css}": f"params.value == '{state}'" for state, css in (
         ("SUCCESS", "success"), ("FAILURE", "failure"), ("RETRY", "retry"), ("STARTED", "started"),
         ("RECEIVED", "received"), ("REVOKED", "revoked"))}},
    {"field": "args", "headerName": "args", "tooltipField": "args", **_FREE_FORM},
    {"field": "kwargs", "headerName": "kwargs", "tooltipField": "kwargs", **_FREE_FORM},
    {"field": "result", "headerName": "Result", "tooltipField": "result", **_FREE_FORM},
    {"field": "received", "headerName": "Received (UTC)", **_TIME},
    {"field": "started", "headerName": "Started (UTC)", **_TIME},
    {"field": "runtime", "headerName": "Runtime (s)", "width": 128, "type": "numericColumn",
     "filter": "agNumberColumnFilter", "valueFormatter": {"function": "flowerbedSeconds(params.value)"}},
    {"field": "worker", "headerName": "Worker", "width": 180, **_TEXT},
    {"field": "broker", "headerName": "Broker", "width": 130, "hide": True, **_TEXT},  # shown with several brokers
    {"field": "retries", "headerName": "Retries", "width": 100, "type": "numericColumn", "hide": True,
     "filter": "agNumberColumnFilter"},
    {"field": "exception", "headerName": "Exception", "width": 240, "hide": True, **_TEXT},
]
GRID_FIELDS = tuple(column["field"] for column in TASK_COLUMNS)
SEARCH_HELP = ("Free text, or name: state: uuid: worker: args: kwargs: result: exception:, "
               "combined with AND, OR, NOT/-term, parentheses and \"quotes\". "
               "Example: name:tasks.add state:FAILURE OR kwargs:user_id=42\n"
               "Exact name or worker: name=shop.checkout worker=celery@host. "
               "Times (UTC) and runtime (seconds) compare with >= > <= <: received started sent finished runtime, "
               "e.g. finished>=2026-11-25T10:00 finished<2026-11-25T10:15 runtime>2.5 "
               "(what a click on the Analytics page fills in).")
BROKER_HELP = "\nThe broker a task was recorded from: broker:NAME."


def tasks_layout(search: str, state: str, search_message: str = "", brokers: tuple[str, ...] | list[str] = (),
                 broker: str = "") -> html.Div:
    """`search_message` says why `search` (from the address) cannot be understood; the grid then
    lists every task, as it does while a search typed in the box is malformed. `brokers`: the names of
    the brokers workers were recorded from; with several, a filter (set to `broker`) and a column."""
    state = state if state in {value for _label, value in STATE_CHIPS} else "ALL"
    broker = broker if len(brokers) > 1 and broker in brokers else ""
    return html.Div([
        page_header("Tasks", html.Span(id="tasks-count", className="muted"),
                    subtitle="Sorting, filtering and paging run in the store; the table refreshes itself."),
        html.Div([
            dcc.Input(id="tasks-search", type="search", value=search, debounce=0.4, className="search-input wide",
                      placeholder="Search tasks: name:tasks.add state:FAILURE, a UUID, or any text…",
                      spellCheck=False, autoComplete="off"),
            broker_filter("tasks-broker", brokers, broker or None),
            html.Span("?", className="help", title=SEARCH_HELP + (BROKER_HELP if len(brokers) > 1 else "")),
        ], className="toolbar"),
        html.Div(search_message, id="tasks-search-message", className="inline-message", role="alert"),
        dcc.RadioItems(id="tasks-state", options=[{"label": label, "value": value} for label, value in STATE_CHIPS],
                       value=state, inline=True, className="chips", labelClassName="chip"),
        dcc.Store(id="tasks-query", data={"search": "" if search_message else search, "state": state,
                                          "broker": broker}),
        dag.AgGrid(
            id="tasks-grid",
            rowModelType="infinite",
            columnDefs=broker_columns(TASK_COLUMNS, brokers),
            defaultColDef={"sortable": True, "resizable": True,
                           "filterParams": {"buttons": ["apply", "reset"], "closeOnApply": True,
                                            "maxNumConditions": 2}},
            getRowId="params.data.uuid",
            dashGridOptions={"rowHeight": 34, "headerHeight": 38, "cacheBlockSize": 100, "maxBlocksInCache": 20, "rowBuffer": 10,
                             "infiniteInitialRowCount": 1, "tooltipShowDelay": 300,
                             "localeText": {"noRowsToShow": "No tasks match."}},
            style={"height": "calc(100vh - 290px)", "minHeight": "420px", "width": "100%"},
            className="grid",
        ),
    ])


_DETAIL_TIMES = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
_DETAIL_FIELDS = ("uuid", "name", "state", "worker", "args", "kwargs", "result", "retries", "runtime",
                  "eta", "expires", "exchange", "routing_key", "client", "root_id", "parent_id")


def task_detail(task: dict, relative_path) -> html.Div:
    def link_or_text(value):
        if value and value != task["uuid"]:
            return dcc.Link(value, href=relative_path(f"/task/{value}"), className="mono")
        return value

    rows = []
    for field in _DETAIL_FIELDS:
        value = task.get(field)
        if field in ("root_id", "parent_id"):
            value = link_or_text(value)
        elif field == "state":
            value = state_badge(value)
        elif field == "runtime" and value is not None:
            value = f"{value:.6f} s"
        rows.append(html.Tr([html.Th(field), html.Td(value if value not in (None, "") else "—")]))
    stamps = sorted((task[field], field) for field in _DETAIL_TIMES if task.get(field) is not None)
    times = [html.Tr([html.Th(field), html.Td(format_time(at))]) for at, field in stamps]  # in the order they happened
    wait = (task["started"] - task["received"]) if task.get("started") and task.get("received") else None
    if wait is not None:
        times.append(html.Tr([html.Th("queue wait"), html.Td(f"{wait:.6f} s")]))
    failure = []
    # A task that succeeded after a retry still carries the exception of the attempt that failed.
    earlier = "" if task.get("state") in ("FAILURE", "RETRY") else " of an earlier attempt"
    if task.get("exception"):
        failure.append(html.H2(f"Exception{earlier}"))
        failure.append(html.Pre(task["exception"], className="code exception"))
    if task.get("traceback"):
        failure.append(html.H2(f"Traceback{earlier}"))
        failure.append(html.Pre(task["traceback"], className="code"))
    return html.Div([
        page_header(task.get("name") or "Unknown task", state_badge(task.get("state")),
                    dcc.Link("← All tasks", href=relative_path("/tasks"), className="button ghost"),
                    subtitle=task["uuid"]),
        html.Div([
            html.Div([html.H2("Task"), html.Table(html.Tbody(rows), className="kv")], className="panel"),
            html.Div([html.H2("Timeline"), html.Table(html.Tbody(times), className="kv")], className="panel"),
        ], className="detail-grid"),
        html.Div(failure, className="panel") if failure else None,
    ], id="task-detail")

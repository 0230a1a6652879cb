"""The Tasks page (search, state chips, infinite grid) and the task detail view."""
from __future__ import annotations

import dash_ag_grid as dag
from dash import dcc, html

from monitor.control import BULK_RERUN_CAP
from monitor.store.schema import TERMINAL_STATES

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


def grid_columns(brokers: tuple[str, ...] | list[str] = (), sort: tuple[tuple[str, bool], ...] = (),
                 visible: tuple[str, ...] | None = None) -> list[dict]:
    """TASK_COLUMNS sorted by `sort` ((field, descending) pairs) and showing `visible` (None: the
    default columns), as the address asked (see callbacks/tasks.py grid_view)."""
    columns = []
    for column in broker_columns(TASK_COLUMNS, brokers):
        column = dict(column)
        if visible is not None:
            column["hide"] = column["field"] not in visible
        for index, (field, descending) in enumerate(sort):
            if field == column["field"]:
                column.update(sort="desc" if descending else "asc", sortIndex=index)
        columns.append(column)
    if visible is not None:  # in the order the address lists them; the hidden ones after
        columns.sort(key=lambda column: visible.index(column["field"]) if column["field"] in visible else len(visible))
    return columns


def tasks_layout(search: str, state: str, search_message: str = "", brokers: tuple[str, ...] | list[str] = (),
                 broker: str = "", can_act: bool = False, columns: list[dict] | None = None,
                 view_message: str = "") -> html.Div:
    """`search_message` says why `search` (from the address) cannot be understood; the grid then
    lists every task, as it does while a search typed in the box is malformed. `brokers`: the names of
    the brokers workers were recorded from; with several, a filter (set to `broker`) and a column.
    `can_act`: the user may re-run the tasks the search matches. `columns`: the grid's, sorted and
    shown as the address asks (grid_columns); `view_message` says what of that was ignored."""
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
            bulk_rerun_controls() if can_act else None,
        ], className="toolbar"),
        html.Div(search_message, id="tasks-search-message", className="inline-message", role="alert"),
        html.Div(view_message, className="inline-message", role="alert") if view_message else None,
        html.Div(id="act-bulk-panel", className="action-panel", role="status") if can_act else None,
        dcc.RadioItems(id="tasks-state", options=[{"label": label, "value": value} for label, value in STATE_CHIPS],
                       value=state, inline=True, className="chips", labelClassName="chip"),
        dcc.Store(id="tasks-query", data={"search": "" if search_message else search, "state": state,
                                          "broker": broker}),
        # The columns shown when the address names none: those the address leaves out.
        dcc.Store(id="tasks-default-columns", data=[column["field"] for column in grid_columns(brokers)
                                                    if not column.get("hide")]),
        dag.AgGrid(
            id="tasks-grid",
            rowModelType="infinite",
            columnDefs=columns or grid_columns(brokers),
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


def bulk_rerun_controls() -> html.Div:
    """Re-run what the search matches: a cap, then a preview with the count to confirm."""
    return html.Div([
        html.Button("Re-run matching…", id="bulk-rerun-preview", className="button ghost", n_clicks=0,
                    title="Re-run the finished tasks this search and state match (a preview with the count first)"),
        html.Label(["at most ", dcc.Input(id="bulk-rerun-cap", type="number", min=1, max=BULK_RERUN_CAP, step=1,
                                          value=100, className="number-input", debounce=True)],
                   className="muted small"),
    ], className="bulk-rerun")


def bulk_rerun_preview(matched: int, cap: int, describe: str) -> list:
    """The count a bulk re-run would send, and the button that sends it (after the browser's confirm)."""
    would_send = min(matched, cap)
    if would_send == 0:
        return [html.P(f"No finished task matches {describe}: nothing to re-run.")]
    more = f" (more than {cap:,} match; the first {cap:,} in the table's order)" if matched > cap else ""
    return [
        html.P(f"{would_send:,} finished task{'s' if would_send != 1 else ''} match {describe}{more}. "
               "Each is sent again with the same name, arguments and queue, under a new id."),
        dcc.ConfirmDialogProvider(
            html.Button(f"Re-run {would_send:,} task{'s' if would_send != 1 else ''}", className="button danger"),
            id="act-bulk-confirm", message=f"Re-run {would_send:,} tasks now? This sends them to the workers again."),
        html.Div(id="act-bulk-result", role="status"),
    ]


def action_outcome(result: dict, relative_path) -> html.Div:
    """What an action did: its message, and who confirmed, answered with an error, or stayed silent."""
    tone = {"ok": "ok", "sent": "ok", "partial": "warn"}.get(result["outcome"], "bad")
    lines = [html.Strong({"failed": "Not done: ", "partial": "Partly done: "}.get(result["outcome"], "")
                         + result["message"])]
    if result["confirmed"]:
        lines.append(html.Div(f"Confirmed by {', '.join(sorted(result['confirmed']))}"))
    for worker, error in sorted(result["errors"].items()):
        lines.append(html.Div(f"{worker}: {error}", className="error-line"))
    if result["silent"]:
        lines.append(html.Div(f"No answer from {', '.join(sorted(result['silent']))}"))
    if result["outcome"] == "sent" and not result["task_ids"]:
        lines.append(html.Div("The broker took it; the worker does not answer this one.", className="muted"))
    if result["task_ids"]:
        shown = result["task_ids"][:20]
        lines.append(html.Div(["New task" + ("s: " if len(result["task_ids"]) > 1 else ": "),
                               *[dcc.Link(task_id, href=relative_path(f"/task/{task_id}"), className="mono new-task")
                                 for task_id in shown],
                               f" and {len(result['task_ids']) - len(shown):,} more" if len(result["task_ids"]) > 20
                               else ""], className="task-links"))
    return html.Div(lines, className=f"action-outcome tone-{tone}")


def action_refused(reason: str) -> html.Div:
    return html.Div([html.Strong("Not done: "), reason], className="action-outcome tone-bad")


def task_actions(task: dict, can_abort: bool) -> html.Div:
    """An admin's actions on a task; each asks for confirmation in the browser first. A finished
    task can be re-run; one still queued or running can be revoked, terminated or aborted (with a
    result backend, `can_abort`)."""
    finished = task.get("state") in TERMINAL_STATES
    short = task["uuid"][:8]

    def confirmed(label: str, action: str, message: str, enabled: bool, why_not: str, tone: str = "ghost"):
        return dcc.ConfirmDialogProvider(
            html.Button(label, className=f"button {tone}", disabled=not enabled, id=f"task-{action}-button",
                        title=None if enabled else why_not),
            id=f"act-{action}", message=message)
    return html.Div([
        html.H2("Actions"),
        html.Div([
            confirmed("Re-run", "rerun", f"Re-run task {short}… with the same arguments, as a new task?", finished,
                      "only a finished task can be re-run", tone=""),
            confirmed("Revoke", "revoke", f"Revoke task {short}…? Workers will discard it.", not finished,
                      "the task has finished"),
            html.Div([
                confirmed("Terminate", "terminate", f"Terminate task {short}… with the chosen signal?", not finished,
                          "the task has finished", tone="danger"),
                dcc.Dropdown(id="task-signal", options=["SIGTERM", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1"],
                             value="SIGTERM", clearable=False, searchable=False, className="signal-dropdown",
                             disabled=finished),
            ], className="terminate-group"),
            confirmed("Abort", "abort", f"Abort task {short}…? (an AbortableTask stops at its next check)",
                      not finished and can_abort,
                      "the task has finished" if finished else "aborting needs the workers' result backend "
                                                               "(--result-backend)"),
        ], className="action-buttons"),
        html.Div(id="act-task-result", role="status"),
    ], className="panel actions-panel")


def task_detail(task: dict, relative_path, links: dict | None = None, can_act: bool = False,
                can_abort: bool = False) -> html.Div:
    """`links`: the task's re-run links (store.task_links); `can_act`: show the admin's actions;
    `can_abort`: a result backend is configured, through which a task can be aborted."""
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
    if links and links["rerun_of"]:
        rows.append(html.Tr([html.Th("re-run of"), html.Td(link_or_text(links["rerun_of"]))], id="task-rerun-of"))
    if links and links["reruns"]:
        rows.append(html.Tr([html.Th("re-runs"), html.Td([html.Div(link_or_text(rerun)) for rerun in links["reruns"]])],
                            id="task-reruns"))
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
        dcc.Store(id="task-detail-uuid", data=task["uuid"]),
        html.Div([
            html.Div([html.H2("Task"), html.Table(html.Tbody(rows), className="kv")], className="panel"),
            html.Div([html.H2("Timeline"), html.Table(html.Tbody(times), className="kv")], className="panel"),
        ], className="detail-grid"),
        task_actions(task, can_abort) if can_act else None,
        html.Div(failure, className="panel") if failure else None,
    ], id="task-detail")

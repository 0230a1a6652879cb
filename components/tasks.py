"""The Tasks page (search, state chips, infinite grid) and the task detail view."""
from __future__ import annotations

import dash_ag_grid as dag
from dash import dcc, html

from monitor.control import BULK_RERUN_CAP
from monitor.query.search import EXAMPLES as SEARCH_EXAMPLES
from monitor.store.schema import TERMINAL_STATES

from .common import (broker_columns, broker_filter, format_duration, format_time, openable_fitting_grid, page_header,
                     state_badge)

STATE_CHIPS = (("All", "ALL"), ("Started", "STARTED"), ("Succeeded", "SUCCESS"), ("Failed", "FAILURE"),
               ("Retried", "RETRY"), ("Received", "RECEIVED"))

_TIME = {"valueFormatter": {"function": "flowerbedTime(params.value)"}, "filter": "agDateColumnFilter",
         "tooltipValueGetter": {"function": "flowerbedTimeMs(params.value)"}, "width": 160}
_TEXT = {"filter": "agTextColumnFilter"}


def _zoned(label: str) -> dict:
    """A time column's header names the zone its times are shown in (UTC unless the user chose theirs)."""
    return {"headerValueGetter": {"function": f"flowerbedZonedHeader('{label}')"}}


_FREE_FORM = {"minWidth": 100, "flex": 1, "cellClass": "mono", **_TEXT}
_ID = {"width": 225, "cellClass": "mono", **_TEXT}
# Fixed widths for the columns whose content has a known length; name and the free-form columns
# share what is left, so that Runtime and Worker stay on screen at common laptop widths. A cell
# too narrow for its text shows it whole in a tooltip.
TASK_COLUMNS = [
    {"field": "name", "headerName": "Name", "minWidth": 140, "flex": 1.4, "tooltipField": "name", **_TEXT},
    {"field": "uuid", "headerName": "UUID", "tooltipField": "uuid", **_ID},
    {"field": "state", "headerName": "State", "width": 108, **_TEXT,
     "cellClassRules": {f"cell-{css}": f"params.value == '{state}'" for state, css in (
         ("SUCCESS", "success"), ("FAILURE", "failure"), ("RETRY", "retry"), ("STARTED", "started"),
         ("RECEIVED", "received"), ("REVOKED", "revoked"))}},
    {"field": "args", "headerName": "args", "tooltipField": "args", **_FREE_FORM},
    {"field": "kwargs", "headerName": "kwargs", "tooltipField": "kwargs", **_FREE_FORM},
    {"field": "result", "headerName": "Result", "tooltipField": "result", **_FREE_FORM},
    {"field": "sent", "headerName": "Sent (UTC)", **_zoned("Sent"), "hide": True, **_TIME},
    {"field": "received", "headerName": "Received (UTC)", **_zoned("Received"), **_TIME},
    {"field": "started", "headerName": "Started (UTC)", **_zoned("Started"), **_TIME},
    # When the task finished, whichever way; the store has no such column to sort or filter by.
    {"colId": "finished", "headerName": "Finished (UTC)", **_zoned("Finished"), "hide": True, "sortable": False, "filter": False,
     "valueGetter": {"function": "params.data ? (params.data.succeeded || params.data.failed || params.data.revoked) : null"},
     **{key: value for key, value in _TIME.items() if key != "filter"}},
    # The first click sorts slowest first: the question people ask of runtimes.
    {"field": "runtime", "headerName": "Runtime", "width": 124, "type": "numericColumn",
     "filter": "agNumberColumnFilter", "sortingOrder": ["desc", "asc", None],
     "valueFormatter": {"function": "flowerbedDuration(params.value)"},
     "headerTooltip": "Runtime; its filter takes seconds",
     "tooltipValueGetter": {"function": "params.value == null ? '' : params.value + ' s'"}},
    {"field": "worker", "headerName": "Worker", "width": 180, "tooltipField": "worker", **_TEXT},
    {"field": "broker", "headerName": "Broker", "width": 130, "hide": True, **_TEXT},  # shown with several brokers
    {"field": "routing_key", "headerName": "Queue", "width": 130, "hide": True, "tooltipField": "routing_key", **_TEXT},
    {"field": "retries", "headerName": "Retries", "width": 100, "type": "numericColumn", "hide": True,
     "filter": "agNumberColumnFilter"},
    {"field": "eta", "headerName": "ETA", "width": 200, "hide": True, "tooltipField": "eta", **_TEXT},
    {"field": "exception", "headerName": "Exception", "minWidth": 200, "flex": 1, "hide": True,
     "tooltipField": "exception", **_TEXT},
    {"field": "parent_id", "headerName": "Parent", "hide": True, "tooltipField": "parent_id", **_ID},
    {"field": "root_id", "headerName": "Root", "hide": True, "tooltipField": "root_id", **_ID},
]


def column_id(column: dict) -> str:
    """The id AG Grid knows a column by: its field, or its colId when it has none (Finished)."""
    return column.get("field") or column["colId"]


# The columns the address (cols=) and the chooser may name; those the store can sort by (sort=).
COLUMN_IDS = tuple(map(column_id, TASK_COLUMNS))
SORTABLE_FIELDS = tuple(column["field"] for column in TASK_COLUMNS if "field" in column)
# What the grid reads: its columns' fields, and the times its Finished column is made of.
GRID_FIELDS = SORTABLE_FIELDS + ("succeeded", "failed", "revoked")
# Always shown: a row is read by them. The column chooser offers every other column.
FIXED_COLUMNS = ("name", "state")
CHOOSABLE_COLUMNS = tuple((column["headerName"].removesuffix(" (UTC)"), column_id(column)) for column in TASK_COLUMNS
                          if column_id(column) not in FIXED_COLUMNS)
# The columns in the order a narrower screen gives them up last (assets/dashAgGridFunctions.js).
TASK_COLUMN_PRIORITY = ("name", "state", "runtime", "worker", "uuid", "received", "result", "args", "kwargs",
                        "started")


def search_help(with_brokers: bool) -> html.Details:
    """The search language by example, in a panel that the "?" button (or Enter on it) opens."""
    examples = [(typed, meaning) for typed, meaning in SEARCH_EXAMPLES if with_brokers or not typed.startswith("broker")]
    return html.Details([
        html.Summary("?", className="help", title="Search help", id="search-help-button",
                     **{"aria-label": "Search help"}),
        html.Div([
            html.Div([html.H2("Search help"),
                      html.Button("Close", type="button", className="button ghost small search-help-close")],
                     className="search-help-top"),
            html.Table(html.Tbody([html.Tr([html.Td(html.Code(typed)), html.Td(meaning)]) for typed, meaning in examples]),
                       className="help-table"),
            html.P(["Press ", html.Kbd("/"), " to jump to the search box; Enter on a row opens the task."],
                   className="muted small"),
        ], className="search-help-panel", id="search-help-panel"),
    ], className="search-help")


def grid_columns(brokers: tuple[str, ...] | list[str] = (), sort: tuple[tuple[str, bool], ...] = (),
                 visible: tuple[str, ...] | None = None) -> list[dict]:
    """TASK_COLUMNS, in their order, sorted by `sort` ((field, descending) pairs) and showing `visible`
    and the fixed two (None: the default columns), as the address asked (see callbacks/tasks.py grid_view)."""
    columns = []
    for column in broker_columns(TASK_COLUMNS, brokers):
        column = dict(column)
        if visible is not None:
            column["hide"] = column_id(column) not in (*FIXED_COLUMNS, *visible)
        for index, (field, descending) in enumerate(sort):
            if field == column.get("field"):
                column.update(sort="desc" if descending else "asc", sortIndex=index)
        columns.append(column)
    return columns


def chosen_columns(columns: list[dict]) -> list[str]:
    """The chooser's ticks for these columns: every shown one but the fixed two."""
    return [column_id(column) for column in columns if not column.get("hide") and column_id(column) not in FIXED_COLUMNS]


def tasks_layout(search: str, state: str, search_message: str = "", brokers: tuple[str, ...] | list[str] = (),
                 broker: str = "", can_act: bool = False, task_base: str = "/task/", columns: list[dict] | None = None,
                 view_message: str = "") -> html.Div:
    """`search_message` says why `search` (from the address) cannot be understood; the grid then
    lists no task, as while a search typed in the box is malformed. `brokers`: the names of
    the brokers workers were recorded from; with several, a filter (set to `broker`) and a column.
    `can_act`: the user may re-run the tasks the search matches. `task_base`: the path a task's id is
    appended to for its page (with the URL prefix). `columns`: the grid's, sorted and shown as the
    address asks (grid_columns); `view_message` says what of that was ignored."""
    state = state if state in {value for _label, value in STATE_CHIPS} else "ALL"
    broker = broker if len(brokers) > 1 and broker in brokers else ""
    return html.Div([
        page_header("Tasks", html.Span([html.Span(id="tasks-count"),
                                        html.Span(" · new tasks wait while the pointer is on the rows",
                                                  className="refresh-held-hint")], className="muted"),
                    subtitle="Sorting, filtering and paging run in the store; the table refreshes itself."),
        html.Div([
            dcc.Input(id="tasks-search", type="search", value=search, debounce=0.4, className="search-input wide",
                      placeholder="Search tasks: name:tasks.add state:FAILURE, a UUID, or any text…",
                      spellCheck=False, autoComplete="off"),
            broker_filter("tasks-broker", brokers, broker or None),
            search_help(len(brokers) > 1),
            column_chooser(chosen_columns(columns or grid_columns(brokers))),
            html.A("Download CSV", id="tasks-csv", className="button ghost", download="",
                   title="Every task the search, state and broker match (up to 100,000), raw values"),
            bulk_rerun_controls() if can_act else None,
        ], className="toolbar"),
        html.Div(search_message, id="tasks-search-message", className="inline-message", role="alert"),
        html.Div(view_message, className="inline-message", role="alert") if view_message else None,
        html.Div(id="act-bulk-panel", className="action-panel", role="status") if can_act else None,
        dcc.RadioItems(id="tasks-state", options=[{"label": label, "value": value} for label, value in STATE_CHIPS],
                       value=state, inline=True, className="chips", labelClassName="chip"),
        dcc.Store(id="tasks-query", data={"search": search, "state": state,
                                          "broker": broker}),
        # The chooser's ticks when the address names no columns: cols= is written only when they differ.
        dcc.Store(id="tasks-default-columns", data=chosen_columns(grid_columns(brokers))),
        dag.AgGrid(
            id="tasks-grid",
            rowModelType="infinite",
            columnDefs=columns or grid_columns(brokers),
            defaultColDef={"sortable": True, "resizable": True,
                           "filterParams": {"buttons": ["apply", "reset"], "closeOnApply": True,
                                            "maxNumConditions": 2}},
            getRowId="params.data.uuid",
            **openable_fitting_grid(task_base, TASK_COLUMN_PRIORITY, {
                "rowHeight": 34, "headerHeight": 38, "cacheBlockSize": 100, "maxBlocksInCache": 20, "rowBuffer": 10,
                "infiniteInitialRowCount": 1, "tooltipShowDelay": 300, "localeText": {"noRowsToShow": "No tasks match."}}),
            style={"height": "calc(100vh - 290px)", "minHeight": "420px", "width": "100%"},
            className="grid",
        ),
    ])


def column_chooser(shown: list[str]) -> html.Details:
    """A drop-down list of the grid's columns to tick, `shown` ticked (as the address asks); the
    choice is kept in this browser and written to the address (cols=)."""
    return html.Details([
        html.Summary("Columns", className="button ghost"),
        html.Div([
            dcc.Checklist(id="tasks-columns", options=[{"label": label, "value": column} for label, column in CHOOSABLE_COLUMNS],
                          value=shown, persistence="tasks-columns", persistence_type="local", className="column-list"),
            # On a phone the table keeps three of them: say so, or a ticked column seems to do nothing.
            html.P("The table shows the ticked columns that fit its width, the most useful first.",
                   className="column-note"),
        ], className="column-panel"),
    ], className="column-chooser")


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


def bulk_rerun_preview(matched: int, cap: int, describe: str, previewed: dict) -> list:
    """The count a bulk re-run would send, and the button that sends it (after the browser's confirm):
    to the tasks of `previewed` ({query, cap}), those counted, whatever the search says by then."""
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
        dcc.Store(id="act-bulk-previewed", data=previewed),
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


def task_actions(task: dict, can_abort: bool, lost: bool = False) -> html.Div:
    """An admin's actions on a task; each asks for confirmation in the browser first. A finished
    task can be re-run, and so can one `lost` in its worker's restart; one still queued or running can
    be revoked, terminated or aborted (with a result backend, `can_abort`)."""
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
            confirmed("Re-run", "rerun", f"Re-run task {short}… with the same arguments, as a new task?",
                      finished or lost, "only a finished task, or one lost in a restart, can be re-run", tone=""),
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
    ], className="panel actions-panel")


def task_detail(task: dict, relative_path, **parts) -> html.Div:
    """The task's page: `task_detail_body` (given `parts`) and what stays across its refreshes (the task's
    id, whether it has finished, an action's outcome). The body refreshes while the task has not finished."""
    return html.Div([
        dcc.Store(id="task-detail-uuid", data=task["uuid"]),
        dcc.Store(id="task-detail-finished", data=task.get("state") in TERMINAL_STATES),
        dcc.Store(id="task-act-request"),  # a confirmed click on an action: callbacks/tasks.py act_on_task
        html.Div(task_detail_body(task, relative_path, **parts), id="task-detail-body"),
        html.Div(id="act-task-result", role="status"),
    ], id="task-detail")


def stamp(epoch: float | None) -> html.Time | str:
    """A moment to the millisecond, in UTC; assets/timezone.js shows it in the browser's zone when
    the user chose so (it reads the moment from data-epoch)."""
    if epoch is None:
        return "—"
    return html.Time(format_time(epoch), className="stamp", **{"data-epoch": epoch})


def _copyable(text, element_id: str, what: str) -> list:
    return [html.Span(text, id=element_id),
            dcc.Clipboard(target_id=element_id, title=f"Copy the {what}", className="copy-button")]


def task_detail_body(task: dict, relative_path, links: dict | None = None, can_act: bool = False,
                     can_abort: bool = False, children: list[dict] | None = None,
                     more_children: bool = False, lost_at: float | None = None) -> list:
    """`links`: the task's re-run links (store.task_links); `children`: the tasks it started
    (query.tasks.child_tasks), `more_children` when there are more than those; `can_act`: show the
    admin's actions; `can_abort`: a result backend is configured, through which a task can be aborted;
    `lost_at`: when its worker started again, leaving it behind (schema.lost_at)."""
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
            value = html.Span(format_duration(value), title=f"{value} s", id="task-runtime")
        elif field == "uuid":
            value = _copyable(value, "task-uuid-text", "task id")
        elif field == "args" and value not in (None, ""):
            value = _copyable(value, "task-args-text", "arguments")
        rows.append(html.Tr([html.Th(field), html.Td(value if value not in (None, "") else "—")]))
    if links and links["rerun_of"]:
        rows.append(html.Tr([html.Th("re-run of"), html.Td(link_or_text(links["rerun_of"]))], id="task-rerun-of"))
    if links and links["reruns"]:
        rows.append(html.Tr([html.Th("re-runs"), html.Td([html.Div(link_or_text(rerun)) for rerun in links["reruns"]])],
                            id="task-reruns"))
    stamps = sorted((task[field], field) for field in _DETAIL_TIMES if task.get(field) is not None)
    times = [html.Tr([html.Th(field), html.Td(stamp(at))]) for at, field in stamps]  # in the order they happened
    if lost_at is not None:
        times.append(html.Tr([html.Th("worker last started"), html.Td([
            stamp(lost_at), html.Div("after this task: lost, it will not finish nor say so", className="muted small")])],
            id="task-lost"))
    wait = (task["started"] - task["received"]) if task.get("started") and task.get("received") else None
    if wait is not None:
        times.append(html.Tr([html.Th("queue wait"), html.Td(format_duration(wait), title=f"{wait} s")]))
    failure = []
    # A task that succeeded after a retry still carries the exception of the attempt that failed.
    earlier = "" if task.get("state") in ("FAILURE", "RETRY") else " of an earlier attempt"
    if task.get("exception"):
        failure.append(html.H2(f"Exception{earlier}"))
        failure.append(html.Pre(task["exception"], className="code exception"))
    if task.get("traceback"):
        failure.append(html.H2(f"Traceback{earlier}"))
        failure.append(html.Pre(task["traceback"], className="code"))
    return [
        page_header(task.get("name") or "Unknown task", state_badge(task.get("state")),
                    dcc.Link("← All tasks", href=relative_path("/tasks"), className="button ghost"),
                    subtitle=task["uuid"]),
        html.Div([
            html.Div([html.H2("Task"), html.Table(html.Tbody(rows), className="kv")], className="panel"),
            html.Div([html.H2("Timeline"), html.Table(html.Tbody(times), className="kv")], className="panel"),
        ], className="detail-grid"),
        task_children(children, more_children, relative_path) if children else None,
        task_actions(task, can_abort, lost=lost_at is not None) if can_act else None,
        html.Div(failure, className="panel") if failure else None,
    ]


def task_children(children: list[dict], more: bool, relative_path) -> html.Div:
    """The tasks this one started, each a link, with its state and runtime."""
    rows = [html.Tr([html.Td(dcc.Link(child["uuid"], href=relative_path(f"/task/{child['uuid']}"), className="mono")),
                     html.Td(child["name"] or "—"), html.Td(state_badge(child["state"])),
                     html.Td(format_duration(child["runtime"]) if child["runtime"] is not None else "—")])
            for child in children]
    return html.Div([
        html.H2("Children"),
        html.Table(html.Tbody(rows), className="kv children"),
        html.P(f"The first {len(children)}; it started more.", className="muted small") if more else None,
    ], className="panel", id="task-children")

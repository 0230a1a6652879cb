"""The Tasks page: search validation, the infinite grid's rows, refresh, opening a task, bulk
re-run; the task detail view's actions."""
from __future__ import annotations

import dataclasses
import urllib.parse

from dash import Input, Output, State, no_update
from dash.exceptions import PreventUpdate

import auth
from components.tasks import (COLUMN_IDS, GRID_FIELDS, SORTABLE_FIELDS, STATE_CHIPS, action_outcome, action_refused, bulk_rerun_preview,
                              grid_columns, task_detail, task_detail_body)
from monitor.control import ControlError
from monitor.query import search
from monitor.query.tasks import (QueryError, TaskQuery, child_tasks, fetch_tasks, grid_request_query, parse_sort,
                                 shown)
from monitor.store.schema import TERMINAL_STATES, lost_at

CHILDREN_SHOWN = 50

CHIP_STATES = tuple(value for _label, value in STATE_CHIPS)


def grid_query(request: dict, query: dict) -> TaskQuery:
    """A TaskQuery from AG Grid's getRowsRequest and the page's query ({search, state chip, broker})."""
    if not isinstance(query, dict):
        raise QueryError(f"malformed page query: {shown(query)}")
    state = query.get("state") or "ALL"
    if state not in CHIP_STATES:
        raise QueryError(f"unknown state {shown(state)}")
    broker = query.get("broker") or ""
    try:
        search.check_text(broker, "the broker")  # it is bound as a parameter: text SQLite can take
    except search.SearchError as exc:
        raise QueryError(str(exc)) from None
    wanted = grid_request_query(request, query.get("search") or "", () if state == "ALL" else (state,))
    return dataclasses.replace(wanted, brokers=(broker,) if broker else ())


FIRST_SCREEN_ROWS = 60  # as many as assets/first_screen.js draws of a grid


def first_rows(services, layout) -> dict[str, list[dict]]:
    """The first rows of the Tasks grid of `layout` ({grid id: rows}; {} on other pages), as its first request
    will ask for them (its sort, no filter), for the first screen to draw before the grid is up (app.py);
    not counted, as the drawing shows no count. [] for a query the grid will refuse."""
    try:
        grid, query = layout["tasks-grid"], layout["tasks-query"]
    except KeyError:
        return {}
    sorted_columns = sorted((column for column in grid.columnDefs if column.get("sort")),
                            key=lambda column: column.get("sortIndex", 0))
    request = {"startRow": 0, "endRow": FIRST_SCREEN_ROWS, "filterModel": {},
               "sortModel": [{"colId": column.get("colId") or column["field"], "sort": column["sort"]}
                             for column in sorted_columns]}
    try:
        rows = fetch_tasks(services.store, grid_query(request, query.data or {}), GRID_FIELDS, counted=False).rows
    except QueryError:
        rows = []
    return {"tasks-grid": rows}


def grid_view(params: dict[str, list[str]], brokers) -> tuple[list[dict], str]:
    """The grid's columns with the sort (sort=state,-received) and the visible columns
    (cols=name,state,...) the address asks for, and what in the address was ignored, or ''."""
    problems, sort, visible = [], (), None
    if params.get("sort", [""])[0]:
        outside = [part.strip().lstrip("-") for part in params["sort"][0].split(",")
                   if part.strip().lstrip("-") not in SORTABLE_FIELDS]
        if outside:
            problems.append(f"sort ignored: the table has no column {shown(outside[0])}")
        else:
            sort = parse_sort(params["sort"][0])
    if params.get("cols", [""])[0]:
        fields = params["cols"][0].split(",")
        unknown = [field for field in fields if field not in COLUMN_IDS]
        if unknown:
            problems.append(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(shown, unknown))} ignored")
        visible = tuple(dict.fromkeys(field for field in fields if field in COLUMN_IDS)) or None
    message = f"From the address: {'; '.join(problems)}." if problems else ""
    return grid_columns(brokers, sort, visible), message


def search_message(text: str | None) -> str:
    """What the Tasks page says under the search box: why the search cannot be understood and at
    which character (counted from 1, as a person counts), or ''."""
    try:
        search.compile_search(text)
    except search.SearchError as exc:
        where = "" if exc.position is None else f" at character {exc.position + 1}"
        return f"Search not understood{where}: {exc}"
    return ""


def carried(text) -> bool:
    """Whether a search can go into the page's query (and the address) even when malformed: text
    the store could look for; else it stays out, and the grid keeps the last query."""
    try:
        search.check_text("" if text is None else text, "the search")
    except search.SearchError:
        return False
    return True


def describe_query(query: dict) -> str:
    """'the search "x" and state FAILURE', as the bulk re-run preview names what it re-runs."""
    parts = [f'the search "{query["search"]}"'] if query.get("search") else []
    if query.get("state") not in (None, "", "ALL"):
        parts.append(f"state {query['state']}")
    if query.get("broker"):
        parts.append(f"broker {query['broker']}")
    return " and ".join(parts) or "the empty search (every task)"


def detail_parts(services, task: dict) -> dict:
    """What the task detail view shows besides the task: its links, children and the user's rights."""
    children = child_tasks(services.store, task["uuid"], CHILDREN_SHOWN + 1).rows
    worker = services.store.worker(task["worker"]) if task.get("worker") else None
    return {"links": services.store.task_links(task["uuid"]), "children": children[:CHILDREN_SHOWN],
            "lost_at": lost_at(task, worker),
            "more_children": len(children) > CHILDREN_SHOWN, "can_act": auth.can_act(),
            "can_abort": bool(services.settings.result_backend)}


def detail_page(app, services, task: dict):
    return task_detail(task, app.get_relative_path, **detail_parts(services, task))


def register(app, services) -> None:
    register_actions(app, services)

    @app.callback(
        Output("task-detail-body", "children"),
        Output("task-detail-finished", "data"),
        Input("store-version", "data"),
        State("task-detail-uuid", "data"),
        State("task-detail-finished", "data"),
        prevent_initial_call=True,
    )
    def refresh_task_detail(_version, uuid, finished):
        """While the task has not finished, each store change redraws its page (once more when it does)."""
        if finished or not isinstance(uuid, str):
            raise PreventUpdate
        task = services.store.get_task(uuid)
        if task is None:
            raise PreventUpdate
        body = task_detail_body(task, app.get_relative_path, **detail_parts(services, task))
        return body, task.get("state") in TERMINAL_STATES

    tasks_path = app.get_relative_path("/tasks")

    @app.callback(
        Output("tasks-query", "data"),
        Output("tasks-search-message", "children"),
        Input("tasks-search", "value"),
        Input("tasks-state", "value"),
        Input("tasks-broker", "value"),
        prevent_initial_call=True,
    )
    def update_query(text, state, broker):
        malformed = search_message(text)
        refused = ("" if state in (None, *CHIP_STATES) else f"Unknown state {shown(state)}") or (
            "" if isinstance(broker, (str, type(None))) else f"Unknown broker {shown(broker)}")
        if refused or malformed and not carried(text):
            return no_update, malformed or refused
        # A malformed search is still the query: the grid empties rather than show the last one's rows.
        return {"search": text or "", "state": state or "", "broker": broker or ""}, malformed

    @app.callback(
        Output("tasks-grid", "getRowsResponse"),
        Output("tasks-count", "children"),
        Input("tasks-grid", "getRowsRequest"),
        State("tasks-query", "data"),
        prevent_initial_call=True,
    )
    def load_rows(request, query):
        if not request:
            return no_update, no_update
        try:
            wanted = grid_query(request, query or {})
            page = fetch_tasks(services.store, wanted, GRID_FIELDS)
        except QueryError as exc:
            # A malformed search is explained under the search box; the count stays empty.
            malformed_search = isinstance(query, dict) and carried(query.get("search")) and search_message(query.get("search"))
            return {"rowData": [], "rowCount": 0}, "" if malformed_search else f"Filter not understood: {exc}"
        count = f"{page.total:,}{'' if page.total_is_exact else '+'} task{'' if page.total == 1 else 's'}"
        # With an exact total the grid sizes its scrollbar; otherwise it grows as rows arrive.
        row_count = page.total if page.total_is_exact else None
        if row_count is None and len(page.rows) < wanted.limit:
            row_count = wanted.offset + len(page.rows)
        return {"rowData": page.rows, "rowCount": row_count}, count

    @app.callback(Output("tasks-csv", "href"), Input("tasks-query", "data"))
    def csv_link(query):
        """The tasks CSV of what the page's query matches (/api/tasks.csv takes the API's parameters)."""
        query = query if isinstance(query, dict) else {}
        params = {"search": query.get("search"), "broker": query.get("broker"),
                  "state": "" if query.get("state") == "ALL" else query.get("state")}
        return app.get_relative_path("/api/tasks.csv") + "?" + urllib.parse.urlencode(
            {key: value for key, value in params.items() if isinstance(value, str) and value})

    # A new query empties the grid's cache; the interval re-reads the visible blocks in place,
    # so sort, filters and scroll position stay where the user left them.
    app.clientside_callback(
        """function(query) {
            try { dash_ag_grid.getApi('tasks-grid').purgeInfiniteCache(); } catch (notReady) {}
            window.flowerbedReplaceQuery({q: query.search, state: query.state === 'ALL' ? '' : query.state,
                                          broker: query.broker}, '%s');
            return window.dash_clientside.no_update;
        }""" % tasks_path,
        Output("tasks-grid", "className"),
        Input("tasks-query", "data"),
        prevent_initial_call=True,
    )
    # The sort (as the grid reports it) and the chosen columns go to the address too; not the columns
    # the width hides (flowerbedFitColumns), which depend on the screen, not on the user.
    app.clientside_callback(
        """function(columnState, chosen, defaultChosen) {
            if (columnState) {
                window.flowerbedReplaceQuery(window.flowerbedGridView(columnState, chosen, defaultChosen), '%s');
            }
            return window.dash_clientside.no_update;
        }""" % tasks_path,
        Output("tasks-default-columns", "data"),
        Input("tasks-grid", "columnState"),
        Input("tasks-columns", "value"),
        State("tasks-default-columns", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(  # only when something was stored: an idle cluster costs no reload
        """function(version) {
            window.flowerbedRefreshWhenLeft('tasks-grid', function () {
                try { dash_ag_grid.getApi('tasks-grid').refreshInfiniteCache(); } catch (notReady) {}
            });
            return window.dash_clientside.no_update;
        }""",
        Output("tasks-grid", "style"),
        Input("store-version", "data"),
        prevent_initial_call=True,
    )

    app.clientside_callback(  # the grid may not be ready when a kept choice is applied at load
        """function(shown, choosable) {
            dash_ag_grid.getApiAsync('tasks-grid').then(function (api) {
                var all = choosable.map(function (option) { return option.value; });
                var hidden = all.filter(function (column) { return shown.indexOf(column) < 0; });
                // The width fitting (flowerbedFitColumns) reads it: a hidden column never comes back.
                api.setGridOption('context', Object.assign({}, api.getGridOption('context'), {hiddenByUser: hidden}));
                api.setColumnsVisible(hidden, false);
                api.setColumnsVisible(shown, true);
            });
            return window.dash_clientside.no_update;
        }""",
        Output("tasks-columns", "className"),
        Input("tasks-columns", "value"),
        State("tasks-columns", "options"),
    )

    app.clientside_callback(
        """function(cell) {
            if (cell && cell.rowId) { window.flowerbedNavigate('%s' + encodeURIComponent(cell.rowId)); }
            return window.dash_clientside.no_update;
        }""" % app.get_relative_path("/task/"),
        Output("tasks-grid", "id"),
        Input("tasks-grid", "cellClicked"),
        prevent_initial_call=True,
    )


def register_actions(app, services) -> None:
    """The callbacks that act. Their outputs' ids start with auth.ACTION_PREFIX, so a read-only
    user's request is refused (403) before it gets here; the check inside says so again."""
    controller = services.controller

    def acting_user() -> str:
        if not auth.can_act():
            raise PreventUpdate
        return auth.current_user()

    # The body's refresh (while the task runs) puts new buttons in, which Dash reports as a trigger
    # without a click. Sent to the server, that trigger would replace the request of a click still
    # under way, and Dash drops the answer of a replaced request: the action done, its outcome never
    # shown. So the browser passes on confirmed clicks only.
    app.clientside_callback(
        """function() {
            var triggered = window.dash_clientside.callback_context.triggered;
            if (!triggered || !triggered.length || !triggered[0].value) { return window.dash_clientside.no_update; }
            return {action: triggered[0].prop_id.split('.')[0], at: Date.now()};
        }""",
        Output("task-act-request", "data"),
        [Input(f"act-{action}", "submit_n_clicks") for action in ("rerun", "revoke", "terminate", "abort")],
        prevent_initial_call=True,
    )

    @app.callback(
        Output("act-task-result", "children"),
        Input("task-act-request", "data"),
        State("task-signal", "value"),
        State("task-detail-uuid", "data"),
        prevent_initial_call=True,
    )
    def act_on_task(request, signal, task_id):
        if not isinstance(request, dict):
            raise PreventUpdate
        user = acting_user()
        action = request.get("action")
        try:
            if action == "act-rerun":
                result = controller.rerun(user, task_id)
            elif action == "act-revoke":
                result = controller.revoke(user, task_id)
            elif action == "act-terminate":
                result = controller.revoke(user, task_id, terminate=True, signal=signal)
            elif action == "act-abort":
                result = controller.abort(user, task_id)
            else:
                raise PreventUpdate
        except ControlError as exc:
            return action_refused(str(exc))
        return action_outcome(result.as_dict(), app.get_relative_path)

    def bulk_query(query: dict) -> TaskQuery:
        return grid_query({}, query or {})

    @app.callback(
        Output("act-bulk-panel", "children"),
        Input("bulk-rerun-preview", "n_clicks"),
        State("bulk-rerun-cap", "value"),
        State("tasks-query", "data"),
        prevent_initial_call=True,
    )
    def preview_bulk_rerun(_clicks, cap, query):
        acting_user()
        try:
            preview = controller.rerun_preview(bulk_query(query), cap if cap is not None else 0)
        except (ControlError, QueryError) as exc:
            return action_refused(str(exc))
        return bulk_rerun_preview(preview.matched, preview.cap, describe_query(query or {}),
                                  {"query": query, "cap": cap})

    # A preview counts one search and cap: another search or cap puts it away, rather than leave a
    # button that says one count under a search that matches others.
    app.clientside_callback(
        """function() { return []; }""",
        Output("act-bulk-panel", "children", allow_duplicate=True),
        Input("tasks-query", "data"),
        Input("bulk-rerun-cap", "value"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("act-bulk-result", "children"),
        Input("act-bulk-confirm", "submit_n_clicks"),
        State("act-bulk-previewed", "data"),
        prevent_initial_call=True,
    )
    def bulk_rerun(_submitted, previewed):
        user = acting_user()
        previewed = previewed if isinstance(previewed, dict) else {}
        cap = previewed.get("cap")
        try:
            result = controller.bulk_rerun(user, bulk_query(previewed.get("query")), cap if cap is not None else 0)
        except (ControlError, QueryError) as exc:
            return action_refused(str(exc))
        return action_outcome(result.as_dict(), app.get_relative_path)

"""The Analytics page and the Dashboard's compact charts: read the rollups, build the figures.

`refresh_outputs` is the whole work of one refresh without Dash (the benchmark calls it as it is);
the callbacks map its result onto their outputs.
"""
from __future__ import annotations

import contextlib
import json
import dataclasses
import time

from dash import Input, Output, State
from plotly.io.json import to_json_plotly

from components import analytics as view
from monitor.query import analytics
from monitor.query.search import format_moment, parse_moment

GRIDS = ("analytics-stats", "analytics-exceptions", "analytics-slowest", "analytics-stuck")
# The figures travel in one store; a clientside callback hands them to the graphs, keeping a zoom.
FIGURES = ("analytics-figures", "data")
REFRESH_OUTPUTS = (
    [("analytics-message", "children"), ("analytics-updated", "children"), ("analytics-cards", "children"), FIGURES]
    + [(grid, "rowData") for grid in GRIDS]
)
# Give each graph its figure from the store, keeping the user's zoom while the data stays the same
# (same uirevision). uirevision alone does not keep it in Dash 4: its Graph writes a zoom back into
# the figure prop and replots, so plotly forgets the zoom was the user's and the next figure resets it.
_SHOW_FIGURES = """function(figures) {
    var current = Array.prototype.slice.call(arguments, 1);
    return %s.map(function(graph, index) {
        var next = figures && figures[graph];
        if (!next) { return window.dash_clientside.no_update; }
        var before = current[index] && current[index].layout;
        if (before && before.uirevision === next.layout.uirevision) {
            ['xaxis', 'yaxis'].forEach(function(axis) {
                var zoomed = before[axis];
                if (zoomed && zoomed.autorange === false && zoomed.range && next.layout[axis]) {
                    next.layout[axis] = Object.assign({}, next.layout[axis], {range: zoomed.range, autorange: false});
                }
            });
        }
        return next;
    });
}"""
# Open the drill-down target of a clicked mark or row (see components/analytics.py).
_OPEN_CLICKED_MARK = """function() {
    var context = window.dash_clientside.callback_context;
    var triggered = context.triggered && context.triggered[0];
    var point = triggered && triggered.value && triggered.value.points && triggered.value.points[0];
    if (!point) { return window.dash_clientside.no_update; }
    var figure = context.states[triggered.prop_id.split('.')[0] + '.figure'];
    var trace = figure && figure.data[point.curveNumber];
    if (trace && trace.meta) { window.flowerbedOpenTasks('%s', trace.meta, [].concat(point.customdata || [])); }
    return window.dash_clientside.no_update;
}"""
_OPEN_CLICKED_ROW = """function() {
    var triggered = window.dash_clientside.callback_context.triggered;
    var cell = triggered && triggered.length ? triggered[0].value : null;
    if (!cell) { return window.dash_clientside.no_update; }
    var row = dash_ag_grid.getApi(triggered[0].prop_id.split('.')[0]).getDisplayedRowAtIndex(cell.rowIndex);
    var data = row && row.data;
    if (data && data.drill) { window.flowerbedOpenTasks('%s', data.drill, []); }
    else if (data && data.uuid) { window.flowerbedNavigate('%stask/' + encodeURIComponent(data.uuid)); }
    return window.dash_clientside.no_update;
}"""


def scope_from_controls(range_key, custom_from, custom_to, names, workers, queues,
                        now: float | None = None, brokers=None) -> analytics.Scope:
    """The Scope the controls describe; AnalyticsError with a message for the user otherwise."""
    filters = {"names": tuple(names or ()), "workers": tuple(workers or ()), "queues": tuple(queues or ()),
               "brokers": tuple(brokers or ())}
    if range_key != "custom":
        return analytics.last(range_key or "1h", now, **filters)
    moments = []
    for label, text in (("from", custom_from), ("to", custom_to)):
        if not text:
            raise analytics.AnalyticsError(f"Custom range: enter a '{label}' date/time, e.g. 2026-11-25 09:00 (UTC)")
        try:
            moments.append(parse_moment(text))
        except ValueError:
            raise analytics.AnalyticsError(
                f"Custom range: '{label}' should be a UTC date/time such as 2026-11-25 09:00, not {text!r}") from None
    return analytics.Scope(*moments, **filters)


def refresh_outputs(store, scope: analytics.Scope, stuck_limit: float = analytics.DEFAULT_STUCK_SECONDS,
                    now: float | None = None, timings: dict | None = None) -> dict:
    """Everything one refresh of the Analytics page shows, keyed by (component id, property).

    `timings`, when given, collects the seconds each query took (for the benchmark)."""
    now = time.time() if now is None else now

    @contextlib.contextmanager
    def timed(label):
        began = time.perf_counter()
        yield
        if timings is not None:
            timings.setdefault(label, []).append(time.perf_counter() - began)

    revision = _uirevision(scope)
    with timed("throughput"):
        series = analytics.throughput(store, scope, now)
        rates = analytics.failure_rate(series)
    with timed("stats"):
        stats = analytics.task_stats(store, scope, now)
    with timed("workers"):
        activity = analytics.worker_activity(store, scope, now)
    with timed("slowest"):
        slowest = analytics.slowest_tasks(store, scope, stats)
    with timed("stuck"):
        stuck = analytics.stuck_tasks(store, scope, dict(zip(stats["name"], stats["runtime_p99"])),
                                      stuck_limit or analytics.DEFAULT_STUCK_SECONDS, now)
    with timed("exceptions"):
        groups = analytics.exception_groups(store, scope)
        samples = analytics.tracebacks(store, groups["sample_uuid"])
    with timed("figures"):
        figures = {
            "analytics-throughput": view.throughput_figure(series, scope, revision),
            "analytics-failure-rate": view.failure_rate_figure(rates, scope, revision),
            "analytics-runtime": view.distribution_figure(stats, "runtime", scope, revision),
            "analytics-wait": view.distribution_figure(stats, _wait_metric(stats), scope, revision),
            "analytics-failures-by-name": view.failures_by_name_figure(stats, scope, revision),
            "analytics-worker-active": view.worker_figure(activity, "active_mean", "active tasks", scope, revision),
            "analytics-worker-load": view.worker_figure(activity, "load1", "load", scope, revision),
        }
        outputs = {
            ("analytics-message", "children"): _empty_note(scope, stats),
            ("analytics-updated", "children"): (
                f"updated {format_moment(now)[11:]} UTC · {view.step_label(analytics.bucket_seconds(scope, now))} buckets"),
            ("analytics-cards", "children"): view.summary_cards(stats, len(stuck), scope),
            FIGURES: figures,
            ("analytics-stats", "rowData"): view.stats_rows(stats, scope),
            ("analytics-exceptions", "rowData"): view.exception_rows(groups, samples, scope),
            ("analytics-slowest", "rowData"): view.task_rows(slowest, analytics.SLOWEST_COLUMNS),
            ("analytics-stuck", "rowData"): view.task_rows(stuck, analytics.STUCK_COLUMNS),
        }
    return outputs


def response_body(outputs: dict) -> str:
    """The JSON Dash would send for these outputs ({"response": {id: {prop: value}}})."""
    response: dict = {}
    for (component, prop), value in outputs.items():
        response.setdefault(component, {})[prop] = value
    return to_json_plotly({"multi": True, "response": response})


def _wait_metric(stats) -> str:
    """sent → started when task-sent events arrive (it includes the broker's share), else received → started."""
    if not stats.empty and stats["sent_wait_count"].sum() >= 0.5 * stats["wait_count"].sum() > 0:
        return "sent_wait"
    return "wait"


def _empty_note(scope, stats) -> str:
    if not stats.empty:
        return ""
    what = (" of the chosen names, workers or queues"
            if scope.names or scope.workers or scope.queues or scope.brokers else "")
    return (f"No task{what} finished between {format_moment(scope.start).replace('T', ' ')} and "
            f"{format_moment(scope.end).replace('T', ' ')} UTC: pick a longer range or clear the filters.")


def _uirevision(scope) -> str:
    # Zoom and legend choices survive refreshes, and reset when the user picks other data.
    return "|".join([",".join(scope.names), ",".join(scope.workers), ",".join(scope.queues), ",".join(scope.brokers),
                     f"{scope.span:.0f}"])


def error_outputs(message: str) -> dict:
    blank = view.empty_figure(message)
    outputs = {key: [] for key in REFRESH_OUTPUTS}
    outputs[FIGURES] = {graph: blank for graph in view.GRAPHS}
    outputs[("analytics-message", "children")] = message
    outputs[("analytics-updated", "children")] = ""
    return outputs


def compare_windows(scope: analytics.Scope, mode: str, split_text: str | None, now: float):
    """(before, after) Scopes for a comparison mode; AnalyticsError for a bad split time."""
    shifts = {"previous": scope.span, "day": 86400, "week": 7 * 86400}
    if mode in shifts:
        return scope.shifted(-shifts[mode]), scope
    if not split_text:
        raise analytics.AnalyticsError("Enter the time to split at, e.g. 2026-11-25 10:00 (UTC)")
    try:
        split = parse_moment(split_text)
    except ValueError:
        raise analytics.AnalyticsError(f"Split at: expected a UTC date/time such as 2026-11-25 10:00, "
                                       f"not {split_text!r}") from None
    if split >= now:
        raise analytics.AnalyticsError("Split at: pick a time in the past")
    after_end = min(split + scope.span, now)
    after = dataclasses.replace(scope, start=split, end=after_end)
    return dataclasses.replace(scope, start=split - (after_end - split), end=split), after


# The controls scope_from_controls reads: its arguments before `now`, then `brokers`.
SCOPE_INPUTS = [Input(control, "value") for control in (
    "analytics-range", "analytics-from", "analytics-to", "analytics-names", "analytics-workers", "analytics-queues",
    "analytics-brokers")]


def register(app, services) -> None:
    store = services.store
    base = app.get_relative_path("/")

    @app.callback(
        [Output(component, prop) for component, prop in REFRESH_OUTPUTS],
        Input("refresh-tick", "n_intervals"),
        *SCOPE_INPUTS,
        Input("analytics-stuck-limit", "value"),
    )
    def refresh_analytics(_tick, range_key, custom_from, custom_to, names, workers, queues, brokers, stuck_limit):
        try:
            scope = scope_from_controls(range_key, custom_from, custom_to, names, workers, queues, brokers=brokers)
            outputs = refresh_outputs(store, scope, float(stuck_limit or analytics.DEFAULT_STUCK_SECONDS))
        except analytics.AnalyticsError as exc:
            outputs = error_outputs(str(exc))
        return [outputs[key] for key in REFRESH_OUTPUTS]

    @app.callback(
        Output("analytics-compare", "rowData"),
        Output("compare-windows", "children"),
        Input("refresh-tick", "n_intervals"),
        Input("compare-mode", "value"),
        Input("compare-split", "value"),
        *SCOPE_INPUTS,
    )
    def refresh_compare(_tick, mode, split_text, range_key, custom_from, custom_to, names, workers, queues, brokers):
        now = time.time()
        try:
            scope = scope_from_controls(range_key, custom_from, custom_to, names, workers, queues, now, brokers)
            before, after = compare_windows(scope, mode, split_text, now)
        except analytics.AnalyticsError as exc:
            return [], str(exc)
        frame = analytics.compare(store, before, after, now)
        return view.compare_rows(frame, after), f"{view.window_label(before)}  →  {view.window_label(after)}"

    @app.callback(Output("analytics-custom", "style"), Input("analytics-range", "value"))
    def show_custom_range(range_key):
        return {"display": "flex"} if range_key == "custom" else {"display": "none"}

    @app.callback(Output("compare-split", "style"), Input("compare-mode", "value"))
    def show_split(mode):
        return {} if mode == "split" else {"display": "none"}

    @app.callback(Output("dashboard-figures", "data"), Input("refresh-tick", "n_intervals"),
                  Input("workers-broker", "value"))
    def refresh_dashboard_charts(_tick, broker):
        now = time.time()
        scope = analytics.last("1h", now, brokers=[broker] if broker else None)
        stats = analytics.task_stats(store, scope, now)
        return {
            "dashboard-throughput": view.throughput_figure(analytics.throughput(store, scope, now), scope,
                                                           "dashboard", height=170, compact=True),
            "dashboard-runtime": view.distribution_figure(stats, "runtime", scope, "dashboard", height=170,
                                                          limit=8, compact=True),
        }

    for figures_store, graphs in (("analytics-figures", view.GRAPHS), ("dashboard-figures", view.DASHBOARD_GRAPHS)):
        app.clientside_callback(_SHOW_FIGURES % json.dumps(graphs), [Output(graph, "figure") for graph in graphs],
                                Input(figures_store, "data"), [State(graph, "figure") for graph in graphs],
                                prevent_initial_call=True)

    for sink, graphs in (("analytics-drill", view.GRAPHS), ("dashboard-drill", view.DASHBOARD_GRAPHS)):
        app.clientside_callback(_OPEN_CLICKED_MARK % base, Output(sink, "data"),
                                [Input(graph, "clickData") for graph in graphs],
                                [State(graph, "figure") for graph in graphs], prevent_initial_call=True)
    app.clientside_callback(_OPEN_CLICKED_ROW % (base, base), Output("analytics-drill-rows", "data"),
                            [Input(grid, "cellClicked") for grid in view.CSV_GRIDS], prevent_initial_call=True)
    for grid in view.CSV_GRIDS:
        app.clientside_callback("function(clicks) { return clicks > 0; }", Output(grid, "exportDataAsCsv"),
                                Input(f"{grid}-csv", "n_clicks"), prevent_initial_call=True)

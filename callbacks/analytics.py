"""The Analytics page and the Dashboard's compact charts: read the rollups, build the figures.

`refresh_outputs` is the whole work of one refresh without Dash (the benchmark calls it as it is);
the callbacks map its result onto their outputs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time

from dash import Input, Output, State, no_update
from plotly.io.json import to_json_plotly

from components import analytics as view
from monitor.query import analytics
from monitor.query.search import format_moment, parse_moment
from monitor.serving.csv_export import file_name
from monitor.services import store_version

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
# A time axis always carries the range's own [start, end], so a fixed range alone does not mean a
# zoom: the graph's last relayoutData says whether the user zoomed (a range) or reset (autorange).
_SHOW_FIGURES = """function(figures) {
    var count = %d;
    var current = Array.prototype.slice.call(arguments, 1, 1 + count);
    var relayouts = Array.prototype.slice.call(arguments, 1 + count);
    return %s.map(function(graph, index) {
        var next = figures && figures[graph];
        if (!next) { return window.dash_clientside.no_update; }
        var before = current[index] && current[index].layout;
        var relayout = relayouts[index] || {};
        if (before && before.uirevision === next.layout.uirevision) {
            ['xaxis', 'yaxis'].forEach(function(axis) {
                var zoomed = before[axis];
                var byUser = (axis + '.range[0]') in relayout || (axis + '.range') in relayout;
                if (byUser && zoomed && zoomed.autorange === false && zoomed.range && next.layout[axis]) {
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
    // The compare table's Before cells open the earlier window.
    var target = data && (/_before$/.test(cell.colId || '') && data.drill_before || data.drill);
    if (target) { window.flowerbedOpenTasks('%s', target, []); }
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


def refresh_outputs(store, scope: analytics.Scope, limits: analytics.Limits = analytics.Limits(),
                    now: float | None = None, timings: dict | None = None, base: str = "/") -> dict:
    """Everything one refresh of the Analytics page shows, keyed by (component id, property); `base`
    is the app's path, for the links to the Tasks page.

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
        stuck, lost = analytics.stuck_and_lost_tasks(store, scope, limits, now)
        waiting = analytics.waiting_tasks(store, scope, limits, now)
    with timed("history"):
        history = analytics.history_start(store, now)
    with timed("exceptions"):
        groups = analytics.exception_groups(store, scope)
        samples = analytics.tracebacks(store, groups["sample_uuid"])
    with timed("figures"):
        figures = {
            "analytics-throughput": view.throughput_figure(series, scope, revision, history=history),
            "analytics-failure-rate": view.failure_rate_figure(rates, scope, revision, history=history),
            "analytics-runtime": view.distribution_figure(stats, "runtime", scope, revision),
            "analytics-wait": view.distribution_figure(stats, _wait_metric(stats), scope, revision),
            "analytics-failures-by-name": view.failures_by_name_figure(stats, scope, revision),
            "analytics-worker-active": view.worker_figure(activity, "active_mean", "active tasks", scope, revision,
                                                          history=history),
            "analytics-worker-load": view.worker_figure(activity, "load1", "load", scope, revision, history=history),
        }
        outputs = {
            ("analytics-message", "children"): _empty_note(scope, stats),
            ("analytics-updated", "children"): (
                f"updated {format_moment(now)[11:]} UTC · {view.step_label(analytics.bucket_seconds(scope, now))} buckets"),
            ("analytics-cards", "children"): view.summary_cards(
                stats, scope, view.attention_counts(stuck, waiting, lost, scope, limits, now, base)),
            FIGURES: figures,
            ("analytics-stats", "rowData"): view.stats_rows(stats, scope),
            ("analytics-exceptions", "rowData"): view.exception_rows(groups, samples, scope),
            ("analytics-slowest", "rowData"): view.task_rows(slowest, analytics.SLOWEST_COLUMNS),
            ("analytics-stuck", "rowData"): view.task_rows(stuck.head(view.MAX_STUCK_ROWS), analytics.STUCK_COLUMNS),
        }
    return outputs


def _dashboard_hour(broker: str | None, now: float) -> analytics.Scope:
    """The Dashboard's range: the last hour, of one broker or all."""
    return analytics.last("1h", now, brokers=[broker] if broker else None)


def dashboard_figures(store, broker: str | None, now: float | None = None) -> dict:
    """The Dashboard's compact charts: throughput and run times of the last hour."""
    now = time.time() if now is None else now
    scope = _dashboard_hour(broker, now)
    history = analytics.history_start(store, now)
    return {
        "dashboard-throughput": view.throughput_figure(analytics.throughput(store, scope, now), scope, "dashboard",
                                                       height=170, compact=True, history=history),
        "dashboard-runtime": view.distribution_figure(analytics.task_stats(store, scope, now), "runtime", scope,
                                                      "dashboard", height=170, limit=8, compact=True),
    }


def dashboard_attention(store, broker: str | None, limits: analytics.Limits = analytics.Limits(), base: str = "/",
                        now: float | None = None) -> list:
    """The Dashboard's stuck, waiting and lost counts (now, by `limits`), each a link to its tasks."""
    now = time.time() if now is None else now
    scope = _dashboard_hour(broker, now)
    stuck, lost = analytics.stuck_and_lost_tasks(store, scope, limits, now)
    attention = view.attention_counts(stuck, analytics.waiting_tasks(store, scope, limits, now), lost, scope, limits,
                                      now, base)
    return view.attention_links(attention)


def dashboard_slower(store, broker: str | None, answers: analytics.CompareCache, version, base: str = "/",
                     now: float | None = None):
    """The Dashboard's task that got slowest against the same hour yesterday, a link to the Analytics
    page's compare table; `answers` keeps the comparison by the store's `version`."""
    now = time.time() if now is None else now
    before, after = compare_windows(_dashboard_hour(broker, now), "day", None, now)
    return view.slower_link(answers.compare(store, before, after, version, now), f"{base}analytics#{view.COMPARE_ANCHOR}")


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
    """Every chart and table emptied; the message says why, once, under the range (each chart's box holds a
    line, not the message: at 390 px it was cut)."""
    blank = view.empty_figure("Not drawn: see the message under the range")
    outputs = {key: [] for key in REFRESH_OUTPUTS}
    outputs[FIGURES] = {graph: blank for graph in view.GRAPHS}
    outputs[("analytics-message", "children")] = message
    outputs[("analytics-updated", "children")] = ""
    return outputs


def compare_windows(scope: analytics.Scope, mode: str, split_text: str | None, now: float):
    """(before, after) Scopes for a comparison mode, never overlapping; AnalyticsError for a bad split
    time. "Yesterday" and "last week" go back whole days and weeks, as many as the range needs not to
    overlap itself (a 7-day range against the 7 days before, not against 6 of the same days)."""
    periods = {"previous": scope.span, "day": 86400, "week": 7 * 86400}
    if mode in periods:
        return scope.shifted(-math.ceil(scope.span / periods[mode] - 1e-9) * periods[mode]), scope
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


def configured_limits(settings) -> analytics.Limits:
    """The stuck and waiting Limits of the settings (--stuck-factor, --stuck-floor, --waiting-seconds)."""
    return analytics.Limits(settings.stuck_factor, settings.stuck_floor, settings.waiting_seconds)


def limits_from_controls(factor, floor, waiting, defaults: analytics.Limits = analytics.Limits()) -> analytics.Limits:
    """The stuck and waiting Limits the controls describe (`defaults`' where left empty)."""
    given = {field: value for field, value in (("factor", factor), ("floor", floor), ("waiting", waiting))
             if value not in (None, "")}
    try:
        return dataclasses.replace(defaults, **{field: float(value) for field, value in given.items()})
    except (TypeError, ValueError) as exc:
        if isinstance(exc, analytics.AnalyticsError):
            raise
        raise analytics.AnalyticsError(f"Stuck and waiting limits: expected numbers, not {given}") from None


def compare_outputs(store, scope: analytics.Scope, mode: str, split_text: str | None, now: float,
                    answers: analytics.CompareCache, version) -> tuple:
    """The compare grid's rows and the line that names the windows (and says when one had no task);
    `answers` keeps the comparisons by the store's `version`."""
    try:
        before, after = compare_windows(scope, mode, split_text, now)
    except analytics.AnalyticsError as exc:
        return [], str(exc)
    frame = answers.compare(store, before, after, version, now)
    return view.compare_rows(frame, before, after), view.compare_caption(frame, before, after)


def digests(outputs: dict) -> dict[str, str]:
    """A short digest of each output's JSON (each figure its own), as the page keeps them between refreshes."""
    parts = {f"{component}.{prop}": value for (component, prop), value in outputs.items() if (component, prop) != FIGURES}
    parts.update({f"{graph}.figure": figure for graph, figure in outputs.get(FIGURES, {}).items()})
    return {key: hashlib.blake2b(to_json_plotly(value).encode(), digest_size=8).hexdigest()
            for key, value in parts.items()}


def changed_only(outputs: dict, shown: dict | None) -> tuple[list, dict]:
    """The REFRESH_OUTPUTS values with no_update for what the page shows already (`shown`: its
    digests), then the new digests: a refresh sends only what changed."""
    now_digests, shown = digests(outputs), shown if isinstance(shown, dict) else {}
    values = [no_update if now_digests[f"{component}.{prop}"] == shown.get(f"{component}.{prop}")
              else outputs[(component, prop)] for component, prop in REFRESH_OUTPUTS if (component, prop) != FIGURES]
    figures = {graph: figure for graph, figure in outputs[FIGURES].items()
               if now_digests[f"{graph}.figure"] != shown.get(f"{graph}.figure")}
    values.insert(REFRESH_OUTPUTS.index(FIGURES), figures or no_update)
    return values, now_digests


# What the address keeps of the page (?range=6h&name=a&name=b&compare=week): its key, and whether it repeats.
VIEW_KEYS = {"range": ("range", False), "from": ("from", False), "to": ("to", False), "names": ("name", True),
             "workers": ("worker", True), "queues": ("queue", True), "brokers": ("broker", True),
             "compare": ("compare", False), "split": ("split", False)}


def analytics_view(params: dict[str, list[str]]) -> dict:
    """The page's controls as the address (parse_qs) sets them; analytics_layout checks the choices."""
    return {key: params.get(name, []) if repeats else params.get(name, [""])[0]
            for key, (name, repeats) in VIEW_KEYS.items()}


def first_outputs(store, view: dict, limits: analytics.Limits, base: str) -> dict:
    """What refresh_analytics would fill in first, for the page's layout (components.common.filled):
    the page opens with its data instead of asking for it. The comparison, at the foot of the page
    and the costliest query, is left to its own callback: the first screen does not wait for it."""
    now = time.time()
    try:
        scope = scope_from_controls(view.get("range") or "1h", view.get("from"), view.get("to"), view.get("names"),
                                    view.get("workers"), view.get("queues"), now, view.get("brokers"))
        outputs = refresh_outputs(store, scope, limits, now, base=base)
    except analytics.AnalyticsError as exc:
        outputs = error_outputs(str(exc))
    outputs[("analytics-digests", "data")] = digests(outputs)
    outputs.update(first_figures(outputs.pop(FIGURES)))
    return outputs


def first_figures(figures: dict) -> dict:
    """A page's first figures as layout values (components.common.filled): each in its graph."""
    return {(graph, "figure"): figure for graph, figure in figures.items()}


# The controls scope_from_controls reads: its arguments before `now`, then `brokers`.
SCOPE_INPUTS = [Input(control, "value") for control in (
    "analytics-range", "analytics-from", "analytics-to", "analytics-names", "analytics-workers", "analytics-queues",
    "analytics-brokers")]
# The controls limits_from_controls reads.
LIMIT_INPUTS = [Input(control, "value") for control in (
    "analytics-stuck-factor", "analytics-stuck-floor", "analytics-waiting-limit")]


def register(app, services) -> None:
    store = services.store
    base = app.get_relative_path("/")
    limits = configured_limits(services.settings)
    compared = analytics.CompareCache()  # each tick asks again; the answer changes when the store does

    @app.callback(
        [Output(component, prop) for component, prop in REFRESH_OUTPUTS],
        Output("analytics-digests", "data"),
        Input("refresh-tick", "n_intervals"),
        *SCOPE_INPUTS,
        *LIMIT_INPUTS,
        State("analytics-digests", "data"),
        prevent_initial_call=True,  # the page came with its first data (first_outputs)
    )
    def refresh_analytics(_tick, range_key, custom_from, custom_to, names, workers, queues, brokers, *controls_and_shown):
        *controls, shown = controls_and_shown
        try:
            scope = scope_from_controls(range_key, custom_from, custom_to, names, workers, queues, brokers=brokers)
            outputs = refresh_outputs(store, scope, limits_from_controls(*controls, defaults=limits), base=base)
        except analytics.AnalyticsError as exc:
            outputs = error_outputs(str(exc))
        values, now_digests = changed_only(outputs, shown)
        return [*values, now_digests]

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
        except analytics.AnalyticsError as exc:
            return [], str(exc)
        return compare_outputs(store, scope, mode, split_text, now, compared, store_version(services.broker_stats()))

    @app.callback(Output("analytics-custom", "style"), Input("analytics-range", "value"), prevent_initial_call=True)
    def show_custom_range(range_key):
        return {"display": "flex"} if range_key == "custom" else {"display": "none"}

    @app.callback(Output("compare-split", "style"), Input("compare-mode", "value"), prevent_initial_call=True)
    def show_split(mode):
        return {} if mode == "split" else {"display": "none"}

    # What the user set goes to the address (Back and a shared link open the same view).
    view_controls = ["analytics-range", "analytics-from", "analytics-to", "analytics-names", "analytics-workers",
                     "analytics-queues", "analytics-brokers", "compare-mode", "compare-split"]
    app.clientside_callback(
        """function() {
            var values = Array.prototype.slice.call(arguments), names = %s, params = {};
            names.forEach(function(name, index) { params[name] = values[index]; });
            if (params.range !== 'custom') { params.from = ''; params.to = ''; }
            if (params.compare !== 'split') { params.split = ''; }
            if (params.range === '1h') { params.range = ''; }
            if (params.compare === 'day') { params.compare = ''; }
            window.flowerbedReplaceQuery(params, '%s');
            return window.dash_clientside.no_update;
        }""" % (json.dumps([name for name, _repeats in VIEW_KEYS.values()]), app.get_relative_path("/analytics")),
        Output("analytics-view-sink", "data"),
        [Input(control, "value") for control in view_controls],
        prevent_initial_call=True,
    )

    # The charts change only when tasks were stored (or another broker is picked): an idle cluster
    # costs them no request. The page came with its first figures (callbacks/workers.py).
    @app.callback(Output("dashboard-figures", "data"), Input("store-version", "data"), Input("workers-broker", "value"),
                  prevent_initial_call=True)
    def refresh_dashboard_charts(_version, broker):
        return dashboard_figures(store, broker)

    # A running task becomes stuck as time passes, stored or not: these counts follow the tick.
    @app.callback(Output("dashboard-attention", "children"), Input("refresh-tick", "n_intervals"),
                  Input("workers-broker", "value"), prevent_initial_call=True)
    def refresh_dashboard_attention(_tick, broker):
        return dashboard_attention(store, broker, limits, base)

    @app.callback(Output("dashboard-slower-box", "children"), Input("store-version", "data"),
                  Input("workers-broker", "value"))
    def refresh_dashboard_slower(version, broker):
        return dashboard_slower(store, broker, compared, version, base)

    @app.callback([Output(control.component_id, "placeholder") for control in LIMIT_INPUTS],
                  Input("analytics-range", "id"))
    def show_configured_limits(_page):
        # Left empty, a limit is the configured one: the placeholder shows it.
        return [f"{limits.factor:g}", f"{limits.floor:g}", f"{limits.waiting:g}"]

    for figures_store, graphs in (("analytics-figures", view.GRAPHS), ("dashboard-figures", view.DASHBOARD_GRAPHS)):
        app.clientside_callback(_SHOW_FIGURES % (len(graphs), json.dumps(graphs)),
                                [Output(graph, "figure") for graph in graphs], Input(figures_store, "data"),
                                [State(graph, "figure") for graph in graphs],
                                [State(graph, "relayoutData") for graph in graphs], prevent_initial_call=True)

    for sink, graphs in (("analytics-drill", view.GRAPHS), ("dashboard-drill", view.DASHBOARD_GRAPHS)):
        app.clientside_callback(_OPEN_CLICKED_MARK % base, Output(sink, "data"),
                                [Input(graph, "clickData") for graph in graphs],
                                [State(graph, "figure") for graph in graphs], prevent_initial_call=True)
    app.clientside_callback(_OPEN_CLICKED_ROW % (base, base), Output("analytics-drill-rows", "data"),
                            [Input(grid, "cellClicked") for grid in view.CSV_GRIDS], prevent_initial_call=True)
    for grid in view.CSV_GRIDS:
        app.clientside_callback("function(clicks) { return clicks > 0; }", Output(grid, "exportDataAsCsv"),
                                Input(f"{grid}-csv", "n_clicks"), prevent_initial_call=True)

    @app.callback([Output(grid, "csvExportParams") for grid in view.CSV_GRIDS], SCOPE_INPUTS)
    def name_csv_files(range_key, custom_from, custom_to, names, workers, queues, brokers):
        """Each table's CSV file name says the range and the filters it was made with."""
        def joined(values):
            return "+".join(value for value in values if isinstance(value, str)) if isinstance(values, list) else ""
        span = (f"{custom_from}--{custom_to}" if range_key == "custom" else range_key) if isinstance(range_key, str) else ""
        filters = [("range", span if isinstance(span, str) else ""), ("name", joined(names)),
                   ("worker", joined(workers)), ("queue", joined(queues)), ("broker", joined(brokers))]
        return [view.csv_export_params(file_name(view.CSV_FILES[grid], filters)) for grid in view.CSV_GRIDS]

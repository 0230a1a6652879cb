"""The Analytics page and the Dashboard's compact charts: pure functions from analytics frames to
figures, grids and layout (no I/O).

A drill-down target is the Tasks page's search text and state chip, `[q, state]` (see drill()).
Grid rows carry theirs in a `drill` field (or a `uuid`, opening that task). A chart trace carries a
target in `meta` whose {0}, {1} are filled from the clicked point's `customdata` (a bucket's start and
end, or a task name), so a 100-bucket chart does not send 100 copies of the filters. The clientside
callbacks in callbacks/analytics.py open them.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from urllib.parse import quote, urlencode

import dash_ag_grid as dag
import pandas as pd
from dash import dcc, html

from monitor.query.analytics import WAITING_STATES, lost_since, stuck_search, waiting_cut
from monitor.query.search import format_moment

from .common import BelowFirstScreen, broker_filter, fitting_columns, format_duration, page_header, stat_card, trouble_tone

RANGE_CHOICES = (("15 min", "15m"), ("1 hour", "1h"), ("6 hours", "6h"), ("24 hours", "24h"), ("7 days", "7d"),
                 ("Custom", "custom"))
COMPARE_CHOICES = (("Previous period", "previous"), ("Same time yesterday", "day"),
                   ("Same time last week", "week"), ("Before / after a time", "split"))
STATE_COLORS = {"SUCCESS": "#22a06b", "FAILURE": "#e5484d", "REVOKED": "#8b95a1"}
METRIC_COLORS = {"runtime": "#8b5cf6", "wait": "#0ea5e9", "sent_wait": "#f59e0b"}
WORKER_PALETTE = ("#8b5cf6", "#0ea5e9", "#22a06b", "#f59e0b", "#e5484d", "#14b8a6", "#ec4899", "#64748b",
                  "#a3e635", "#f97316")
# Past ten workers the colours come round again, in another dash.
WORKER_DASHES = ("solid", "dot", "dash", "dashdot")
# A task seen only through its final event (the monitor started while it ran) has no name.
UNKNOWN_NAME = "(name unknown)"
# Chips on the Tasks page; other states go into the search text of a drill-down.
TASKS_PAGE_STATES = ("STARTED", "SUCCESS", "FAILURE", "RETRY", "RECEIVED")
METRIC_AXES = {"runtime": "run time (log scale)", "wait": "received → started (log scale)",
               "sent_wait": "sent → started (log scale)"}
WIDE_LOG_SPAN = 300  # p99 / p5 beyond this (2.5 decades): 1, 2, 5 per decade crowd the axis, 1 alone does not
# No mode bar: it covered the bars it floats over. Drag zooms, a double click resets.
GRAPH_CONFIG = {"displayModeBar": False}
# The Analytics table of stuck tasks lists this many (the count is of all of them).
MAX_STUCK_ROWS = 100


# -- drill-down targets --------------------------------------------------------------------------
def drill(scope, start=None, end=None, names=None, state=None, exception=None) -> list[str]:
    """[search text, state chip] of the Tasks page showing exactly the tasks behind a mark: finished
    in [start, end) (the scope's range by default; a str is used as it is, e.g. a "{0}" placeholder),
    of the scope's names, workers and brokers (or `names`), in `state`, whose exception contains
    `exception`."""
    def moment(value, default):
        return value if isinstance(value, str) else compact_moment(default if value is None else value)

    terms = [f"finished>={moment(start, scope.start)}", f"finished<{moment(end, math.ceil(scope.end))}",
             *_filter_terms(scope, names)]
    if exception:
        terms.append(f"exception:{_quoted(exception, always=True)}")
    if state and state not in TASKS_PAGE_STATES:
        terms.append(f"state:{state}")
    return [" ".join(terms), state if state in TASKS_PAGE_STATES else ""]


def _filter_terms(scope, names=None) -> list[str]:
    """Search terms for the scope's names (or `names`), workers, queues and brokers."""
    terms = []
    for field, values in (("name", scope.names if names is None else names), ("worker", scope.workers),
                          ("queue", scope.queues), ("broker", scope.brokers)):
        if values:
            terms.append(_any_of([f"{field}={_quoted(v)}" for v in values]))
    return terms


def _any_of(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else f"({' OR '.join(alternatives)})"


def tasks_href(base: str, target: list[str]) -> str:
    """The Tasks page's address for a drill-down target (as flowerbedOpenTasks builds it)."""
    query = {"q": target[0], **({"state": target[1]} if target[1] else {})}
    return f"{base}tasks?{urlencode(query, quote_via=quote)}"


def compact_moment(epoch: float) -> str:
    """format_moment without zero seconds: 2026-11-25T10:15."""
    text = format_moment(epoch)
    return text[:-3] if text.endswith(":00") else text


def _quoted(value: str, always: bool = False) -> str:
    if always or re.search(r'[\s"()]', value):  # as the search's words end
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


# -- figures ------------------------------------------------------------------------------------
# Figures are plain dicts, as Dash sends them: plotly's graph objects validate every property
# (tens of ms per refresh) and embed a ~7 kB default template in every figure.


def _layout(uirevision: str, height: int, **extra) -> dict:
    """Transparent, theme-neutral: the stylesheet colours the text for light and dark themes."""
    layout = dict(
        uirevision=uirevision, height=height, margin=dict(l=8, r=8, t=8, b=8),
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
        font=dict(family="system-ui, -apple-system, Segoe UI, DejaVu Sans, sans-serif", size=12, color="#7a8591"),
        hoverlabel=dict(font=dict(size=12)), hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0, bgcolor="rgba(0,0,0,0)"),
        xaxis=dict(gridcolor="rgba(128,128,128,.18)", zeroline=False, automargin=True),
        yaxis=dict(gridcolor="rgba(128,128,128,.18)", zeroline=False, automargin=True),
    )
    for key, value in extra.items():
        layout[key] = {**layout[key], **value} if isinstance(value, dict) and key in layout else value
    return layout


def empty_figure(message: str, height: int = 260) -> dict:
    return _figure([], _layout("empty", height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                               annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper",
                                                 yref="paper", font=dict(size=13))]))


def _figure(traces: list[dict], layout: dict) -> dict:
    return {"data": traces, "layout": layout}


def _time_axis(scope) -> dict:
    """The whole range [start, end], even where it has no data, with whole times as ticks: plotly picks
    round steps for the width (the same for charts of a width), the format follows the step. The range
    moves with every refresh; the clientside callback keeps a zoom of the user's (callbacks/analytics.py).
    A tick at an end of the range keeps its label (the margin grows for it): plotly hid the one that passed
    the chart's edge, so charts side by side, one with a right axis, lost different ends."""
    hours = "%d %b %H:%M" if scope.span > 86400 else "%H:%M"
    return dict(type="date", range=[round(scope.start * 1000), round(scope.end * 1000)], autorange=False,
                tickformatstops=[dict(dtickrange=[None, 86400000], value=hours),
                                 dict(dtickrange=[86400000, None], value="%d %b")], ticklabeloverflow="allow")


def _history_marks(scope, history: float | None) -> dict:
    """Layout shapes and a note shading the part of the range before the kept history begins."""
    if history is None or history <= scope.start + 60:
        return {}
    edge = round(min(history, scope.end) * 1000)
    # Inside the shade when it has room for the words, else just after it.
    inside = (history - scope.start) / scope.span > 0.35
    moment = dt.datetime.fromtimestamp(history, dt.timezone.utc)
    text = f"history begins {moment:%H:%M}" if scope.span <= 86400 else f"history begins {moment:%d %b %H:%M}"
    return dict(
        shapes=[dict(type="rect", xref="x", yref="paper", x0=round(scope.start * 1000), x1=edge, y0=0, y1=1,
                     fillcolor="rgba(128,128,128,.13)", line=dict(width=0), layer="below")],
        annotations=[dict(text=text, x=edge, xref="x", y=1, yref="paper", xanchor="right" if inside else "left",
                          xshift=-4 if inside else 4, yanchor="top", showarrow=False, font=dict(size=11))])


def bucket_starts(scope, step: int) -> list[int]:
    """The start of every bucket of the range, the first holding its start, the last starting before its end."""
    return list(range(int(scope.start) // step * step, math.ceil(scope.end), step))


def _bucket_hover(starts, step: int) -> list[str]:
    return [f"{_iso(b)[11:16]}–{_iso(b + step)[11:16]} UTC" for b in starts]


def _iso(epoch: float) -> str:
    return format_moment(epoch).replace("T", " ")


def throughput_figure(frame, scope, uirevision: str, height: int = 280, compact: bool = False,
                      history: float | None = None) -> dict:
    """Finished tasks per bucket, stacked by final state, every bucket of the range (0 where none
    finished); a click anywhere on a bar opens its tasks."""
    if frame.empty:
        return empty_figure("No task finished in this range", height)
    step = frame.attrs.get("bucket_seconds", 60)
    starts = bucket_starts(scope, step)
    bounds = [[*bound, hover] for bound, hover in zip(_bucket_bounds(starts, step), _bucket_hover(starts, step))]
    order = {"SUCCESS": 0, "FAILURE": 1, "REVOKED": 2}
    traces = []
    for state, rows in sorted(frame.groupby("state", sort=False), key=lambda item: order.get(item[0], 9)):
        counts = rows.groupby("bucket")["count"].sum().reindex(starts, fill_value=0)
        traces.append(dict(
            type="bar", **_bars_over_buckets(starts, step), y=counts.astype(int).tolist(), name=state.title(),
            uid=state, marker=dict(color=STATE_COLORS.get(state, "#64748b")),
            customdata=bounds, meta=drill(scope, "{0}", "{1}", state=state),
            hovertemplate=f"%{{y:,}} {state.lower()} · %{{customdata[2]}}<extra></extra>"))
    compact_layout = dict(legend=dict(x=1, xanchor="right", font=dict(size=11)), margin=dict(t=20)) if compact else {}
    return _figure(traces, _layout(uirevision, height, barmode="stack", bargap=0.08, xaxis=_time_axis(scope),
                                   yaxis=dict(title=None if compact else f"tasks per {step_label(step)}"),
                                   **_history_marks(scope, history), **compact_layout))


def failure_rate_figure(rates, scope, uirevision: str, height: int = 280, history: float | None = None) -> dict:
    """Failures per bucket (bars, 0 where none failed) and the failure rate of the tasks finished in
    the bucket (line, right axis; a gap where none finished); a bar opens the failures."""
    if rates.empty or not rates["finished"].sum():
        return empty_figure("No task finished in this range", height)
    step = rates.attrs.get("bucket_seconds", 60)
    starts = bucket_starts(scope, step)
    per_bucket = rates.set_index("bucket").reindex(starts)
    rate = (per_bucket["rate"] * 100).round(3)
    return _figure([
        dict(type="bar", **_bars_over_buckets(starts, step), y=per_bucket["failed"].fillna(0).astype(int).tolist(),
             name="Failures", uid="failures", marker=dict(color=STATE_COLORS["FAILURE"]), opacity=0.55,
             customdata=[[*bound, hover] for bound, hover in zip(_bucket_bounds(starts, step), _bucket_hover(starts, step))],
             meta=drill(scope, "{0}", "{1}", state="FAILURE"),
             hovertemplate="%{y:,} failed · %{customdata[2]}<extra></extra>"),
        dict(type="scatter", x=_middles(starts, step), y=rate.astype(object).where(rate.notna(), None).tolist(),
             name="Failure rate", uid="rate", yaxis="y2", mode="lines+markers", marker=dict(size=4),
             line=dict(color="#f04438", width=2), connectgaps=False, customdata=_bucket_hover(starts, step),
             hovertemplate="%{y:.2f} % of the finished failed · %{customdata}<extra></extra>"),
    ], _layout(uirevision, height, bargap=0.08, xaxis=_time_axis(scope), yaxis=dict(title="failures", rangemode="tozero"),
               yaxis2=dict(title="failure rate", overlaying="y", side="right", rangemode="tozero",
                           ticksuffix=" %", tickformat=".3~g", tickmode="auto", nticks=5, showgrid=False, zeroline=False,
                           automargin=True),
               **_history_marks(scope, history)))


def log_ticks(steps=(1, 2, 5)) -> list[float]:
    """Duration ticks from 1 ms to 50,000 s, `steps` per decade."""
    return [m * 10.0 ** e for e in range(-3, 5) for m in steps]


def distribution_figure(stats, metric: str, scope, uirevision: str, height: int | None = None,
                        limit: int = 20, compact: bool = False) -> dict:
    """A box per task name from the quantiles: box p25–p75, line at p50, whiskers p5–p99, ◆ the mean;
    log scale, slowest p50 on top. A box opens that name's tasks."""
    rows = _named(stats)
    rows = rows[rows[f"{metric}_count"] > 0].nlargest(limit, f"{metric}_p50") if not rows.empty else rows
    if rows.empty:
        message = ("No task-sent events in this range (set task_send_sent_event = True)" if metric == "sent_wait"
                   else "No finished task in this range")
        return empty_figure(message, height or 260)
    rows = rows.iloc[::-1]
    names = list(rows["name"])
    target = drill(scope, names=("{0}",))
    traces, spans = [], []
    for _, row in rows.iterrows():
        q = {k: round(float(row[f"{metric}_{k}"]), 6)
             for k in ("p5", "p25", "p50", "p75", "p95", "p99", "max", "mean", "count")}
        # Drawn only: plotly labels each of a box's statistics apart, seven labels at once.
        traces.append(dict(
            type="box", y=[row["name"]], q1=[q["p25"]], median=[q["p50"]], q3=[q["p75"]], lowerfence=[q["p5"]],
            upperfence=[q["p99"]], mean=[q["mean"]], orientation="h", name=row["name"], showlegend=False,
            marker=dict(color=METRIC_COLORS[metric]), line=dict(width=1.5), fillcolor=_transparent(METRIC_COLORS[metric]),
            hoverinfo="skip"))
        spans.append((row["name"], q, f"{row['name']} p50 {format_duration(q['p50'])} · p95 {format_duration(q['p95'])} · "
                                      f"p99 {format_duration(q['p99'])} · n {int(q['count']):,}"))
    # One invisible bar per name over its whiskers takes the hover (one line) and the click.
    traces.append(dict(
        type="bar", orientation="h", y=[name for name, _q, _text in spans], base=[q["p5"] for _n, q, _t in spans],
        x=[max(q["p99"] - q["p5"], q["p99"] * 0.02) for _n, q, _t in spans], width=0.7, showlegend=False,
        name=metric, marker=dict(color="rgba(0,0,0,0)"), customdata=[[_quoted(name), text] for name, _q, text in spans],
        meta=target, hovertemplate="%{customdata[1]}<extra></extra>"))
    height = height or max(180, 34 * len(names) + 60)
    wide = max(q["p99"] for _n, q, _t in spans) > WIDE_LOG_SPAN * max(min(q["p5"] for _n, q, _t in spans), 1e-6)
    ticks = log_ticks((1,) if wide else (1, 2, 5))
    return _figure(traces, _layout(
        uirevision, height, xaxis=dict(type="log", tickvals=ticks, ticktext=[format_duration(t) for t in ticks],
                                       title=None if compact else METRIC_AXES[metric]),
        yaxis=dict(categoryorder="array", categoryarray=names, showgrid=False, tickfont=dict(size=11 if compact else 12))))


def failures_by_name_figure(stats, scope, uirevision: str, limit: int = 10, height: int = 300) -> dict:
    """Failures per task name, most first, labelled with the failure rate; a bar opens them."""
    rows = _named(stats)
    rows = rows[rows["failed"] > 0].nlargest(limit, "failed") if not rows.empty else rows
    if rows.empty:
        return empty_figure("No failures in this range", height)
    rows = rows.iloc[::-1]
    return _figure([dict(
        type="bar", x=rows["failed"].tolist(), y=rows["name"].tolist(), orientation="h",
        marker=dict(color=STATE_COLORS["FAILURE"]), text=[f"{rate:.1%}" for rate in rows["failure_rate"]],
        textposition="outside", cliponaxis=False, customdata=[[_quoted(name)] for name in rows["name"]],
        meta=drill(scope, names=("{0}",), state="FAILURE"),
        hovertemplate="<b>%{y}</b><br>%{x:,} failed (%{text} of finished)<extra></extra>",
    )], _layout(uirevision, height, xaxis=dict(title="failures"), margin=dict(l=8, r=48, t=8, b=8),
                # room for `limit` bars, so that one failing name gets a bar, not a wall
                yaxis=dict(showgrid=False, range=[len(rows) - limit - 0.5, len(rows) - 0.5])))


def worker_figure(frame, column: str, title: str, scope, uirevision: str, height: int = 240,
                  history: float | None = None) -> dict:
    """One line per worker over the range, from the heartbeat rollup, a gap where a worker sent no
    heartbeat. Workers with alike values in every bucket (the load of workers on one host) share one
    line named after all of them: drawn apart, the last would hide the others. Evenly spaced points
    go as a start and a step (x0, dx): no x array per worker."""
    if frame.empty:
        return empty_figure("No heartbeats in this range", height)
    step = frame.attrs.get("bucket_seconds", 60)
    starts = bucket_starts(scope, step)
    lines: list[tuple[pd.Series, list[str]]] = []
    for worker, rows in frame.groupby("worker", sort=True):
        values = rows.set_index("bucket")[column].round(3).reindex(starts)
        alike = next((workers for drawn, workers in lines if _alike(drawn, values)), None)
        if alike is None:
            lines.append((values, [worker]))
        else:
            alike.append(worker)
    traces = []
    for index, (values, workers) in enumerate(lines):
        name = _worker_names(workers)
        traces.append(dict(
            type="scatter", x0=_middles(starts[:1], step)[0], dx=step * 1000,
            y=values.astype(object).where(values.notna(), None).tolist(),
            name=_legend_names(workers), uid=_css_safe(name), mode="lines+markers", marker=dict(size=3), connectgaps=False,
            line=dict(width=1.8, color=WORKER_PALETTE[index % len(WORKER_PALETTE)],
                      dash=WORKER_DASHES[index // len(WORKER_PALETTE) % len(WORKER_DASHES)]),
            hovertemplate=f"{name}<br>%{{y:.2f}} {title} (mean per {step_label(step)}) · %{{x|%H:%M}} UTC<extra></extra>"))
    # The legend names the workers even of one shared line.
    return _figure(traces, _layout(uirevision, height, xaxis=_time_axis(scope), showlegend=True,
                                   yaxis=dict(title=title, rangemode="tozero"), hovermode="x unified",
                                   **_history_marks(scope, history)))


def _alike(drawn, values) -> bool:
    """Whether two workers' series would draw as one line: data in the same buckets, values within
    5 % (a host's load, sampled by each of its workers at its own heartbeat)."""
    if not drawn.isna().equals(values.isna()):
        return False
    both = drawn.notna()
    return bool(((drawn[both] - values[both]).abs() <= 0.05 * drawn[both].abs().clip(lower=1)).all())


def _worker_names(workers: list[str]) -> str:
    """'a@host, b@host' as 'a, b @host'; workers of several hosts listed whole."""
    hosts = {worker.partition("@")[2] for worker in workers}
    if len(workers) > 1 and len(hosts) == 1 and all("@" in worker for worker in workers):
        return f"{', '.join(worker.partition('@')[0] for worker in workers)} @{hosts.pop()}"
    return ", ".join(workers)


def _legend_names(workers: list[str], shown: int = 3) -> str:
    """A line's workers one to a line in the legend (on one line they ran past a phone's edge), at most
    `shown` of them and how many more: the hover names them all."""
    more = len(workers) - shown
    return "<br>".join(workers[:shown] if more > 1 else workers) + (f"<br>and {more} more" if more > 1 else "")


def _bars_over_buckets(starts, step: int) -> dict:
    """A bar over 90 % of each bucket, placed by the bucket's start: on an axis of bars alone, plotly puts
    the ticks at the bars' places once they are as dense as the bars, and a bar placed by its bucket's
    middle had "00:07" written under 00:07:30."""
    return dict(x=[start * 1000 for start in starts], offset=step * 1000 * 0.05, width=step * 1000 * 0.9)


def _middles(starts, step: int) -> list[int]:
    """Bucket starts (epoch seconds) as the epoch milliseconds of their middles, where a line's point for
    its bucket stands."""
    return [round((start + step / 2) * 1000) for start in starts]


def _bucket_bounds(buckets, step: int) -> list[list[str]]:
    return [[compact_moment(b), compact_moment(b + step)] for b in buckets]


def _named(stats):
    """Rows of known task names: a task seen only through its last event has none, and no bar or box
    could open its tasks (the tables list them as "(name unknown)")."""
    return stats[stats["name"] != ""] if not stats.empty else stats


def _css_safe(text: str) -> str:
    # plotly builds CSS selectors from a trace's uid: "celery@host" would break the page.
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _transparent(hex_color: str, alpha: float = 0.25) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def step_label(step: int) -> str:
    return f"{step // 60} min" if step < 3600 else f"{step // 3600} h"


def window_label(scope) -> str:
    return f"{_iso(scope.start)[:16]} – {_iso(scope.end)[:16]}"


# -- grid rows ------------------------------------------------------------------------------------
def _records(frame, columns) -> list[dict]:
    """JSON-safe rows: NaN becomes null, floats keep 6 decimals (a microsecond)."""
    return [{k: (None if v != v else round(v, 6)) if isinstance(v, float) else v for k, v in zip(columns, values)}
            for values in frame[list(columns)].itertuples(index=False, name=None)]


def stats_rows(stats, scope) -> list[dict]:
    columns = ["name", "finished", "failed", "failure_rate", "runtime_mean", "runtime_p50", "runtime_p90",
               "runtime_p95", "runtime_p99", "runtime_max", "wait_p50", "wait_p95", "wait_max", "sent_wait_p50",
               "sent_wait_p95"]
    return _per_name_rows(stats, columns, scope)


def _per_name_rows(frame, columns, scope) -> list[dict]:
    """Rows keyed by task name; a click opens that name's tasks in `scope`."""
    rows = _records(frame, columns)
    for row in rows:
        if row["name"]:
            row["drill"] = drill(scope, names=(row["name"],))
        else:
            row["name"] = UNKNOWN_NAME
    return rows


def exception_rows(groups, tracebacks: dict, scope) -> list[dict]:
    rows = _records(groups, ["type", "message", "count", "names", "first", "last", "sample_uuid", "match"])
    for row in rows:
        names = row["names"].split(", ")  # "" for tasks seen finishing without their earlier events
        row["names"] = ", ".join(name or UNKNOWN_NAME for name in names)
        row["traceback"] = _tail(tracebacks.get(row["sample_uuid"], ""))
        one_known_name = len(names) == 1 and names[0]
        row["drill"] = drill(scope, names=tuple(names) if one_known_name else (), state="FAILURE",
                             exception=row.pop("match"))
    return rows


def _tail(text: str, lines: int = 14, chars: int = 1500) -> str:
    """The end of a traceback: where it was raised and what, within a tooltip's size."""
    return "\n".join(text.rstrip().splitlines()[-lines:])[-chars:]


def task_rows(frame, columns) -> list[dict]:
    """Rows of single tasks: a click opens the task (its `uuid`)."""
    rows = _records(frame, columns)
    for row in rows:
        row["name"] = row.get("name") or UNKNOWN_NAME
    return rows


def compare_rows(frame, before_scope, after_scope) -> list[dict]:
    """Rows in the frame's order (worst change first); a click on a Before cell opens the name's
    tasks of the earlier window, on any other cell those of the later one."""
    columns = ["name", "finished_before", "finished_after", "runtime_p50_before", "runtime_p50_after",
               "runtime_p50_ratio", "runtime_p95_before", "runtime_p95_after", "runtime_p95_ratio",
               "failure_rate_before", "failure_rate_after", "failure_rate_change"]
    rows = _per_name_rows(frame, columns, after_scope)
    for row in rows:
        if "drill" in row:
            row["drill_before"] = drill(before_scope, names=(row["name"],))
        row["note"] = ("no tasks in the earlier window" if row["finished_before"] is None else
                       "no tasks in the later window" if row["finished_after"] is None else "")
    return rows


def compare_caption(frame, before_scope, after_scope) -> str:
    """The two windows, and which names (or whole window) had no task."""
    caption = f"{window_label(before_scope)}  →  {window_label(after_scope)}"
    if frame.empty:
        return caption
    for column, window in (("finished_before", "earlier"), ("finished_after", "later")):
        missing = int(frame[column].isna().sum())
        if missing == len(frame):
            caption += f" · no tasks in the {window} window"
        elif missing:
            caption += f" · {missing} of {len(frame)} names had no tasks in the {window} window"
    return caption


def attention_counts(stuck, waiting, lost, scope, limits, now: float, base: str) -> dict:
    """{"stuck": (count, Tasks page address, label, what it means), "waiting": (…), "lost": (…)}: each
    address lists exactly the tasks counted (stuck_search, waiting_cut and lost_since give the moments
    the counts compared with). `lost`: analytics.stuck_and_lost_tasks, of which those started in the last day
    count; the others are not stuck either."""
    filters = _filter_terms(scope)
    since = lost_since(now)
    stuck_terms = [f"(name={_quoted(name)} started<{compact_moment(before)})"
                   for name, before in stuck_search(stuck, now) if name]
    stuck_target = [" ".join([*filters, *([_any_of(stuck_terms)] if stuck_terms else []),
                              *(["lost:no"] if not lost.empty else [])]), "STARTED"]
    lost_target = [" ".join([*filters, "lost:yes", f"started>={compact_moment(since)}"]), "STARTED"]
    cut = compact_moment(waiting_cut(limits, now))
    waits = _any_of([f"(state:{state} {column}<{cut})" for state, column in WAITING_STATES.items()])
    return {"stuck": (len(stuck), tasks_href(base, stuck_target), "stuck",
                      f"running past {limits.factor:g} × their name's p99 of the last day, at least {limits.floor:g} s"),
            "waiting": (len(waiting), tasks_href(base, [" ".join([*filters, waits]), ""]),
                        f"waiting > {limits.waiting:g} s",
                        f"received (or sent) and not started for over {limits.waiting:g} s"),
            "lost": (int((lost["started"] >= since).sum()), tasks_href(base, lost_target), "lost in a restart",
                     "started in the last day on a worker that has restarted since: it will not finish, nor say so")}


def attention_links(attention: dict) -> list:
    """The Dashboard's stuck and waiting counts, and the lost ones when there are any, each a link to its tasks."""
    return [dcc.Link([html.Strong(f"{count:,}"), f" {label}"], href=href, id=f"dashboard-{kind}", title=meaning,
                     className=f"attention {'attention-bad' if count else 'attention-ok'}")
            for kind, (count, href, label, meaning) in attention.items() if count or kind != "lost"]


COMPARE_ANCHOR = "compare"  # the compare panel's id: /analytics#compare scrolls to it (assets/keyboard.js)
SLOWER_RATIO = 1.2  # a run time this many times the earlier one is marked, on the chip and in the compare grid


def slower_link(frame, href: str) -> dcc.Link:
    """The Dashboard's answer to "which task got slower than yesterday?": the name whose run time p50 or
    p95 grew most against the same hour of yesterday (`frame`: analytics.compare), a link to the
    compare table that says more."""
    ratios = frame[["runtime_p50_ratio", "runtime_p95_ratio"]].astype(float) if not frame.empty else None
    if ratios is None or ratios.isna().all().all():
        text, slower = ["Slower than yesterday: ", html.Strong("no runs to compare")], False
    else:
        row, column = ratios.stack().idxmax()
        ratio = ratios.loc[row, column]
        slower = ratio >= SLOWER_RATIO
        text = (["Slower than yesterday: ", html.Strong(frame.loc[row, "name"]),
                 f" {column.split('_')[1]} ×{ratio:.2f}"] if slower else
                ["Slower than yesterday: ", html.Strong("none")])
    return dcc.Link(text, href=href, id="dashboard-slower", className=f"attention {'attention-bad' if slower else 'attention-ok'}",
                    title="run time p50 or p95 of the last hour against the same hour yesterday: the compare table")


# -- grids ----------------------------------------------------------------------------------------
# `context.csv`: the unit a column's raw value exports in (assets/dashAgGridFunctions.js flowerbedCsvCell).
def _duration(field, header, **extra) -> dict:
    return {"field": field, "headerName": header, "type": "numericColumn", "width": 84,
            "valueFormatter": {"function": "flowerbedDuration(params.value)"}, "context": {"csv": "seconds"}, **extra}


def _count(field, header, **extra) -> dict:
    return {"field": field, "headerName": header, "type": "numericColumn", "width": 92,
            "valueFormatter": {"function": "flowerbedCount(params.value)"}, **extra}


def _percent(field, header, **extra) -> dict:
    return {"field": field, "headerName": header, "type": "numericColumn", "width": 84,
            "valueFormatter": {"function": "flowerbedPercent(params.value)"}, "context": {"csv": "fraction"}, **extra}


def _ratio(field, header) -> dict:
    return {"field": field, "headerName": header, "type": "numericColumn", "width": 90,
            "valueFormatter": {"function": "params.value == null ? '' : '×' + params.value.toFixed(2)"},
            "cellClassRules": {"cell-failure": f"params.value >= {SLOWER_RATIO}",
                               "cell-success": f"params.value <= {1 / SLOWER_RATIO:.2f}"}}


_TIME = {"valueFormatter": {"function": "flowerbedTime(params.value)"}, "width": 190, "context": {"csv": "time"}}
_SHORT_TIME = {"valueFormatter": {"function": "flowerbedTime(params.value).slice(5, 19)"}, "width": 128,
               "headerTooltip": "UTC", "context": {"csv": "time"}}
_NAME = {"field": "name", "headerName": "Task name", "minWidth": 160, "flex": 1, "cellClass": "mono"}

STATS_COLUMNS = [
    _NAME, _count("finished", "Finished"), _count("failed", "Failed"), _percent("failure_rate", "Fail %"),
    {"headerName": "Run time", "children": [
        _duration("runtime_mean", "Mean"), _duration("runtime_p50", "p50"), _duration("runtime_p90", "p90"),
        _duration("runtime_p95", "p95", sort="desc"), _duration("runtime_p99", "p99"), _duration("runtime_max", "Max")]},
    {"headerName": "Wait: received → started", "children": [
        _duration("wait_p50", "p50"), _duration("wait_p95", "p95"), _duration("wait_max", "Max")]},
    {"headerName": "Wait: sent → started", "headerTooltip": "needs task-sent events (task_send_sent_event)",
     "children": [_duration("sent_wait_p50", "p50"), _duration("sent_wait_p95", "p95")]},
]
EXCEPTION_COLUMNS = [
    {"field": "type", "headerName": "Exception", "width": 130, "cellClass": "mono cell-failure",
     "tooltipField": "traceback"},
    {"field": "message", "headerName": "Message (numbers, ids as #)", "flex": 3, "minWidth": 200,
     "cellClass": "mono", "tooltipField": "traceback"},
    _count("count", "Count", sort="desc", width=96),
    {"field": "names", "headerName": "Task names", "flex": 1, "minWidth": 120, "cellClass": "mono"},
    {"field": "first", "headerName": "First seen", **_SHORT_TIME,
     "headerTooltip": "UTC; the first failure of the group kept (8 days), also before the range"},
    {"field": "last", "headerName": "Last seen", **_SHORT_TIME},
]
SLOWEST_COLUMNS = [
    _NAME, _duration("runtime", "Runtime", sort="desc", width=112),
    {"field": "state", "headerName": "State", "width": 100,
     "cellClassRules": {"cell-success": "params.value == 'SUCCESS'", "cell-failure": "params.value == 'FAILURE'"}},
    {"field": "worker", "headerName": "Worker", "width": 170},
    {"field": "received", "headerName": "Received (UTC)", **_TIME},
]
STUCK_COLUMNS = [
    _NAME, _duration("running", "Running for", sort="desc", width=124),
    _duration("limit", "Limit", headerTooltip="k × the name's p99 runtime of the last day, at least the floor (below)"),
    {"field": "over", "headerName": "× limit", "type": "numericColumn", "width": 90,
     "valueFormatter": {"function": "params.value == null ? '' : '×' + params.value.toFixed(1)"}},
    {"field": "worker", "headerName": "Worker", "width": 170},
    {"field": "started", "headerName": "Started (UTC)", **_TIME},
]
# The columns a narrow screen keeps longest, most useful first (components/common.py fitting_columns).
# The comparison keeps all of its columns: a Before without its After says nothing.
STATS_PRIORITY = ("name", "runtime_p95", "failure_rate", "finished", "runtime_p50", "wait_p95", "failed", "runtime_p99",
                  "runtime_max", "runtime_mean", "runtime_p90", "wait_p50", "wait_max", "sent_wait_p50", "sent_wait_p95")
EXCEPTION_PRIORITY = ("type", "count", "message", "last", "names", "first")
SLOWEST_PRIORITY = ("name", "runtime", "state", "worker", "received")
STUCK_PRIORITY = ("name", "running", "over", "worker", "started", "limit")
# A value a window cannot give reads as why: no task of the name in that window, or none finished
# with a runtime ("—"); a change needs both windows ("new", "gone").
_NO_TASKS = {"before": "(params.data.finished_before == null ? 'no tasks' : '—')",
             "after": "(params.data.finished_after == null ? 'no tasks' : '—')",
             "change": "(params.data.finished_before == null ? 'new' : params.data.finished_after == null ? 'gone' : '—')"}


def _in_window(column: dict, window: str) -> dict:
    shown = column["valueFormatter"]["function"]
    return {**column, "valueFormatter": {"function": f"params.value == null ? {_NO_TASKS[window]} : {shown}"},
            "tooltipField": "note"}


COMPARE_COLUMNS = [
    _NAME,
    {"headerName": "Finished", "children": [
        _in_window(_count("finished_before", "Before", width=84), "before"),
        _in_window(_count("finished_after", "After", width=84), "after")]},
    {"headerName": "Run time p50", "children": [
        _in_window(_duration("runtime_p50_before", "Before"), "before"),
        _in_window(_duration("runtime_p50_after", "After"), "after"),
        _in_window(_ratio("runtime_p50_ratio", "Change"), "change")]},
    {"headerName": "Run time p95", "children": [
        _in_window(_duration("runtime_p95_before", "Before"), "before"),
        _in_window(_duration("runtime_p95_after", "After"), "after"),
        _in_window(_ratio("runtime_p95_ratio", "Change"), "change")]},
    {"headerName": "Failure rate", "children": [
        _in_window(_percent("failure_rate_before", "Before"), "before"),
        _in_window(_percent("failure_rate_after", "After"), "after"),
        _in_window({"field": "failure_rate_change", "headerName": "Change", "type": "numericColumn", "width": 90,
                    "context": {"csv": "fraction"},
                    "valueFormatter": {"function": "flowerbedPercentChange(params.value)"},
                    "cellClassRules": {"cell-failure": "params.value > 0.005", "cell-success": "params.value < -0.005"}},
                   "change")]},
]


def csv_export_params(file_name: str) -> dict:
    """A grid's CSV: raw values (seconds, fractions, ISO 8601 UTC times) under one header row naming
    each column with its group and unit, text a spreadsheet would run as a formula escaped
    (assets/dashAgGridFunctions.js)."""
    return {"fileName": file_name, "skipColumnGroupHeaders": True, "allColumns": True,
            "processCellCallback": {"function": "flowerbedCsvCell(params)"},
            "processHeaderCallback": {"function": "flowerbedCsvHeader(params)"}}


# What each table's CSV holds: its file name's start (the callbacks add the range and filters).
CSV_FILES = {"analytics-stats": "task-runtimes", "analytics-exceptions": "exceptions",
             "analytics-slowest": "slowest-tasks", "analytics-stuck": "stuck-tasks", "analytics-compare": "compare"}


def grid(grid_id: str, columns, empty: str, row_id: str, height: int | None = None, priority: tuple = (),
         **options) -> dag.AgGrid:
    """A client-side grid whose rows open their drill-down target and export as CSV (as sorted/filtered,
    every column even where a narrow screen hides some); `priority`: the columns a narrow screen keeps
    longest, most useful first (components/common.py fitting_columns). `row_id`: what names a row across
    refreshes (a JavaScript expression of `params.data`), so a refresh updates the rows in place instead
    of building them again under a click, a text selection or the keyboard's focus."""
    fitting = fitting_columns(priority) if priority else {}
    if fitting:
        options = {"context": fitting["context"], **options}
    return dag.AgGrid(
        id=grid_id, rowData=[], columnDefs=columns, getRowId=row_id, eventListeners=fitting.get("eventListeners"),
        defaultColDef={"sortable": True, "resizable": True, "suppressHeaderMenuButton": True},
        csvExportParams=csv_export_params(f"flowerbed-{CSV_FILES[grid_id]}.csv"),
        dashGridOptions={"rowHeight": 32, "headerHeight": 36, "animateRows": False, "tooltipShowDelay": 250,
                         "tooltipInteraction": True, "enableCellTextSelection": True,
                         "localeText": {"noRowsToShow": empty},
                         **({"domLayout": "autoHeight"} if height is None else {}), **options},
        style={"width": "100%", **({"height": f"{height}px"} if height else {})},
        className="grid analytics-grid",
    )


def _panel(title: str, body, *, help_text: str | None = None, actions=None, class_name: str = "",
           **attributes) -> html.Div:
    return html.Div([
        html.Div([html.H2(title), html.Span(help_text, className="panel-help") if help_text else None,
                  html.Div(actions or [], className="panel-actions")], className="panel-head"),
        body,
    ], className=f"panel chart-panel {class_name}".strip(), **attributes)


def _graph(graph_id: str, height: int = 280) -> dcc.Graph:
    """A graph whose height follows its figure's (`height` until the first refresh)."""
    return dcc.Graph(id=graph_id, figure=empty_figure("Loading…", height), config=GRAPH_CONFIG, className="chart")


def _csv_button(grid_id: str) -> html.Button:
    return html.Button("CSV", id=f"{grid_id}-csv", className="button ghost small", n_clicks=0,
                       title="Download this table as CSV, as sorted and filtered")


CSV_GRIDS = tuple(CSV_FILES)
# What names a row of each table across refreshes: a task name, an exception group, a task.
BY_NAME, BY_UUID = "params.data.name", "params.data.uuid"
BY_EXCEPTION = "params.data.type + '\\n' + params.data.message"
DASHBOARD_GRAPHS = ("dashboard-throughput", "dashboard-runtime")
GRAPHS = ("analytics-throughput", "analytics-failure-rate", "analytics-runtime", "analytics-wait",
          "analytics-failures-by-name", "analytics-worker-active", "analytics-worker-load")


def analytics_layout(options: dict, view: dict | None = None) -> html.Div:
    """The Analytics page; `options` lists the names, workers, queues and brokers the filters offer (a
    broker filter shows with several brokers); `view` (from the address, see callbacks/analytics.py
    analytics_view) sets the controls: range, from, to, names, workers, queues, brokers, compare, split."""
    view = view or {}
    range_key = view.get("range") if view.get("range") in {value for _label, value in RANGE_CHOICES} else "1h"
    compare_mode = view.get("compare") if view.get("compare") in {value for _label, value in COMPARE_CHOICES} else "day"

    def dropdown(dropdown_id, placeholder, values, key):
        return dcc.Dropdown(id=dropdown_id, options=values, multi=True, placeholder=placeholder,
                            className="filter-dropdown", value=list(view.get(key) or []))

    return html.Div([
        page_header("Analytics", html.Span(id="analytics-updated", className="muted"),
                    subtitle="Where time goes and what fails. Times in UTC; click a bar, box or row to open its tasks."),
        html.Div([
            dcc.RadioItems(id="analytics-range", options=[{"label": l, "value": v} for l, v in RANGE_CHOICES],
                           value=range_key, inline=True, className="chips", labelClassName="chip"),
            html.Div([
                dcc.Input(id="analytics-from", type="text", placeholder="2026-11-25 09:00", debounce=True,
                          className="search-input time-input", value=view.get("from") or None),
                html.Span("→", className="muted"),
                dcc.Input(id="analytics-to", type="text", placeholder="2026-11-25 10:00", debounce=True,
                          className="search-input time-input", value=view.get("to") or None),
            ], id="analytics-custom", className="custom-range",
                style={"display": "flex" if range_key == "custom" else "none"}),
            dropdown("analytics-names", "All task names", options.get("name", []), "names"),
            dropdown("analytics-workers", "All workers", options.get("worker", []), "workers"),
            dropdown("analytics-queues", "All queues", options.get("queue", []), "queues"),
            broker_filter("analytics-brokers", options.get("broker", []), list(view.get("brokers") or []) or None,
                          multi=True),
        ], className="analytics-controls"),
        html.Div(id="analytics-message", className="inline-message", role="alert"),
        html.Div(id="analytics-cards", className="stat-row compact-stats"),
        html.Div([
            _panel("Throughput by final state", _graph("analytics-throughput"),
                   help_text="finished tasks per bucket"),
            _panel("Failures over time", _graph("analytics-failure-rate"), help_text="count and rate"),
        ], className="chart-grid two"),
        html.Div([
            _panel("Run time by task name", _graph("analytics-runtime", 300),
                   help_text="box p25–p75 · line p50 · whiskers p5–p99"),
            _panel("Queue wait by task name", _graph("analytics-wait", 300),
                   help_text="sent → started when task-sent events arrive, else received → started"),
        ], className="chart-grid two"),
        BelowFirstScreen([
            _panel("Runtime and wait per task name", grid("analytics-stats", STATS_COLUMNS,
                                                          "No finished task in this range.", BY_NAME,
                                                          priority=STATS_PRIORITY),
                   help_text="quantiles from log histograms (±4.4 %); worker/queue filters narrow counts, means "
                             "and max", actions=[_csv_button("analytics-stats")]),
            html.Div([
                _panel("Failures by task name", _graph("analytics-failures-by-name", 300)),
                _panel("Failures by exception type and message", grid("analytics-exceptions", EXCEPTION_COLUMNS,
                                                     "No failures in this range.", BY_EXCEPTION, height=300,
                                                     priority=EXCEPTION_PRIORITY),
                       help_text="hover for a sample traceback", actions=[_csv_button("analytics-exceptions")]),
            ], className="chart-grid failures"),
            html.Div([
                _panel("Active tasks per worker", _graph("analytics-worker-active", 240),
                       help_text="mean of heartbeats per bucket"),
                _panel("Load average (1 min) per worker", _graph("analytics-worker-load", 240)),
            ], className="chart-grid two"),
            html.Div([
                _panel("Slowest tasks in the range", grid("analytics-slowest", SLOWEST_COLUMNS,
                                                          "No finished task in this range.", BY_UUID, height=330,
                                                          priority=SLOWEST_PRIORITY),
                       actions=[_csv_button("analytics-slowest")]),
                _panel("Stuck tasks", grid("analytics-stuck", STUCK_COLUMNS,
                                           "Nothing running past its limit.", BY_UUID, height=330,
                                           priority=STUCK_PRIORITY),
                       help_text="running now far past what is normal for their name",
                       actions=[_csv_button("analytics-stuck")]),
            ], className="chart-grid two"),
            html.Div([
                html.Span(["Stuck: running past", _number_input("analytics-stuck-factor", "×", step=0.5)]),
                "the name's p99 of the last day,",
                html.Span(["at least", _number_input("analytics-stuck-floor", "s")]),
                html.Span(["· Waiting: not started after", _number_input("analytics-waiting-limit", "s")]),
            ], className="limits-controls muted small"),
            _panel("Compare two windows", html.Div([
                html.Div([
                    dcc.RadioItems(id="compare-mode", options=[{"label": l, "value": v} for l, v in COMPARE_CHOICES],
                                   value=compare_mode, inline=True, className="chips", labelClassName="chip"),
                    dcc.Input(id="compare-split", type="text", placeholder="2026-11-25 10:00", debounce=True,
                              className="search-input time-input", value=view.get("split") or None,
                              style={} if compare_mode == "split" else {"display": "none"}),
                    html.Span(id="compare-windows", className="muted small"),
                ], className="compare-controls"),
                grid("analytics-compare", COMPARE_COLUMNS, "No finished task in either window.", BY_NAME),
            ]), help_text="per task name, worst change first; a click opens its tasks (a Before cell: of the earlier window)",
                actions=[_csv_button("analytics-compare")], id=COMPARE_ANCHOR),
        ]),
        dcc.Store(id="analytics-figures"), dcc.Store(id="analytics-drill"), dcc.Store(id="analytics-drill-rows"),
        dcc.Store(id="analytics-view-sink"),  # the output of the callback that keeps the address in step
        dcc.Store(id="analytics-digests"),  # what the page shows, digested: a refresh sends only what changed
    ], className="analytics")


def _number_input(input_id: str, unit: str, step: float = 1) -> html.Label:
    """A limit left empty is the configured one (its placeholder, see callbacks/analytics.py)."""
    return html.Label([dcc.Input(id=input_id, type="number", min=0.1, step=step, debounce=True,
                                 className="number-input"), f" {unit}"])


def summary_cards(stats, scope, attention: dict) -> list:
    """The range's totals, its mean throughput (saying over what), and the stuck and waiting counts
    (now, see attention_counts), each a link to its tasks; under the stuck count, the lost ones if any."""
    finished = int(stats["finished"].sum()) if not stats.empty else 0
    failed = int(stats["failed"].sum()) if not stats.empty else 0
    rate = f"{failed / finished:.2%}" if finished else "—"
    per_minute = finished / (scope.span / 60)
    waits = stats[stats["wait_count"] > 0] if not stats.empty else stats
    worst_wait = waits.nlargest(1, "wait_p95") if not waits.empty else waits
    wait_text = (f"{format_duration(worst_wait['wait_p95'].iloc[0])}" if not worst_wait.empty else "—")
    span = span_label(scope.span)

    def linked(kind, label, below=None):
        count, href, _label, meaning = attention[kind]
        value = dcc.Link(f"{count:,}", href=href, id=f"analytics-{kind}-count", title=meaning)
        return html.Div(stat_card(label, html.Span([value, below]) if below else value, tone=trouble_tone(count)),
                        title=meaning)

    lost, lost_href, lost_label, lost_meaning = attention["lost"]
    lost_note = html.Small(dcc.Link(f"{lost:,} {lost_label}", href=lost_href, id="analytics-lost-count",
                                    title=lost_meaning), className="stat-sub below") if lost else None

    return [
        stat_card(f"Finished in {span}", f"{finished:,}", tone="tone-ok"),
        stat_card(f"Throughput, {span} mean", f"{per_minute:,.1f} / min", tone="tone-info"),
        stat_card("Failed", f"{failed:,} · {rate}", tone=trouble_tone(failed)),
        stat_card("Worst p95 queue wait", html.Span([wait_text, html.Small(
            f" {worst_wait['name'].iloc[0]}" if not worst_wait.empty else "", className="stat-sub")])),
        linked("stuck", "Stuck now", lost_note),
        linked("waiting", "Waiting now"),
    ]


def span_label(seconds: float) -> str:
    """'15 min', '6 h', '7 days', '1 h 30 min' for a range's length."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes % 1440 == 0 and minutes >= 2880:
        return f"{minutes // 1440} days"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h" + (f" {rest} min" if rest else "")


# -- the Dashboard's compact row ------------------------------------------------------------------
def compact_row() -> html.Div:
    """Throughput and run times of the last hour, above the workers table, and the stuck and waiting
    counts of now (first filled with the layout, then by refresh_dashboard_charts and
    refresh_dashboard_attention) and the slower-than-yesterday chip (refresh_dashboard_slower); a
    click opens the tasks."""
    return html.Div([
        # The slower-than-yesterday chip has a callback of its own, after the first screen: it compares two hours.
        html.Div([html.Div(id="dashboard-attention", className="attention-group"),
                  html.Div(id="dashboard-slower-box", className="attention-group")], className="attention-row"),
        html.Div([
            _panel("Last hour: throughput by state", _graph("dashboard-throughput", 170),
                   help_text="tasks finished per minute"),
            _panel("Last hour: run time by task name", _graph("dashboard-runtime", 170),
                   help_text="p5–p99, slowest 8"),
        ], className="chart-grid two compact-charts"),
        dcc.Store(id="dashboard-figures"), dcc.Store(id="dashboard-drill"),
    ])

"""The broker page (/broker): every watched queue of each broker with the messages waiting in it and
its consumers, a warning for messages nobody consumes, and the depth over time."""
from __future__ import annotations

from dash import dcc, html

from .analytics import GRAPH_CONFIG, WORKER_PALETTE, _layout, _panel, empty_figure
from .common import format_clock, format_number, page_header
from .worker import worker_path

HISTORY_SECONDS = 3600
HISTORY_STEP = 60


def unconsumed(queue: dict) -> bool:
    """Messages wait and nothing consumes them: they will wait forever."""
    return bool(queue.get("messages")) and not queue.get("consumers")


def _consumers(queue: dict, relative_path) -> list:
    links = []
    for hostname in queue["workers"]:
        links += [", " if links else None, dcc.Link(hostname, href=relative_path(worker_path(hostname)), className="mono")]
    return [link for link in links if link is not None] or ["—"]


def queue_table(queues: list[dict], relative_path, table_id: str) -> html.Div:
    rows = []
    for queue in queues:
        missing = queue["messages"] is None
        status = ("not on the broker" if missing else "no consumer" if unconsumed(queue)
                  else "idle, no consumer" if not queue["consumers"] else "consumed")
        rows.append(html.Tr([
            html.Td(queue["name"], className="mono"),
            html.Td("—" if missing else format_number(queue["messages"]), className="number"),
            html.Td("—" if queue["consumers"] is None else format_number(queue["consumers"]), className="number"),
            html.Td(_consumers(queue, relative_path)),
            html.Td(html.Span(status, className=f"badge badge-{'failure' if unconsumed(queue) else 'success' if status == 'consumed' else 'pending'}")),
        ], className="row-warn" if unconsumed(queue) else None, **{"data-queue": queue["name"]}))
    return html.Div(html.Table([
        html.Thead(html.Tr([html.Th("Queue"), html.Th("Messages", className="number"),
                            html.Th("Consumers", className="number"), html.Th("Consumed by"), html.Th("Status")])),
        html.Tbody(rows),
    ], className="data-table", id=table_id), className="table-scroll")


def broker_section(name: str, queues: list[dict], report: dict | None, now: float, relative_path) -> html.Div:
    """One broker's queues: when they were read (or why they could not be), warnings, the table."""
    if report is None:
        status = html.P("Not read yet: the collector reads queue depths after each inspect.", className="muted small")
    elif report.get("error"):
        status = html.Div(f"Queue depths could not be read at {format_clock(report['at'])}: {report['error']}",
                          className="inline-message", role="alert")
    else:
        status = html.P(f"Read {max(0.0, now - report['at']):.0f} s ago.", className="muted small")
    warnings = [html.Div([html.Strong(queue["name"]), f": {queue['messages']:,} message{'s' if queue['messages'] != 1 else ''} "
                          "wait and no worker consumes this queue."], className="warning-line")
                for queue in queues if unconsumed(queue)]
    return html.Div([
        html.H2(name, className="section-title"),
        status,
        html.Div(warnings, className="warning-box", role="alert") if warnings else None,
        queue_table(queues, relative_path, f"queues-{name}") if queues else
        html.P("No queue seen yet.", className="muted small"),
    ], className="panel broker-section", **{"data-broker": name})


def broker_sections(brokers: list[str], queues: list[dict], reports: dict, now: float, relative_path) -> list:
    names = sorted(set(brokers) | {q["broker"] for q in queues} | set(reports))
    if not names:
        return [html.P("No broker read yet: the collector reads queue depths after each inspect.", className="muted")]
    return [broker_section(name, [q for q in queues if q["broker"] == name], reports.get(name), now, relative_path)
            for name in names]


def depth_figure(history: list[dict], several_brokers: bool, height: int = 260) -> dict:
    """Messages waiting per queue over time (the most a sample saw in each minute)."""
    if not history:
        return empty_figure("No queue sampled in the last hour", height)
    series: dict[str, tuple[list, list]] = {}
    for row in history:
        label = f"{row['broker']} · {row['name']}" if several_brokers else row["name"]
        xs, ys = series.setdefault(label, ([], []))
        xs.append(int(row["bucket"]) * 1000)
        ys.append(row["messages"])
    traces = [dict(type="scatter", x=xs, y=ys, name=label, mode="lines+markers", marker=dict(size=3),
                   line=dict(width=1.8, color=WORKER_PALETTE[index % len(WORKER_PALETTE)]),
                   hovertemplate=f"{label}<br>%{{y:,}} messages · %{{x|%H:%M}} UTC<extra></extra>")
              for index, (label, (xs, ys)) in enumerate(sorted(series.items()))]
    return {"data": traces, "layout": _layout("broker", height, xaxis=dict(type="date"),
                                              yaxis=dict(title="messages", rangemode="tozero"), hovermode="x unified")}


def broker_layout() -> html.Div:
    return html.Div([
        page_header("Broker", subtitle="Messages waiting in each queue and who consumes them, read by the collector after "
                             "each inspect: the queues workers consume, the default queue, and queues tasks were sent to."),
        html.Div(id="broker-live"),
        _panel("Messages waiting, last hour", dcc.Graph(id="broker-depth-chart", figure=empty_figure("Loading…", 260),
                                                        config=GRAPH_CONFIG, className="chart"),
               help_text="most seen per minute"),
    ], id="broker-page")

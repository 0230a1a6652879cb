"""The frame around every page: navigation, collector status, the page slot."""
from __future__ import annotations

from dash import dcc, html

NAV_ITEMS = (("Dashboard", ""), ("Tasks", "tasks"), ("Analytics", "analytics"))


def shell(relative_path, refresh_ms: int) -> html.Div:
    """`relative_path` turns an app path into a link that honours the URL prefix."""
    return html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        dcc.Interval(id="refresh-tick", interval=refresh_ms),
        html.Header([
            dcc.Link([html.Span("✿", className="brand-mark"), "Flowerbed"], href=relative_path("/"), className="brand"),
            html.Nav([dcc.Link(label, href=relative_path(f"/{path}"), className="nav-link", id=f"nav-{path or 'dashboard'}")
                      for label, path in NAV_ITEMS], className="nav"),
            html.Div(id="collector-status", className="collector-status"),
            html.Button("◐", id="theme-toggle", className="theme-toggle", title="Switch light / dark theme",
                        **{"aria-label": "Switch light or dark theme"}),
        ], className="topbar"),
        html.Main(id="page", className="page"),
    ], className="app")


def collector_status(stats: dict) -> list:
    connected = stats.get("connected")
    details = (f"{stats.get('stored', 0):,} events stored · {stats.get('dropped', 0):,} dropped · "
               f"{stats.get('disconnects', 0):,} disconnects · backlog {stats.get('backlog', 0):,} · "
               f"lag {stats.get('lag_seconds', 0):.2f} s")
    if stats.get("last_error"):
        details += f" · last error: {stats['last_error']}"
    return [
        html.Span(className=f"dot {'dot-ok' if connected else 'dot-bad'}"),
        html.Span("Broker connected" if connected else "Broker unreachable", className="status-text"),
        html.Span(details, className="status-details"),
    ]


def not_found(message: str, relative_path) -> html.Div:
    return html.Div([
        html.H1("Not found"),
        html.P(message),
        dcc.Link("Back to the dashboard", href=relative_path("/")),
    ], className="empty-state")

"""Small pieces shared by the pages."""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from dash import dcc, html

STATE_CLASSES = {
    "SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry", "STARTED": "started",
    "RECEIVED": "received", "PENDING": "pending", "REVOKED": "revoked", "REJECTED": "revoked",
}


def stat_card(label: str, value, card_id: str | None = None, tone: str = "") -> html.Div:
    value_props = {"id": card_id} if card_id else {}
    return html.Div([
        html.Div(label, className="stat-label"),
        html.Div(value, className="stat-value", **value_props),
    ], className=f"stat-card {tone}".strip())


def state_badge(state: str | None) -> html.Span:
    return html.Span(state or "UNKNOWN", className=f"badge badge-{STATE_CLASSES.get(state, 'pending')}")


def format_time(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_clock(epoch: float | None) -> str:
    """'10:42:07 UTC', for a moment of today that a banner names."""
    if epoch is None:
        return "an unknown time"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%H:%M:%S UTC")


def format_number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def broker_filter(dropdown_id: str, brokers: Sequence[str], value=None, multi: bool = False) -> dcc.Dropdown:
    """A dropdown of the brokers (none chosen: all of them); with a single broker there is nothing to
    choose, so it is there for the callbacks but not shown."""
    return dcc.Dropdown(id=dropdown_id, options=list(brokers), value=value, multi=multi, placeholder="All brokers",
                        className="filter-dropdown", style=None if len(brokers) > 1 else {"display": "none"})


def broker_columns(columns: list[dict], brokers: Sequence[str]) -> list[dict]:
    """A grid's columns with its (hidden) Broker column shown when there is more than one broker."""
    if len(brokers) < 2:
        return columns
    return [{**column, "hide": False} if column.get("field") == "broker" else column for column in columns]


def page_header(title: str, *extra, subtitle: str | None = None) -> html.Div:
    return html.Div([
        html.Div([html.H1(title), html.P(subtitle, className="subtitle") if subtitle else None]),
        html.Div(list(extra), className="page-actions"),
    ], className="page-header")


def filled(layout, values: dict[tuple[str, str], object]):
    """`layout` with each (component id, property) of `values` set: a page's first data goes out with
    its layout, instead of waiting for its refresh callbacks' round trip."""
    by_id = {component.id: component for component in [layout, *(child for _path, child in layout._traverse_with_paths())]
             if isinstance(getattr(component, "id", None), str)}  # a pattern-matching id is a dict
    for (component_id, prop), value in values.items():
        setattr(by_id[component_id], prop, value)
    return layout

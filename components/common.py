"""Small pieces shared by the pages."""
from __future__ import annotations

import datetime as dt
import json
import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Sequence

from dash import dcc, html
from dash.development.base_component import Component

STATE_CLASSES = {
    "SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry", "STARTED": "started",
    "RECEIVED": "received", "PENDING": "pending", "REVOKED": "revoked", "REJECTED": "revoked",
}


def trouble_tone(count: int) -> str:
    """The colour of a card counting trouble (failures, stuck tasks): red when there is any, green at none."""
    return "tone-bad" if count else "tone-ok"


def stat_card_class(tone: str = "", wide: bool = False) -> str:
    """A stat card's className: what a callback gives a card (`box_id`) to change its tone."""
    return " ".join(filter(None, ("stat-card", tone, "stat-wide" if wide else "")))


def stat_card(label: str, value, card_id: str | None = None, tone: str = "", box_id: str | None = None,
              wide: bool = False, meaning: str | None = None) -> html.Div:
    """`card_id` names the value (for a callback to update), `box_id` the card (to change its tone);
    a `wide` card takes two columns of its row; `meaning`, shown on hover, says what is counted."""
    value_props = {"id": card_id} if card_id else {}
    return html.Div([
        html.Div(label, className="stat-label"),
        html.Div(value, className="stat-value", **value_props),
    ], className=stat_card_class(tone, wide), title=meaning,
        **({"id": box_id} if box_id else {}))


def fitting_columns(priority: Sequence[str]) -> dict:
    """AgGrid arguments by which the columns named in `priority` (most useful first) follow the grid's
    width (assets/dashAgGridFunctions.js): as many as fit are shown, never fewer than three. It runs
    on a resize and whenever the grid shows other columns or rows: its first sizing comes before the
    listeners are added. Spread the result into AgGrid and merge `context` into its dashGridOptions."""
    fit = ["flowerbedFitColumns(params)"]
    return {"eventListeners": {"gridSizeChanged": fit, "displayedColumnsChanged": fit, "modelUpdated": fit},
            "context": {"columnPriority": list(priority)}}


def openable_fitting_grid(open_path: str, priority: Sequence[str], grid_options: dict) -> dict:
    """AgGrid arguments for a grid whose columns follow its width (fitting_columns) and whose focused
    row Enter opens, at `open_path` + the row's id, as a click does."""
    fitting = fitting_columns(priority)
    return {"eventListeners": {**fitting["eventListeners"],
                               "cellKeyDown": [f"flowerbedOpenOnEnter(params, {json.dumps(open_path)})"]},
            "dashGridOptions": {"context": fitting["context"], **grid_options}}


class BelowFirstScreen(Component):
    """The part of a page below its first screen: its children are mounted once the charts above it are
    drawn (3 s at most) and the browser is next idle, or at once when the address's #id is not on the page
    yet (assets/below_first_screen.js), so that the first screen does not wait for the grids and charts
    nobody sees yet. They are in the layout all along: callbacks update them as if they were mounted, and
    they mount with the values they were given meanwhile. The browser sets `mounted`; given True, the
    children mount with the page."""
    _namespace = "flowerbed"
    _type = "BelowFirstScreen"
    _children_props: list = []
    _base_nodes = ["children"]
    _prop_names = ["children", "id", "className", "mounted"]
    _valid_wildcard_attributes: list = []
    available_properties = _prop_names
    available_wildcard_properties: list = []

    def __init__(self, children=None, id=None, className=None, mounted=None):
        given = {"id": id, "className": className, "mounted": mounted}
        super().__init__(children=children, **{key: value for key, value in given.items() if value is not None})


def state_badge(state: str | None) -> html.Span:
    return html.Span(state or "UNKNOWN", className=f"badge badge-{STATE_CLASSES.get(state, 'pending')}")


def format_time(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_duration(seconds) -> str:
    """Seconds as a person reads them: '0.35 ms', '17 ms', '2.4 s', '3 min 12 s', '2 h 5 min', '3 d 4 h';
    '—' for none. assets/dashAgGridFunctions.js flowerbedDuration is its twin in the browser (the
    grids format there): change both together (tests/test_durations.py holds them to the same)."""
    if not isinstance(seconds, (int, float)) or seconds != seconds:
        return "—"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    ms = seconds * 1000
    if ms < 999.5:
        return f"{_trimmed(ms, 2 if ms < 1 else 1 if ms < 10 else 0)} ms"
    if seconds < 59.5:
        return f"{_trimmed(seconds, 1 if seconds < 9.95 else 0)} s"
    if seconds < 3599.5:
        return _two_units(_round_half_up(seconds), 60, "min", "s")
    if seconds < 86370:
        return _two_units(_round_half_up(seconds / 60), 60, "h", "min")
    return _two_units(_round_half_up(seconds / 3600), 24, "d", "h")


def _two_units(count: int, per: int, unit: str, smaller: str) -> str:
    whole, rest = divmod(count, per)
    return f"{whole} {unit}" + (f" {rest} {smaller}" if rest else "")


def _trimmed(value: float, decimals: int) -> str:
    """`value` to `decimals` places without trailing zeros: 2.0 → '2', 0.50 → '0.5'. An exact half
    rounds up, as JavaScript's toFixed does (Python's format rounds it to even)."""
    text = str(Decimal(value).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP))
    return text.rstrip("0").rstrip(".") if "." in text else text


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)  # JavaScript's Math.round


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

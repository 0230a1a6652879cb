"""The frame around every page: navigation, collector status, the page slot."""
from __future__ import annotations

from dash import dcc, html

from .common import format_clock

NAV_ITEMS = (("Dashboard", ""), ("Tasks", "tasks"), ("Analytics", "analytics"), ("Broker", "broker"))


def shell(relative_path, refresh_ms: int, admin: bool = False, store_version=None, page=None,
          page_address: str | None = None, current_nav: str | None = None, status=None) -> html.Div:
    """`relative_path` turns an app path into a link that honours the URL prefix; an `admin` also
    gets the Audit page in the navigation. `store_version`: monitor.services.store_version now,
    so that the first tick does not count as news. `page`: the page at `page_address` (path and
    query), when the layout comes with it (callbacks/shell.py first_page), with the id of its link in
    the navigation (`current_nav`) and the collector's `status` line, so that its first screen is whole."""
    def nav_class(nav_id: str) -> str:
        return "nav-link active" if nav_id == current_nav else "nav-link"

    return html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        dcc.Interval(id="refresh-tick", interval=refresh_ms),
        # When the collectors last stored tasks: the Tasks grid reloads only when it moves.
        dcc.Store(id="store-version", data=store_version),
        dcc.Store(id="page-address", data=page_address),
        html.Header([
            dcc.Link([html.Span("✿", className="brand-mark"), "Flowerbed"], href=relative_path("/"), className="brand"),
            # On a phone the navigation folds behind this button (assets/keyboard.js opens it).
            html.Button("☰", id="nav-toggle", className="nav-toggle", title="Menu",
                        **{"aria-label": "Menu", "aria-expanded": "false", "aria-controls": "nav"}),
            html.Nav([dcc.Link(label, href=relative_path(f"/{path}"), className=nav_class(f"nav-{path or 'dashboard'}"),
                               id=f"nav-{path or 'dashboard'}")
                      for label, path in NAV_ITEMS]
                     + ([dcc.Link("Audit", href=relative_path("/audit"), className=nav_class("nav-audit"), id="nav-audit")]
                        if admin else []), className="nav", id="nav"),
            html.Div(status, id="collector-status", className="collector-status"),
            html.Button("UTC", id="timezone-toggle", className="theme-toggle timezone-toggle",
                        title="Times in UTC; click for this browser's time zone"),
            html.Button("◐", id="theme-toggle", className="theme-toggle", title="Switch light / dark theme",
                        **{"aria-label": "Switch light or dark theme"}),
        ], className="topbar"),
        html.Main(page, id="page", className="page"),
    ], className="app")


def collector_status(stats: dict, now: float, stall_seconds: float) -> list:
    """The top bar's one-line answer to "is Flowerbed recording?", worst news first. `stats` may come
    from a collector in another process, through the store: then its age matters too."""
    tone, headline, text = _assess(stats, now, stall_seconds)
    return _status_line(tone, headline, text)


_TONE_ORDER = ("ok", "warn", "bad")


def brokers_status(reports: dict[str, dict], now: float, stall_seconds: float) -> list:
    """collector_status of the collector (`reports`: each broker's counters by its name); with several
    brokers, the worst news names its broker and the details give each broker's."""
    if len(reports) <= 1:
        return collector_status(next(iter(reports.values()), {}), now, stall_seconds)
    assessed = {name: _assess(stats, now, stall_seconds) for name, stats in reports.items()}
    worst = max(assessed, key=lambda name: _TONE_ORDER.index(assessed[name][0]))
    tone, headline, _text = assessed[worst]
    headline = f"{headline}: {worst}" if tone != "ok" else f"Recording {len(reports)} brokers"
    text = " | ".join(f"{name}: {line.lower()} · {details}" for name, (_tone, line, details) in assessed.items())
    return _status_line(tone, headline, text)


def _status_line(tone: str, headline: str, text: str) -> list:
    return [
        html.Span(className=f"dot dot-{tone}"),
        html.Span(headline, className=f"status-text status-{tone}"),
        html.Span(text, className="status-details", title=text),
    ]


def _assess(stats: dict, now: float, stall_seconds: float) -> tuple[str, str, str]:
    """(tone, headline, details) of one collector's counters."""
    role = stats.get("role")
    reported = stats.get("updated_at")
    if stats.get("store_error"):
        tone, headline = "bad", "Store unreachable"
    elif not stats:
        tone, headline = "bad", "No collector"
    elif not stats.get("running", True):
        tone, headline = "bad", f"Collector stopped at {format_clock(reported)}"
    elif reported and now - reported > stall_seconds:
        tone, headline = "bad", f"Collector silent since {format_clock(reported)}"
    elif stats.get("writer_error"):
        tone, headline = "bad", "Store not writable"
    elif role != "standby" and not stats.get("connected"):
        tone, headline = "bad", "Broker unreachable"
    elif role == "standby":
        tone, headline = "warn", "Standing by"
    elif stats.get("dropped") or stats.get("rejected"):
        tone, headline = "warn", "Recording, events lost"
    elif stats.get("silent_collectors"):
        tone, headline = "warn", "Recording, a collector silent"
    elif stats.get("disconnected_collectors"):
        tone, headline = "warn", "Recording, a collector cut off"
    else:
        tone, headline = "ok", "Recording"
    if stats.get("store_error"):
        return tone, headline, f"the pages cannot read the store, so what they show may be old: {stats['store_error']}"
    details = ["no collector has written to this store yet"] if not stats else [
               f"{stats.get('stored', 0):,} events stored", f"lag {stats.get('lag_seconds', 0):.1f} s",
               f"backlog {stats.get('backlog', 0):,}"]
    for key, one, many in (("dropped", "dropped (backlog full)", "dropped (backlog full)"),
                           ("rejected", "row refused by the store", "rows refused by the store"),
                           ("malformed", "malformed", "malformed"),
                           ("gaps", "task seen finishing without its earlier events",
                            "tasks seen finishing without their earlier events"),
                           ("disconnects", "disconnect", "disconnects")):
        if stats.get(key):
            details.append(f"{stats[key]:,} {one if stats[key] == 1 else many}")
    sharing = len(stats.get("collectors") or ())
    if sharing > 1:
        details.append(f"{sharing} collectors share the events queue {stats.get('events_queue')}")
    if silent := stats.get("silent_collectors"):
        details.append(f"{silent:,} {'collector' if silent == 1 else 'collectors'} of the queue silent for over "
                       f"{stall_seconds:g} s (what it did not acknowledge goes to the others)")
    if sharing > 1 and (cut_off := stats.get("disconnected_collectors")):
        details.append(f"{cut_off:,} {'collector' if cut_off == 1 else 'collectors'} of the queue cannot reach the "
                       "broker; the others record")
    if stats.get("unheard_events_lost"):
        details.append("events published while no collector listens are lost (on RabbitMQ, --events-queue keeps them)")
    if role == "standby":
        details.insert(0, f"{stats.get('lease_holder')} records this broker; this one takes over if it stops")
    current = stats.get("writer_error") or stats.get("broker_error")
    if error := current or stats.get("last_error"):
        details.append(f"{'error' if tone == 'bad' or current else 'last error'}: {error}")
    return tone, headline, " · ".join(details)


def not_found(message: str, relative_path) -> html.Div:
    return html.Div([
        html.H1("Not found"),
        html.P(message),
        dcc.Link("Back to the dashboard", href=relative_path("/")),
    ], className="empty-state")

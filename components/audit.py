"""The Audit page: every control action, who did it and what the workers answered; searchable,
exportable as CSV (admins only)."""
from __future__ import annotations

import json

from dash import dcc, html

from .common import format_time, page_header

OUTCOME_CLASSES = {"ok": "success", "sent": "success", "partial": "retry", "failed": "failure"}


def audit_layout(search: str) -> html.Div:
    return html.Div([
        page_header("Audit log", html.A("Download CSV", id="audit-csv", className="button ghost", download="",
                                        href=""),
                    subtitle="Every action taken on workers and tasks: who, when, on what, and what the workers "
                             "answered. Newest first."),
        html.Div([
            dcc.Input(id="audit-search", type="search", value=search, debounce=0.4, className="search-input wide",
                      placeholder="Search: a user, an action (revoke, rerun…), a worker, a task id…",
                      spellCheck=False, autoComplete="off"),
            html.Span(id="audit-count", className="muted"),
        ], className="toolbar"),
        html.Div(id="audit-table", className="panel audit-panel"),
    ])


def _replies(replies: dict | None) -> list:
    replies = replies or {}
    parts = []
    if replies.get("confirmed"):
        parts.append(html.Div(f"confirmed: {', '.join(sorted(replies['confirmed']))}"))
    for who, error in sorted((replies.get("errors") or {}).items())[:5]:
        parts.append(html.Div(f"{who}: {error}", className="error-line"))
    if replies.get("silent"):
        parts.append(html.Div(f"no answer: {', '.join(replies['silent'])}"))
    if replies.get("task_ids"):
        count = len(replies["task_ids"])
        parts.append(html.Div(f"sent {count:,} task{'s' if count != 1 else ''}"))
    return parts or ["—"]


def audit_table(rows: list[dict], searched: bool, relative_path) -> html.Div | html.P:
    if not rows:
        return html.P("No action matches this search." if searched else
                      "No action taken yet: every control action, here or through the API, will be listed here.", className="muted")
    head = html.Thead(html.Tr([html.Th(label) for label in (
        "Time (UTC)", "User", "Action", "Target", "Outcome", "Arguments", "Replies")]))
    body = []
    for row in rows:
        target = row["target"] or ""
        body.append(html.Tr([
            html.Td(format_time(row["at"]).removesuffix(" UTC"), className="nowrap"),
            html.Td(row["actor"]),
            html.Td(row["action"], className="mono"),
            html.Td(html.Span(target, title=target), className="mono audit-target"),
            html.Td([html.Span(row["outcome"],
                               className=f"badge badge-{OUTCOME_CLASSES.get(row['outcome'], 'pending')}"),
                     html.Div(row["message"], className="muted small")]),
            html.Td(json.dumps(row["arguments"], sort_keys=True) if row["arguments"] else "—", className="mono small"),
            html.Td(_replies(row["replies"]), className="small"),
        ]))
    return html.Table([head, html.Tbody(body)], className="audit-table")

"""The Audit page: the rows a search matches, and the CSV link for the same search."""
from __future__ import annotations

import urllib.parse

from dash import Input, Output

import auth
from components.audit import audit_table

SHOWN_ROWS = 200


def register(app, services) -> None:
    @app.callback(
        Output("audit-table", "children"),
        Output("audit-count", "children"),
        Output("audit-csv", "href"),
        Input("audit-search", "value"),
        Input("refresh-tick", "n_intervals"),
    )
    def show_audit(search, _tick):
        if not auth.can_act():  # the router shows admins only this page; a crafted request gets nothing
            return "The audit log is for admins.", "", ""
        search = search if isinstance(search, str) else ""
        total = services.store.count_audit(search)
        rows = list(services.store.iter_audit(search, limit=SHOWN_ROWS))
        count = f"{total:,} action{'s' if total != 1 else ''}" + (f", the newest {SHOWN_ROWS} shown"
                                                                  if total > SHOWN_ROWS else "")
        csv_href = app.get_relative_path("/api/audit.csv") + (
            "?" + urllib.parse.urlencode({"search": search}) if search else "")
        return audit_table(rows, bool(search.strip()), app.get_relative_path), count, csv_href

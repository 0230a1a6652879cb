"""The worker page (/worker/<name>): pool, broker, queues, registered tasks and their limits, the
tasks it holds, its counters and configuration, from the stored inspect replies and heartbeats."""
from __future__ import annotations

import re
import time
import urllib.parse

from dash import dcc, html

from .analytics import GRAPH_CONFIG, _panel, empty_figure
from .common import format_clock, format_number, page_header, stat_card, trouble_tone

# "name [rate_limit=10/m time_limit=30]", as celery's registered() answers with task info items.
_REGISTERED = re.compile(r"^(?P<name>\S+)(?: \[(?P<info>.*)\])?$")
# (inspect reply, title, what its tasks are, what an empty one says)
TASK_LISTS = (("active", "Active", "running now", "Nothing running."),
              ("reserved", "Reserved", "prefetched, waiting for a slot", "Nothing prefetched."),
              ("scheduled", "Scheduled", "waiting for their ETA or countdown", "Nothing scheduled."),
              ("revoked", "Revoked", "task ids it will not run", "No task revoked."))


def last_hour(figure: dict, now: float) -> dict:
    """The figure's time axis set to the hour up to the next whole minute: a few points still read
    as a place in the hour, and the range changes once a minute, so a zoom holds between refreshes."""
    if figure.get("data"):
        end = (int(now) // 60 + 1) * 60
        figure["layout"]["xaxis"] = {**figure["layout"].get("xaxis", {}), "range": [(end - 3600) * 1000, end * 1000]}
    return figure


def worker_path(hostname: str) -> str:
    """The app path of a worker's page (hostnames hold '@' and may hold other characters)."""
    return "/worker/" + urllib.parse.quote(hostname, safe="@")


def registered_tasks(names: list[str], totals: dict) -> list[dict]:
    """Rows of the registered tasks: name, rate limit, hard and soft time limits, how many it ran."""
    rows = []
    for entry in names or ():
        match = _REGISTERED.match(str(entry))
        if not match:
            continue
        info = dict(item.partition("=")[::2] for item in (match["info"] or "").split())
        rows.append({"name": match["name"], "rate_limit": info.get("rate_limit"),
                     "time_limit": info.get("time_limit"), "soft_time_limit": info.get("soft_time_limit"),
                     "processed": (totals or {}).get(match["name"], 0)})
    return sorted(rows, key=lambda row: row["name"])


def pool_facts(stats: dict) -> list[tuple[str, object]]:
    pool = stats.get("pool") or {}
    autoscaler = stats.get("autoscaler")
    processes = pool.get("processes")
    soft, hard = (pool.get("timeouts") or (None, None))[:2]
    return [
        ("implementation", _pool_name(pool.get("implementation"))),
        ("concurrency", pool.get("max-concurrency")),
        ("processes", ", ".join(map(str, processes)) if processes else (f"{pool['threads']} threads"
                                                                       if pool.get("threads") else None)),
        ("autoscale", f"{autoscaler.get('min')} – {autoscaler.get('max')} (now {autoscaler.get('current')})"
         if autoscaler else "off"),
        ("max tasks per child", pool.get("max-tasks-per-child")),
        ("prefetch count", stats.get("prefetch_count")),
        ("pool time limits", f"soft {soft or 'none'} · hard {hard or 'none'}" if "timeouts" in pool else None),
        ("worker pid", stats.get("pid")),
        ("uptime", _duration(stats.get("uptime"))),
    ]


def _pool_name(implementation: str | None) -> str | None:
    """'prefork' for celery's 'celery.concurrency.prefork:TaskPool'; another pool by its full name."""
    module, _, _cls = (implementation or "").partition(":")
    return module.rpartition(".")[2] if module.startswith("celery.concurrency.") else implementation


def broker_facts(stats: dict) -> list[tuple[str, object]]:
    broker = stats.get("broker") or {}
    address = broker.get("hostname")
    if address and broker.get("port"):
        address = f"{address}:{broker['port']}"
    return [("transport", broker.get("transport")), ("address", address),
            ("virtual host", broker.get("virtual_host")), ("user", broker.get("userid")),
            ("ssl", broker.get("ssl")), ("heartbeat", broker.get("heartbeat")),
            ("transport options", _text(broker.get("transport_options")) if broker.get("transport_options") else None)]


def _duration(seconds) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days} d " if days else "") + f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _text(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _cell(value):
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, (str, int, float)) else _text(value)


def kv_table(facts, table_id: str | None = None) -> html.Table:
    return html.Table(html.Tbody([html.Tr([html.Th(label), html.Td(_cell(value))]) for label, value in facts]),
                      className="kv", id=table_id)


def _table(headers: list[str], rows: list[list], empty: str, table_id: str) -> html.Div:
    if not rows:
        return html.P(empty, className="muted small", id=table_id)
    return html.Div(html.Table([html.Thead(html.Tr([html.Th(h) for h in headers])),
                                html.Tbody([html.Tr([html.Td(cell) for cell in row]) for row in rows])],
                               className="data-table", id=table_id), className="table-scroll")


def task_link(uuid: str, relative_path, short: bool = False) -> dcc.Link:
    """A link to the task's page; `short` shows the id's start (the whole id on hover), so that a table of
    tasks fits a half-width panel."""
    return dcc.Link(uuid, href=relative_path(f"/task/{uuid}"), title=uuid if short else None,
                    className="mono clip short-id" if short else "mono")


def _request_rows(kind: str, items: list, relative_path) -> list[list]:
    rows = []
    for item in items or ():
        if kind == "revoked":
            rows.append([task_link(str(item), relative_path)])
            continue
        request = item.get("request", item) if kind == "scheduled" else item
        when = item.get("eta") if kind == "scheduled" else format_clock(request.get("time_start")) \
            if request.get("time_start") else "—"
        rows.append([request.get("name") or "—", task_link(str(request.get("id")), relative_path, short=True),
                     html.Span(_text(request.get("args")), className="mono clip"), when])
    return rows


def task_lists(inspect: dict, relative_path) -> list:
    """A panel per list the worker holds (active, reserved, scheduled, revoked), each task linked."""
    panels = []
    for kind, title, meaning, empty in TASK_LISTS:
        items = inspect.get(kind) or []
        headers = ["Task id"] if kind == "revoked" else ["Name", "Task id", "args", "ETA (UTC)" if kind == "scheduled"
                                                          else "Started"]
        panels.append(_panel(f"{title} · {len(items)}", _table(headers, _request_rows(kind, items, relative_path),
                                                              empty, f"worker-{kind}"),
                             help_text=meaning))
    return panels


def worker_cards(worker: dict, now: float) -> list:
    load = worker.get("loadavg")
    beat = worker.get("last_heartbeat")
    failed = worker.get("failed") or 0
    return [
        stat_card("Status", ["Online" if worker["online"] else "Offline",  # a narrow card breaks before the age
                             html.Small(f"beat {now - beat:.0f}\u00a0s\u00a0ago" if beat else "no heartbeat yet",
                                        className="stat-sub below")],
                  "worker-status", "tone-ok" if worker["online"] else "tone-bad"),
        stat_card("Active", format_number(worker.get("active") or 0), tone="tone-info"),
        stat_card("Processed", format_number(worker.get("received") or 0)),
        stat_card("Succeeded", format_number(worker.get("succeeded") or 0), tone="tone-ok"),
        stat_card("Failed", format_number(failed), tone=trouble_tone(failed)),
        stat_card("Retried", format_number(worker.get("retried") or 0)),
        stat_card("Load average", ", ".join(f"{x:.2f}" for x in load) if load else "—", wide=True),
    ]


def worker_live(worker: dict, now: float, relative_path) -> list:
    """What the page refreshes: counters, pool and broker, queues, registered tasks, held tasks."""
    inspect = worker.get("inspect") or {}
    stats = inspect.get("stats") or {}
    inspected = worker.get("inspected_at")
    queues = [[q.get("name"), (q.get("exchange") or {}).get("name") or "—", q.get("routing_key") or "—",
               (q.get("exchange") or {}).get("type") or "—"] for q in inspect.get("active_queues") or ()]
    registered = registered_tasks(inspect.get("registered"), stats.get("total"))
    return [
        html.Div(worker_cards(worker, now), className="stat-row compact-stats worker-stats"),
        html.P(f"Inspected {now - inspected:.0f} s ago." if inspected else
               "This worker has not answered an inspect yet: pool, queues and tasks show once it does.",
               className="muted small"),
        html.Div([
            _panel("Pool", kv_table(pool_facts(stats), "worker-pool")),
            _panel("Broker", kv_table(broker_facts(stats), "worker-broker")),
        ], className="chart-grid two"),
        html.Div([
            _panel(f"Queues consumed · {len(queues)}", _table(["Queue", "Exchange", "Routing key", "Type"], queues,
                                                             "No queue reported.", "worker-queues")),
            _panel(f"Registered tasks · {len(registered)}", _table(
                ["Name", "Rate limit", "Time limit (s)", "Soft time limit (s)", "Processed"],
                [[row["name"], row["rate_limit"] or "—", row["time_limit"] or "—", row["soft_time_limit"] or "—",
                  format_number(row["processed"])] for row in registered], "No task reported.", "worker-registered")),
        ], className="chart-grid two"),
        html.Div(task_lists(inspect, relative_path), className="chart-grid two"),
    ]


def worker_layout(worker: dict, relative_path, controls=None, now: float | None = None) -> html.Div:
    """The page of one worker (a row of Store.workers()); `controls` (admins only) go above the charts."""
    now = time.time() if now is None else now
    conf = (worker.get("inspect") or {}).get("conf") or {}
    software = " ".join(filter(None, (worker.get("sw_ident"), worker.get("sw_ver"), worker.get("sw_sys"))))
    subtitle = " · ".join(filter(None, (f"broker {worker['broker']}" if worker.get("broker") else None, software)))
    return html.Div([
        page_header(worker["hostname"], dcc.Link("← All workers", href=relative_path("/"), className="button ghost"),
                    subtitle=subtitle or None),
        dcc.Store(id="worker-name", data=worker["hostname"]),
        controls,
        html.Div(worker_live(worker, now, relative_path), id="worker-live"),
        html.Div([
            _panel("Active tasks, last hour", dcc.Graph(id="worker-active-chart", figure=empty_figure("Loading…", 220),
                                                        config=GRAPH_CONFIG, className="chart"),
                   help_text="mean of heartbeats per minute"),
            _panel("Load average (1 min), last hour", dcc.Graph(id="worker-load-chart", figure=empty_figure("Loading…", 220),
                                                                config=GRAPH_CONFIG, className="chart")),
        ], className="chart-grid two"),
        _panel("Configuration", html.Details([
            html.Summary(f"{len(conf)} settings the worker reported (those not at their default)"),
            kv_table(sorted(conf.items()), "worker-conf"),
        ]) if conf else html.P("Not reported yet.", className="muted small")),
    ], id="worker-page")


# -- control (admins only) -----------------------------------------------------------------------
def _action(action: str, label: str, danger: bool = False) -> html.Button:
    return html.Button(label, id={"type": "worker-action", "action": action}, n_clicks=0,
                       className="button small" + (" danger" if danger else ""))


def _group(*children) -> html.Span:
    """Inputs and the button that takes them: a narrow screen wraps the row between groups, never inside one."""
    return html.Span(list(children), className="control-group")


def _number(input_id: str, placeholder: str, value=None) -> dcc.Input:
    # Text, not type=number: compact, and the control engine says what is wrong with a value.
    return dcc.Input(id=input_id, type="text", inputMode="numeric", value=value, placeholder=placeholder,
                     className="search-input control-number")


def control_choices(worker: dict) -> tuple[list[str], list]:
    """The task names the control panel offers, and the queues it suggests (options of a datalist)."""
    inspect = worker.get("inspect") or {}
    tasks = [row["name"] for row in registered_tasks(inspect.get("registered"), {})]
    return tasks, [html.Option(value=queue.get("name")) for queue in inspect.get("active_queues") or ()]


def worker_controls(worker: dict) -> html.Div:
    """The control panel of a worker page, for admins: each button asks for confirmation first, and
    the workers' replies show under it."""
    tasks, consumed = control_choices(worker)
    return _panel("Control", html.Div([
        html.Div([
            _group(html.Span("Pool", className="control-label"), _number("worker-pool-n", "n", "1"),
                   _action("pool-grow", "Grow"), _action("pool-shrink", "Shrink")),
            _action("pool-restart", "Restart pool"),
            _group(html.Span("Autoscale", className="control-label"), _number("worker-autoscale-min", "min"),
                   _number("worker-autoscale-max", "max"), _action("autoscale", "Set")),
        ], className="control-row"),
        html.Div([
            _group(html.Span("Queue", className="control-label"),
                   dcc.Input(id="worker-queue", type="text", placeholder="queue name", list="worker-queues-consumed",
                             className="search-input control-text")),
            html.Datalist(consumed, id="worker-queues-consumed"),
            _action("add-consumer", "Add consumer"), _action("cancel-consumer", "Cancel consumer"),
        ], className="control-row"),
        html.Div([
            _group(html.Span("Task", className="control-label"),
                   dcc.Dropdown(id="worker-task", options=tasks, placeholder="registered task", className="control-dropdown")),
            _group(dcc.Input(id="worker-rate", type="text", placeholder="rate, e.g. 10/m", className="search-input control-short"),
                   _action("rate-limit", "Set rate limit")),
            _group(_number("worker-soft", "soft s"), _number("worker-hard", "hard s"), _action("time-limit", "Set time limits")),
        ], className="control-row"),
        html.Div([_action("shutdown", "Shut down worker", danger=True)], className="control-row"),
        dcc.ConfirmDialog(id="worker-confirm"),
        dcc.Store(id="worker-pending"),
        html.Div(id="act-worker-result", role="status"),
    ]), help_text="admins only; each action asks first", class_name="worker-controls")


def action_result(result) -> html.Div:
    """What an action did (a control.ActionResult): who confirmed, who answered with an error, who did not answer."""
    outcome = result.outcome
    tone = {"ok": "success", "sent": "success", "partial": "retry"}.get(outcome, "failure")
    lines = [html.Div([html.Span("confirmed ", className="muted"), html.Strong(worker), f": {answer}"])
             for worker, answer in result.confirmed.items()]
    lines += [html.Div([html.Span("error ", className="muted"), html.Strong(worker), f": {error}"])
              for worker, error in result.errors.items()]
    lines += [html.Div([html.Span("no answer ", className="muted"), html.Strong(worker)]) for worker in result.silent]
    return html.Div([html.Div([html.Span(outcome, className=f"badge badge-{tone}"), " ", result.message,
                               html.Span(f" · by {result.user} at {format_clock(result.at)}", className="muted")]),
                     *lines], className="action-result", id="worker-action-outcome")


def action_refused(message: str) -> html.Div:
    return html.Div([html.Span("not done", className="badge badge-failure"), " ", message],
                    className="action-result", id="worker-action-outcome")

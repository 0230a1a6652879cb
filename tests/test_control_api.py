"""The action routes (Flower's control and task API), who may use them, cross-site request refusal
and the audit log's API and CSV: through Flask's test client, then a real Flowerbed with basic
auth driving a real worker."""
from __future__ import annotations

import base64
import csv
import io
import json
import urllib.request

import pytest
from werkzeug.security import generate_password_hash

import app as flowerbed_app
from helpers import CeleryWorker, FlowerbedServer, Stack, get_json, wait_for, wait_for_tasks, worker_status
from monitor.settings import load_settings

ADMIN = ("ada", "correct horse")
VIEWER = ("vic", "battery staple")
T0 = 1_800_000_000.0


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def dash_app(tmp_path):
    settings = load_settings([
        "--broker", "memory://localhost/", "--db", str(tmp_path / "control.db"),
        "--basic-auth", f"{ADMIN[0]}:{generate_password_hash(ADMIN[1])}",
        "--basic-auth-readonly", f"{VIEWER[0]}:{VIEWER[1]}", "--inspect-timeout", "0.2",
    ], environ={})
    built = flowerbed_app.create_app(settings)
    yield built
    built.server.config["flowerbed_services"].stop()


def action_urls(dash_app) -> list[tuple[str, str]]:
    """(method, path) of every route that acts or reads the audit log, placeholders filled."""
    urls = []
    for rule in dash_app.server.url_map.iter_rules():
        acting = "POST" in rule.methods and "/api/" in rule.rule or "/api/audit" in rule.rule
        if acting:
            path = (rule.rule.replace("<workername>", "w@a").replace("<taskid>", "t-1")
                    .replace("<taskname>", "sample.add"))
            urls.append(("POST" if "POST" in rule.methods else "GET", path))
    return urls


def test_every_action_route_refuses_a_read_only_user(dash_app):
    client = dash_app.server.test_client()
    urls = action_urls(dash_app)
    assert len(urls) >= 18  # Flower's 14 control and task routes, the re-runs, the audit log
    for method, path in urls:
        response = client.open(path, method=method, headers=basic(*VIEWER))
        assert response.status_code == 403, (path, response.status_code)
        assert "read-only" in response.get_json()["error"]
    assert dash_app.server.config["flowerbed_services"].store.count_audit() == 0


def test_every_action_callback_refuses_a_read_only_user(dash_app):
    outputs = [output for key in dash_app.callback_map for output in key.strip(".").split("...")
               if output.startswith("act-")]
    assert len(outputs) >= 3  # the task detail's actions, the bulk re-run's preview and its confirmation
    client = dash_app.server.test_client()
    for output in outputs:
        component, prop = output.rsplit(".", 1)
        response = client.post("/_dash-update-component", headers=basic(*VIEWER), json={
            "output": output, "outputs": {"id": component, "property": prop}, "inputs": [], "state": []})
        assert response.status_code == 403, output


def test_an_action_callback_refuses_a_read_only_user(dash_app):
    client = dash_app.server.test_client()
    body = {"output": "act-task-result.children", "outputs": {"id": "act-task-result", "property": "children"},
            "inputs": [{"id": "task-act-request", "property": "data", "value": {"action": "act-rerun", "at": 1}}],
            "changedPropIds": ["task-act-request.data"],
            "state": [{"id": "task-signal", "property": "value", "value": "SIGTERM"},
                      {"id": "task-detail-uuid", "property": "data", "value": "t-1"}]}
    refused = client.post("/_dash-update-component", json=body, headers=basic(*VIEWER))
    assert refused.status_code == 403 and "read-only" in refused.get_json()["error"]
    answered = client.post("/_dash-update-component", json=body, headers=basic(*ADMIN))
    assert answered.status_code == 200 and "Unknown task 't-1'" in answered.get_data(as_text=True)
    # A callback that only reads stays open to the read-only user.
    assert client.post("/_dash-update-component", headers=basic(*VIEWER), json={
        "output": "..collector-status.children...store-version.data..",
        "outputs": [{"id": "collector-status", "property": "children"}, {"id": "store-version", "property": "data"}],
        "inputs": [{"id": "refresh-tick", "property": "n_intervals", "value": 1}],
        "state": [{"id": "store-version", "property": "data", "value": None}],
        "changedPropIds": ["refresh-tick.n_intervals"]}).status_code == 200


@pytest.mark.parametrize("headers, body, content_type, reason", [
    ({"Origin": "https://evil.example"}, None, None, "cross-site request refused"),
    ({"Origin": "null"}, None, None, "cross-site request refused"),
    ({"Referer": "https://evil.example/page"}, None, None, "cross-site request refused"),
    ({"Sec-Fetch-Site": "cross-site"}, None, None, "cross-site request refused"),
    ({"Origin": "https://evil.example", "Sec-Fetch-Site": "same-site"}, None, None, "cross-site request refused"),
    ({"Origin": "http://localhost"}, "terminate=true", "application/x-www-form-urlencoded", "needs the page's token"),
    ({"Origin": "http://localhost"}, "terminate=true", "text/plain", "needs the page's token"),
    ({"Sec-Fetch-Mode": "navigate"}, "terminate=true", "application/x-www-form-urlencoded", "needs the page's token"),
], ids=["origin", "null-origin", "referer", "sec-fetch-site", "sibling-site", "same-site-form", "text-plain", "form-no-origin"])
def test_a_cross_site_or_browser_form_post_is_refused(dash_app, headers, body, content_type, reason):
    client = dash_app.server.test_client()
    response = client.post("/api/task/revoke/t-1", data=body, content_type=content_type,
                           headers={**basic(*ADMIN), **headers})
    assert response.status_code == 403 and reason in response.get_json()["error"]
    assert dash_app.server.config["flowerbed_services"].store.count_audit() == 0


@pytest.mark.parametrize("origin, host, forwarded", [
    ("http://localhost", "localhost", None),
    ("https://monitor.example:8443", "monitor.example", None),  # nginx's `Host $host` drops the port
    ("https://monitor.example", "127.0.0.1:5555", "monitor.example"),
    # A proxy that passes neither the browser's Host nor X-Forwarded-Host: the browser's own word.
    ("https://monitor.example", "127.0.0.1:5555", "same-origin"),
])
def test_a_post_from_the_site_itself_goes_through(dash_app, origin, host, forwarded):
    headers = {**basic(*ADMIN), "Origin": origin, "Host": host,
               **({"Sec-Fetch-Site": forwarded} if forwarded == "same-origin"
                  else {"X-Forwarded-Host": forwarded} if forwarded else {})}
    response = dash_app.server.test_client().post("/api/task/revoke/t-1", headers=headers)
    assert response.status_code == 200, response.get_json()


def test_dash_callbacks_from_another_site_are_refused(dash_app):
    client = dash_app.server.test_client()
    response = client.post("/_dash-update-component", headers={**basic(*ADMIN), "Origin": "https://evil.example"},
                           json={"output": "act-task-result.children"})
    assert response.status_code == 403 and "cross-site" in response.get_json()["error"]


def test_a_form_post_with_the_page_token_and_a_script_post_go_through(dash_app):
    client = dash_app.server.test_client()
    token = client.get("/api/token", headers=basic(*ADMIN)).get_json()["token"]
    own_site = {**basic(*ADMIN), "Origin": "http://localhost"}
    with_token = client.post("/api/task/revoke/t-1", data={"terminate": "false", "_token": token}, headers=own_site)
    assert with_token.status_code == 200, with_token.get_json()
    assert client.post("/api/task/revoke/t-2", data="terminate=false", content_type="text/plain",
                       headers={**own_site, "X-Flowerbed-Token": token}).status_code == 200
    assert client.post("/api/task/revoke/t-3", data={"_token": "forged"}, headers=own_site).status_code == 403
    # A script (curl -d, requests) sends no Origin, Referer nor Sec-Fetch-*: it works as with Flower.
    script = client.post("/api/task/revoke/t-4", data="terminate=false", headers=basic(*ADMIN),
                         content_type="application/x-www-form-urlencoded")
    assert script.status_code == 200 and script.get_json()["message"] == "Revoked 't-4'"
    assert dash_app.server.config["flowerbed_services"].store.count_audit() == 3


@pytest.mark.parametrize("path, status, words", [
    ("/api/worker/pool/grow/nobody@host?n=2", 404, "Unknown worker 'nobody@host'"),
    ("/api/worker/pool/grow/nobody@host?n=99999999999999999999", 400, "at most 1,000 pool processes"),
    ("/api/task/apply/sample.add?timeout=soon", 400, "timeout must be a number of seconds"),
    ("/api/worker/pool/autoscale/nobody@host?min=1", 400, "give min and max"),
    ("/api/task/rate-limit/sample.add", 400, "give ratelimit"),
    ("/api/task/rate-limit/sample.add?ratelimit=lots", 400, "ratelimit must be"),
    ("/api/task/timeout/sample.add?soft=soon", 400, "soft must be a number of seconds"),
    ("/api/task/revoke/t-1?terminate=1&signal=SIGWHAT", 400, "unknown signal"),
    ("/api/task/rerun/t-404", 404, "Unknown task 't-404'"),
    ("/api/task/abort/t-1", 503, "needs a result backend"),
    ("/api/tasks/rerun?search=name:", 400, "needs a value"),
    ("/api/tasks/rerun?cap=0", 400, "cap must be at least 1"),
])
def test_bad_action_requests_get_a_json_reason(dash_app, path, status, words):
    response = dash_app.server.test_client().post(path, headers=basic(*ADMIN))
    assert response.status_code == status, response.get_data(as_text=True)
    assert words.lower() in response.get_json()["error"].lower()


@pytest.mark.parametrize("route", ["async-apply", "send-task", "apply"])
@pytest.mark.parametrize("body, words", [
    ("[1, 2]", "JSON object"),
    ('{"args": [1], "queue": 7}', "queue is missing"),
    ('{"args": [1], "priority": 900}', "priority must be"),
    ('{"args": [1], "countdown": "soon"}', "countdown must be"),
    ('{"args": [1], "eta": "tomorrow"}', "eta and expires an ISO 8601 time"),
    ('{"args": [1], "expires": -5}', "expires must be a number of seconds, at least 0"),
    ('{"kwargs": [1]}', "kwargs must be an object"),
])
def test_task_routes_refuse_a_body_they_cannot_send(dash_app, route, body, words):
    response = dash_app.server.test_client().post(f"/api/task/{route}/sample.add", data=body,
                                                  content_type="application/json", headers=basic(*ADMIN))
    assert response.status_code == 400 and words in response.get_json()["error"]


def test_the_audit_csv_has_raw_values_utc_times_and_no_formulas(dash_app):
    store = dash_app.server.config["flowerbed_services"].store
    store.record_action({"at": T0, "actor": "=HYPERLINK(\"x\")", "action": "revoke", "target": "+t-1",
                         "arguments": {"terminate": True}, "outcome": "ok", "message": "@Revoked 't-1'",
                         "replies": {"confirmed": {"w@a": "tasks flagged"}, "errors": {}, "silent": [],
                                     "task_ids": []}})
    store.record_action({"at": T0 + 1.5, "actor": "ada", "action": "pool-grow", "target": "w@a",
                         "arguments": {"n": 2}, "outcome": "failed", "message": "-2", "replies": {}})
    client = dash_app.server.test_client()
    response = client.get("/api/audit.csv", headers=basic(*ADMIN))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [row["at"] for row in rows] == ["2027-01-15T08:00:01.500Z", "2027-01-15T08:00:00.000Z"]
    assert (rows[1]["actor"], rows[1]["target"], rows[1]["message"]) == (
        "'=HYPERLINK(\"x\")", "'+t-1", "'@Revoked 't-1'")
    assert json.loads(rows[1]["arguments"]) == {"terminate": True}
    assert json.loads(rows[1]["confirmed"]) == {"w@a": "tasks flagged"}
    assert rows[0]["message"] == "'-2"
    searched = client.get("/api/audit.csv?search=pool-grow", headers=basic(*ADMIN)).get_data(as_text=True)
    assert len(list(csv.DictReader(io.StringIO(searched)))) == 1
    listed = client.get("/api/audit?search=revoke", headers=basic(*ADMIN)).get_json()
    assert listed["total"] == 1 and listed["entries"][0]["arguments"] == {"terminate": True}


# -- a real Flowerbed with basic auth, a real worker ---------------------------------------------------
def post(url: str, credentials, body: bytes | None = None, headers=None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body if body is not None else b"", method="POST")
    request.add_header("Authorization", basic(*credentials)["Authorization"])
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def guarded_cluster(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guarded")
    stack = Stack()
    # Its own Redis database: the other modules' workers and monitors stay out of its actions.
    broker = redis_url.rsplit("/", 1)[0] + "/7"
    try:
        server = stack.add(FlowerbedServer.start(
            broker, tmp / "flowerbed.db", tmp / "flowerbed.log", "--inspect-timeout", "3",
            "--basic-auth", f"{ADMIN[0]}:{ADMIN[1]}", "--basic-auth-readonly", f"{VIEWER[0]}:{VIEWER[1]}"))
        worker = stack.add(CeleryWorker(broker, "beta@guarded", tmp))
        wait_for(lambda: worker_status(server, worker.hostname, ADMIN), 20, "the worker online in the monitor")
        yield server, worker
    finally:
        stack.stop_all()


def audit_total(server) -> int:
    request = urllib.request.Request(f"{server}/api/audit?limit=1", headers=basic(*ADMIN))
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["total"]


def test_a_script_post_with_basic_auth_and_no_origin_works(guarded_cluster):
    server, worker = guarded_cluster
    status, body = post(f"{server}/api/task/rate-limit/sample.add", ADMIN,
                        f"ratelimit=50/m&workername={worker.hostname}".encode(),
                        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    assert body["message"] == "new rate limit set successfully" and list(body["confirmed"]) == [worker.hostname]
    status, body = post(f"{server}/api/task/async-apply/sample.add", ADMIN, json.dumps(
        {"args": [4, 5], "queue": worker.queue}).encode(), {"Content-Type": "application/json"})
    assert status == 200, body
    wait_for_tasks(server, {body["task-id"]: "SUCCESS"}, credentials=ADMIN)
    assert post(f"{server}/api/task/rate-limit/sample.add?ratelimit=1/s", VIEWER)[0] == 403


@pytest.mark.parametrize("path, expected", [
    ("/api/worker/pool/grow/{w}?n=1", 403),  # a threads pool cannot grow: the worker's error, as Flower answers
    ("/api/worker/queue/add-consumer/{w}?queue=extra-guarded", 200),
    ("/api/worker/queue/cancel-consumer/{w}?queue=extra-guarded", 200),
    ("/api/task/timeout/sample.sleep?soft=20&hard=40&workername={w}", 200),
    ("/api/task/revoke/00000000-0000-4000-8000-000000000099?terminate=true&signal=SIGKILL", 200),
    ("/api/worker/pool/autoscale/{w}?min=1&max=2", 403),
])
def test_each_action_leaves_exactly_one_audit_row(guarded_cluster, path, expected):
    server, worker = guarded_cluster
    before = audit_total(server)
    status, body = post(f"{server}{path.format(w=worker.hostname)}", ADMIN)
    assert status == expected, body
    assert audit_total(server) == before + 1
    if expected == 403:
        assert worker.hostname in body["errors"] and body["error"].startswith("Failed")


def test_rerun_and_bulk_rerun_through_the_api_link_the_new_tasks(guarded_cluster):
    server, worker = guarded_cluster
    failed = [worker.send("sample.fail", f"api-bulk-{number}") for number in range(3)]
    wait_for_tasks(server, dict.fromkeys(failed, "FAILURE"), credentials=ADMIN)
    status, body = post(f"{server}/api/task/rerun/{failed[0]}", ADMIN)
    assert status == 200 and body["outcome"] == "sent", body
    new_id = body["task-id"]
    wait_for_tasks(server, {new_id: "FAILURE"}, timeout=60, credentials=ADMIN)  # a busy machine: sent, received, run
    assert get_json(f"{server}/api/task/links/{new_id}", ADMIN) == (200, {"rerun_of": failed[0], "reruns": []})
    assert get_json(f"{server}/api/task/links/{failed[0]}", ADMIN) == (200, {"rerun_of": None, "reruns": [new_id]})
    wait_for(lambda: post(f"{server}/api/tasks/rerun?search=api-bulk&state=FAILURE&dry_run=1", ADMIN) == (
        200, {"matched": 4, "would_send": 4, "cap": 1000}), 10, "the three failures and the re-run's counted")
    status, preview = post(f"{server}/api/tasks/rerun?search=api-bulk&state=FAILURE&cap=2&dry_run=1", ADMIN)
    assert (status, preview) == (200, {"matched": 3, "would_send": 2, "cap": 2})  # counted up to the cap + 1
    status, body = post(f"{server}/api/tasks/rerun?search=api-bulk&state=FAILURE&cap=2", ADMIN)
    assert status == 200 and len(body["task_ids"]) == 2 and body["message"] == "Re-ran 2 of 2 tasks", body

"""Basic auth, roles and URL prefixes through Flask's test client (the real app, no server)."""
from __future__ import annotations

import base64
import json
import re

import pytest
from werkzeug.security import generate_password_hash

import app as flowerbed_app
from helpers import callback_body, router_body
from monitor.settings import load_settings
from monitor.store.schema import TASK_FIELDS

ADMIN = ("ada", "correct horse")
VIEWER = ("vic", "battery staple")
MALFORMED_HEADERS = [
    "Basic",
    "Basic ",
    "Basic !!!not-base64!!!",
    "Bearer abc.def.ghi",
    "Basic " + base64.b64encode(b"no-colon-here").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe\xfa:\x00").decode(),
    "basic" + base64.b64encode(b"ada:correct horse").decode(),
    "Basic " + base64.b64encode(b"ada:wrong").decode(),
    "Basic " + base64.b64encode(b"nobody:correct horse").decode(),
    "Digest username=ada",
]


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def build(tmp_path, *flags):
    settings = load_settings([
        "--broker", "memory://localhost/", "--db", str(tmp_path / "access.db"),
        "--basic-auth", f"{ADMIN[0]}:{generate_password_hash(ADMIN[1])}",
        "--basic-auth-readonly", f"{VIEWER[0]}:{VIEWER[1]}", *flags,
    ], environ={})
    dash_app = flowerbed_app.create_app(settings)
    yield dash_app
    dash_app.server.config["flowerbed_services"].stop()


@pytest.fixture(params=["", "/flower"], ids=["root", "prefix"])
def dash_app(request, tmp_path):
    flags = ("--url-prefix", request.param) if request.param else ()
    yield from build(tmp_path, *flags)


def concrete_urls(dash_app) -> list[tuple[str, str]]:
    """Every rule of the app's URL map, with placeholders filled, and its methods."""
    urls = []
    for rule in dash_app.server.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: "x" + m.group(1), rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            urls.append((method, path))
    return urls


def health_paths(dash_app) -> tuple[str, str]:
    """The liveness and readiness checks, open on purpose (orchestrators probe without credentials)."""
    prefix = dash_app.config.routes_pathname_prefix
    return prefix + "healthcheck", prefix + "healthcheck/ready"


def test_every_route_needs_credentials(dash_app):
    client = dash_app.server.test_client()
    urls = concrete_urls(dash_app)
    assert len(urls) >= 12  # pages, Dash internals, API, health
    for method, path in urls:
        if path in health_paths(dash_app):
            continue
        response = client.open(path, method=method)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_malformed_authorization_is_401_never_500(dash_app):
    client = dash_app.server.test_client()
    prefix = dash_app.config.routes_pathname_prefix
    for header in MALFORMED_HEADERS:
        for path in (prefix, prefix + "api/workers", prefix + "_dash-layout"):
            response = client.get(path, headers={"Authorization": header})
            assert response.status_code == 401, (header, path, response.status_code)


def test_callback_route_needs_credentials(dash_app):
    client = dash_app.server.test_client()
    body = router_body("/healthcheck")
    path = dash_app.config.routes_pathname_prefix + "_dash-update-component"
    assert client.post(path, json=body).status_code == 401
    assert client.post(path, json=body, headers=basic(*VIEWER)).status_code == 200


def test_health_checks_stay_open(dash_app):
    alive, ready = health_paths(dash_app)
    client = dash_app.server.test_client()
    response = client.get(alive)
    assert (response.status_code, response.data) == (200, b"OK")
    response = client.get(ready)  # open too: 200 or 503 by the collector's state, with the reasons
    assert response.status_code == (503 if response.json["problems"] else 200)


@pytest.mark.parametrize("user", [ADMIN, VIEWER], ids=["admin", "viewer"])
def test_each_role_sees_every_page_and_api(dash_app, user):
    client = dash_app.server.test_client()
    prefix = dash_app.config.routes_pathname_prefix
    for path in ("", "tasks", "analytics", "broker", "_dash-layout", "_dash-dependencies", "api/workers",
                 "api/tasks?limit=5", "api/collector", "api/queues/length"):
        response = client.get(prefix + path, headers=basic(*user))
        assert response.status_code == 200, (path, response.status_code)
    assert client.get(prefix + "task/unknown", headers=basic(*user)).status_code == 404  # no such page, for anyone


def test_viewer_cannot_trigger_actions(tmp_path):
    # A short inspect timeout: the admin's refresh waits for a fresh inspect (of no worker here).
    for dash_app in build(tmp_path, "--inspect-timeout", "0.2"):
        client = dash_app.server.test_client()
        path = dash_app.config.routes_pathname_prefix + "api/workers?refresh=1"
        denied = client.get(path, headers=basic(*VIEWER))
        assert denied.status_code == 403
        assert "read-only" in denied.get_json()["error"]
        assert client.get(path, headers=basic(*ADMIN)).status_code == 200


def render(client, path: str, user) -> str:
    """The page the router callback renders for `path`, as `user` sees it, as JSON text."""
    response = client.post("/_dash-update-component", json=router_body(path), headers=basic(*user))
    assert response.status_code == 200
    return response.get_data(as_text=True)


def confirm_action(client, user, pending):
    """The answer to `user` confirming the action `pending` on the worker page."""
    body = callback_body("act-worker-result.children",
                         [{"id": "worker-confirm", "property": "submit_n_clicks", "value": 1}],
                         [{"id": "worker-pending", "property": "data", "value": pending},
                          {"id": "worker-name", "property": "data", "value": "known@host"}])
    return client.post("/_dash-update-component", json=body, headers=basic(*user))


def test_only_admins_get_worker_controls_and_the_server_refuses_a_viewers_action(tmp_path):
    for app_ in build(tmp_path):
        app_.server.config["flowerbed_services"].store.save_inspection({"known@host": {"stats": {}}}, 1.0)
        client = app_.server.test_client()
        assert "Shut down worker" in render(client, "/worker/known@host", ADMIN)
        viewer_page = render(client, "/worker/known@host", VIEWER)
        assert "known@host" in viewer_page and "worker-action" not in viewer_page and "Shut down" not in viewer_page
        refused = confirm_action(client, VIEWER, {"action": "pool-grow", "values": {"n": 1}})
        assert refused.status_code == 403 and "read-only" in refused.get_json()["error"]
        assert app_.server.config["flowerbed_services"].store.count_audit() == 0  # nothing was sent
        # An admin's malformed value is refused with the engine's reason, before anything is sent.
        answer = confirm_action(client, ADMIN, {"action": "pool-grow", "values": {"n": "two"}}).get_data(as_text=True)
        assert "n must be a whole number" in answer and "not done" in answer


def assert_links_under_flower(html: str) -> None:
    config = json.loads(re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', html,
                                  re.S).group(1))
    assert config["requests_pathname_prefix"] == "/flower/"
    assert re.search(r'src="/flower/_dash-component-suites/', html)
    assert re.search(r'href="/flower/assets/style\.css', html)
    assert not re.search(r'(src|href)="/_dash', html)


def test_pages_reference_assets_under_the_prefix(tmp_path):
    for app_ in build(tmp_path, "--url-prefix", "/flower"):
        assert_links_under_flower(app_.server.test_client().get("/flower/", headers=basic(*ADMIN)).get_data(as_text=True))


def test_stripping_proxy_mode_routes_at_root_links_with_prefix(tmp_path):
    for app_ in build(tmp_path, "--url-prefix", "/flower", "--url-prefix-stripped"):
        client = app_.server.test_client()
        assert client.get("/healthcheck").status_code == 200
        assert client.get("/flower/healthcheck").status_code != 200  # the proxy took the prefix off
        assert_links_under_flower(client.get("/", headers=basic(*ADMIN)).get_data(as_text=True))
        assert client.get("/api/tasks", headers=basic(*ADMIN)).status_code == 200


def test_secret_key_is_made_once_and_kept_in_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWERBED_SECRET_KEY", raising=False)
    keys = []
    for _ in range(2):
        for app_ in build(tmp_path):
            keys.append(app_.server.secret_key)
            assert app_.server.config["flowerbed_services"].store.get_meta("session_secret_key") == keys[-1]
    assert keys[0] and keys[0] == keys[1]


@pytest.mark.parametrize("flags, base", [((), ""), (("--url-prefix", "/flower"), "/flower")])
def test_a_path_that_is_no_page_answers_404_and_an_unknown_api_path_in_json(tmp_path, flags, base):
    for app_ in build(tmp_path, *flags):
        store = app_.server.config["flowerbed_services"].store
        store.write_batch(tasks=[tuple({"uuid": "known-task", "state": "SUCCESS"}.get(f) for f in TASK_FIELDS)])
        store.save_inspection({"known@host": {"stats": {}}}, 1.0)
        client, auth = app_.server.test_client(), basic(*VIEWER)
        for page in ("/", "/tasks", "/tasks/", "/analytics", "/broker", "/task/known-task", "/worker/known@host",
                     "/worker/known%40host"):
            assert client.get(base + page, headers=auth).status_code == 200, page
        for page in ("/task/unknown-task", "/worker/nope", "/tasks/extra"):
            response = client.get(base + page, headers=auth)
            assert (response.status_code, response.mimetype) == (404, "text/html"), page  # the page says "not found"
        # Prometheus metrics, where Flower has them, behind the same auth (a scrape config gives basic_auth)
        metrics = client.get(base + "/metrics", headers=auth)
        assert (metrics.status_code, metrics.mimetype) == (200, "text/plain")
        assert "# TYPE flower_events_total counter" in metrics.get_data(as_text=True)
        assert client.get(base + "/metrics").status_code == 401
        for route in ("/api/task/result/", "/api/task/info/", "/api/nonsense"):
            response = client.get(base + route, headers=auth)
            assert (response.status_code, response.get_json()) == (404, {"error": f"no API route at {route}"})
        assert client.get(base + "/api/nonsense").status_code == 401  # auth first, as for any path

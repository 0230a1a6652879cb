"""Deployment as users do it: the Procfile's command, the one-command demo, and real nginx in front
with the prefix kept and stripped, driven by a real browser."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, Process, Stack, free_port, get, wait_for

USER, PASSWORD = "ops", "tulips"
CREDENTIALS = (USER, PASSWORD)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def processes():
    stack = Stack()
    yield lambda *args, **kwargs: stack.add(Process(*args, **kwargs))
    stack.stop_all()


def demo_server(processes, tmp_path, name: str, *flags) -> str:
    port = free_port()
    processes([sys.executable, "app.py", "--demo", "--db", str(tmp_path / f"{name}.db"), "--port", str(port),
               "--basic-auth", f"{USER}:{PASSWORD}", "--refresh-seconds", "1", *flags], tmp_path / f"{name}.log")
    return f"http://127.0.0.1:{port}"


def online_workers(base: str) -> int:
    status, body = get(f"{base}/api/workers", CREDENTIALS)
    return status == 200 and sum(1 for worker in json.loads(body).values() if worker["status"])


def test_procfile_command_serves_pages_through_basic_auth(processes, tmp_path):
    line = next(l for l in (ROOT / "Procfile").read_text().splitlines() if l.startswith("web:"))
    command = line.split(":", 1)[1].strip()
    port = free_port()
    env = {**os.environ, "PORT": str(port), "FLOWERBED_DEMO": "1", "FLOWERBED_DB": str(tmp_path / "paas.db"),
           "FLOWERBED_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    server = processes(command, tmp_path / "procfile.log", env=env, shell=True)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(f"{base}/healthcheck")[0] == 200, 30, f"the Procfile's server\n{server.output()}")
    assert get(f"{base}/")[0] == 401
    status, body = get(f"{base}/", CREDENTIALS)
    assert status == 200 and b"Flowerbed" in body
    # The collector runs inside gunicorn's worker (gunicorn.conf.py), so workers appear.
    wait_for(lambda: online_workers(base) == 3, 20, "the demo workers through the Procfile's server")


def test_procfile_command_refuses_public_address_without_auth(tmp_path):
    line = next(l for l in (ROOT / "Procfile").read_text().splitlines() if l.startswith("web:"))
    env = {key: value for key, value in os.environ.items() if "AUTH" not in key}
    env.update(PORT=str(free_port()), FLOWERBED_DEMO="1", FLOWERBED_DB=str(tmp_path / "open.db"))
    result = subprocess.run(line.split(":", 1)[1], shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "without basic auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_shows_workers_and_tasks_within_seconds(processes, tmp_path):
    base = demo_server(processes, tmp_path, "demo")
    wait_for(lambda: get(f"{base}/healthcheck")[0] == 200, 30, "the demo server")
    # The promise: within 5 seconds the workers are online and tasks are listed.
    wait_for(lambda: online_workers(base) == 3, 5, "three online demo workers")
    tasks = wait_for(lambda: json.loads(get(f"{base}/api/tasks?limit=50", CREDENTIALS)[1]) or None, 5, "demo tasks")
    assert {task["worker"] for task in tasks.values() if task["worker"]} <= {
        "demo-alpha@flowerbed", "demo-beta@flowerbed", "demo-gamma@flowerbed"}
    wait_for(lambda: any(t["state"] == "SUCCESS" for t in json.loads(get(f"{base}/api/tasks?limit=200", CREDENTIALS)[1]).values()),
             10, "a finished demo task")


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
user root root;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /flower/ {{
            proxy_pass {upstream};
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def nginx_in_front(processes, tmp_path: Path, name: str, upstream: str) -> str:
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: tests/run.sh installs Debian's nginx-light")
    workdir = tmp_path / name
    workdir.mkdir()
    port = free_port()
    (workdir / "nginx.conf").write_text(NGINX_CONF.format(tmp=workdir, port=port, upstream=upstream))
    processes([NGINX, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)], workdir / "nginx.log")
    return f"http://127.0.0.1:{port}/flower"


# (mode, flowerbed flags, nginx proxy_pass suffix): keeping the prefix passes the path on as it is;
# with a trailing slash nginx replaces /flower/ with /.
PROXY_MODES = [
    ("keeps-prefix", ("--url-prefix", "/flower"), ""),
    ("strips-prefix", ("--url-prefix", "/flower", "--url-prefix-stripped"), "/"),
]


@pytest.mark.browser
@pytest.mark.parametrize("mode, flags, proxy_suffix", PROXY_MODES, ids=[m[0] for m in PROXY_MODES])
def test_browser_through_nginx(processes, tmp_path, browser, mode, flags, proxy_suffix):
    direct = demo_server(processes, tmp_path, mode, *flags)
    wait_for(lambda: get(f"{direct}/healthcheck")[0] == 200 or
             get(f"{direct}/flower/healthcheck")[0] == 200, 30, "the monitor")
    front = nginx_in_front(processes, tmp_path, f"nginx-{mode}", direct + proxy_suffix)
    wait_for(lambda: get(f"{front}/healthcheck")[0] == 200, 15, "nginx's proxied health check")
    assert get(f"{front}/api/workers")[0] == 401
    wait_for(lambda: online_workers(front) == 3, 20, "workers through nginx")

    context = browser.new_context(viewport={"width": 1440, "height": 900},
                                  http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("response", lambda response: problems.append(f"{response.status} {response.url}")
            if response.status >= 400 and "favicon" not in response.url else None)
    page.goto(f"{front}/")
    page.wait_for_selector("#workers-grid .ag-row", timeout=30_000)
    assert page.locator("#workers-grid .ag-row [col-id=status]").all_inner_texts().count("Online") == 3

    page.click("#nav-tasks")
    first_uuid = page.locator("#tasks-grid .ag-center-cols-container .ag-row [col-id=uuid]").first
    first_uuid.wait_for(timeout=30_000)
    assert page.evaluate("location.pathname") == "/flower/tasks"
    # The infinite grid draws its rows before their data arrives: wait for a uuid, not for a row.
    uuid = wait_for(lambda: first_uuid.inner_text().strip(), 30, "the first task row's uuid")
    # New demo tasks arrive at the top meanwhile: click the row whose uuid was read (AG Grid's
    # row-id comes from getRowId), not whichever row is first by now.
    page.locator(f'#tasks-grid .ag-center-cols-container .ag-row[row-id="{uuid}"] [col-id=name]').click()
    page.wait_for_selector("#task-detail", timeout=30_000)
    assert page.evaluate("location.pathname") == f"/flower/task/{uuid}"

    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.reload()
    page.wait_for_selector("#task-detail", timeout=30_000)
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"  # kept in the browser
    screenshots = os.environ.get("FLOWERBED_SCREENSHOTS")
    if screenshots:
        page.screenshot(path=f"{screenshots}/nginx-{mode}-detail-dark.png")
    assert not [p for p in problems if "favicon" not in p], problems
    context.close()

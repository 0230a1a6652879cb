"""Deployment as users do it: the Procfile's two process types, the one-command demo, and real nginx
in front with the prefix kept and stripped, driven by a real browser."""
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
    processes([sys.executable, "cli.py", "--demo", "--db", str(tmp_path / f"{name}.db"), "--port", str(port),
               "--basic-auth", f"{USER}:{PASSWORD}", "--refresh-seconds", "1", *flags], tmp_path / f"{name}.log")
    return f"http://127.0.0.1:{port}"


def online_workers(base: str) -> int:
    status, body = get(f"{base}/api/workers", CREDENTIALS)
    return status == 200 and sum(1 for worker in json.loads(body).values() if worker["status"])


def procfile_commands() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name.strip(): command.strip() for name, _, command in (line.partition(":") for line in lines if line.strip())}


def paas_environment(**variables) -> dict[str, str]:
    """The environment a PaaS gives a process: the installed `flowerbed` on PATH, its own variables."""
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**{k: v for k, v in os.environ.items() if "AUTH" not in k}, "PATH": path, **variables}


def test_procfile_runs_a_collector_and_a_web_tier_as_written(processes, tmp_path, redis_url, celery_worker, make_store):
    """Both process types of the Procfile, as a PaaS starts them: the store from DATABASE_URL
    (PostgreSQL) or FLOWERBED_DB (SQLite, one host), two web workers from WEB_CONCURRENCY."""
    commands = procfile_commands()
    assert set(commands) == {"web", "collector"}
    port = free_port()
    store = {"DATABASE_URL" if make_store.backend == "postgresql" else "FLOWERBED_DB": make_store.url("paas")}
    env = paas_environment(PORT=str(port), CELERY_BROKER_URL=redis_url, FLOWERBED_BASIC_AUTH=f"{USER}:{PASSWORD}",
                           WEB_CONCURRENCY="2", **store)
    collector = processes(commands["collector"], tmp_path / "collector.log", env=env, shell=True)
    web = processes(commands["web"], tmp_path / "web.log", env=env, shell=True)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(f"{base}/healthcheck")[0] == 200, 30, f"the Procfile's web process\n{web.output()}")
    assert get(f"{base}/")[0] == 401
    status, body = get(f"{base}/", CREDENTIALS)
    assert status == 200 and b"Flowerbed" in body
    worker = celery_worker(redis_url, "paas@tests")
    uuid = worker.send("sample.add", 2, 3)
    wait_for(lambda: json.loads(get(f"{base}/api/task/info/{uuid}", CREDENTIALS)[1]).get("state") == "SUCCESS", 30,
             f"a task through the Procfile's processes\n{collector.output()[-2000:]}")
    assert online_workers(base) == 1


def test_procfile_web_refuses_public_address_without_auth(tmp_path):
    env = paas_environment(PORT=str(free_port()), FLOWERBED_DB=str(tmp_path / "open.db"))
    result = subprocess.run(procfile_commands()["web"], shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
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
    # New demo tasks arrive at the top meanwhile, and the infinite grid gives a row's place to another
    # task before it redraws the row: search for the task read, so that its row stays where it is.
    page.fill("#tasks-search", f"uuid:{uuid}")
    wait_for(lambda: page.locator("#tasks-grid .ag-center-cols-container .ag-row [col-id=uuid]").all_inner_texts()
             == [uuid], 30, "the grid showing that task alone")
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

"""/metrics as Prometheus reads it: a real Prometheus server (Debian's) scrapes a `flowerbed web` tier
with basic auth under /flower, while a separate `flowerbed collect` records a real worker's tasks,
on SQLite and on PostgreSQL. The counters survive both processes restarting, which Prometheus sees
as no reset. First, what /metrics makes of a store written by hand: the rules of each family."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse

import pytest

from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from helpers import ROOT, TESTS, Process, Stack, free_port, get, get_json, task_row, wait_for, wait_started, worker_row
from monitor.ingest.reports import report_key
from monitor.services import build_services
from monitor.serving.metrics import create_metrics_blueprint
from monitor.settings import load_settings

USER, PASSWORD = "prom", "scraper"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ALERTS = ROOT / "docs" / "prometheus-alerts.yml"
PROMETHEUS_CONFIG = """
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: ["{alerts}"]
scrape_configs:
  - job_name: flowerbed
    metrics_path: /flower/metrics
    basic_auth: {{username: {user}, password: {password}}}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
"""
SUCCEEDED, FAILED = 12, 3


def scrape_of(services) -> dict:
    """{(sample name, ((label, value), ...)): value} of /metrics served from `services`."""
    server = Flask("metrics-test")
    server.register_blueprint(create_metrics_blueprint(services, "/"))
    response = server.test_client().get("/metrics")
    assert response.status_code == 200, response.data
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for sample in family.samples}


def test_each_family_follows_its_rule_on_a_store_written_by_hand(tmp_path):
    services = build_services(load_settings(["web", "--db", str(tmp_path / "m.db"), "--purge-offline-workers", "60",
                                             "--inspect-seconds", "10"]))
    store, now = services.store, time.time()
    store.use_runtime_buckets((0.1, 1.0, 10.0))
    store.write_batch(
        workers=[worker_row("w@a", last_heartbeat=now, freq=2.0, active=3),
                 worker_row("w@quiet", last_heartbeat=now - 20, freq=2.0, active=2),  # offline, not purged yet
                 worker_row("w@gone", last_heartbeat=now - 3600, freq=2.0, active=1)],  # purged
        events=[("w@a", "add", "task-received", 7, now), ("w@a", "add", "task-succeeded", 3, now),
                ("w@gone", "add", "task-received", 9, now), ("client@app", "add", "task-sent", 7, now)],
        runtimes=[("w@a", "add", 3, 12.5, now), ("w@gone", "add", 1, 0.5, now)],
        runtime_buckets=[("w@a", "add", 0.1, 1), ("w@a", "add", 10.0, 1), ("w@gone", "add", 1.0, 1)],
        tasks=[task_row(uuid="r1", name="add", state="RECEIVED", worker="w@a", received=now - 5),
               task_row(uuid="r2", name="add", state="RECEIVED", worker="w@a", received=now - 4),
               task_row(uuid="s1", name="add", state="STARTED", worker="w@a", received=now - 9, started=now - 6),
               task_row(uuid="s2", name="add", state="STARTED", worker="w@a", received=now - 3, started=now - 2.5)])
    store.save_queue_depths("b", now, [("celery", 12, 2, {"w@a"}, True)])
    store.save_queue_depths("stale", now - 3600, [("old", 99, 0, set(), True)])
    metrics = scrape_of(services)

    def sample(name, **labels):
        return metrics.get((name, tuple(sorted(labels.items()))))
    # cumulative from the per-bucket rows: one run under 0.1 s, one under 10 s, one above every bound
    assert [sample("flower_task_runtime_seconds_bucket", worker="w@a", task="add", le=le)
            for le in ("0.1", "1.0", "10.0", "+Inf")] == [1, 1, 2, 3]
    assert (sample("flower_task_runtime_seconds_count", worker="w@a", task="add"),
            sample("flower_task_runtime_seconds_sum", worker="w@a", task="add")) == (3, 12.5)
    assert sample("flower_events_total", worker="client@app", type="task-sent", task="add") == 7
    # prefetch: two received and not started; the latest started one waited 0.5 s
    assert sample("flower_worker_prefetched_tasks", worker="w@a", task="add") == 2
    assert sample("flower_task_prefetch_time_seconds", worker="w@a", task="add") == pytest.approx(0.5)
    assert sample("flower_worker_online", worker="w@a") == 1
    assert sample("flower_worker_number_of_currently_executing_tasks", worker="w@a") == 3
    assert (sample("flower_worker_online", worker="w@quiet"),
            sample("flower_worker_number_of_currently_executing_tasks", worker="w@quiet")) == (0, 0)
    assert not [key for key in metrics if ("worker", "w@gone") in key[1]]  # purged: in no family
    # a queue read lately is served; one whose broker has not been read for an hour is not
    assert sample("flowerbed_queue_messages", broker="b", queue="celery") == 12
    assert sample("flowerbed_queue_consumers", broker="b", queue="celery") == 2
    assert sample("flowerbed_queue_messages", broker="stale", queue="old") is None
    assert (sample("flowerbed_queues_read_ok", broker="b"), sample("flowerbed_queues_read_ok", broker="stale")) == (1, 0)
    store.close()


def test_collectors_sharing_an_events_queue_keep_a_series_each_and_their_broker_one_lag(tmp_path):
    services = build_services(load_settings(["web", "--db", str(tmp_path / "m.db")]))
    now = time.time()
    shared = {"broker": "rabbit", "events_queue": "q", "running": True, "connected": True, "role": "active",
              "received": 10, "stored": 10, "dropped": 0, "malformed": 0, "rejected": 0, "backlog": 0}
    for owner, stored, lag in (("h:1:a", 10, 0.2), ("h:2:b", 30, 1.5)):
        services.store.set_meta(report_key("rabbit", owner), {**shared, "owner": owner, "stored": stored,
                                                              "lag_seconds": lag, "updated_at": now})
    metrics = scrape_of(services)
    stored = {dict(labels)["collector"]: value for (name, labels), value in metrics.items()
              if name == "flowerbed_collector_events_total" and ("outcome", "stored") in labels}
    assert stored == {"h:1:a": 10, "h:2:b": 30}
    assert metrics[("flowerbed_collector_lag_seconds", (("broker", "rabbit"),))] == 1.5
    assert metrics[("flowerbed_collector_ready", (("broker", "rabbit"),))] == 1
    services.store.close()


class Tier:
    """`flowerbed collect` and `flowerbed web --workers 2` on one store, as the Procfile runs them."""

    def __init__(self, db: str, broker: str, folder, port: int):
        self.db, self.broker, self.folder, self.port = db, broker, folder, port
        self.base = f"http://127.0.0.1:{port}/flower"
        self.stack = Stack()
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        common = ["--broker", self.broker, "--db", self.db]
        self.stack.add(Process([sys.executable, "cli.py", "collect", *common, "--inspect-seconds", "1",
                                "--task-runtime-metric-buckets", "0.04,0.5,5"],
                               self.folder / f"collect-{self.starts}.log"))
        web = self.stack.add(Process([sys.executable, "cli.py", "web", *common, "--workers", "2", "--port",
                                      str(self.port), "--url-prefix", "/flower", "--basic-auth", f"{USER}:{PASSWORD}"],
                                     self.folder / f"web-{self.starts}.log"))
        wait_started(web, lambda: get(f"{self.base}/healthcheck/ready")[0] == 200, 60, "the collector and web tier")

    def stop(self) -> None:
        self.stack.stop_all()


@pytest.fixture
def prometheus(tmp_path):
    """prometheus(port) scrapes the web tier on `port` every second; returns query(expr) -> [samples]."""
    assert PROMETHEUS, "Prometheus is not installed: tests/run.sh installs Debian's prometheus package"
    stack = Stack()

    def start(port: int):
        config = tmp_path / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(user=USER, password=PASSWORD, port=port, alerts=ALERTS))
        address = f"127.0.0.1:{free_port()}"
        process = stack.add(Process([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address={address}"], tmp_path / "prometheus.log"))
        wait_started(process, lambda: get(f"http://{address}/-/ready")[0] == 200, 60, "Prometheus")

        def query(expression: str) -> list:
            """The samples of `expression` now; `/rules` gives the rules' evaluation instead."""
            path = "rules" if expression == "/rules" else f"query?{urllib.parse.urlencode({'query': expression})}"
            status, body = get_json(f"http://{address}/api/v1/{path}")
            assert status == 200, body
            return body["data"]["groups"] if expression == "/rules" else body["data"]["result"]
        return query
    yield start
    stack.stop_all()


def value(query, expression: str):
    """The one value `expression` has now in Prometheus, None while it has none."""
    result = query(expression)
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.mark.integration
def test_prometheus_scrapes_flowers_metrics_from_a_web_tier_and_no_counter_resets_on_restarts(
        prometheus, make_store, redis_url, celery_worker, tmp_path):
    tier = Tier(make_store.url("metrics"), redis_url, tmp_path, free_port())
    try:
        tier.start()
        query = prometheus(tier.port)
        worker = celery_worker(redis_url, "scraped@tests")
        for _ in range(SUCCEEDED):
            worker.send("sample.sleep", 0.05)
        for at in range(FAILED):
            worker.send("sample.fail", f"boom {at}")
        succeeded = f'flower_events_total{{job="flowerbed", worker="{worker.hostname}", type="task-succeeded"}}'
        wait_for(lambda: value(query, f"sum({succeeded})") == SUCCEEDED, 60, "the successes in Prometheus")
        assert value(query, 'up{job="flowerbed"}') == 1
        assert value(query, 'sum(flower_events_total{task="sample.fail", type="task-failed"})') == FAILED
        assert value(query, f'flower_worker_online{{worker="{worker.hostname}"}}') == 1
        # A Grafana board's runtime panel: a quantile from the buckets the collector was given
        p95 = value(query, 'histogram_quantile(0.95, sum by (le) (flower_task_runtime_seconds_bucket{task="sample.sleep"}))')
        assert 0.04 < p95 <= 0.5
        assert value(query, 'flower_task_runtime_seconds_count{task="sample.sleep"}') == SUCCEEDED
        assert value(query, "min(flowerbed_collector_ready)") == 1
        # The "Task Success Ratio" and "Task Failure Ratio" panels of Flower's example Grafana board, as
        # written there (a name with no event of the numerator's type has no line, as on Flower)
        def ratio(event_type: str) -> dict:
            return {sample["metric"]["task"]: float(sample["value"][1]) for sample in query(
                f'(sum(avg_over_time(flower_events_total{{type="{event_type}"}}[15m])) by (task) / '
                'sum(avg_over_time(flower_events_total{type=~"task-failed|task-succeeded"}[15m])) by (task)) * 100')}
        assert (ratio("task-succeeded"), ratio("task-failed")) == ({"sample.sleep": 100}, {"sample.fail": 100})
        # docs/prometheus-alerts.yml evaluates on these series (no error, none firing; each alert's
        # firing is tested by promtool below)
        def evaluated():
            rules = [rule for group in query("/rules") for rule in group["rules"]]
            return rules if rules and all(not rule["lastEvaluation"].startswith("0001") for rule in rules) else None
        rules = wait_for(evaluated, 30, "every rule evaluated")
        assert {(rule["name"], rule["health"], rule["state"]) for rule in rules} == {
            (name, "ok", "inactive") for name in ("CeleryWorkerOffline", "CeleryTaskFailureRateHigh",
                                                  "CeleryQueueWithoutConsumers", "CeleryQueueBacklog", "FlowerbedDown",
                                                  "FlowerbedNotRecording", "FlowerbedCannotReadQueues",
                                                  "FlowerbedLosingEvents")}

        # Flower's counters start again from zero when it restarts; these are kept in the store.
        tier.stop()
        wait_for(lambda: value(query, 'up{job="flowerbed"}') == 0, 30, "Prometheus seeing the tier down")
        tier.start()
        worker.send("sample.sleep", 0.05)
        wait_for(lambda: value(query, f"sum({succeeded})") == SUCCEEDED + 1, 60, "the success after the restart")
        assert value(query, f"sum(resets({succeeded}[5m]))") == 0
        assert value(query, 'sum(resets(flower_task_runtime_seconds_count{task="sample.sleep"}[5m]))') == 0
    finally:
        tier.stop()


@pytest.mark.integration
def test_the_exposition_passes_promtool(tmp_path, redis_url, celery_worker):
    """promtool, Prometheus' own linter, finds nothing wrong with what /metrics answers."""
    assert PROMTOOL, "promtool is not installed: tests/run.sh installs Debian's prometheus package"
    tier = Tier(str(tmp_path / "lint.db"), redis_url, tmp_path, free_port())
    try:
        tier.start()
        worker = celery_worker(redis_url, "linted@tests")
        uuid = worker.send("sample.add", 1, 2)
        wait_for(lambda: json.loads(get(f"{tier.base}/api/task/info/{uuid}", (USER, PASSWORD))[1]).get("state")
                 == "SUCCESS", 30, "the task recorded")
        status, body = get(f"{tier.base}/metrics", (USER, PASSWORD))
        assert status == 200 and b'flower_task_runtime_seconds_bucket{le="+Inf"' in body
        assert get(f"{tier.base}/metrics")[0] == 401
        linted = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert (linted.returncode, linted.stdout + linted.stderr) == (0, b"")
    finally:
        tier.stop()


def test_the_alerting_rules_fire_for_what_they_are_about_and_only_that():
    assert PROMTOOL, "promtool is not installed: tests/run.sh installs Debian's prometheus package"
    checked = subprocess.run([PROMTOOL, "test", "rules", "prometheus-alerts-test.yml"], cwd=TESTS, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

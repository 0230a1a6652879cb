"""/metrics: Prometheus metrics, read from the store, under Flower's names, labels and types so that
a scrape, a Grafana board or an alert rule written for Flower reads them as it did.

Flower counts in its process's memory from the events it saw since it started. Here the collector
keeps the counters in the store (store/event_counts.py), so they survive restarts and every web
process answers the same; the gauges are read from the workers' rows and the tasks at workers.
Flowerbed's own metrics, prefixed `flowerbed_`, say whether the collectors keep up and how deep the
queues are.
"""
from __future__ import annotations

import time

from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from monitor.ingest.reports import merged
from monitor.serving.health import readiness_problems
from monitor.store import store_error_text
from monitor.store.event_counts import RUNTIME_BUCKETS_KEY

# The text format every Prometheus reads (2.x and 3.x); Flower answers text/plain.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The least age of a queue reading /metrics no longer serves, in seconds: well above the inspect interval
# of a collector configured apart from this web process.
QUEUES_STALE_SECONDS = 300.0
# What the collector's reports count, by the `outcome` label of flowerbed_collector_events_total.
_COLLECTOR_OUTCOMES = ("received", "stored", "dropped", "malformed", "rejected")


def create_metrics_blueprint(services, prefix: str) -> Blueprint:
    metrics = Blueprint("flowerbed_metrics", __name__, url_prefix=prefix.rstrip("/") or None)

    @metrics.get("/metrics")
    def scrape():
        try:
            families = metric_families(services, time.time())
        except Exception as exc:
            if not services.store.is_transient(exc):
                raise
            return Response(f"the store cannot be read: {store_error_text(exc)}\n", status=503, mimetype="text/plain")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        return Response(generate_latest(registry), content_type=CONTENT_TYPE)

    return metrics


class _Families:
    """One scrape's families, as prometheus_client's registry asks a collector for them."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return self.families


def metric_families(services, now: float) -> list:
    """Every family /metrics serves, read from the store at `now`."""
    store = services.store
    known = store.workers(now)
    shown = services.shown(known, now)
    # Workers hidden by --purge-offline-workers leave every family, as Flower removes their labels.
    hidden = {worker["hostname"] for worker in known} - {worker["hostname"] for worker in shown}
    counters = store.metric_counters()
    at_workers = store.tasks_at_workers()
    families = [_events(counters["events"], hidden),
                _runtimes(counters, store.get_meta(RUNTIME_BUCKETS_KEY) or [], hidden),
                *_prefetch(counters["events"], at_workers, hidden),
                *_workers(shown)]
    # A queue reading older than a few inspects is no depth any more (the broker could not be read).
    fresh_since = now - max(QUEUES_STALE_SECONDS, 5 * services.settings.inspect_seconds)
    return families + _collectors(services.collector_reports(), now, services.settings.stall_seconds) \
        + _queues(store.queues(), store.queue_reports(), fresh_since)


def _events(rows, hidden: set) -> CounterMetricFamily:
    family = CounterMetricFamily("flower_events", "Number of events", labels=["worker", "type", "task"])
    for worker, name, event_type, count in rows:
        if worker not in hidden:
            family.add_metric([worker, event_type, name], count)
    return family


def _runtimes(counters: dict, bounds: list[float], hidden: set) -> HistogramMetricFamily:
    """Successful tasks' runtimes: every bucket of the store's bounds, cumulative as Prometheus reads
    them (the store counts each bucket alone), +Inf the count of all."""
    family = HistogramMetricFamily("flower_task_runtime_seconds", "Task runtime", labels=["worker", "task"])
    in_buckets: dict[tuple, dict[float, int]] = {}
    for worker, name, le, count in counters["buckets"]:
        in_buckets.setdefault((worker, name), {})[le] = count
    for worker, name, count, seconds in counters["runtimes"]:
        if worker in hidden:
            continue
        counted, running, buckets = in_buckets.get((worker, name), {}), 0, []
        for bound in bounds:
            running += counted.get(bound, 0)
            buckets.append((floatToGoString(bound), running))
        family.add_metric([worker, name], buckets + [("+Inf", count)], seconds)
    return family


def _prefetch(event_rows, at_workers: dict, hidden: set) -> list[GaugeMetricFamily]:
    """Flower's prefetch gauges, for every (worker, task name) that ever received a task: the tasks
    received and not started, and how long the latest task started there waited for it (0 once no
    task of that name runs there), leaving out tasks with an ETA."""
    pairs = [(worker, name) for worker, name, event_type, _count in event_rows
             if event_type == "task-received" and worker not in hidden]
    received = {(worker, name): count for worker, name, count in at_workers["received"]}
    latest: dict[tuple, tuple[float, float]] = {}
    for worker, name, started, received_at in at_workers["started"]:
        if started >= latest.get((worker, name), (float("-inf"),))[0]:
            latest[(worker, name)] = (started, started - received_at)
    waited = GaugeMetricFamily("flower_task_prefetch_time_seconds",
                               "The time the task spent waiting at the celery worker to be executed.",
                               labels=["worker", "task"])
    prefetched = GaugeMetricFamily("flower_worker_prefetched_tasks",
                                   "Number of tasks of given type prefetched at a worker", labels=["worker", "task"])
    for pair in pairs:
        waited.add_metric(list(pair), max(0.0, latest.get(pair, (0.0, 0.0))[1]))
        prefetched.add_metric(list(pair), received.get(pair, 0))
    return [waited, prefetched]


def _workers(workers: list[dict]) -> list[GaugeMetricFamily]:
    """Online from heartbeats (celery's rule, as the pages); executing: the last heartbeat's active
    count while online, 0 once offline (a worker that is gone runs nothing)."""
    online = GaugeMetricFamily("flower_worker_online", "Worker online status", labels=["worker"])
    executing = GaugeMetricFamily("flower_worker_number_of_currently_executing_tasks",
                                  "Number of tasks currently executing at a worker", labels=["worker"])
    for worker in workers:
        online.add_metric([worker["hostname"]], 1 if worker["online"] else 0)
        if worker["active"] is not None or not worker["online"]:
            executing.add_metric([worker["hostname"]], (worker["active"] or 0) if worker["online"] else 0)
    return [online, executing]


def _collectors(grouped: dict[str, list[dict]], now: float, stall_seconds: float) -> list:
    """Per broker: each of its collectors' counters since that process started, labelled with it (the
    collectors sharing an events queue report apart: each keeps a series of its own, never read as a
    reset of another's), the lag, and whether the broker is recorded (/healthcheck/ready's rule)."""
    events = CounterMetricFamily("flowerbed_collector_events", "Events a collector of the broker received, "
                                 "stored, dropped, could not read, or the store refused, since it started",
                                 labels=["broker", "collector", "outcome"])
    lag = GaugeMetricFamily("flowerbed_collector_lag_seconds", "How long events wait before they are stored: "
                            "the oldest waiting, else the last batch's oldest", labels=["broker"])
    ready = GaugeMetricFamily("flowerbed_collector_ready", "1 when the collector of a broker records its events "
                              "(as /healthcheck/ready says), else 0", labels=["broker"])
    for broker, group in sorted(grouped.items()):
        for report in group:
            for outcome in _COLLECTOR_OUTCOMES:
                events.add_metric([broker, report.get("owner") or "", outcome], report.get(outcome) or 0)
        report = merged(group, now, stall_seconds)
        lag.add_metric([broker], report.get("lag_seconds") or 0.0)
        ready.add_metric([broker], 0 if readiness_problems(report, now, stall_seconds) else 1)
    return [events, lag, ready]


def _queues(queues: list[dict], reports: dict[str, dict], fresh_since: float) -> list[GaugeMetricFamily]:
    """Each watched queue's depth and consumers as the inspector read them since `fresh_since`, and per
    broker whether its latest reading then succeeded (else the depths are not known now)."""
    messages = GaugeMetricFamily("flowerbed_queue_messages", "Messages waiting in a queue of the broker",
                                 labels=["broker", "queue"])
    consumers = GaugeMetricFamily("flowerbed_queue_consumers", "Consumers of a queue of the broker",
                                  labels=["broker", "queue"])
    read = GaugeMetricFamily("flowerbed_queues_read_ok", "1 when the broker's queues were read lately, else 0 "
                             "(their depths are then left out)", labels=["broker"])
    for queue in queues:
        if queue["messages"] is not None and queue["at"] >= fresh_since:  # None: the broker has no such queue
            messages.add_metric([queue["broker"], queue["name"]], queue["messages"])
            consumers.add_metric([queue["broker"], queue["name"]], queue["consumers"] or 0)
    for broker, report in sorted(reports.items()):
        read.add_metric([broker], 1 if report.get("error") is None and (report.get("at") or 0) >= fresh_since else 0)
    return [messages, consumers, read]

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

from monitor.serving.health import readiness_problems
from monitor.store import store_error_text
from monitor.store.event_counts import RUNTIME_BUCKETS_KEY

# The text format every Prometheus reads (2.x and 3.x); Flower answers text/plain.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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
    shown = services.workers(now)
    # Workers hidden by --purge-offline-workers leave every family, as Flower removes their labels.
    hidden = {worker["hostname"] for worker in store.workers(now)} - {worker["hostname"] for worker in shown}
    counters = store.metric_counters()
    at_workers = store.tasks_at_workers()
    families = [_events(counters["events"], hidden),
                _runtimes(counters, store.get_meta(RUNTIME_BUCKETS_KEY) or [], hidden),
                *_prefetch(counters["events"], at_workers, hidden),
                *_workers(shown)]
    return families + _collectors(services.broker_stats(), now, services.settings.stall_seconds) \
        + _queues(store.queues())


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


def _collectors(reports: dict[str, dict], now: float, stall_seconds: float) -> list:
    """Per broker: the recording collector's counters since it started (a restart is a reset, which
    Prometheus reads as such), its lag, and whether it does its job (/healthcheck/ready's rule)."""
    events = CounterMetricFamily("flowerbed_collector_events", "Events the collector of a broker received, "
                                 "stored, dropped, could not read, or the store refused, since it started",
                                 labels=["broker", "outcome"])
    lag = GaugeMetricFamily("flowerbed_collector_lag_seconds", "How long the oldest event not yet stored has "
                            "waited, or the last batch took to be stored", labels=["broker"])
    ready = GaugeMetricFamily("flowerbed_collector_ready", "1 when the collector of a broker records its events "
                              "(as /healthcheck/ready says), else 0", labels=["broker"])
    for broker, report in sorted(reports.items()):
        if "store_error" in report:  # the store failed between this scrape's reads: the next one says so
            continue
        for outcome in _COLLECTOR_OUTCOMES:
            events.add_metric([broker, outcome], report.get(outcome) or 0)
        lag.add_metric([broker], report.get("lag_seconds") or 0.0)
        ready.add_metric([broker], 0 if readiness_problems(report, now, stall_seconds) else 1)
    return [events, lag, ready]


def _queues(queues: list[dict]) -> list[GaugeMetricFamily]:
    """Each watched queue's latest depth and consumers, as the inspector last read them."""
    messages = GaugeMetricFamily("flowerbed_queue_messages", "Messages waiting in a queue of the broker",
                                 labels=["broker", "queue"])
    consumers = GaugeMetricFamily("flowerbed_queue_consumers", "Consumers of a queue of the broker",
                                  labels=["broker", "queue"])
    for queue in queues:
        if queue["messages"] is not None:  # None: the broker does not have that queue
            messages.add_metric([queue["broker"], queue["name"]], queue["messages"])
            consumers.add_metric([queue["broker"], queue["name"]], queue["consumers"] or 0)
    return [messages, consumers]

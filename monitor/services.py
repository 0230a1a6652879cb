"""The engine's services, built once from Settings and handed to the web side."""
from __future__ import annotations

import dataclasses
import threading
import time

from celery import Celery

from monitor import user_app as user_apps
from monitor.control import Controller
from monitor.ingest import reports as collector_reports
from monitor.ingest.collector import Collector
from monitor.ingest.inspector import INSPECT_METHODS, INSPECTED_PREFIX, REQUEST_KEY, REQUEST_POLL_SECONDS, Inspector
from monitor.ingest.receiving import EventsQueue
from monitor.settings import Settings
from monitor.store import Store, open_store, store_error_text

# How often a request waiting for a fresh inspect looks at the store.
INSPECT_WAIT_POLL_SECONDS = 0.1


def store_version(reports: dict[str, dict]) -> list:
    """What changes whenever a collector stores tasks (heartbeats alone do not count): each broker's
    last write of task rows, from Services.broker_stats()."""
    return sorted([name, report.get("tasks_stored_at")] for name, report in reports.items())  # as JSON brings it back


def make_celery_app(settings: Settings, broker: str, user_app: Celery | None = None) -> Celery:
    """The monitor's app for one broker; with the user's app, that app's broker settings (SSL,
    transport options, login) and result backend on it, so that the monitor connects as the workers do."""
    backend = settings.result_backend or (user_app.conf.result_backend if user_app is not None else None)
    app = Celery("flowerbed", broker=broker, backend=backend or None, set_as_current=False)
    if user_app is not None:
        app.conf.update(user_apps.broker_settings(user_app))
    app.conf.broker_connection_retry_on_startup = True
    # As the workers': with a global_keyprefix, events, inspect and queues all live under it.
    app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}), **settings.transport_options}
    if settings.demo:
        # The in-memory transport polls; the default 1 s makes inspect take 2 s and tasks lag.
        app.conf.broker_transport_options = {**settings.transport_options, "polling_interval": 0.05}
    return app


@dataclasses.dataclass
class Services:
    settings: Settings
    celery_app: Celery  # the first broker's (the demo's, whose embedded workers use it)
    store: Store
    collectors: list[Collector]  # one per broker, in the order the brokers were given
    inspectors: list[Inspector]  # likewise
    controller: Controller  # worker and task control, through every broker's app
    demo: object = None
    user_app: Celery | None = None  # --app: the user's own, for its task names and result backend
    _started: bool = False
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def collector(self) -> Collector:
        """The first broker's collector (with one broker, the collector)."""
        return self.collectors[0]

    def start(self) -> None:
        """Start the background threads once per process; safe to call from every request."""
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            if self.settings.demo:
                from monitor.demo import DemoCluster  # only the demo needs embedded workers
                self.demo = DemoCluster(self.celery_app)
                self.demo.start()
            if self.settings.collects:
                for service in (*self.collectors, *self.inspectors):
                    service.start()
            self._started = True

    def broker_stats(self) -> dict[str, dict]:
        """Each broker's report by its name (reports.merged): its collector's counters, or the sum of
        those sharing an events queue."""
        try:
            grouped = self.collector_reports()
        except Exception as exc:
            if not self.store.is_transient(exc):
                raise
            # One report saying why, which every reader of the reports shows: top bar, readiness, API.
            return {"store": {"store_error": store_error_text(exc)}}
        now = time.time()
        return {broker: collector_reports.merged(group, now, self.settings.stall_seconds)
                for broker, group in grouped.items()}

    def collector_reports(self) -> dict[str, list[dict]]:
        """Each collector's own counters, by broker name: live for the collectors running here; else
        as the collectors of other processes last stored them (a broker since dropped from the
        configuration keeps its last report there)."""
        def stored() -> dict[str, list[dict]]:
            return collector_reports.by_broker(self.store.get_meta_prefixed(collector_reports.REPORT_PREFIX))
        if not (self._started and self.settings.collects):
            return stored()
        # Of the collectors sharing an events queue with the ones here, only the store knows.
        others = stored() if self.settings.events_queue else {}
        return {broker: [own, *(report for report in others.get(broker, ()) if report.get("owner") != own["owner"])]
                for broker, own in self.own_reports().items()}

    def own_reports(self) -> dict[str, dict]:
        """The counters of this process's collectors by broker name: what `flowerbed collect --port`
        answers for, whatever the others sharing its events queue do."""
        return {collector.broker_name: collector.stats() for collector in self.collectors}


    def request_inspect(self) -> None:
        """An inspect now, without waiting for it: by the inspector here, or asked of the collector's
        through the store (`flowerbed web`), so that any web process or host can ask."""
        if self.settings.collects:
            for inspector in self.inspectors:
                inspector.request_refresh()
        else:
            self.store.set_meta(REQUEST_KEY, time.time())

    def workers(self, now: float | None = None) -> list[dict]:
        """Store.workers(), less those offline for longer than --purge-offline-workers."""
        now = time.time() if now is None else now
        return self.shown(self.store.workers(now), now)

    def shown(self, workers: list[dict], now: float) -> list[dict]:
        """`workers` less those offline for longer than --purge-offline-workers (since their last
        heartbeat, or their last inspect reply when they never sent one)."""
        purge = self.settings.purge_offline_workers
        if purge is None:
            return workers
        return [worker for worker in workers
                if worker["online"] or now - (worker["last_heartbeat"] or worker["inspected_at"] or 0) < purge]

    def inspect_wait_seconds(self) -> float:
        """The longest a fresh inspect takes, from asking to its replies stored: the inspect under way
        when asked, then the fresh one (each method waits up to the inspect timeout), and the
        collector's look at the store for a request (`flowerbed web`)."""
        return 2 * self.settings.inspect_timeout * len(INSPECT_METHODS) + REQUEST_POLL_SECONDS + 1.0

    def inspect_now(self) -> bool:
        """Ask for an inspect and wait, at most inspect_wait_seconds(), until every broker's inspector
        has stored one begun after the asking: True when they have. Any web process may ask: the
        request and the inspectors' reports go through the store."""
        asked = time.time()
        self.request_inspect()
        deadline = time.monotonic() + self.inspect_wait_seconds()
        brokers = self._recording_brokers(asked)
        while True:
            started = self.store.get_meta_prefixed(INSPECTED_PREFIX)
            if brokers and all((started.get(name) or 0) >= asked for name in brokers):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(INSPECT_WAIT_POLL_SECONDS)

    def _recording_brokers(self, now: float) -> list[str]:
        """The brokers whose collector runs (here, or in a process that reported lately): those whose
        inspectors answer a request. `flowerbed web` knows them from the store only."""
        return [name for name, report in self.broker_stats().items()
                if report.get("running") is not False
                and now - (report.get("updated_at") or 0) <= self.settings.stall_seconds]

    def task_types(self) -> list[str]:
        """Every task name known: recorded in the store, registered on a worker (inspect), or in the
        user's app (so that they show with no worker up)."""
        names = set(self.store.distinct_task_values("name"))
        for worker in self.store.workers():
            registered = worker["inspect"].get("registered")
            if isinstance(registered, list):
                # a worker asked for task info lists `name [rate_limit=…]`: the name is the first word
                names.update(item.split(" ", 1)[0] for item in registered if isinstance(item, str) and item)
        if self.user_app is not None:
            names.update(user_apps.task_names(self.user_app))
        return sorted(names)

    def task_result(self, task_id: str, timeout: float | None) -> dict:
        """Flower's /api/task/result answer from the result backend of --result-backend or of the
        user's app (see user_app.read_result)."""
        app = self.celery_app if user_apps.has_result_backend(self.celery_app) else self.user_app
        return user_apps.read_result(app, task_id, timeout)

    def stop(self) -> None:
        # Side by side: each collector may take its whole stop budget, and SIGTERM promises 10 s in all.
        stopping = [threading.Thread(target=service.stop) for service in (*self.inspectors, *self.collectors)]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        if self.demo is not None:
            self.demo.stop()
        self._started = False


def build_services(settings: Settings) -> Services:
    user_app = user_apps.load_user_app(settings.app) if settings.app and not settings.demo else None
    store = open_store(settings.db, max_tasks=settings.max_tasks)
    apps = {name: make_celery_app(settings, url, user_app) for name, url in settings.named_brokers}
    events_queue = (EventsQueue(settings.events_queue, settings.events_queue_max_length, settings.events_queue_ttl)
                    if settings.events_queue else None)
    return Services(
        settings=settings,
        celery_app=next(iter(apps.values())),
        user_app=user_app,
        store=store,
        collectors=[Collector(app, store, field_limit=settings.max_field_size, broker_name=name,
                              events_queue=events_queue, runtime_buckets=settings.runtime_buckets)
                    for name, app in apps.items()],
        inspectors=[Inspector(app, store, broker_name=name, interval=settings.inspect_seconds,
                              timeout=settings.inspect_timeout, enable_events=settings.enable_events,
                              broker_api=settings.broker_api)
                    for name, app in apps.items()],
        controller=Controller(store, apps, reply_timeout=settings.inspect_timeout),
    )

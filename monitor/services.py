"""The engine's services, built once from Settings and handed to the web side."""
from __future__ import annotations

import dataclasses
import threading
import time

from celery import Celery

from monitor.control import Controller
from monitor.ingest.collector import REPORT_PREFIX, Collector
from monitor.ingest.inspector import REQUEST_KEY, Inspector
from monitor.ingest.receiving import EventsQueue
from monitor.settings import Settings
from monitor.store import Store, open_store, store_error_text


def make_celery_app(settings: Settings, broker: str) -> Celery:
    app = Celery("flowerbed", broker=broker, backend=settings.result_backend or None, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    # As the workers': with a global_keyprefix, events, inspect and queues all live under it.
    app.conf.broker_transport_options = settings.transport_options
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
        """Each collector's counters by broker name: live when the collectors run here, else what the
        collectors of other processes last stored (a broker since dropped from the configuration
        keeps its last report there)."""
        if self._started and self.settings.collects:
            return {collector.broker_name: collector.stats() for collector in self.collectors}
        try:
            return self.store.get_meta_prefixed(REPORT_PREFIX)
        except Exception as exc:
            if not self.store.is_transient(exc):
                raise
            # One report saying why, which every reader of the reports shows: top bar, readiness, API.
            return {"store": {"store_error": store_error_text(exc)}}

    def collector_stats(self) -> dict:
        """The collector's counters ({} before any report); with several brokers, {"brokers": each one's}."""
        reports = self.broker_stats()
        if len(reports) > 1:
            return {"brokers": reports}
        return next(iter(reports.values()), {})

    def request_inspect(self) -> None:
        """An inspect now, without waiting for it: by the inspector here, or asked of the collector's
        through the store (`flowerbed web`), so that any web process or host can ask."""
        if self.settings.collects:
            for inspector in self.inspectors:
                inspector.request_refresh()
        else:
            self.store.set_meta(REQUEST_KEY, time.time())

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
    store = open_store(settings.db, max_tasks=settings.max_tasks)
    apps = {name: make_celery_app(settings, url) for name, url in settings.named_brokers}
    events_queue = (EventsQueue(settings.events_queue, settings.events_queue_max_length, settings.events_queue_ttl)
                    if settings.events_queue else None)
    return Services(
        settings=settings,
        celery_app=next(iter(apps.values())),
        store=store,
        collectors=[Collector(app, store, field_limit=settings.max_field_size, broker_name=name,
                              events_queue=events_queue)
                    for name, app in apps.items()],
        inspectors=[Inspector(app, store, broker_name=name, interval=settings.inspect_seconds,
                              timeout=settings.inspect_timeout, enable_events=settings.enable_events,
                              broker_api=settings.broker_api)
                    for name, app in apps.items()],
        controller=Controller(store, apps, reply_timeout=settings.inspect_timeout),
    )

"""The engine's services, built once from Settings and handed to the web side."""
from __future__ import annotations

import dataclasses
import threading
import time

from celery import Celery

from monitor.ingest.collector import Collector
from monitor.ingest.inspector import REQUEST_KEY, Inspector
from monitor.ingest.receiving import EventsQueue
from monitor.settings import Settings
from monitor.store.sqlite import Store


def make_celery_app(settings: Settings) -> Celery:
    app = Celery("flowerbed", broker=settings.broker, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    if settings.demo:
        # The in-memory transport polls; the default 1 s makes inspect take 2 s and tasks lag.
        app.conf.broker_transport_options = {"polling_interval": 0.05}
    return app


@dataclasses.dataclass
class Services:
    settings: Settings
    celery_app: Celery
    store: Store
    collector: Collector
    inspector: Inspector
    demo: object = None
    _started: bool = False
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

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
                self.collector.start()
                self.inspector.start()
            self._started = True

    def collector_stats(self) -> dict:
        """Live counters when the collector runs here, else what a separate collector last stored."""
        if self._started and self.settings.collects:
            return self.collector.stats()
        return self.store.get_meta("collector", {})

    def request_inspect(self) -> None:
        """An inspect now, without waiting for it: by the inspector here, or asked of the collector's
        through the store (`flowerbed web`), so that any web process or host can ask."""
        if self.settings.collects:
            self.inspector.request_refresh()
        else:
            self.store.set_meta(REQUEST_KEY, time.time())

    def stop(self) -> None:
        self.inspector.stop()
        self.collector.stop()
        if self.demo is not None:
            self.demo.stop()
        self._started = False


def build_services(settings: Settings) -> Services:
    celery_app = make_celery_app(settings)
    store = Store(settings.db, max_tasks=settings.max_tasks)
    events_queue = (EventsQueue(settings.events_queue, settings.events_queue_max_length, settings.events_queue_ttl)
                    if settings.events_queue else None)
    return Services(
        settings=settings,
        celery_app=celery_app,
        store=store,
        collector=Collector(celery_app, store, field_limit=settings.max_field_size, events_queue=events_queue),
        inspector=Inspector(celery_app, store, interval=settings.inspect_seconds,
                            timeout=settings.inspect_timeout, enable_events=settings.enable_events),
    )

"""The engine's services, built once from Settings and handed to the web side."""
from __future__ import annotations

import dataclasses
import threading

from celery import Celery

from .collector import Collector
from .inspector import Inspector
from .settings import Settings
from .store import Store


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
                from .demo import DemoCluster  # only the demo needs embedded workers
                self.demo = DemoCluster(self.celery_app)
                self.demo.start()
            self.collector.start()
            self.inspector.start()
            self._started = True

    def collector_stats(self) -> dict:
        """Live counters when the collector runs here, else what a separate collector last stored."""
        if self._started:
            return self.collector.stats()
        return self.store.get_meta("collector", {})

    def stop(self) -> None:
        self.inspector.stop()
        self.collector.stop()
        if self.demo is not None:
            self.demo.stop()
        self._started = False


def build_services(settings: Settings) -> Services:
    celery_app = make_celery_app(settings)
    store = Store(settings.db, max_tasks=settings.max_tasks)
    return Services(
        settings=settings,
        celery_app=celery_app,
        store=store,
        collector=Collector(celery_app, store, field_limit=settings.max_field_size),
        inspector=Inspector(celery_app, store, interval=settings.inspect_seconds,
                            timeout=settings.inspect_timeout, enable_events=settings.enable_events),
    )

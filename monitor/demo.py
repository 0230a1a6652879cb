"""The embedded demo: celery workers and a traffic generator inside this process.

Everything travels over celery's in-memory transport, so the collector and inspector see real task
events, heartbeats and inspect replies exactly as they would from a real cluster; only the broker
URL differs from real mode.
"""
from __future__ import annotations

import logging
import random
import threading
import time

from celery import Celery

log = logging.getLogger(__name__)

WORKER_NAMES = ("demo-alpha@flowerbed", "demo-beta@flowerbed", "demo-gamma@flowerbed")


class TransientError(ConnectionError):
    """What a flaky downstream raises; the demo retries it."""


def make_demo_app(broker_url: str) -> Celery:
    app = Celery("flowerbed_demo", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"polling_interval": 0.05},  # the default 1 s makes inspect take 2 s
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )

    def busy(median: float, spread: float = 0.5) -> float:
        seconds = min(random.lognormvariate(0, spread) * median, median * 12)
        time.sleep(seconds)
        return seconds

    @app.task(name="shop.checkout")
    def checkout(order_id, items):
        busy(0.25)
        return {"order_id": order_id, "total": round(items * 19.9, 2)}

    @app.task(name="email.send")
    def send_email(to, template="welcome"):
        busy(0.06, 0.3)
        return f"sent {template} to {to}"

    @app.task(name="reports.build")
    def build_report(report, rows):
        busy(1.2, 0.6)
        return {"report": report, "rows": rows}

    @app.task(name="images.resize")
    def resize(image_id, width=640):
        busy(0.15, 0.4)
        return f"{image_id}@{width}w"

    @app.task(name="payments.charge")
    def charge(customer_id, amount_cents):
        busy(0.18)
        if random.random() < 0.08:
            raise ValueError(f"card declined for customer {customer_id}")
        return {"charged": amount_cents}

    @app.task(name="inventory.sync", bind=True, max_retries=3)
    def sync_inventory(self, warehouse):
        busy(0.1)
        if random.random() < 0.25:
            raise self.retry(exc=TransientError(f"warehouse {warehouse} did not answer"), countdown=0.5)
        return f"{warehouse} in sync"

    app.demo_traffic = (  # (weight, task, argument maker)
        (30, checkout, lambda n: ((n, random.randint(1, 9)), {})),
        (30, send_email, lambda n: ((f"user{n}@example.com",), {"template": random.choice(["welcome", "receipt"])})),
        (4, build_report, lambda n: (("daily-sales", random.randint(100, 5000)), {})),
        (20, resize, lambda n: ((f"img-{n}",), {"width": random.choice([320, 640, 1280])})),
        (12, charge, lambda n: ((1000 + n % 97, random.randint(500, 50000)), {})),
        (8, sync_inventory, lambda n: ((random.choice(["north", "south", "east"]),), {})),
    )
    return app


class DemoCluster:
    """Three embedded workers (threads pool) and a generator sending a few tasks per second."""

    def __init__(self, monitor_app: Celery, tasks_per_second: float = 6.0):
        self.app = make_demo_app(monitor_app.conf.broker_url)
        self.tasks_per_second = tasks_per_second
        self._stop = threading.Event()
        self._workers = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # The workers' own INFO lines (one per task) would drown the monitor's log, and so would
        # the tracebacks of the failures the demo makes on purpose: the pages show those.
        for name in ("celery", "kombu"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
        # A retry sends through kombu's producer pool, whose copy of the in-memory connection warns
        # "No hostname was supplied": the in-memory broker needs none, and the warning alarms users.
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
        for hostname in WORKER_NAMES:
            worker = self.app.WorkController(
                hostname=hostname, pool_cls="threads", concurrency=4, loglevel="WARNING",
                without_heartbeat=False, without_mingle=True, without_gossip=True, send_events=True,
            )
            self._workers.append(worker)
            self._threads.append(threading.Thread(target=worker.start, name=f"demo-{hostname}", daemon=True))
        self._threads.append(threading.Thread(target=self._send_traffic, name="demo-traffic", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("demo cluster started: %s", ", ".join(WORKER_NAMES))

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.stop(in_sighandler=False)

    def _send_traffic(self) -> None:
        send_traffic(self.app, self.tasks_per_second, self._stop)


def send_traffic(app: Celery, tasks_per_second: float, stop: threading.Event) -> None:
    """Send the demo app's tasks (make_demo_app) at random, `tasks_per_second` on average, until `stop`."""
    weights = [weight for weight, _task, _args in app.demo_traffic]
    number = 0
    while not stop.is_set():
        _weight, task, make_args = random.choices(app.demo_traffic, weights)[0]
        args, kwargs = make_args(number)
        try:
            task.apply_async(args, kwargs)
        except Exception:  # keep generating even if one send fails
            log.exception("demo could not send %s", task.name)
        number += 1
        stop.wait(random.expovariate(tasks_per_second))

"""Real tasks for the integration tests: they succeed, fail with a traceback, retry, sleep and can be aborted."""
import os
import time

from celery import Celery
from celery.contrib.abortable import AbortableTask

app = Celery("sample_tasks", broker=os.environ.get("SAMPLE_BROKER", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("SAMPLE_BACKEND") or None)
app.conf.update(worker_send_task_events=True, task_send_sent_event=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="sample.add")
def add(x, y):
    return x + y


@app.task(name="sample.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="sample.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="sample.flaky", bind=True, max_retries=2, default_retry_delay=0.2)
def flaky(self, succeed_on_attempt):
    if self.request.retries + 1 < succeed_on_attempt:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries + 1} failed"))
    return self.request.retries


@app.task(name="sample.abortable", bind=True, base=AbortableTask)
def abortable(self, seconds):
    """Runs up to `seconds`, checking every 0.1 s whether it was aborted (needs a result backend)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if self.is_aborted():
            return "aborted"
        time.sleep(0.1)
    return "finished"


@app.task(name="sample.spawn", bind=True)
def spawn(self, children):
    """Sends `children` sample.add tasks to its own queue: celery records this task as their parent and root."""
    queue = self.request.delivery_info.get("routing_key")
    return [add.apply_async((number, number), queue=queue).id for number in range(children)]

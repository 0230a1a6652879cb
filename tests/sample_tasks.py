"""Real tasks for the integration tests: they succeed, fail with a traceback, retry and sleep."""
import os
import time

from celery import Celery

app = Celery("sample_tasks", broker=os.environ.get("SAMPLE_BROKER", "redis://127.0.0.1:6379/0"))
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

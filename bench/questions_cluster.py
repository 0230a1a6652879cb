"""The cluster bench/questions.py and docs/screenshots.py watch, as real processes on a broker given in
FLOWERBED_QUESTIONS_BROKER: the demo's tasks (monitor/demo.py) and one more, batch.crunch, which sends
its successor to the `batch` queue as it starts, so that a pool consuming `batch` stays full.

    celery -A questions_cluster worker -n demo-alpha@flowerbed -P threads -c 4 -E        # a demo worker
    celery -A questions_cluster worker -n demo-batch@flowerbed -P threads -c 2 -E -Q batch
    python questions_cluster.py 6                  # the demo's traffic, 6 tasks/s, and batch.crunch
"""
from __future__ import annotations

import os
import sys
import threading
import time

from monitor.demo import make_demo_app, send_traffic

BATCH_QUEUE = "batch"
CRUNCH_SECONDS = 20  # under the 60 s a task may run before it counts as stuck

app = make_demo_app(os.environ["FLOWERBED_QUESTIONS_BROKER"])


@app.task(name="batch.crunch", bind=True)
def crunch(self):
    self.apply_async(queue=BATCH_QUEUE)  # its successor, waiting while this one runs: the pool stays full
    time.sleep(CRUNCH_SECONDS)


def fill_batch_pool(concurrency: int) -> None:
    for _ in range(concurrency):
        crunch.apply_async(queue=BATCH_QUEUE)


if __name__ == "__main__":
    tasks_per_second, batch_concurrency = float(sys.argv[1]), int(sys.argv[2])
    fill_batch_pool(batch_concurrency)
    send_traffic(app, tasks_per_second, threading.Event())

"""Receiving celery events in a process of its own, for the collector.

Why a process: decoding an event in kombu costs about as much Python time as merging and writing it,
and in one process the receiving thread shares the GIL with the writing thread and the web threads.
Measured with bench/ingest.py on two cores: about 10k events/s, and at a 16k events/s burst Redis
cut the subscriber off (it was more than 32 MB behind) and half the burst was lost. In a process of
its own the receiver has a core to itself; the collector's receiving thread only unpickles batches.

The child speaks over a one-way pipe, in messages:
  ("connected", uri)        ("lost", "ErrorType: message")
  ("events", [event, ...], unreadable)   events in the order received; unreadable: how many skipped
"""
from __future__ import annotations

import collections
import os
import time

try:
    import fcntl
except ImportError:  # not on Windows: pipes keep their default size there
    fcntl = None

# A batch goes out when it holds this many events or its first event waited this long.
BATCH_EVENTS = 5000
BATCH_SECONDS = 0.1
# How long the broker may stay silent before a waiting batch goes out and the parent is checked on.
IDLE_SECONDS = 0.05
PIPE_BYTES = 1 << 20


def widen_pipe(connection) -> None:
    """Let a pipe hold most of a batch (1 MiB, Linux's default cap, instead of 64 KiB).

    Each read from the pipe gives up the GIL and must take it back, which can wait a whole switch
    interval (5 ms) while the writing thread is busy; the receiving process waits on a full pipe
    meanwhile. Fewer, larger reads (and batches) keep it from falling behind the broker."""
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # a lower cap (fs.pipe-max-size): keep the default
            pass


def broker_conf(app) -> dict:
    """What the child needs of the app's configuration to connect and read events like the app."""
    return {key: value for key, value in app.conf.items()
            if key.startswith(("broker_", "event_")) or key == "accept_content"}


def receive_in_child(conf: dict, pipe, max_backoff: float) -> None:
    """The child process: capture events, send them in batches, reconnect with backoff, end with the parent."""
    from celery import Celery

    app = Celery("flowerbed-receiver", set_as_current=False)
    app.conf.update(conf)
    parent = os.getppid()
    backoff = 0.5
    while os.getppid() == parent:
        started = time.monotonic()
        try:
            with app.connection_for_read() as connection:
                _capture(app, connection, pipe, parent)
        except (BrokenPipeError, EOFError):
            return  # the parent is gone
        except Exception as exc:  # the broker went away: say so, wait, reconnect
            try:
                pipe.send(("lost", f"{type(exc).__name__}: {exc}"))
            except (BrokenPipeError, OSError):
                return
        if time.monotonic() - started > 30:
            backoff = 0.5
        time.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


def _capture(app, connection, pipe, parent: int) -> None:
    from .collector import _TolerantReceiver

    batch: list = []
    counts = collections.Counter()
    first_at = [0.0]
    send, monotonic = pipe.send, time.monotonic

    def flush():
        send(("events", batch[:], counts["unreadable"]))
        batch.clear()
        counts.clear()

    def hand_over(event):  # once per event: an append, and now and then a send
        if not batch:
            first_at[0] = monotonic()
        batch.append(event)
        if len(batch) >= BATCH_EVENTS:
            flush()

    class Receiver(_TolerantReceiver):
        def on_iteration(self):  # between two reads from the broker
            if (batch or counts) and monotonic() - first_at[0] >= BATCH_SECONDS:
                flush()
            if os.getppid() != parent:
                self.should_stop = True

    receiver = Receiver(connection, handlers={"*": hand_over}, app=app, counts=counts)
    send(("connected", connection.as_uri()))
    try:
        for _ in receiver.consume(limit=None, timeout=None, safety_interval=IDLE_SECONDS, wakeup=True):
            pass
    finally:  # the connection lost (or the capture ended): what was received still goes out
        if batch or counts:
            flush()

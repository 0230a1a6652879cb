"""Receiving celery events in a process of its own, for the collector.

It runs as `python -m monitor.ingest.receiving`, so it imports only what receiving needs (a
multiprocessing child would first import the caller's main module: the whole web app, ~60 MB).

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
import logging
import multiprocessing.connection
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

from celery.events.receiver import EventReceiver
from kombu.transport import redis as kombu_redis
from kombu.utils.url import maybe_sanitize_url

try:
    import fcntl
except ImportError:  # not on Windows: pipes keep their default size there
    fcntl = None

log = logging.getLogger(__name__)

# A batch goes out when it holds this many events or its first event waited this long.
BATCH_EVENTS = 5000
BATCH_SECONDS = 0.1
# How long the broker may stay silent before a waiting batch goes out and the parent is checked on.
IDLE_SECONDS = 0.05
PIPE_BYTES = 1 << 20
# What replaces a value nested too deeply to pickle or turn into text.
TOO_DEEP = "…[nested too deeply to show]"


class TolerantReceiver(EventReceiver):
    """celery's receiver, except that an event it cannot read (not a dict, a timestamp that is not
    a number…) is counted and skipped: in celery's own the error ends the capture, which would
    reconnect and lose the events that arrive meanwhile."""

    def __init__(self, *args, counts: collections.Counter, **kwargs):
        super().__init__(*args, **kwargs)
        self._counts = counts

    def _receive(self, body, message, list=list, isinstance=isinstance):
        process, from_message = self.process, self.event_from_message
        for event in body if isinstance(body, list) else (body,):
            try:
                type_, event = from_message(event)
            except Exception:  # garbage from the bus; what is merely incomplete fails in the writer
                self._counts["unreadable"] += 1
                continue
            process(type_, event)

    def on_decode_error(self, message, exc):
        # A body kombu cannot decode (not JSON, a content type not accepted): kombu's handler only
        # logs it; count it with the events that cannot be read.
        self._counts["unreadable"] += 1
        log.debug("skipped an undecodable message on the event bus: %r", exc)

    def get_consumers(self, Consumer, channel):
        if isinstance(channel, _TolerantRedisChannel):
            channel.counts = self._counts
        return super().get_consumers(Consumer, channel)


class _TolerantRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that what is published on the event channel and cannot be
    made a message (JSON nested too deeply to parse, JSON that is not kombu's envelope) is counted
    and skipped: in kombu's the error ends the capture, a reconnect that loses what is published
    meanwhile."""

    counts: collections.Counter | None = None  # the receiver's, given when it starts consuming

    def _receive_one(self, c):
        try:
            return super()._receive_one(c)
        except RecursionError as exc:  # JSON nested too deeply to parse
            self._skip(exc)
            raise Empty() from None

    def _deliver_fanout_message(self, message, exchange):
        try:
            return super()._deliver_fanout_message(message, exchange)
        except Exception as exc:  # JSON, but not kombu's envelope (the receiver's own errors are caught in it)
            self._skip(exc)
            return False

    def _skip(self, error: Exception) -> None:
        if self.counts is not None:
            self.counts["unreadable"] += 1
        log.debug("skipped a message on the event channel that is not kombu's: %r", error)


class TolerantRedisTransport(kombu_redis.Transport):
    Channel = _TolerantRedisChannel


class _CountSkippedByKombu(logging.Filter):
    """kombu's Redis transport skips a message that is not JSON and logs it with a traceback; count
    it with the unreadable ones instead, so that garbage is neither uncounted nor a flood in the log."""

    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Cannot process event on channel"):
            self.counts["unreadable"] += 1
            return False
        return True


def connection_for_events(app):
    """The app's connection for reading events, with the tolerant channel on plain Redis."""
    connection = app.connection_for_read()
    if type(connection.transport) is kombu_redis.Transport:
        connection.release()
        connection = app.connection_for_read(transport=TolerantRedisTransport)
    return connection


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


MODULE = "monitor.ingest.receiving"
# Where `monitor` is, so that the process finds it whatever the caller's working directory.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def start_process(conf: dict, max_backoff: float) -> tuple[subprocess.Popen, multiprocessing.connection.Connection]:
    """Start the receiving process; returns it and the end of the pipe its messages come from."""
    ours, theirs = multiprocessing.Pipe(duplex=False)
    widen_pipe(theirs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))}
    process = subprocess.Popen([sys.executable, "-m", MODULE, str(theirs.fileno())], stdin=subprocess.PIPE,
                               pass_fds=[theirs.fileno()], env=env)
    theirs.close()
    with process.stdin:
        pickle.dump((conf, max_backoff), process.stdin)
    return process, ours


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
            with connection_for_events(app) as connection:
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
    batch: list = []
    counts = collections.Counter()
    first_at = [0.0]
    send, monotonic = pipe.send, time.monotonic

    def flush():
        try:
            send(("events", batch, counts["unreadable"]))
        except (RecursionError, pickle.PicklingError):  # one event nested too deeply: not its neighbours
            send(("events", [_picklable(event) for event in batch], counts["unreadable"]))
        batch.clear()
        counts.clear()

    def hand_over(event):  # once per event: an append, and now and then a send
        if not batch:
            first_at[0] = monotonic()
        batch.append(event)
        if len(batch) >= BATCH_EVENTS:
            flush()

    class Receiver(TolerantReceiver):
        def on_iteration(self):  # between two reads from the broker
            if (batch or counts) and monotonic() - first_at[0] >= BATCH_SECONDS:
                flush()
            if os.getppid() != parent:
                self.should_stop = True

    receiver = Receiver(connection, handlers={"*": hand_over}, app=app, counts=counts)
    kombu_log, skipped = logging.getLogger("kombu.transport.redis"), _CountSkippedByKombu(counts)
    kombu_log.addFilter(skipped)
    # (as_uri() would name the transport class in place of the scheme)
    send(("connected", maybe_sanitize_url(app.conf.broker_read_url or app.conf.broker_url)))
    try:
        for _ in receiver.consume(limit=None, timeout=None, safety_interval=IDLE_SECONDS, wakeup=True):
            pass
    finally:  # the connection lost (or the capture ended): what was received still goes out
        kombu_log.removeFilter(skipped)
        if batch or counts:
            flush()


def _picklable(event: dict) -> dict:
    """The event, with any field too deeply nested to pickle replaced by a note saying so."""
    try:
        pickle.dumps(event, pickle.HIGHEST_PROTOCOL)
        return event
    except (RecursionError, pickle.PicklingError):
        pass
    fields = {}
    for key, value in event.items():
        try:
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            fields[key] = value
        except (RecursionError, pickle.PicklingError):
            fields[key] = TOO_DEEP
    return fields


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the parent; this process ends with it
    received_conf, received_backoff = pickle.load(sys.stdin.buffer)
    receive_in_child(received_conf, multiprocessing.connection.Connection(int(sys.argv[1]), readable=False),
                     received_backoff)

"""Receiving celery events in a process of its own, for the collector.

It runs as `python -m monitor.ingest.receiving`, so it imports only what receiving needs (a
multiprocessing child would first import the caller's main module: the whole web app, ~60 MB).

Why a process: decoding an event in kombu costs about as much Python time as merging and writing it,
and in one process the receiving thread shares the GIL with the writing thread and the web threads.
Measured with bench/ingest.py on two cores: about 10k events/s, and at a 16k events/s burst Redis
cut the subscriber off (it was more than 32 MB behind) and half the burst was lost. In a process of
its own the receiver has a core to itself; the collector's receiving thread only unpickles batches.

The child speaks over one pipe and listens on another, in messages:
  to the parent:  ("connected", uri)        ("lost", "ErrorType: message")        ("drained",)
                  ("events", pickle, count, oldest, unreadable, receipt)   the pickled list of
                  `count` events in the order received (the collector unpickles it only when it
                  merges it); oldest: the first one's local_received; unreadable: how many skipped;
                  receipt: None, or on a queue (EventsQueue) what acknowledges the batch's messages
                  and every earlier one
  to the child:   ("ack", receipt)   the store committed that batch and the ones before it
                  ("stop",)          send what you hold, then ("drained",); leave the rest to the broker
                  the pipe closed    acknowledge nothing more, close the connection, exit
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
import threading
import time
import uuid
from base64 import b64decode
from json import loads as json_loads
from pathlib import Path
from queue import Empty
from typing import NamedTuple

from celery.events.receiver import EventReceiver
from kombu import Queue
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
# Messages of a queue delivered and not yet acknowledged, at most. Nothing is acknowledged before
# the store committed it (a writer batch, 0.25 s or 20,000 events, and the way back), so this must
# hold a few writer batches or the broker waits on the writer.
PREFETCH = 50_000
# How long a stopping collector waits for the receiving process to send what it holds.
DRAIN_SECONDS = 2.0


class EventsQueue(NamedTuple):
    """A durable queue bound to celery's event exchange (--events-queue). RabbitMQ keeps what is
    published to it while no collector listens, up to max_length messages (then the oldest go),
    each for ttl_seconds, and splits its messages between the collectors consuming from it."""

    name: str
    max_length: int
    ttl_seconds: float

    def declaration(self, exchange) -> Queue:
        return Queue(self.name, exchange=exchange, routing_key="#", durable=True, auto_delete=False,
                     max_length=self.max_length, message_ttl=self.ttl_seconds)


class TolerantReceiver(EventReceiver):
    """celery's receiver, except that an event it cannot read (not a dict, a timestamp that is not
    a number…) is counted and skipped: in celery's own the error ends the capture, which would
    reconnect and lose the events that arrive meanwhile.

    With an EventsQueue it consumes that queue and acknowledges nothing by itself: `last_tag` is the
    delivery tag of the latest message taken (an acknowledgement of it with multiple=True covers
    every earlier one, the unreadable ones too); once `paused`, messages are left unacknowledged,
    for the broker to deliver again."""

    def __init__(self, *args, counts: collections.Counter, events_queue: EventsQueue | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._counts = counts
        self.events_queue = events_queue
        if events_queue is not None:
            self.queue = events_queue.declaration(self.exchange)
        self.consuming_channel = None
        self.last_tag = 0
        self.paused = False

    def _receive(self, body, message):
        self.receive_body(body, message.delivery_tag)

    def receive_body(self, body, delivery_tag, list=list, isinstance=isinstance) -> None:
        """The events of a decoded message body (one event, or a list of them)."""
        if self.paused:
            return
        process, from_message = self.process, self.event_from_message
        for event in body if isinstance(body, list) else (body,):
            try:
                type_, event = from_message(event)
            except Exception:  # garbage from the bus; what is merely incomplete fails in the writer
                self._counts["unreadable"] += 1
                continue
            process(type_, event)
        # Taken once all its events are (a batch sent midway through them must not acknowledge it).
        self.last_tag = delivery_tag

    def on_decode_error(self, message, exc):
        # A body kombu cannot decode (not JSON, a content type not accepted): kombu's handler only
        # logs it; count it with the events that cannot be read (and acknowledge it with the next
        # batch: delivered again, it would never decode either).
        if self.paused:
            return
        self.last_tag = message.delivery_tag
        self._counts["unreadable"] += 1
        log.debug("skipped an undecodable message on the event bus: %r", exc)

    def get_consumers(self, Consumer, channel):
        if isinstance(channel, _TolerantRedisChannel):
            channel.counts = self._counts
            channel.receive_body = self.receive_body
        if self.events_queue is None:
            return super().get_consumers(Consumer, channel)
        self.consuming_channel = channel
        return [Consumer(queues=[self.queue], callbacks=[self._receive], no_ack=False, prefetch_count=PREFETCH,
                         accept=self.accept)]


class _TolerantRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that

    - what is published on the event channel and cannot be made a message (JSON nested too deeply
      to parse, JSON that is not kombu's envelope) is counted and skipped: in kombu's the error ends
      the capture, a reconnect that loses what is published meanwhile;
    - a message as celery's dispatcher sends every event (JSON in base64, uncompressed, no type
      kombu's JSON would revive) goes straight to the receiver's `receive_body`: kombu's Message,
      consumer dispatch and its JSON decoder (a new one per call, for its object hook) cost about
      a third of the receiving process's time (py-spy, bench/README.md). Anything else, and
      whatever fails on the way, takes kombu's path, which decides as it always did."""

    counts: collections.Counter | None = None  # the receiver's, given when it starts consuming
    receive_body = None  # the receiver's, given with the counts

    def _deliver_fanout_message(self, message, exchange):
        if self.receive_body is not None:
            try:
                properties, body = message["properties"], None
                if (message["content-type"] == "application/json" and message["content-encoding"] == "utf-8"
                        and properties["body_encoding"] == "base64" and "compression" not in message["headers"]):
                    text = b64decode(message["body"]).decode()  # as kombu decodes it
                    if "__type__" not in text:
                        body, tag = json_loads(text), properties["delivery_tag"]
            except Exception:  # noqa: BLE001 - kombu's path below decides, and counts, as before
                body = None
            if body is not None:
                self.receive_body(body, tag)
                return True
        return self._deliver_through_kombu(message, exchange)

    def _receive_one(self, c):
        try:
            return super()._receive_one(c)
        except RecursionError as exc:  # JSON nested too deeply to parse
            self._skip(exc)
            raise Empty() from None

    def _deliver_through_kombu(self, message, exchange):
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


class ReceivingProcess:
    """The parent's side of the receiving process: `events` brings its messages; `tell` sends it
    acknowledgements (from the writing thread) and the stop (from the relaying thread)."""

    def __init__(self, process: subprocess.Popen, events: multiprocessing.connection.Connection,
                 control: multiprocessing.connection.Connection):
        self.process = process
        self.events = events
        self._control = control
        self._lock = threading.Lock()

    def tell(self, message: tuple) -> None:
        with self._lock:
            try:
                self._control.send(message)
            except OSError:  # it ended: what it did not acknowledge, the broker delivers again
                pass

    def end(self, timeout: float) -> None:
        """Let it acknowledge what it was told and close its connection, else kill it after `timeout`."""
        with self._lock:
            self._control.close()
        try:
            self.process.wait(max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.events.close()


def start_process(conf: dict, max_backoff: float, events_queue: EventsQueue | None = None) -> ReceivingProcess:
    """Start the receiving process, with the pipes to it."""
    events, their_events = multiprocessing.Pipe(duplex=False)
    their_control, control = multiprocessing.Pipe(duplex=False)
    widen_pipe(their_events)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))}
    fds = [their_events.fileno(), their_control.fileno()]
    process = subprocess.Popen([sys.executable, "-m", MODULE, *map(str, fds)], stdin=subprocess.PIPE,
                               pass_fds=fds, env=env)
    their_events.close()
    their_control.close()
    with process.stdin:
        pickle.dump((conf, max_backoff, events_queue and tuple(events_queue)), process.stdin)
    return ReceivingProcess(process, events, control)


def receive_in_child(conf: dict, pipe, control, max_backoff: float, events_queue: EventsQueue | None) -> None:
    """The child process: capture events, send them in batches, reconnect with backoff, end with the parent."""
    from celery import Celery

    app = Celery("flowerbed-receiver", set_as_current=False)
    app.conf.update(conf)
    capture = _Capture(app, pipe, control, events_queue)
    backoff = 0.5
    try:
        while capture.running() and not capture.stopping:
            started = time.monotonic()
            try:
                with connection_for_events(app) as connection:
                    capture.run(connection)
            except (BrokenPipeError, EOFError):
                return  # the parent is gone
            except Exception as exc:  # the broker went away: say so, wait, reconnect
                pipe.send(("lost", f"{type(exc).__name__}: {exc}"))
            if time.monotonic() - started > 30:
                backoff = 0.5
            capture.wait(backoff)
            backoff = min(backoff * 2, max_backoff)
    except OSError:  # a pipe to the parent broke: it is gone
        return


class _Capture:
    """The child's side of the pipes, across connections: batches out, acknowledgements and the stop in."""

    def __init__(self, app, pipe, control, events_queue: EventsQueue | None):
        self.app = app
        self.pipe = pipe
        self.control = control
        self.events_queue = events_queue
        self.parent = os.getppid()
        self.batch: list = []
        self.counts = collections.Counter()
        self.first_at = 0.0
        self.receiver: _ChildReceiver | None = None
        # Delivery tags count from 1 on each channel: a receipt names its connection.
        self.connection_id: str | None = None
        self.acked = 0
        self.stopping = False  # told to stop: what arrives is left to the broker, no reconnecting
        self.told_to_end = False  # the parent closed the control pipe
        self.listened_at = 0.0

    def running(self) -> bool:
        return not self.told_to_end and os.getppid() == self.parent

    def run(self, connection) -> None:
        """Capture on one connection until it is lost or the parent ends it."""
        batch, flush, monotonic = self.batch, self.flush, time.monotonic

        def hand_over(event, intern=sys.intern, str=str, type=type):
            # Once per event: an append, and now and then a send. The keys (and the type and
            # hostname) are interned so that pickle writes each once per batch and the collector's
            # events share them: the batch pickles ~3x faster, unpickles ~2x faster, and an event
            # waiting in the collector takes half the memory (~750 bytes instead of ~1,450).
            if not batch:
                self.first_at = monotonic()
            event = {intern(key) if type(key) is str else key: value for key, value in event.items()}
            for field in ("type", "hostname"):
                value = event.get(field)
                if type(value) is str:
                    event[field] = intern(value)
            batch.append(event)
            if len(batch) >= BATCH_EVENTS:
                flush()

        self.receiver = receiver = _ChildReceiver(self, connection, handlers={"*": hand_over}, app=self.app,
                                                  counts=self.counts, events_queue=self.events_queue)
        self.connection_id, self.acked = uuid.uuid4().hex, 0
        kombu_log, skipped = logging.getLogger("kombu.transport.redis"), _CountSkippedByKombu(self.counts)
        kombu_log.addFilter(skipped)
        # (as_uri() would name the transport class in place of the scheme)
        self.pipe.send(("connected", maybe_sanitize_url(self.app.conf.broker_read_url or self.app.conf.broker_url)))
        try:
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=IDLE_SECONDS, wakeup=True):
                pass
        finally:  # the connection lost (or the capture ended): what was received still goes out
            kombu_log.removeFilter(skipped)
            if self.batch or self.counts:
                self.flush()
            self.receiver = self.connection_id = None

    def on_iteration(self, receiver) -> None:
        """Between two reads from the broker: send a batch that waited long enough, now and then
        listen to the parent."""
        now = time.monotonic()
        if (self.batch or self.counts) and now - self.first_at >= BATCH_SECONDS:
            self.flush()
        if now - self.listened_at >= IDLE_SECONDS:
            self.listened_at = now
            self.listen()
            if not self.running():
                receiver.should_stop = True

    def flush(self) -> None:
        batch, unreadable = self.batch, self.counts["unreadable"]
        receipt = (self.connection_id, self.receiver.last_tag) if self.events_queue else None
        try:
            payload = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
        except (RecursionError, pickle.PicklingError):  # one event nested too deeply: not its neighbours
            payload = pickle.dumps([_picklable(event) for event in batch], pickle.HIGHEST_PROTOCOL)
        oldest = batch[0].get("local_received") if batch else None
        self.pipe.send(("events", payload, len(batch), oldest, unreadable, receipt))
        batch.clear()
        self.counts.clear()

    def listen(self) -> None:
        """Act on what the parent said since the last look."""
        try:
            while self.control.poll():
                message = self.control.recv()
                if message[0] == "ack":
                    self.acknowledge(message[1])
                else:
                    self.stop()
        except EOFError:
            self.told_to_end = True

    def acknowledge(self, receipt) -> None:
        connection_id, tag = receipt
        # A receipt of a connection since lost acknowledges nothing: the broker delivers those again.
        if connection_id == self.connection_id and tag > self.acked:
            self.receiver.consuming_channel.basic_ack(tag, multiple=True)
            self.acked = tag

    def stop(self) -> None:
        """Send what is held and say so; from now on the broker keeps what arrives (on a queue)."""
        self.stopping = True
        if self.receiver is not None:
            self.receiver.paused = True
            if self.batch or self.counts:
                self.flush()
        self.pipe.send(("drained",))

    def wait(self, seconds: float) -> None:
        """Wait between two connections, still listening to the parent."""
        deadline = time.monotonic() + seconds
        while self.running() and not self.stopping and time.monotonic() < deadline:
            if self.control.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                self.listen()


class _ChildReceiver(TolerantReceiver):
    """The child's receiver: between two reads from the broker, the capture's turn."""

    def __init__(self, capture: _Capture, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.capture = capture

    def on_iteration(self):
        self.capture.on_iteration(self)


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
    # Ctrl-C and SIGTERM (sent to the whole group by a terminal or a service manager) are for the
    # parent: it stops this process once what it holds is written and acknowledged.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    received_conf, received_backoff, received_queue = pickle.load(sys.stdin.buffer)
    receive_in_child(received_conf, multiprocessing.connection.Connection(int(sys.argv[1]), readable=False),
                     multiprocessing.connection.Connection(int(sys.argv[2]), writable=False), received_backoff,
                     received_queue and EventsQueue(*received_queue))

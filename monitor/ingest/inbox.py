"""The collector's inbox: what was received and waits to be merged, oldest first.

Events come one at a time from a receiver in the collector's process (an in-memory broker), or in
batches from the receiving process. A batch stays the pickle it came as until the writer takes it: a
pickled event takes about 210 bytes, a live one about 800. Past `memory_bytes` of waiting batches,
further batches wait in a temporary file, so that a collector that falls far behind (a burst faster
than the store takes it) keeps its memory flat and still loses nothing.
"""
from __future__ import annotations

import collections
import os
import pickle
import tempfile
import threading

MEMORY_BYTES = 8 << 20


class Inbox:
    """`events`: the events taken out of their batch, which the writer pops from the left; batches
    are added by one thread (the relay) and unpacked by another (the writer)."""

    def __init__(self, memory_bytes: int | None = None):
        self.memory_bytes = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self.events: collections.deque = collections.deque()
        # (pickle, or None when spooled; spool offset; length; events; when the first was received)
        self._batches: collections.deque = collections.deque()
        self._waiting = 0  # events in _batches, and in the batch being unpacked
        self._held = 0  # bytes of the pickles held in memory
        self._spool = None
        self._spool_end = 0
        self._spooled = 0  # batches in the spool
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.events) + self._waiting

    def add_batch(self, payload: bytes, count: int, oldest: float | None) -> None:
        """A pickled list of `count` events, received after everything the inbox holds."""
        with self._lock:
            if self._held + len(payload) <= self.memory_bytes:
                self._batches.append((payload, 0, len(payload), count, oldest))
                self._held += len(payload)
            else:
                if self._spool is None:
                    self._spool = tempfile.TemporaryFile(prefix="flowerbed-inbox-")
                os.pwrite(self._spool.fileno(), payload, self._spool_end)
                self._batches.append((None, self._spool_end, len(payload), count, oldest))
                self._spool_end += len(payload)
                self._spooled += 1
            self._waiting += count

    def unpack(self) -> bool:
        """Move the oldest waiting batch into `events`; False when no batch waits."""
        with self._lock:
            if not self._batches:
                return False
            payload, offset, length, count, _oldest = self._batches.popleft()
            if payload is None:
                payload = os.pread(self._spool.fileno(), length, offset)
                self._spooled -= 1
                if not self._spooled:  # the spool is read: start it again from its beginning
                    self._spool_end = 0
                    os.ftruncate(self._spool.fileno(), 0)
            else:
                self._held -= length
        # Unpickling is the slow part: out of the lock, and counted as waiting until it is done.
        self.events.extend(pickle.loads(payload))
        with self._lock:
            self._waiting -= count
        return True

    def oldest(self) -> float | None:
        """When the oldest waiting event was received, when it says."""
        try:
            received = self.events[0].get("local_received")
        except (IndexError, AttributeError):  # none unpacked (or taken meanwhile), or not a dict
            try:
                received = self._batches[0][4]
            except IndexError:
                return None
        return received if type(received) is float else None

    def clear(self) -> int:
        """Forget what waits; returns how many events that was."""
        with self._lock:
            forgotten = len(self)
            self.events.clear()
            self._batches.clear()
            self._waiting = self._held = self._spooled = self._spool_end = 0
            if self._spool is not None:
                os.ftruncate(self._spool.fileno(), 0)
            return forgotten

    def spooled_bytes(self) -> int:
        return self._spool_end

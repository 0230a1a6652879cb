"""The collector's inbox: batches kept pickled, spooled to a file past the memory allowance, and
handed to the writer in the order received."""
import pickle

from monitor.ingest.inbox import Inbox


def batch(first: int, count: int) -> tuple[bytes, int, float]:
    events = [{"type": "task-received", "uuid": f"u{n}", "local_received": float(n)} for n in range(first, first + count)]
    return pickle.dumps(events, pickle.HIGHEST_PROTOCOL), count, events[0]["local_received"]


def drain(inbox: Inbox) -> list[str]:
    taken = []
    while inbox.events or inbox.unpack():
        taken.append(inbox.events.popleft()["uuid"])
    return taken


def test_batches_past_the_memory_allowance_wait_on_disk_and_come_out_in_order():
    payload, _, _ = batch(0, 100)
    inbox = Inbox(memory_bytes=len(payload) * 2)  # two batches in memory, the rest spooled
    for first in range(0, 1000, 100):
        inbox.add_batch(*batch(first, 100))
    assert len(inbox) == 1000
    assert inbox.spooled_bytes() > 0
    assert inbox.oldest() == 0.0
    assert drain(inbox) == [f"u{n}" for n in range(1000)]
    assert len(inbox) == 0 and inbox.spooled_bytes() == 0 and inbox.oldest() is None


def test_the_spool_starts_again_once_read_and_order_holds_across_memory_and_disk():
    payload, _, _ = batch(0, 10)
    inbox = Inbox(memory_bytes=len(payload))
    inbox.add_batch(*batch(0, 10))  # memory
    inbox.add_batch(*batch(10, 10))  # spooled
    assert [inbox.events.popleft()["uuid"] for _ in range(10) if inbox.events or inbox.unpack()] == \
        [f"u{n}" for n in range(10)]
    inbox.add_batch(*batch(20, 10))  # memory again: after the spooled batch all the same
    assert drain(inbox) == [f"u{n}" for n in range(10, 30)]
    assert inbox.spooled_bytes() == 0
    inbox.add_batch(*batch(30, 10))
    inbox.add_batch(*batch(40, 10))
    assert inbox.spooled_bytes() > 0
    assert drain(inbox) == [f"u{n}" for n in range(30, 50)]


def test_events_handed_over_one_by_one_and_clear():
    inbox = Inbox()
    inbox.events.append({"uuid": "a", "local_received": 5.0})
    inbox.add_batch(*batch(0, 3))
    assert len(inbox) == 4 and inbox.oldest() == 5.0
    assert inbox.clear() == 4
    assert len(inbox) == 0 and not inbox.unpack() and inbox.oldest() is None

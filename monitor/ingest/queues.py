"""How many messages wait in a broker's queues, and who consumes them: read by the inspector after
each inspect round and written to the store, never by a page.

Redis: a queue is a list; a message with a priority goes to a sibling list named queue + sep + step
(kombu's `sep`, '\\x06\\x16' by default, and `priority_steps`, 0 3 6 9 by default; step 0 is the queue
itself), and every key starts with the transport's `global_keyprefix`. All are read from the broker
transport options celery was given, and the lists of one queue are summed. Redis knows nothing of
consumers: they are the online workers whose inspect reply lists the queue.
RabbitMQ: a passive queue_declare answers the message and consumer counts (a queue the broker does
not have is reported as missing); with --broker-api, RabbitMQ's management HTTP API answers for every
queue of the vhost in one request instead. kombu's other transports (the demo's in-memory one, SQS…)
answer a passive declare with the message count; their consumers are counted as on Redis.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import urllib.parse
import urllib.request
from typing import Iterable

# How long a reading may wait for the broker or its management API.
CONNECT_SECONDS = 3.0


@dataclasses.dataclass(frozen=True)
class Depth:
    """A queue as the broker reports it; messages and consumers are None when the broker does not
    have the queue; consumers None where the broker does not know them (all but RabbitMQ)."""
    name: str
    messages: int | None
    consumers: int | None


def read_depths(celery_app, names: Iterable[str], broker_api: str = "") -> list[Depth]:
    """The depth of each queue in `names` on the broker of `celery_app`; raises when the broker (or
    its management API) cannot be read."""
    names = sorted(set(names))
    with celery_app.connection_for_read(connect_timeout=CONNECT_SECONDS) as connection:
        connection.ensure_connection(max_retries=1)
        if connection.transport.driver_type == "redis":
            return _redis_depths(connection.default_channel, names)
        if broker_api and connection.transport.driver_type == "amqp":
            return management_api_depths(broker_api, connection, names)
        depths = _declared_depths(connection, names)
        if connection.transport.driver_type != "amqp":  # kombu's emulated transports count no consumers
            depths = [dataclasses.replace(depth, consumers=None) for depth in depths]
        return depths


def redis_keys(queue: str, sep: str, priority_steps: Iterable[int], prefix: str = "") -> list[str]:
    """The lists holding a queue's messages, one per priority step, as kombu's Redis transport names them."""
    return [f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}" for step in priority_steps]


def _redis_depths(channel, names: list[str]) -> list[Depth]:
    import redis

    # A client without kombu's key prefixing: the keys below carry the prefix themselves.
    client = redis.Redis(connection_pool=channel.client.connection_pool)
    keys = {name: redis_keys(name, channel.sep, channel.priority_steps, channel.global_keyprefix) for name in names}
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            for key in keys[name]:
                pipe.llen(key)
        lengths = iter(pipe.execute())
    return [Depth(name, sum(next(lengths) for _ in keys[name]), None) for name in names]


def _declared_depths(connection, names: list[str]) -> list[Depth]:
    depths = []
    channel = connection.channel()
    try:
        for name in names:
            try:
                _queue, messages, consumers = channel.queue_declare(queue=name, passive=True)
            except connection.channel_errors:  # not there: the broker closed the channel, open another
                depths.append(Depth(name, None, None))
                _close_quietly(channel)
                channel = connection.channel()
            else:
                depths.append(Depth(name, messages, consumers))
    finally:
        _close_quietly(channel)
    return depths


def _close_quietly(channel) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - a channel the broker already closed
        pass


def management_api_depths(broker_api: str, connection, names: list[str]) -> list[Depth]:
    """Depths from RabbitMQ's management HTTP API: GET <broker_api>/queues/<vhost>, with the API URL's
    user and password, else the broker's."""
    api = urllib.parse.urlsplit(broker_api)
    vhost = connection.virtual_host or "/"
    url = urllib.parse.urlunsplit((api.scheme, api.hostname + (f":{api.port}" if api.port else ""),
                                   f"{api.path.rstrip('/')}/queues/{urllib.parse.quote(vhost, safe='')}", "", ""))
    user = urllib.parse.unquote(api.username or "") or connection.userid or "guest"
    password = urllib.parse.unquote(api.password or "") or connection.password or "guest"
    request = urllib.request.Request(url, headers={
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=CONNECT_SECONDS) as response:
        listed = {queue["name"]: queue for queue in json.loads(response.read())}
    return [Depth(name, listed[name].get("messages", 0), listed[name].get("consumers", 0)) if name in listed
            else Depth(name, None, None) for name in names]

"""Following `user-profiles`: the consumer settings, the poll loop and one line per profile."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from rich.markup import escape

__all__ = ["KafkaConsumerLike", "consumer_config", "follow", "format_profile"]

# Short polls so Ctrl-C (raised between polls) is served promptly.
_POLL_S = 0.5
# A group join takes about half the session timeout on tansu (broker notes, T3).
_JOIN_ALLOWANCE_S = 10.0
_FETCH_WAIT_MS = 100


class KafkaConsumerLike(Protocol):
    """The part of `confluent_kafka.Consumer` that `follow` uses."""

    def subscribe(self, topics: list[str], on_assign: Any = ...) -> None:
        """Join the group for ``topics``; ``on_assign`` runs when partitions are assigned."""

    def poll(self, timeout: float) -> Any:
        """The next message (with ``error()``, ``value()``), or None after ``timeout`` s."""

    def close(self) -> None:
        """Leave the group."""


def consumer_config(
    bootstrap: str,
    group: str | None = None,
    from_beginning: bool = False,
    session_timeout_ms: int = 6000,
) -> dict[str, str | int | bool]:
    """Settings for a profile consumer.

    Args:
        bootstrap: Kafka bootstrap servers.
        group: consumer group; None makes a throwaway one, which commits nothing.
        from_beginning: start at the earliest offset when the group has no commit.
        session_timeout_ms: a group join waits about half of it on tansu (broker notes, T3).
    """
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group or f"hup-tail-{uuid.uuid4().hex[:12]}",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": min(1000, session_timeout_ms // 3),
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        # tansu answers a fetch only when its wait expires, even if data arrives meanwhile
        # (measured: a message waits ~fetch.wait.max.ms), so keep the wait short.
        "fetch.wait.max.ms": _FETCH_WAIT_MS,
        "enable.auto.commit": group is not None,
    }


def format_profile(value: bytes) -> str:
    """One rich-markup line for a profile message: user, seq, model, latency, top categories."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return f"[red]not JSON:[/] {escape(value[:120].decode(errors='replace'))}"
    if not isinstance(message, dict):
        return f"[red]not a profile:[/] {escape(value[:120].decode(errors='replace'))}"
    user = str(message.get("user_id", "?"))
    version = str(message.get("model_version", "?"))[:12]
    latency = ""
    published, event = message.get("published_ts"), message.get("event_ts")
    if isinstance(published, int | float) and isinstance(event, int | float):
        latency = f"{1000 * (published - event):7.0f} ms"
    tops = " ".join(
        f"{escape(str(c.get('id')))}:{c.get('score', 0):.2f}"
        for c in message.get("top_categories", [])
        if isinstance(c, dict)
    )
    return (
        f"[bold]{escape(user):<12}[/] seq {message.get('seq', '?')!s:>5}  "
        f"[dim]{escape(version)}[/] {latency}  {tops}"
    )


def follow(
    consumer: KafkaConsumerLike,
    topics: list[str],
    on_value: Callable[[bytes], None],
    *,
    limit: int | None = None,
    max_idle: float | None = None,
    on_error: Callable[[str], None] | None = None,
) -> int:
    """Subscribe and pass each message value to ``on_value`` until a stop condition.

    Stops after ``limit`` messages, or after ``max_idle`` seconds without one (counted from
    the partition assignment, as a group join alone takes seconds); otherwise runs until
    KeyboardInterrupt, which propagates. Never closes the consumer.

    Returns:
        How many messages were passed on.
    """
    # Until partitions are assigned, allow for the join on top of the idle time.
    last = time.monotonic() + _JOIN_ALLOWANCE_S

    def on_assign(_consumer: Any, _partitions: Any) -> None:
        nonlocal last
        last = time.monotonic()

    consumer.subscribe(topics, on_assign=on_assign)
    seen = 0
    while limit is None or seen < limit:
        message = consumer.poll(_POLL_S)
        if message is None:
            if max_idle is not None and time.monotonic() - last >= max_idle:
                break
            continue
        error = message.error()
        if error is not None:
            if on_error is not None:
                on_error(str(error))
            continue
        value = message.value()
        if value is None:
            continue
        last = time.monotonic()
        on_value(value)
        seen += 1
    return seen

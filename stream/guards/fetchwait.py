"""The input consumer's fetch wait: faust fixes aiokafka's ``fetch_max_wait_ms`` at 1500 ms.

A fetch request that finds no records waits at the broker up to ``fetch_max_wait_ms``.
Kafka answers it as soon as a record arrives, so the value only bounds idle polling;
the embedded tansu broker does not, and always waits the full time (docs/broker-notes.md,
T6), so with faust's fixed 1500 ms an event arriving while a fetch waits would be seen
up to 1.5 s later. `install` makes the worker consumer that faust builds for an app use the
app's HUP_FETCH_MAX_WAIT_MS instead (set before the consumer starts, which is when
aiokafka's fetcher reads it).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import AppT

__all__ = ["fetch_max_wait_ms", "install"]

logger = logging.getLogger(__name__)

# The fetch wait of each app that asked for one; other apps keep faust's.
_WAITS: weakref.WeakKeyDictionary[AppT, int] = weakref.WeakKeyDictionary()
_faust_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer  # noqa: SLF001


def _create_worker_consumer(self: AIOKafkaConsumerThread, transport: Any) -> Any:
    """Faust's worker consumer, with the app's fetch wait if it set one."""
    consumer = _faust_create_worker_consumer(self, transport)
    wait = _WAITS.get(self.app)
    if wait is not None:
        consumer._fetch_max_wait_ms = wait  # noqa: SLF001 - read by start() (aiokafka 0.14)
        logger.debug("input fetch wait set to %d ms", wait)
    return consumer


def install(app: AppT, wait_ms: int) -> None:
    """Make the worker consumer of ``app`` wait at most ``wait_ms`` per fetch."""
    _WAITS[app] = wait_ms
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]  # noqa: SLF001


def fetch_max_wait_ms(app: AppT) -> int | None:
    """The fetch wait `install` set for ``app``, or None (faust's 1500 ms)."""
    return _WAITS.get(app)

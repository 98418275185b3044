"""True end offsets for faust's table recovery, also on brokers that report them wrong.

faust recovers a table by reading its changelog up to the partition's high
watermark, which it asks the broker for (ListOffsets). The embedded tansu broker
answers with the base offset of the partition's last record batch plus one, not the
last offset plus one (docs/broker-notes.md, T1). With producers that batch, recovery
then stops before the last records of the last batch and silently loses those
users' newest state, or, with a local RocksDB already ahead, crash-loops on
faust's consistency check. Without the correction the worker could only avoid
multi-record batches (``HUP_PRODUCER_MAX_BATCH_SIZE=1``): every produce request would
carry one record per partition, and a batch would spend most of its time waiting for
produce round trips.

`install` makes the consumer's ``highwaters()`` read the partition's last batch and
return its last offset plus one. On a broker that answers right, that read returns
the record just below the reported mark and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import TP

__all__ = ["install", "true_end_offset"]

logger = logging.getLogger(__name__)

Highwaters = Callable[..., Awaitable[Mapping[TP, int]]]

# How long to wait for the last batch of one partition.
_READ_TIMEOUT_MS = 5000


async def true_end_offset(reader: AIOKafkaConsumer, tp: TP, reported: int) -> int:
    """The offset after the last record of ``tp``, given the broker's reported mark.

    Reads from ``reported - 1``, which is the last record on a correct broker and the
    first record of the last batch on tansu; one fetch returns that batch whole. If
    nothing comes back (the last offset holds a transaction marker), the reported
    mark stands.
    """
    if reported <= 0:
        return reported
    partition = TopicPartition(tp.topic, tp.partition)
    reader.assign([partition])
    reader.seek(partition, reported - 1)
    fetched = await reader.getmany(partition, timeout_ms=_READ_TIMEOUT_MS)
    records = fetched.get(partition, [])
    return max(reported, records[-1].offset + 1) if records else reported


def install(app: faust.App) -> None:
    """Make ``app.consumer.highwaters`` (what table recovery trusts) return true end offsets."""
    consumer = app.consumer
    reported_highwaters: Highwaters = consumer.highwaters

    async def highwaters(*partitions: TP) -> Mapping[TP, int]:
        reported = await reported_highwaters(*partitions)
        if not any(offset > 0 for offset in reported.values()):
            return reported
        reader = AIOKafkaConsumer(
            bootstrap_servers=[f"{url.host}:{url.port}" for url in app.conf.broker],
            enable_auto_commit=False,
            group_id=None,
            **_auth(app),
        )
        await reader.start()
        try:
            corrected = {tp: await true_end_offset(reader, tp, hw) for tp, hw in reported.items()}
        finally:
            await reader.stop()
        moved = {tp: (reported[tp], hw) for tp, hw in corrected.items() if hw != reported[tp]}
        if moved:
            logger.info("high watermarks corrected (reported, true): %s", moved)
        return corrected

    consumer.highwaters = highwaters  # type: ignore[method-assign]


def _auth(app: faust.App) -> Mapping[str, Any]:
    return credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)

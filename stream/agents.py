"""The one agent: batches of micro-behaviour events in, profiles and dead letters out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import faust
from confluent_kafka import Producer
from faust.types import AgentT, EventT, StreamT
from mode import CrashingSupervisor

from state.store import KeyValue
from stream.guards import BatchStore, TableKeyValue, consume_guarded, correct_highwaters
from stream.metrics import MeteredKeyValue, Metrics, RateLimitedLog, install_metric_updates
from stream.processor import BatchResult, DeadLetter, InputRecord, Processor
from stream.publish import OutputProducer, output_producer_config
from stream.rekey import origin_from_headers, rekey

if TYPE_CHECKING:
    from stream.settings import Settings
    from stream.startup import WorkerContext
    from stream.topics import Topics

__all__ = [
    "Send",
    "describe",
    "install_agent",
    "install_broker_fixes",
    "output_producer",
    "process_and_publish",
    "to_record",
]

logger = logging.getLogger(__name__)

# Starts delivering (key, value) to a topic; the returned awaitable completes on delivery.
Send = Callable[[bytes | None, bytes], Awaitable[Awaitable[object]]]


def install_agent(app: faust.App, topics: Topics, context: WorkerContext) -> AgentT:
    """Install the profile agent (and the re-keying one, if enabled) and the gauges' updates."""
    settings = context.settings
    install_metric_updates(app, topics.state, settings.input_topic, context.metrics)
    output = output_producer(app, settings, context.metrics)
    # The state and latest-profile changelogs go through the same librdkafka producer.
    topics.state.write_through(output)
    topics.latest.write_through(output)
    profiles_topic, dead_letters_topic = settings.output_topic, settings.dlq_topic

    async def send_profile(key: bytes | None, value: bytes) -> Awaitable[object]:
        return await output.send(profiles_topic, key, value)

    async def send_dead_letter(key: bytes | None, value: bytes) -> Awaitable[object]:
        return await output.send(dead_letters_topic, key, value)

    source_topic = topics.events
    forwarded = topics.by_user is not None
    if topics.by_user is not None:
        _install_rekey_agent(app, topics.events, topics.by_user, send_dead_letter, context)
        source_topic = topics.by_user

    # CrashingSupervisor: a failed batch stops the worker instead of restarting the
    # agent, which would carry on with later events and commit past the failed ones.
    @app.agent(source_topic, name="profiles", supervisor_strategy=CrashingSupervisor)
    async def profiles(stream: StreamT[bytes]) -> None:
        install_broker_fixes(app, context)  # before the first recovery reads the changelogs

        async def handle(events: list[EventT], still_owned: Callable[[], bool]) -> bool:
            records = [
                to_record(event, time.time(), time.monotonic(), forwarded=forwarded)
                for event in events
            ]
            # Each user key's partition, for the users-in-state gauge (keys are user ids).
            partitions = {e.key: e.message.partition for e in events if isinstance(e.key, bytes)}
            table = TableKeyValue(topics.state, events)
            store = BatchStore(MeteredKeyValue(table, partitions, context.metrics))
            result = await process_and_publish(
                records,
                store,
                context.processor,
                send_profile,
                send_dead_letter,
                context.metrics,
                latest=TableKeyValue(topics.latest, events),
                still_owned=still_owned,
                dead_letter_log=context.dead_letter_log,
            )
            # The state must be on the broker before its events count as consumed.
            started = time.perf_counter()
            await asyncio.gather(topics.state.confirm(), topics.latest.confirm())
            context.metrics.batch_stage.labels("confirm").observe(time.perf_counter() - started)
            return result is not None  # None: stopping, or a partition given up mid-batch

        await consume_guarded(
            app,
            cast(faust.Stream[bytes], stream),
            settings,
            handle,
            metrics=context.metrics,
            # The re-keying stage's topic is written by this worker's own producer.
            transactional=settings.input_transactional and not forwarded,
        )

    return profiles


def output_producer(app: faust.App, settings: Settings, metrics: Metrics) -> OutputProducer:
    """The worker's output producer (`stream.publish`), flushed and closed when ``app`` stops.

    faust stops the consumer first (its last commit covers acked events only, whose
    outputs were delivered), then sends ``on_before_shutdown``: the flush there only
    delivers records of batches that were never acked, which are consumed again.
    """
    config = output_producer_config(settings)
    records = metrics.output_records
    counted = {settings.output_topic, settings.dlq_topic}  # not the changelogs

    def delivered(topic: str) -> None:
        if topic in counted:
            records.labels("delivered").inc()

    def failed(topic: str) -> None:
        if topic in counted:
            records.labels("failed").inc()

    output = OutputProducer(lambda: Producer(config), on_delivered=delivered, on_failed=failed)

    async def close_output(sender: object, **kwargs: object) -> None:
        await output.close()

    app.on_before_shutdown.connect(close_output)  # type: ignore[arg-type]
    return output


def install_broker_fixes(app: faust.App, context: WorkerContext) -> bool:
    """Correct table recovery's high watermarks, on the embedded tansu broker only (T1).

    Returns:
        Whether the correction was installed.
    """
    if not context.embedded_broker:
        return False
    correct_highwaters(app)
    return True


def _install_rekey_agent(
    app: faust.App,
    source: faust.types.TopicT,
    target: faust.types.TopicT,
    send_dead_letter: Send,
    context: WorkerContext,
) -> AgentT:
    """The re-keying stage (`stream.rekey`): input records forwarded to ``target`` by user."""
    events_total = context.metrics.events

    @app.agent(source, name="rekey", supervisor_strategy=CrashingSupervisor)
    async def rekey_events(stream: StreamT[bytes]) -> None:
        async def handle(events: list[EventT], still_owned: Callable[[], bool]) -> bool:
            deliveries = []
            dead: list[DeadLetter] = []
            for event in events:
                record = to_record(event, time.time(), time.monotonic())
                processor = context.processor
                out = rekey(record, processor.max_record_bytes, processor.limits)
                if isinstance(out, DeadLetter):
                    dead.append(out)
                    deliveries.append(await send_dead_letter(out.key, out.value))
                else:
                    sent = target.send(
                        key=out.key, value=out.value, headers=out.headers, force=True
                    )
                    deliveries.append(await sent)
            await asyncio.gather(*deliveries)
            if not still_owned():
                # Its next owner forwards the batch again (the repeats are skipped by
                # their origin) and counts its dead letters.
                return False
            # Dead letters are counted here; forwarded records when the profile agent takes them.
            events_total.labels("consumed").inc(len(dead))
            events_total.labels("dlq").inc(len(dead))
            for letter in dead:
                for bound in letter.limits:
                    events_total.labels(f"over_limit_{bound}").inc()
                context.dead_letter_log.log("%s dead-lettered: %s", letter.where, letter.reason)
            return True

        await consume_guarded(
            app,
            cast(faust.Stream[bytes], stream),
            context.settings,
            handle,
            metrics=context.metrics,
            transactional=context.settings.input_transactional,
        )

    return rekey_events


def to_record(
    event: EventT, now: float, now_monotonic: float, *, forwarded: bool = False
) -> InputRecord:
    """A faust event as the processor's input record.

    ``received_ts`` is when the consumer took the message in (faust's monitor stamps
    ``time_in`` on the monotonic clock), so processing latency includes the batching wait.
    ``forwarded``: the event comes from the re-keying stage's topic, so its origin header
    is read; anywhere else a header of that name is a producer's and is not trusted (a
    forged origin would make later events look applied).
    """
    message = event.message  # the topics use raw serializers: key and value are bytes
    time_in = message.time_in
    received = now if time_in is None else now - max(0.0, now_monotonic - time_in)
    origin = None
    if forwarded:
        headers = message.headers
        try:
            origin = origin_from_headers(
                headers.items() if isinstance(headers, Mapping) else headers
            )
        except ValueError as exc:
            logger.warning("%s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
    return InputRecord(
        value=event.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=event.key,
        received_ts=received,
        origin=origin,
    )


def describe(records: Sequence[InputRecord]) -> str:
    """Where a batch came from, e.g. ``micro-behaviors[0]@17..42, micro-behaviors[2]@5..9``."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for r in records:
        low, high = spans.get((r.topic, r.partition), (r.offset, r.offset))
        spans[(r.topic, r.partition)] = (min(low, r.offset), max(high, r.offset))
    return ", ".join(f"{t}[{p}]@{lo}..{hi}" for (t, p), (lo, hi) in sorted(spans.items()))


async def process_and_publish(
    records: Sequence[InputRecord],
    store: BatchStore,
    processor: Processor,
    send_profile: Send,
    send_dead_letter: Send,
    metrics: Metrics,
    clock: Callable[[], float] = time.time,
    *,
    latest: KeyValue | None = None,
    still_owned: Callable[[], bool] | None = None,
    dead_letter_log: RateLimitedLog | None = None,
) -> BatchResult | None:
    """Process one batch, deliver its outputs, then save its state; raise if any step fails.

    Order matters for at-least-once output with exactly-once state:

    1. the processor steps the model; bad records become dead letters and are
       not errors, so whatever raises here is a bug;
    2. every profile and dead letter is sent and its delivery awaited;
    3. only then is each user's last profile of the batch written to ``latest``
       (the table behind ``GET /profiles/{user_id}``), then the new state to
       its table (``store.commit()``); the agent then waits until the broker has
       the state's changelog records, and only then acks the batch. Latest
       before state: a crash between the two leaves the old state, so the batch
       is processed and ``latest`` written again; the other order could skip the
       events by offset with ``latest`` stale.

    Returns None, having written nothing, when ``still_owned`` says the worker gave
    one of the batch's partitions up, or began to stop, while its profiles were
    delivered: the agent then leaves the batch unacked for the partition's next owner.

    Each dead letter is logged once delivered, through ``dead_letter_log`` (rate-limited
    in the worker; every one when None); the metrics count them all.

    If any step raises, the error is logged with the batch's
    ``topic[partition]@offsets`` and re-raised, and the batch is never acked.
    The agent's crashing supervisor then stops the worker: faust commits the
    offsets of earlier, completed batches only, and the restarted worker
    consumes this batch again. Its state was not written, so it is processed
    anew and its profiles are published again (identical but for
    ``published_ts``); events of earlier batches whose state was written are
    skipped by offset. Carrying on instead (log and continue) would ack the
    batch and lose its events for good, and retrying in place could only
    repeat a deterministic bug. A crash after step 3 but before the commit
    redelivers events that are then skipped by offset, having been published.
    """
    try:
        started = time.perf_counter()
        result = processor.process(records, store)
        processed = time.perf_counter()
        deliveries = [await send_profile(p.key, p.value) for p in result.profiles]
        deliveries += [await send_dead_letter(d.key, d.value) for d in result.dead_letters]
        await asyncio.gather(*deliveries)
        delivered_at, delivered = clock(), time.perf_counter()
        if still_owned is not None and not still_owned():
            # The partitions' next owner processes the events again (the profiles
            # repeat, as after a crash); writing the state here could overwrite the
            # newer state it recovers.
            logger.info(
                "batch from %s not saved: the worker is stopping or gave a partition up",
                describe(records),
            )
            return None
        if latest is not None:
            # Last wins: profiles are in per-user order, coalesced or not.
            for key, profile in {p.key: p for p in result.profiles}.items():
                latest.put(key, profile.latest_record())
        store.commit()
        written = time.perf_counter()
    except Exception:
        logger.exception(
            "batch of %d records from %s failed; not acked, the worker stops and will "
            "consume it again from the last committed offsets",
            len(records),
            describe(records),
        )
        raise
    for dead in result.dead_letters:
        if dead_letter_log is None:
            logger.warning("%s dead-lettered: %s", dead.where, dead.reason)
        else:
            dead_letter_log.log("%s dead-lettered: %s", dead.where, dead.reason)
    metrics.observe_batch(len(records), result)
    stages = metrics.batch_stage
    stages.labels("process").observe(processed - started)
    stages.labels("deliver").observe(delivered - processed)
    stages.labels("write").observe(written - delivered)
    metrics.observe_published(result.profiles, delivered_at)
    return result

"""The one agent: batches of micro-behaviour events in, profiles and dead letters out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import faust
from confluent_kafka import Producer
from faust.types import AgentT, EventT, StreamT
from mode import CrashingSupervisor

from state.store import KeyValue
from stream.guards import (
    BatchStore,
    StagedTable,
    acked_per_batch,
    consume_guarded,
    correct_highwaters,
)
from stream.metrics import MeteredKeyValue, Metrics, RateLimitedLog, install_metric_updates
from stream.processor import BatchResult, DeadLetter, InputRecord, Processor
from stream.publish import OutputProducer, output_producer_config
from stream.rekey import origin_from_headers, rekey

if TYPE_CHECKING:
    from stream.settings import Settings
    from stream.startup import WorkerContext
    from stream.topics import Topics

__all__ = [
    "SAVE_PART",
    "ProfileBatches",
    "Send",
    "SentBatch",
    "describe",
    "install_agent",
    "install_broker_fixes",
    "output_producer",
    "process_and_send",
    "to_record",
]

logger = logging.getLogger(__name__)

# Users written per part of a save (two table writes each, ~0.1 ms): the event loop, and
# so the next batch, gets a turn between parts.
SAVE_PART = 64

# Starts delivering (key, value) to a topic; the returned awaitable completes on delivery.
Send = Callable[[bytes | None, bytes], Awaitable[Awaitable[object]]]


def install_agent(
    app: faust.App, topics: Topics, context: WorkerContext, latest: StagedTable
) -> AgentT:
    """Install the profile agent (and the re-keying one, if enabled) and the gauges' updates.

    ``latest`` stages the latest-profile table's writes between saves; the profile view
    reads it before the table.
    """
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

    async def confirm() -> None:
        await asyncio.gather(topics.state.confirm(), topics.latest.confirm())

    batches = ProfileBatches(
        StagedTable(topics.state),
        latest,
        confirm,
        lambda: context.processor,  # loaded when the worker starts
        send_profile,
        send_dead_letter,
        context.metrics,
        save_interval_s=settings.save_interval_s,
        save_max_bytes=settings.save_max_mb * 2**20,
        forwarded=forwarded,
        dead_letter_log=context.dead_letter_log,
    )

    # CrashingSupervisor: a failed batch stops the worker instead of restarting the
    # agent, which would carry on with later events and commit past the failed ones.
    @app.agent(source_topic, name="profiles", supervisor_strategy=CrashingSupervisor)
    async def profiles(stream: StreamT[bytes]) -> None:
        install_broker_fixes(app, context)  # before the first recovery reads the changelogs
        await consume_guarded(
            app,
            cast(faust.Stream[bytes], stream),
            settings,
            batches,
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
            acked_per_batch(handle),
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


@dataclass(frozen=True)
class SentBatch:
    """A processed batch whose outputs are on their way: ``delivered`` completes with them."""

    result: BatchResult
    delivered: asyncio.Future[list[object]]


async def process_and_send(
    records: Sequence[InputRecord],
    store: BatchStore,
    processor: Processor,
    send_profile: Send,
    send_dead_letter: Send,
    metrics: Metrics,
    clock: Callable[[], float] = time.time,
    *,
    latest: KeyValue | None = None,
    dead_letter_log: RateLimitedLog | None = None,
) -> SentBatch:
    """Process one batch, send its outputs, and stage its state; raise if any step fails.

    1. the processor steps the model; bad records become dead letters and are
       not errors, so whatever raises here is a bug;
    2. every profile and dead letter is sent (queued in the producer); the returned
       ``delivered`` completes once the broker has them all, and fails if one failed;
    3. each user's last profile of the batch is put in ``latest`` (the table behind
       ``GET /profiles/{user_id}``), and the batch's states are committed to the store
       under ``store``.

    In the worker both ``latest`` and the store are `stream.guards.StagedTable` views:
    nothing is durable until `ProfileBatches.save` has seen every output delivered and
    written the tables, and only then are the batch's events acked. Published profiles
    are counted, with their latencies, when they are delivered.

    If a step raises, the error is logged with the batch's ``topic[partition]@offsets``
    and re-raised; nothing of the batch is staged, and the batch is never acked. The
    agent's crashing supervisor then stops the worker (after saving what earlier
    batches staged): faust commits the offsets of saved batches only, and the
    restarted worker consumes this batch again and publishes its profiles again
    (identical but for ``published_ts``). Carrying on instead (log and continue) would
    ack the batch and lose its events for good, and retrying in place could only repeat
    a deterministic bug.
    """
    try:
        started = time.perf_counter()
        result = processor.process(records, store)
        processed = time.perf_counter()
        deliveries = [await send_profile(p.key, p.value) for p in result.profiles]
        deliveries += [await send_dead_letter(d.key, d.value) for d in result.dead_letters]
        if latest is not None:
            # Last wins: profiles are in per-user order, coalesced or not.
            for key, profile in {p.key: p for p in result.profiles}.items():
                latest.put(key, profile.latest_record())
        store.commit()
    except Exception:
        logger.exception(
            "batch of %d records from %s failed; not acked, the worker stops and will "
            "consume it again from the last committed offsets",
            len(records),
            describe(records),
        )
        raise
    delivered: asyncio.Future[list[object]] = asyncio.gather(*deliveries)

    def observe(done: asyncio.Future[list[object]]) -> None:
        if not done.cancelled() and done.exception() is None:
            metrics.observe_published(result.profiles, clock())
            for dead in result.dead_letters:
                if dead_letter_log is None:
                    logger.warning("%s dead-lettered: %s", dead.where, dead.reason)
                else:
                    dead_letter_log.log("%s dead-lettered: %s", dead.where, dead.reason)

    delivered.add_done_callback(observe)
    metrics.observe_batch(len(records), result)
    metrics.batch_stage.labels("process").observe(processed - started)
    return SentBatch(result, delivered)


class ProfileBatches:
    """The profile agent's batches: processed and sent one by one, saved together.

    Each batch is processed, its outputs sent, and its states and latest profiles staged
    in memory (`process_and_send`). A save, once ``save_interval_s`` has passed since
    the last one or once the staged values reach ``save_max_bytes``, takes what is
    staged, waits until every output sent before it is delivered, writes each staged
    user once to the latest-profile and state tables, and waits until the broker has
    their changelog records (``confirm``); only then are the events of those batches
    acked. The save runs beside the next batches (`stream.guards.batches.consume_guarded`
    starts it and acks its events when it is done).

    So state is never saved for an event whose profile is not published, and events are
    never acked before their state is saved: a crash, or a revoke whose wait gives up,
    drops the staged values unwritten and the events are consumed again. Batches neither
    wait for the broker nor write the tables: a user with several events in an interval
    costs one state record, and the broker's round trips are paid once per save.
    """

    def __init__(
        self,
        state: StagedTable,
        latest: StagedTable,
        confirm: Callable[[], Awaitable[None]],
        processor: Callable[[], Processor],
        send_profile: Send,
        send_dead_letter: Send,
        metrics: Metrics,
        *,
        save_interval_s: float,
        save_max_bytes: int,
        forwarded: bool = False,
        dead_letter_log: RateLimitedLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bind the staged tables, the changelogs' ``confirm``, the processor and outputs.

        ``processor`` gives the processor when a batch comes (the worker loads the model
        at start-up, after the agent is installed).
        """
        self.state = state
        self.latest = latest
        self._confirm = confirm
        self._processor = processor
        self._send_profile = send_profile
        self._send_dead_letter = send_dead_letter
        self._metrics = metrics
        self._interval = save_interval_s
        self._max_bytes = save_max_bytes
        self._forwarded = forwarded
        self._dead_letter_log = dead_letter_log
        self._clock = clock
        self._last_save = clock()
        self._deliveries: list[asyncio.Future[list[object]]] = []
        self._hurry = asyncio.Event()

    async def handle(self, events: list[EventT], still_owned: Callable[[], bool]) -> bool:
        """Process a batch, send its outputs and stage its states; always taken."""
        now, now_monotonic = time.time(), time.monotonic()
        records = [
            to_record(event, now, now_monotonic, forwarded=self._forwarded) for event in events
        ]
        # Each user key's partition, for the users-in-state gauge (keys are user ids).
        partitions = {e.key: e.message.partition for e in events if isinstance(e.key, bytes)}
        store = BatchStore(MeteredKeyValue(self.state.store(events), partitions, self._metrics))
        sent = await process_and_send(
            records,
            store,
            self._processor(),
            self._send_profile,
            self._send_dead_letter,
            self._metrics,
            latest=self.latest.store(events),
            dead_letter_log=self._dead_letter_log,
        )
        self._deliveries.append(sent.delivered)
        return True

    def due(self) -> bool:
        """Whether the interval has passed or the staged values reached their budget."""
        return (
            self._clock() - self._last_save >= self._interval
            or self.state.bytes + self.latest.bytes >= self._max_bytes
        )

    def save(self, still_owned: Callable[[], bool]) -> Awaitable[bool]:
        """Take what is staged now into a save; the returned awaitable performs it.

        The save waits for the outputs sent until now, writes the values in parts of
        `SAVE_PART` users spread over half the save interval (batches go on in between,
        staging anew; `hurry` drops the pauses), and waits until the broker has their
        changelog records. It returns False, having written nothing
        more, once ``still_owned`` says the worker gave a partition of the saved users up
        or began to stop: everything staged is dropped, and the events are consumed
        again by the partitions' next owner. It raises (and drops everything staged)
        when an output or changelog record was not delivered.
        """
        deliveries, self._deliveries = self._deliveries, []
        self._last_save = self._clock()
        self._hurry.clear()
        users = self.latest.begin_save() + self.state.begin_save()
        # Paced over half the interval: one burst of every user's state would queue the
        # next batches' profiles behind it at the broker.
        parts = max(1, -(-users // SAVE_PART))
        return self._write(deliveries, still_owned, self._interval / 2 / parts)

    def hurry(self) -> None:
        """Write the running save without pauses (a revoke or a stop is waiting for it)."""
        self._hurry.set()

    def drop(self) -> None:
        """Forget what is staged and a save's unwritten part (their events are released)."""
        self.state.discard()
        self.latest.discard()
        self._deliveries = []

    async def _write(
        self,
        deliveries: list[asyncio.Future[list[object]]],
        still_owned: Callable[[], bool],
        pause: float,
    ) -> bool:
        stages = self._metrics.batch_stage
        try:
            started = time.perf_counter()
            await asyncio.gather(*deliveries)
            delivered = time.perf_counter()
            writing = 0.0
            # Latest before state: a crash between the two leaves the old state, so the
            # events are processed and their latest profiles written again.
            for table in (self.latest, self.state):
                remaining = 1
                while remaining:
                    if not still_owned():
                        dropped = self.state.discard()
                        self.latest.discard()
                        logger.info(
                            "%d users' states not saved: the worker is stopping or gave a "
                            "partition up; their events are consumed again",
                            dropped,
                        )
                        return False
                    part = time.perf_counter()
                    remaining = table.write_saving(SAVE_PART)
                    writing += time.perf_counter() - part
                    if remaining:  # the next batches' turn
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._hurry.wait(), pause)
            confirming = time.perf_counter()
            await self._confirm()
        except BaseException:
            self.state.discard()
            self.latest.discard()
            raise
        stages.labels("deliver").observe(delivered - started)
        stages.labels("write").observe(writing)
        stages.labels("confirm").observe(time.perf_counter() - confirming)
        return True

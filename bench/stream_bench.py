"""Throughput, latency, state size and recovery of the profile worker, in one run on one broker.

Phases, all against the same broker and input topic:

a. full speed: E events of U synthetic users, all active at once (round-robin, each
   user's events in order), are published first, then one worker
   (``python -m stream.worker``) drains them; events/s over the drain, and the
   worker's processing latency (consume to publish, from its histogram);
b. fixed rate: the same worker gets more events of the same users at 50 % of (a)'s
   rate, stamped with the wall clock; event-to-profile latency per profile;
   in (a) and (b), the mean time per batch of each stage (`hup_batch_stage_seconds`:
   process, deliver, write, confirm) and (b)'s events per batch;
c. ceiling and peers, each draining the same topic from the start: a faust worker
   that only consumes and acks (bench/noop_worker.py, same faust settings and
   batching); a Quix Streams app with a RocksDB state update per event
   (bench/quix_peer.py, run by the interpreter BENCH_QUIX_PYTHON names: quixstreams
   conflicts with the project's pins, so it lives in a venv of its own; skipped, with
   a line saying so and ``quix_events_per_s`` null, when unset); raw confluent-kafka
   consumption (in this process);
d. no Kafka: the framework-free core (`stream.processor.Processor`: parse, state
   codec, model step) over the events of (a) in batches, with the worker's garbage-
   collector settings (`stream.startup.settle_memory`), and the model step alone;
   the step's cost at 1 and 256 users per call (bench/step_cost.py);
e. state and writes: encoded bytes per user after (a) and at full windows (every
   layer's W - 1 entries filled); the bytes the worker wrote to Kafka per applied
   event (key and value of every record in its state and latest-profile changelogs
   and its profile topic, read back from the broker); the time a worker with an
   empty data directory takes to recover the U users from the changelog.

Prints one table and writes JSON. The machine is shared and noisy: compare the rows
as ratios within one run. ``--profile`` samples the worker with py-spy during (a).

    .venv/bin/python bench/stream_bench.py --users 1000 --events-per-user 20
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import orjson
import torch
import typer
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from hup.hup_checkpoint import save_untrained_checkpoint
from hup.runtime import Profiler
from hup.schema import Event, MicroEvent
from hup.sessions import Dataset
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy
from state.store import MemoryStore
from state.userstate import StateCache, UserState
from stream.devtools.broker import BrokerHandle, start_broker
from stream.devtools.demo_stats import percentile
from stream.devtools.demo_worker import WorkerError, WorkerProcess
from stream.devtools.producer import encode_event, producer_config, publish
from stream.processor import InputRecord, Processor
from stream.settings import Settings
from stream.startup import settle_memory
from stream.topics import LATEST_TABLE, ensure_topics, topic_specs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import measure, untrained_profiler  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parents[1]
STAGES = ("process", "deliver", "write", "confirm")  # `hup_batch_stage_seconds`, in order


def stage_means_ms(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds of each stage between two scrapes: per batch (process), per save (rest)."""

    def grown(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    means = {}
    for stage in STAGES:
        labels = f'{{stage="{stage}"}}'
        count = grown(f"hup_batch_stage_seconds_count{labels}")
        total = grown(f"hup_batch_stage_seconds_sum{labels}")
        means[stage] = 1000 * total / count if count else math.nan
    return means


console = Console()
log = logging.getLogger("stream_bench")


@dataclass
class Figures:
    """Everything the run measured; the JSON output."""

    users: int
    events_full_speed: int
    events_fixed_rate: int
    partitions: int
    batch_size: int
    worker_events_per_s: float = math.nan
    worker_processing_p50_ms: float = math.nan
    worker_processing_p99_ms: float = math.nan
    fixed_rate_events_per_s: float = math.nan
    fixed_rate_p50_ms: float = math.nan
    fixed_rate_p99_ms: float = math.nan
    # Mean ms of each stage (`STAGES`: process per batch, the rest per save) in (a) and in
    # (b), and (b)'s batch size.
    stage_ms_full_speed: dict[str, float] = field(default_factory=dict)
    stage_ms_fixed_rate: dict[str, float] = field(default_factory=dict)
    fixed_rate_events_per_batch: float = math.nan
    noop_events_per_s: float = math.nan
    quix_events_per_s: float = math.nan
    raw_events_per_s: float = math.nan
    core_events_per_s: float = math.nan
    step_events_per_s: float = math.nan
    events_per_model_call: float = math.nan
    state_bytes_per_user: float = math.nan
    state_bytes_full_window: int = 0
    bytes_written_per_event: float = math.nan
    step_us_per_event_256: float = math.nan
    step_ms_per_call_1: float = math.nan
    changelog_records: int = 0
    recovery_s: float = math.nan
    ready_after_start_s: float = math.nan
    machine: str = ""


def machine() -> str:
    """CPU model, cores, Python and torch versions."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {series: value}, series like ``name{label="v"}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            series[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return series


def histogram_quantile(series: dict[str, float], name: str, q: float) -> float:
    """Prometheus' histogram_quantile over one histogram's cumulative buckets."""
    prefix = f'{name}_bucket{{le="'
    buckets = sorted(
        (math.inf if key[len(prefix) : -2] == "+Inf" else float(key[len(prefix) : -2]), count)
        for key, count in series.items()
        if key.startswith(prefix)
    )
    total = buckets[-1][1] if buckets else 0.0
    if total == 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


class ProfileReader:
    """Reads the output topic (no group) and keeps (published_ts, event_ts) per profile."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.stamps: list[tuple[float, float]] = []

    def poll(self, seconds: float) -> None:
        """Read what arrives during ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for message in self._consumer.consume(500, timeout=min(0.2, left)):
                if message.error() is None and message.value() is not None:
                    body = orjson.loads(message.value())
                    self.stamps.append((body["published_ts"], body["event_ts"]))

    def close(self) -> None:
        """Leave the topic."""
        self._consumer.close()


def wait_for(
    condition: Callable[[], bool], what: str, timeout: float, tick: Callable[[], None]
) -> None:
    """Call ``tick`` until ``condition`` holds; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        tick()


def check(worker: WorkerProcess) -> None:
    """Raise with the end of its log if ``worker`` has exited."""
    try:
        worker.check()
    except WorkerError as exc:
        tail = "\n".join(worker.tail())
        raise WorkerError(f"{worker.log_path.name}: {exc}\n{tail}") from exc


def bench_data(users: int, per_user: int, seed: int) -> Dataset:
    """Every user active throughout: one session of exactly ``per_user`` micro events each."""
    return generate(
        SyntheticConfig(users=users, seed=seed, min_events=per_user, max_events=per_user)
    )


def all_users_at_once(dataset: Dataset) -> list[Event]:
    """The users' events round-robin: every user active at once, each in its own order.

    A live service has many users active at the same moment. The generator's own
    timeline spreads sessions over a day, so only a handful overlap; replayed in that
    order, a batch holds long runs of few users and each model call steps only those
    few (see the README on wave sizes).
    """
    runs = [list(session.events) for session in dataset.sessions]
    return [e for wave in itertools.zip_longest(*runs) for e in wave if e is not None]


def core_alone(model: Path, events: Sequence[Event], figures: Figures) -> None:
    """Events/s of the processor (no Kafka) and of its model steps, state bytes per user."""
    batch_size, partitions = figures.batch_size, figures.partitions
    cache_bytes = Settings().state_cache_mb * 2**20  # as the worker runs it (HUP_STATE_CACHE_MB)
    processor = Processor(
        Profiler.load(model), state_cache=StateCache(cache_bytes) if cache_bytes else None
    )
    settle_memory()  # the worker's garbage-collector settings, applied once it has loaded
    store = MemoryStore()
    records = [
        InputRecord(
            value=encode_event(e)[1],
            topic="bench",
            partition=zlib.crc32(e.user_id.encode()) % partitions,
            offset=n,
            key=e.user_id.encode(),
        )
        for n, e in enumerate(events)
    ]
    step_seconds, calls = 0.0, 0
    started = time.perf_counter()
    for i in range(0, len(records), batch_size):
        result = processor.process(records[i : i + batch_size], store)
        step_seconds += result.step_seconds
        calls += result.model_calls
    elapsed = time.perf_counter() - started
    sizes = [len(v) for _, v in store.items()]
    figures.core_events_per_s = len(records) / elapsed
    figures.step_events_per_s = len(records) / step_seconds
    figures.events_per_model_call = len(records) / calls
    figures.state_bytes_per_user = sum(sizes) / len(sizes)


def run_peer(
    env: dict[str, str], workdir: Path, name: str, argv: list[str], expected: int
) -> dict[str, float]:
    """Run a peer process (no-op faust worker, Quix app) until it wrote its timings; return them."""
    out = workdir / f"{name}.json"
    peer = WorkerProcess.start(
        {
            **env,
            "BENCH_NOOP_EXPECT": str(expected),
            "BENCH_NOOP_OUT": str(out),
            "BENCH_PEER_EXPECT": str(expected),
            "BENCH_PEER_OUT": str(out),
            "BENCH_PEER_STATE_DIR": str(workdir / f"{name}-state"),
        },
        workdir / f"{name}.log",
        argv=argv,
    )
    try:
        wait_for(out.exists, f"{name} drain", 600, lambda: (check(peer), time.sleep(0.2)))
    finally:
        peer.stop()
    result: dict[str, float] = orjson.loads(out.read_bytes())
    return result


def full_window_state_bytes(model: Path, taxonomy: dict[str, tuple[str, ...]]) -> int:
    """Encoded state of a user whose every window is full (W - 1 committed entries per layer).

    The user alternates between two leaf categories with different coarsest ancestors,
    on a new item each time, so every event closes an entry of every layer.
    """
    profiler = Profiler.load(model)
    by_root: dict[str, tuple[str, ...]] = {}
    for path in taxonomy.values():
        by_root.setdefault(path[0], path)
    if len(by_root) < 2:
        raise ValueError("the taxonomy needs two top-level categories to fill every window")
    paths = list(by_root.values())[:2]
    window = profiler.model.config.window
    state = profiler.new_state()
    for n in range(2 * window):
        event = MicroEvent(
            user_id="full",
            ts=1_700_000_000.0 + 10 * n,
            item_id=f"full-item-{n}",
            categories=list(paths[n % 2]),
            behavior=1,
        )
        (applied,) = profiler.apply([state], [event])
        state = applied.state
    lengths = state.window_lengths()
    if any(n != window - 1 for n in lengths):
        raise AssertionError(f"windows not full after {2 * window} events: {lengths}")
    return len(UserState(state).encode(profiler.version))


def step_figures(figures: Figures) -> None:
    """The model step's cost at 1 and 256 users per call (`bench/step_cost.py`)."""
    profiler, sessions = untrained_profiler(256)
    one, full = measure(profiler, sessions, batches=(1, 256))
    figures.step_ms_per_call_1 = one.step_ms_per_call
    figures.step_us_per_event_256 = full.step_us_per_event


def topic_bytes(bootstrap: str, topics: Sequence[str], partitions: int) -> tuple[int, int]:
    """Records and key + value + header bytes of every record in ``topics``, read back."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    records = size = 0
    try:
        for topic in topics:
            for partition in range(partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, partition, low)])
                deadline = time.monotonic() + 300
                position = low
                while position < high:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"reading {topic}[{partition}] back: stuck at {position}"
                        )
                    for message in consumer.consume(1000, timeout=1.0):
                        if message.error() is not None:
                            continue
                        records += 1
                        size += len(message.key() or b"") + len(message.value() or b"")
                        size += sum(len(k) + len(v or b"") for k, v in (message.headers() or []))
                        position = message.offset() + 1
    finally:
        consumer.close()
    return records, size


def raw_consume_rate(bootstrap: str, topic: str, partitions: int, expected: int) -> float:
    """Events/s of a bare confluent-kafka consumer reading ``expected`` records from the start."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen, first, first_size, last = 0, 0.0, 0, 0.0
    deadline = time.monotonic() + 600
    try:
        while seen < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consume: {seen} of {expected} records within 600 s")
            # Small batches, so that the first one (the start of the clock) is a small share.
            batch = [m for m in consumer.consume(500, timeout=1.0) if m.error() is None]
            if not batch:
                continue
            last = time.time()
            if not first:
                first, first_size = last, len(batch)
            seen += len(batch)
    finally:
        consumer.close()
    return (seen - first_size) / (last - first) if last > first else math.nan


def recovery_seconds(log_text: str) -> float:
    """Seconds between faust's 'Restoring state from changelog' and 'Done reading' lines."""
    stamps = {}
    for line in log_text.splitlines():
        for mark in ("Restoring state from changelog topics", "Done reading from changelog topics"):
            if mark in line and mark not in stamps:
                stamp = line.split("]", 1)[0].lstrip("[")
                stamps[mark] = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float(
                    "0." + stamp[20:]
                )
    if len(stamps) < 2:
        return math.nan
    return (
        stamps["Done reading from changelog topics"]
        - stamps["Restoring state from changelog topics"]
    )


def changelog_size(bootstrap: str, topic: str, partitions: int) -> int:
    """Records in the changelog (its high watermarks; written one record per batch)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Options:
    """What to run (the command-line options)."""

    users: int
    events_per_user: int
    rate_seconds: float
    batch_size: int
    partitions: int
    model: Path | None
    profile: Path | None
    producer_max_batch_size: int | None
    save_interval_s: float | None = None


def run(options: Options, workdir: Path) -> Figures:
    """Run every phase; return the figures."""
    users, partitions, batch_size = options.users, options.partitions, options.batch_size
    model, profile, rate_seconds = options.model, options.profile, options.rate_seconds
    data_a = bench_data(users, options.events_per_user, seed=0)
    events_a = all_users_at_once(data_a)
    if model is None:
        model = workdir / "model"
        assert data_a.taxonomy is not None
        save_untrained_checkpoint(model, events_a, Taxonomy(data_a.taxonomy))
    figures = Figures(users, len(events_a), 0, partitions, batch_size, machine=machine())

    console.print(f"(d, e) the core without Kafka over {len(events_a):,} events ...")
    core_alone(model, events_a, figures)
    assert data_a.taxonomy is not None
    figures.state_bytes_full_window = full_window_state_bytes(model, data_a.taxonomy)
    console.print("(d) the model step at 1 and 256 users per call ...")
    step_figures(figures)

    tag = uuid.uuid4().hex[:8]
    with start_broker(Settings()) as broker:
        env = worker_env(broker, options, model, workdir / "worker-a", tag)
        settings = Settings(
            app_id=env["HUP_APP_ID"],
            input_topic=env["HUP_INPUT_TOPIC"],
            output_topic=env["HUP_OUTPUT_TOPIC"],
            dlq_topic=env["HUP_DLQ_TOPIC"],
            partitions=partitions,
        )
        ensure_topics(broker.bootstrap_servers, topic_specs(settings))
        producer = Producer(producer_config(broker.bootstrap_servers))
        console.print(f"publishing {len(events_a):,} events of {users:,} users ...")
        publish(events_a, producer, settings.input_topic)

        reader = ProfileReader(broker.bootstrap_servers, settings.output_topic, partitions)
        port = int(env["HUP_METRICS_PORT"])
        worker = WorkerProcess.start(env, workdir / "worker-a.log")
        spy = None
        try:
            console.print("(a) one worker drains them at full speed ...")
            consumed = 'hup_events_total{outcome="consumed"}'

            def scraped(series: str) -> float:
                check(worker)
                try:
                    return scrape(port).get(series, 0.0)
                except OSError:
                    return 0.0

            wait_for(lambda: scraped(consumed) > 0, "worker started", 180, lambda: reader.poll(0.5))
            if profile is not None:
                spy = subprocess.Popen(
                    [
                        shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "-p",
                        str(worker.pid),
                        "-o",
                        str(profile),
                        "-f",
                        "speedscope",
                        "-r",
                        "50",
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            wait_for(
                lambda: scraped(consumed) >= len(events_a),
                "full-speed drain",
                1800,
                lambda: reader.poll(0.5),
            )
            reader.poll(2.0)
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes the profile and exits
                spy.wait(60)
            published = sorted(p for p, _ in reader.stamps)
            figures.worker_events_per_s = (len(published) - 1) / (published[-1] - published[0])
            series = scrape(port)
            figures.stage_ms_full_speed = stage_means_ms(series, {})
            figures.worker_processing_p50_ms = 1000 * histogram_quantile(
                series, "hup_processing_seconds", 0.5
            )
            figures.worker_processing_p99_ms = 1000 * histogram_quantile(
                series, "hup_processing_seconds", 0.99
            )

            rate = 0.5 * figures.worker_events_per_s
            per_user = max(
                1, math.ceil(rate * rate_seconds / users / 1.15)
            )  # dwell events add ~15 %
            events_b = all_users_at_once(bench_data(users, per_user, seed=1))
            figures.events_fixed_rate = len(events_b)
            console.print(f"(b) {len(events_b):,} more events at {rate:,.0f}/s ...")
            before = len(reader.stamps)
            sent = publish(events_b, producer, settings.input_topic, rate=rate)
            figures.fixed_rate_events_per_s = sent.sent / sent.seconds
            target = len(events_a) + len(events_b)
            wait_for(
                lambda: scraped(consumed) >= target,
                "fixed-rate events",
                600,
                lambda: reader.poll(0.5),
            )
            reader.poll(2.0)
            # Every event's state saved (HUP_SAVE_INTERVAL_S), so that (e) reads it all.
            wait_for(
                lambda: scrape(port).get("hup_events_unsaved", 0.0) == 0,
                "the last save",
                120,
                lambda: reader.poll(0.5),
            )
            latency = [published - event for published, event in reader.stamps[before:]]
            figures.fixed_rate_p50_ms = 1000 * percentile(latency, 50)
            figures.fixed_rate_p99_ms = 1000 * percentile(latency, 99)
            after_b = scrape(port)
            applied = after_b.get('hup_events_total{outcome="applied"}', 0.0)
            figures.stage_ms_fixed_rate = stage_means_ms(after_b, series)
            batches = after_b["hup_batch_size_count"] - series["hup_batch_size_count"]
            records = after_b["hup_batch_size_sum"] - series["hup_batch_size_sum"]
            figures.fixed_rate_events_per_batch = records / batches if batches else math.nan
            assert worker.stop() == 0, worker.tail()
        finally:
            reader.close()
            worker.stop()
            if spy is not None and spy.poll() is None:
                spy.kill()

        console.print("(e) reading back what the worker wrote ...")
        written = [
            settings.changelog_topic,
            f"{settings.app_id}-{LATEST_TABLE}-changelog",
            settings.output_topic,
        ]
        _, size = topic_bytes(broker.bootstrap_servers, written, partitions)
        figures.bytes_written_per_event = size / applied if applied else math.nan

        console.print("(e) a worker with an empty data directory recovers the state ...")
        figures.changelog_records = changelog_size(
            broker.bootstrap_servers, settings.changelog_topic, partitions
        )
        recovering = WorkerProcess.start(
            {**env, "HUP_DATADIR": str(workdir / "worker-b")}, workdir / "worker-b.log"
        )
        started = time.monotonic()
        try:
            wait_for(
                lambda: "[^Worker]: Ready" in recovering.log_path.read_text(errors="replace"),
                "recovery",
                600,
                lambda: (check(recovering), time.sleep(0.1)),
            )
            figures.ready_after_start_s = time.monotonic() - started
        finally:
            recovering.stop()
        figures.recovery_s = recovery_seconds(recovering.log_path.read_text(errors="replace"))

        total = len(events_a) + len(events_b)
        console.print("(c) a no-op faust worker drains the same topic ...")
        noop_argv = [sys.executable, str(REPO / "bench" / "noop_worker.py")]
        result = run_peer(
            env, workdir, "noop", [*noop_argv, "worker", "-l", "warn", "--without-web"], total
        )
        figures.noop_events_per_s = (result["events"] - result["first_size"]) / (
            result["last"] - result["first"]
        )
        quix = quix_python()
        if quix is None:
            console.print(
                f"(c) Quix Streams peer skipped: {QUIX_PYTHON_ENV} does not name a python "
                "with quixstreams (see bench/quix_peer.py)"
            )
        else:
            console.print("(c) a Quix Streams app with RocksDB state drains the same topic ...")
            result = run_peer(
                env, workdir, "quix", [quix, str(REPO / "bench" / "quix_peer.py")], total
            )
            figures.quix_events_per_s = (result["events"] - 1) / (result["last"] - result["first"])
        console.print("(c) raw confluent-kafka consumption of the same topic ...")
        figures.raw_events_per_s = raw_consume_rate(
            broker.bootstrap_servers, settings.input_topic, partitions, total
        )
    return figures


QUIX_PYTHON_ENV = "BENCH_QUIX_PYTHON"
"""Names the interpreter of a venv with quixstreams (and orjson) that runs the Quix peer."""


def quix_python() -> str | None:
    """The interpreter ``BENCH_QUIX_PYTHON`` names, or None (logged) when unset or missing."""
    value = os.environ.get(QUIX_PYTHON_ENV, "").strip()
    if not value:
        return None
    path = shutil.which(value)
    if path is None:
        log.warning("%s=%s is not an executable; the Quix peer is skipped", QUIX_PYTHON_ENV, value)
    return path


def _ratio(part: float, whole: float) -> str:
    """``part / whole`` as a percentage, or "n/a" when a peer did not run (NaN)."""
    return "n/a" if math.isnan(part) or math.isnan(whole) else f"{part / whole:.0%}"


def worker_env(
    broker: BrokerHandle, options: Options, model: Path, datadir: Path, tag: str
) -> dict[str, str]:
    """The benchmarked worker's environment: fresh topics and group, metrics on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUP_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "HUP_MODEL": str(model.resolve()),
            "HUP_DATADIR": str(datadir),
            "HUP_APP_ID": f"bench-{tag}",
            "HUP_INPUT_TOPIC": f"bench-mb-{tag}",
            "HUP_OUTPUT_TOPIC": f"bench-profiles-{tag}",
            "HUP_DLQ_TOPIC": f"bench-dlq-{tag}",
            "HUP_PARTITIONS": str(options.partitions),
            "HUP_BATCH_SIZE": str(options.batch_size),
            "HUP_SESSION_TIMEOUT_S": "6",
            "HUP_METRICS_PORT": str(free_port()),
            "HUP_WEB_PORT": "0",
        }
    )
    if options.producer_max_batch_size is not None:
        env["HUP_PRODUCER_MAX_BATCH_SIZE"] = str(options.producer_max_batch_size)
    if options.save_interval_s is not None:
        env["HUP_SAVE_INTERVAL_S"] = str(options.save_interval_s)
    return env


def table(figures: Figures) -> Table:
    """The figures as one table, with the ratios that matter."""
    out = Table(title=f"stream_bench: {figures.users:,} users; {figures.machine}")
    out.add_column("measure")
    out.add_column("value", justify="right")
    ratio = figures.worker_events_per_s
    rows = [
        ("(a) worker, full speed: events/s", f"{figures.worker_events_per_s:,.0f}"),
        (
            "(a) processing latency p50 / p99",
            f"{figures.worker_processing_p50_ms:,.0f} / {figures.worker_processing_p99_ms:,.0f} ms",
        ),
        ("(b) fixed rate: events/s sent", f"{figures.fixed_rate_events_per_s:,.0f}"),
        (
            "(b) event-to-profile latency p50 / p99",
            f"{figures.fixed_rate_p50_ms:,.0f} / {figures.fixed_rate_p99_ms:,.0f} ms",
        ),
        (
            "(c) no-op faust worker: events/s",
            f"{figures.noop_events_per_s:,.0f}  (worker = {ratio / figures.noop_events_per_s:.0%})",
        ),
        (
            "(c) Quix Streams, RocksDB state update per event: events/s",
            f"{figures.quix_events_per_s:,.0f}",
        ),
        ("(c) raw confluent-kafka consume: events/s", f"{figures.raw_events_per_s:,.0f}"),
        (
            "(d) core without Kafka: events/s",
            f"{figures.core_events_per_s:,.0f}  (worker = {ratio / figures.core_events_per_s:.0%}, "
            f"core = {_ratio(figures.core_events_per_s, figures.quix_events_per_s)} of Quix)",
        ),
        (
            "(d) model step alone: events/s (users per call)",
            f"{figures.step_events_per_s:,.0f} ({figures.events_per_model_call:.0f})",
        ),
        (
            "(d) step: ms per call at 1 user / us per event at 256",
            f"{figures.step_ms_per_call_1:.2f} / {figures.step_us_per_event_256:.1f}",
        ),
        (
            "(a) ms per batch / per save: " + " / ".join(STAGES),
            _stages(figures.stage_ms_full_speed),
        ),
        (
            "(b) ms per batch / per save: " + " / ".join(STAGES),
            f"{_stages(figures.stage_ms_fixed_rate)} "
            f"({figures.fixed_rate_events_per_batch:.0f} events)",
        ),
        ("(e) state bytes per user", f"{figures.state_bytes_per_user:,.0f}"),
        ("(e) state bytes at full windows", f"{figures.state_bytes_full_window:,}"),
        ("(e) bytes written to Kafka per applied event", f"{figures.bytes_written_per_event:,.0f}"),
        (
            "(e) changelog recovery (records)",
            f"{figures.recovery_s:.2f} s ({figures.changelog_records:,})",
        ),
        ("(e) empty worker start to ready", f"{figures.ready_after_start_s:.1f} s"),
    ]
    for name, value in rows:
        out.add_row(name, value)
    return out


def _stages(means: dict[str, float]) -> str:
    return " / ".join(f"{means.get(stage, math.nan):.1f}" for stage in STAGES)


def main(
    users: Annotated[int, typer.Option(help="Synthetic users")] = 1000,
    events_per_user: Annotated[
        int, typer.Option(help="Micro events per user in (a); dwell events add ~15 %")
    ] = 20,
    rate_seconds: Annotated[float, typer.Option(help="Length of the fixed-rate phase (b)")] = 30.0,
    batch_size: Annotated[int, typer.Option(help="HUP_BATCH_SIZE")] = 256,
    partitions: Annotated[int, typer.Option(help="Input partitions")] = 3,
    model: Annotated[
        Path | None, typer.Option(help="Checkpoint; default an untrained one (same cost)")
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON output")] = REPO
    / "bench"
    / "results"
    / "stream_bench.json",
    profile: Annotated[
        Path | None, typer.Option(help="py-spy speedscope profile of the worker during (a)")
    ] = None,
    producer_max_batch_size: Annotated[
        int | None,
        typer.Option(help="HUP_PRODUCER_MAX_BATCH_SIZE for the worker; default the worker's"),
    ] = None,
    save_interval_s: Annotated[
        float | None,
        typer.Option(
            help="HUP_SAVE_INTERVAL_S for the worker; default the worker's. A phase shorter "
            "than the interval may see no save, and so no deliver/write/confirm figures"
        ),
    ] = None,
) -> None:
    """Run the benchmark and print its table."""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        options = Options(
            users,
            events_per_user,
            rate_seconds,
            batch_size,
            partitions,
            model,
            profile,
            producer_max_batch_size,
            save_interval_s,
        )
        figures = run(options, Path(tmp))
    console.print(table(figures))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(
        orjson.dumps(asdict(figures), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)

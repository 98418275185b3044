"""`python -m stream.devtools.demo`: broker, model, worker, replay and live numbers, end to end, once.

Starts a broker (embedded tansu unless KAFKA_BOOTSTRAP_SERVERS is set), trains a small model
or reuses ``runs/demo-model``, runs ``python -m stream.worker`` as a subprocess, replays
synthetic events with wall-clock timestamps plus a few malformed messages, follows
`user-profiles` and the dead-letter topic, prints a summary every couple of seconds and a
final one, and shuts everything down, also on Ctrl-C or errors.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated

import orjson
import typer
from confluent_kafka import Consumer, KafkaException, Producer
from rich.console import Console

from hup.data import load_dataset
from hup.exceptions import HupError
from hup.schema import MicroEvent
from hup.sessions import Dataset, iter_events
from stream.devtools.broker import BrokerError, BrokerHandle, start_broker
from stream.devtools.demo_model import ensure_model
from stream.devtools.demo_stats import DemoStats
from stream.devtools.demo_worker import WorkerError, WorkerProcess
from stream.devtools.producer import DEFAULT_RETENTION_MS, producer_config, publish
from stream.devtools.tail import consumer_config
from stream.topics import TopicSpec, ensure_topics

__all__ = ["DemoOptions", "ReplayError", "main", "malformed_messages", "run_demo"]

console = Console(highlight=False)
_PROBE_USER = "demo-probe"
_PROBE_EVERY_S = 2.0


class ReplayError(RuntimeError):
    """Events of the replay were not delivered to the broker."""


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does; the defaults finish in about two minutes on two cores."""

    train_data: str = "synthetic:users=400,seed=7"
    epochs: int = 3
    model_dir: Path = Path("runs/demo-model")  # reused when it holds a VERSION file
    replay_data: str = "synthetic:users=40,seed=8"  # ~3,400 click and dwell events
    limit: int | None = None  # replay at most this many events
    rate: float = 300.0  # events/s; 0 = as fast as possible (latency then shows the backlog)
    bad_messages: int = 5  # malformed messages sent so the dead-letter count is visible
    run_dir: Path = Path("runs/demo")  # worker log and state
    partitions: int = 3
    input_topic: str = "micro-behaviors"
    output_topic: str = "user-profiles"
    dlq_topic: str = "micro-behaviors-dlq"
    ready_timeout: float = 120.0  # worker start-up until its first profile
    drain_timeout: float = 60.0  # after the replay, wait at most this long for the rest
    idle_timeout: float = 8.0  # ... or stop once nothing arrived for this long
    summary_every: float = 2.0


def malformed_messages(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) pairs the worker must dead-letter, each wrong in another way."""
    now = time.time()
    kinds = [
        b'{"user_id": "demo-bad", "ts": ',  # truncated JSON
        orjson.dumps({"user_id": "demo-bad", "ts": now, "categories": ["c0"], "behavior": 5}),
        orjson.dumps(
            {
                "user_id": "demo-bad",
                "ts": now,
                "item_id": "i1",
                "categories": ["c0"],
                "behavior": 42,
            }
        ),
        orjson.dumps({"user_id": "demo-bad", "ts": -1, "item_id": "i1", "kind": "dwell"}),
        orjson.dumps(["not", "an", "object"]),
        orjson.dumps({"user_id": "demo-bad", "ts": now, "item_id": "i1", "kind": "purchase"}),
    ]
    return [(b"demo-bad", value) for value in itertools.islice(itertools.cycle(kinds), count)]


def _say(message: str) -> None:
    console.print(message, soft_wrap=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_env(options: DemoOptions, broker: BrokerHandle, model: Path, port: int) -> dict:
    data_dir = options.run_dir / "worker-data"
    if broker.kind != "env":
        # A fresh broker has empty changelogs: state left by an earlier run would be ahead of
        # them, which faust refuses (ConsistencyError), so start from nothing.
        shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HUP_MODEL": str(model.resolve()),
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "HUP_SESSION_TIMEOUT_S": "6",
        "HUP_DATADIR": str(data_dir.resolve()),
        "HUP_METRICS_PORT": str(port),
        "HUP_WEB_PORT": "0",  # faust's web server is not needed and would take port 6066
        "HUP_PARTITIONS": str(options.partitions),
        "HUP_INPUT_TOPIC": options.input_topic,
        "HUP_OUTPUT_TOPIC": options.output_topic,
        "HUP_DLQ_TOPIC": options.dlq_topic,
    }
    return env


def _probe_value(template: MicroEvent, n: int) -> bytes:
    probe = template.model_copy(
        update={"user_id": _PROBE_USER, "event_id": f"probe-{n}", "ts": time.time()}
    )
    return orjson.dumps(probe.model_dump(mode="json", exclude_none=True))


def _wait_until_consuming(
    options: DemoOptions,
    consumer: Consumer,
    producer: Producer,
    worker: WorkerProcess,
    template: MicroEvent,
) -> float:
    """Send a probe event every few seconds until its profile comes back; return the wait."""
    started = time.monotonic()
    next_probe = started
    probes = 0
    while True:
        now = time.monotonic()
        worker.check()
        if now - started > options.ready_timeout:
            raise WorkerError(f"no profile from the worker within {options.ready_timeout:.0f} s")
        if now >= next_probe:
            producer.produce(
                options.input_topic,
                key=_PROBE_USER.encode(),
                value=_probe_value(template, probes),
            )
            producer.poll(0)
            probes += 1
            next_probe = now + _PROBE_EVERY_S
        message = consumer.poll(0.25)
        if message is None or message.error() is not None or message.value() is None:
            continue
        if message.topic() == options.output_topic and message.key() == _PROBE_USER.encode():
            return time.monotonic() - started


def _first_micro(dataset: Dataset) -> MicroEvent:
    for session in dataset.sessions:
        for event in session.events:
            if isinstance(event, MicroEvent):
                return event
    raise ValueError("the replay data has no micro events")


def _replay(
    options: DemoOptions,
    dataset: Dataset,
    producer: Producer,
    stats: DemoStats,
    stop: threading.Event,
    failure: list[BaseException],
) -> None:
    try:
        events = itertools.islice(iter_events(dataset.sessions), options.limit)
        summary = publish(
            events,
            producer,
            options.input_topic,
            rate=options.rate,
            on_sent=lambda event, _value, at: stats.on_sent(event.user_id, event.event_id, at),
            should_stop=stop.is_set,
        )
        stats.send_seconds = summary.seconds
        if summary.failed:
            failure.append(ReplayError(summary.describe()))
    except BaseException as exc:  # reported by the main thread
        failure.append(exc)
    finally:
        stats.producing = False


def _follow(
    options: DemoOptions,
    consumer: Consumer,
    stats: DemoStats,
    worker: WorkerProcess,
    failure: list[BaseException],
) -> None:
    """Consume profiles and dead letters until the replay is done and the tail has arrived."""
    next_line = time.monotonic() + options.summary_every
    drain_started: float | None = None
    expected_dlq = options.bad_messages
    while True:
        worker.check()
        if failure:
            raise failure[0]
        message = consumer.poll(0.2)
        value = None if message is None or message.error() is not None else message.value()
        if message is not None and value is not None:
            if message.topic() == options.dlq_topic:
                stats.on_dead_letter(value)
            elif message.topic() == options.output_topic:
                stats.on_profile(value)
        now = time.monotonic()
        if now >= next_line:
            _say(stats.line())
            next_line = now + options.summary_every
        if stats.producing:
            continue
        drain_started = drain_started or now
        if stats.profiles >= stats.sent and stats.dlq >= expected_dlq:
            return
        if now - drain_started > options.drain_timeout:
            _say(f"[yellow]stopped waiting after {options.drain_timeout:.0f} s[/]")
            return
        if now - max(stats.last_arrival, drain_started) > options.idle_timeout:
            _say(f"[yellow]nothing new for {options.idle_timeout:.0f} s; stopping[/]")
            return


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(options: DemoOptions) -> int:
    """Run the demo; return the process exit code (0 when profiles and dead letters arrived)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM like on Ctrl-C
    options.run_dir.mkdir(parents=True, exist_ok=True)
    broker: BrokerHandle | None = None
    worker: WorkerProcess | None = None
    consumer: Consumer | None = None
    producer: Producer | None = None
    stop = threading.Event()
    replay: threading.Thread | None = None
    started = time.monotonic()
    try:
        replay_data = load_dataset(options.replay_data)
        template = _first_micro(replay_data)
        model = ensure_model(options.model_dir, options.train_data, options.epochs, console, _say)
        broker = start_broker()
        _say(f"broker: {broker.kind} at {broker.bootstrap_servers}")
        retention = {"retention.ms": str(DEFAULT_RETENTION_MS)}
        ensure_topics(
            broker.bootstrap_servers,
            [
                TopicSpec(options.input_topic, options.partitions, config=retention),
                TopicSpec(options.output_topic, options.partitions, config=retention),
                TopicSpec(options.dlq_topic, options.partitions, config=retention),
            ],
        )
        port = _free_port()
        worker = WorkerProcess.start(
            _worker_env(options, broker, model, port), options.run_dir / "worker.log"
        )
        _say(f"worker: pid {worker.pid}, log {worker.log_path}, metrics :{port}/metrics")
        consumer = Consumer(
            consumer_config(
                broker.bootstrap_servers, f"hup-demo-{uuid.uuid4().hex[:8]}", broker.kind != "env"
            )
            | {"enable.auto.commit": False}
        )
        consumer.subscribe([options.output_topic, options.dlq_topic])
        max_batch = 1 if broker.kind == "embedded" else None
        producer = Producer(producer_config(broker.bootstrap_servers, max_batch, "hup-demo"))
        waited = _wait_until_consuming(options, consumer, producer, worker, template)
        _say(f"worker: consuming (first profile after {waited:.1f} s)")

        for key, value in malformed_messages(options.bad_messages):
            producer.produce(options.input_topic, key=key, value=value)
        stats = DemoStats()
        failure: list[BaseException] = []
        _say(
            f"replay: {options.replay_data}"
            + (f", at most {options.limit} events" if options.limit is not None else "")
            + (f" at {options.rate:.0f} events/s" if options.rate else " as fast as possible")
            + f", plus {options.bad_messages} malformed messages"
        )
        replay = threading.Thread(
            target=_replay,
            args=(options, replay_data, producer, stats, stop, failure),
            name="replay",
            daemon=True,
        )
        replay.start()
        _follow(options, consumer, stats, worker, failure)
        _say("")
        _say("[bold]summary[/]")
        for line in stats.report():
            _say(f"  {line}")
        _say(f"  wall time            {time.monotonic() - started:.0f} s")
        if stats.profiles == 0:
            _say("[bold red]error:[/] no profiles arrived")
            return 1
        if options.bad_messages and stats.dlq == 0:
            _say("[bold red]error:[/] no dead letters arrived for the malformed messages")
            return 1
        return 0
    except WorkerError as exc:
        _say(f"[bold red]error:[/] worker: {exc}")
        if worker is not None:
            _say(f"last lines of {worker.log_path}:")
            for line in worker.tail(30):
                console.print(f"  {line}", markup=False, highlight=False)
        return 1
    except HupError as exc:  # a bad data spec
        _say(f"[bold red]error:[/] {exc}")
        return 2
    except (BrokerError, KafkaException, ReplayError, OSError, ValueError) as exc:
        _say(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("[yellow]interrupted; shutting down[/]")
        return 130
    finally:
        stop.set()
        if replay is not None:
            replay.join(10)
        if consumer is not None:
            consumer.close()
        if producer is not None:
            producer.flush(5)
            producer.close()
        if worker is not None:
            code = worker.stop()
            _say(f"worker: stopped (exit code {code})")
        if broker is not None:
            broker.stop()
        signal.signal(signal.SIGTERM, previous)


def main(
    train_data: Annotated[str, typer.Option(help="Training data spec")] = DemoOptions.train_data,
    epochs: Annotated[int, typer.Option(min=1)] = DemoOptions.epochs,
    model_dir: Annotated[
        Path, typer.Option(help="Model directory, reused if it has a VERSION file")
    ] = DemoOptions.model_dir,
    replay_data: Annotated[
        str, typer.Option(help="Events to replay (data spec)")
    ] = DemoOptions.replay_data,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most N events")] = None,
    rate: Annotated[
        float, typer.Option(min=0, help="Events/s; 0 = as fast as possible")
    ] = DemoOptions.rate,
    bad_messages: Annotated[int, typer.Option(min=0)] = DemoOptions.bad_messages,
    run_dir: Annotated[Path, typer.Option(help="Worker log and state")] = DemoOptions.run_dir,
) -> None:
    """Run the pipeline end to end once on a local broker and print what happened."""
    code = run_demo(
        DemoOptions(
            train_data=train_data,
            epochs=epochs,
            model_dir=model_dir,
            replay_data=replay_data,
            limit=limit,
            rate=rate,
            bad_messages=bad_messages,
            run_dir=run_dir,
        )
    )
    raise typer.Exit(code=code)


if __name__ == "__main__":
    typer.run(main)

"""`hup-stream`: replay events into Kafka, follow the profiles, write the profile schema."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated

import typer
from confluent_kafka import Consumer, KafkaException, Producer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from hup.data import load_dataset
from hup.exceptions import HupError
from hup.schema import Event, write_event_schema
from hup.sessions import iter_events
from stream.devtools.broker import BrokerError, wait_for_broker
from stream.devtools.demo import main as demo_main
from stream.devtools.producer import DEFAULT_RETENTION_MS, ensure_topic, producer_config, publish
from stream.devtools.tail import consumer_config, follow, format_profile
from stream.profile import write_profile_schema
from stream.settings import Settings

__all__ = ["app"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

_BOOTSTRAP_ENV = ["KAFKA_BOOTSTRAP_SERVERS", "HUP_KAFKA_BOOTSTRAP_SERVERS"]
_LOCAL_HINT = (
    "no --bootstrap or KAFKA_BOOTSTRAP_SERVERS, so the local broker on HUP_BROKER_PORT "
    "(`python -m stream.devtools.broker`)"
)

BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        envvar=_BOOTSTRAP_ENV,
        show_envvar=False,
        help=(
            "Kafka bootstrap servers [env: KAFKA_BOOTSTRAP_SERVERS; default: the local "
            "broker, 127.0.0.1:$HUP_BROKER_PORT (9092)]"
        ),
    ),
]
TimeoutOption = Annotated[
    float, typer.Option(min=0.1, help="Seconds to wait for the broker (and the final flush)")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=code)


def _local_broker() -> str:
    """127.0.0.1 on HUP_BROKER_PORT: where the worker connects without KAFKA_BOOTSTRAP_SERVERS.

    The same default as `Settings.bootstrap_servers`, so that the Procfile's producer and
    worker meet on one broker whatever port it runs on. Only the port is read: the CLI
    does not need the rest of the worker's settings to be valid.
    """
    raw = os.environ.get("HUP_BROKER_PORT", "").strip()
    port = raw or str(Settings.model_fields["broker_port"].default)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _fail(f"HUP_BROKER_PORT={raw!r} is not a port number (1-65535)")
    return f"127.0.0.1:{int(port)}"


def _bootstrap(bootstrap: str | None) -> str:
    """The bootstrap servers, checked for shape (HOST:PORT, comma-separated); see `_local_broker`."""
    if not bootstrap or not bootstrap.strip():
        return _local_broker()
    servers = [s.strip() for s in bootstrap.split(",")]
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise _fail(f"--bootstrap {bootstrap!r} is not HOST:PORT[,HOST:PORT...]")
    return ",".join(servers)


def _connect(bootstrap: str, timeout: float, given: str | None) -> None:
    try:
        wait_for_broker(bootstrap, timeout)
    except BrokerError as exc:
        where = "" if given and given.strip() else f" ({_LOCAL_HINT})"
        raise _fail(f"{exc}; is the broker running?{where}", code=1) from exc


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """HUP stream tools: produce events, tail profiles, export the profile schema."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextlib.contextmanager
def _open_record(path: Path | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
        return
    try:
        handle = path.open("wb")
    except OSError as exc:
        raise _fail(f"--record {path}: {exc.strerror or exc}") from exc
    with handle:
        yield handle


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


@app.command()
def produce(
    data: Annotated[
        str,
        typer.Option(help="jd:PATH[,PATH] or synthetic:users=N,seed=S[,key=value]"),
    ],
    rate: Annotated[float, typer.Option(min=0, help="Events per second; 0 = as fast as possible")],
    topic: Annotated[str, typer.Option(envvar="HUP_INPUT_TOPIC")] = "micro-behaviors",
    bootstrap: BootstrapOption = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Send at most N events")] = None,
    keep_ts: Annotated[
        bool, typer.Option("--keep-ts", help="Keep the events' timestamps (default: wall clock)")
    ] = False,
    record: Annotated[
        Path | None, typer.Option(help="Also write every value sent to this JSONL file")
    ] = None,
    partitions: Annotated[
        int, typer.Option(min=1, envvar="HUP_PARTITIONS", help="Partitions if the topic is new")
    ] = 3,
    retention_ms: Annotated[
        int, typer.Option(min=1, help="retention.ms if the topic is new")
    ] = DEFAULT_RETENTION_MS,
    max_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="HUP_PRODUCE_MAX_BATCH",
            help="Messages per produce batch (1 keeps the input lag gauge right on embedded tansu, docs/broker-notes.md T1)",
        ),
    ] = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Publish click and dwell events keyed by user_id, in per-user order, at a steady rate."""
    server = _bootstrap(bootstrap)
    try:
        dataset = load_dataset(data)
    except HupError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"--data {data!r}: cannot read {exc.filename}: {exc.strerror}") from exc
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    with _open_record(record) as record_file:
        _connect(server, timeout, bootstrap)
        try:
            if ensure_topic(server, topic, partitions, retention_ms, timeout=timeout):
                err.print(f"created topic {topic} ({partitions} partitions)")
        except KafkaException as exc:
            raise _fail(f"cannot create topic {topic!r}: {exc}", code=1) from exc
        total = sum(len(s.events) for s in dataset.sessions)
        if limit is not None:
            total = min(total, limit)
        events: Iterator[Event] = itertools.islice(iter_events(dataset.sessions), total)
        producer = Producer(producer_config(server, max_batch))
        try:
            with _progress() as progress:
                task = progress.add_task(f"→ {topic}", total=total)
                summary = publish(
                    events,
                    producer,
                    topic,
                    rate=rate,
                    keep_ts=keep_ts,
                    record=record_file,
                    on_sent=lambda *_: progress.advance(task),
                    flush_timeout=timeout,
                )
        except KeyboardInterrupt:  # a second Ctrl-C, during the final flush
            raise typer.Exit(code=130) from None
        finally:
            producer.close()
    out.print(summary.describe())
    if summary.interrupted:
        raise typer.Exit(code=130)
    if summary.failed:
        raise typer.Exit(code=1)


@app.command()
def tail(
    topic: Annotated[str, typer.Option(envvar="HUP_OUTPUT_TOPIC")] = "user-profiles",
    bootstrap: BootstrapOption = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest retained profile")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Exit after N profiles")] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print the raw JSON messages, one per line")
    ] = False,
    group: Annotated[
        str | None, typer.Option(help="Consumer group (commits offsets); default: a fresh one")
    ] = None,
    max_idle: Annotated[
        float | None, typer.Option(min=0.1, help="Exit after this many seconds without a profile")
    ] = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Print profiles as they arrive: user, seq, model version, latency, top categories."""
    server = _bootstrap(bootstrap)
    _connect(server, timeout, bootstrap)
    consumer = Consumer(consumer_config(server, group, from_beginning))
    warned: set[str] = set()

    def show(value: bytes) -> None:
        if json_lines:
            typer.echo(value.decode(errors="replace"))
        else:
            out.print(format_profile(value))

    def warn(message: str) -> None:
        if message not in warned:  # a missing topic is reported on every poll
            warned.add(message)
            err.print(f"[yellow]warning:[/] {message}")

    try:
        follow(consumer, [topic], show, limit=limit, max_idle=max_idle, on_error=warn)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@app.command()
def schema(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", help="Directory to write profile.schema.json and events.schema.json into"
        ),
    ] = Path("."),
) -> None:
    """Write the JSON Schemas of both topics: profiles (user-profiles) and events (input)."""
    try:
        targets = [write_profile_schema(out_dir), write_event_schema(out_dir)]
    except OSError as exc:
        raise _fail(f"--out {out_dir}: {exc.strerror or exc}") from exc
    for target in targets:
        typer.echo(str(target))


app.command("demo")(demo_main)

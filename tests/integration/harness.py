"""Helpers for the worker's integration tests: a worker subprocess, a producer, a reader."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import torch
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from hup.hup_recommender import rank_profiles
from hup.model import collate_features, collate_repeat
from hup.repeat import repeat_inputs
from hup.runtime import Profiler
from hup.schema import Event
from hup.sessions import Session
from stream.devtools.producer import producer_config
from stream.settings import Settings
from stream.topics import ensure_topics, topic_specs

REPO = Path(__file__).resolve().parents[2]

# A fresh worker takes ~5 s to start on tansu; a restart after SIGKILL also waits
# for the dead member's session (HUP_SESSION_TIMEOUT_S=6) to expire.
START_TIMEOUT_S = 60.0
# Published profiles must equal the offline forward pass this closely, at every level.
TOLERANCE = 1e-5
# Ranked ids the reference keeps past the published ones (under ``top_items_beyond`` and
# ``top_categories_beyond``), so that a tie at the cut can be told from a wrong ranking.
RANKING_MARGIN = 5


def worker_env(bootstrap: str, model: Path, datadir: Path, **overrides: str) -> dict[str, str]:
    """Environment of a test worker: unique app id and topics, no metrics or web port."""
    tag = uuid.uuid4().hex[:8]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HUP_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HUP_MODEL": str(model),
            "HUP_DATADIR": str(datadir),
            "HUP_APP_ID": f"hup-it-{tag}",
            "HUP_INPUT_TOPIC": f"mb-{tag}",
            "HUP_OUTPUT_TOPIC": f"profiles-{tag}",
            "HUP_DLQ_TOPIC": f"mb-dlq-{tag}",
            "HUP_SESSION_TIMEOUT_S": "6",
            "HUP_METRICS_PORT": "0",
            "HUP_WEB_PORT": "0",
        }
    )
    env.update(overrides)
    return env


def create_topics(bootstrap: str, env: Mapping[str, str]) -> None:
    """Create the worker's topics (as it would) before anything is produced to them."""
    settings = Settings(
        app_id=env["HUP_APP_ID"],
        input_topic=env["HUP_INPUT_TOPIC"],
        output_topic=env["HUP_OUTPUT_TOPIC"],
        dlq_topic=env["HUP_DLQ_TOPIC"],
        repartition=env.get("HUP_REPARTITION") == "1",
    )
    ensure_topics(bootstrap, topic_specs(settings))


class WorkerProcess:
    """``python -m stream.worker`` (or ``argv``) in a subprocess, logging to a file."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, argv: Sequence[str] | None = None
    ) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(argv or [sys.executable, "-m", "stream.worker"]),
                env=dict(env),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; returns the exit status (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)


def event_bytes(event: Event) -> bytes:
    """An event as a producer sends it (original ts kept)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    """Send (key, value) pairs in order and wait for all deliveries."""
    # The CLI's settings: murmur2 keys, as faust's query routing assumes, acks=all.
    producer = Producer(producer_config(bootstrap))
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    n = 0
    for key, value in messages:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        n += 1
        if n % 500 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0, "producer did not flush"
    assert not failures, failures[:3]
    return n


@dataclass
class Reader:
    """Reads every partition of a topic from the start (no group: tansu joins are slow)."""

    bootstrap: str
    topic: str
    partitions: int = 3
    messages: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])

    def poll_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self._consumer.poll(min(0.2, max(0.01, deadline - time.monotonic())))
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"reading {self.topic}: {message.error()}")
            self.messages.append((message.key(), message.value()))

    def read_until(
        self,
        done: Callable[[list[tuple[bytes | None, bytes]]], bool],
        timeout: float,
        what: str,
        worker: WorkerProcess | None = None,
    ) -> list[tuple[bytes | None, bytes]]:
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            if time.monotonic() > deadline:
                hint = f"\n--- worker log ---\n{worker.log()}" if worker else ""
                raise AssertionError(
                    f"timed out waiting for {what}; have {len(self.messages)}{hint}"
                )
            if worker is not None and not worker.alive():
                raise AssertionError(
                    f"worker exited ({worker.process.returncode}) while waiting for {what}\n{worker.log()}"
                )
            self.poll_for(0.5)
        return self.messages

    def close(self) -> None:
        self._consumer.close()


@dataclass(frozen=True)
class Reference:
    """The offline full-sequence forward pass: per user, one profile per accepted event."""

    # Per accepted event: head -> vector, and the top_items / top_categories (id, score) lists.
    profiles: dict[str, list[dict[str, Any]]]
    event_ts: dict[str, list[float]]  # ts of each accepted event, in input order

    def count(self) -> int:
        return sum(len(p) for p in self.profiles.values())

    def restricted_to(self, users: set[str]) -> Reference:
        return Reference(
            {u: p for u, p in self.profiles.items() if u in users},
            {u: t for u, t in self.event_ts.items() if u in users},
        )


def offline_reference(profiler: Profiler, sessions: Sequence[Session]) -> Reference:
    """What the worker must publish, computed with `HupModel.forward` over whole sequences.

    Per accepted event: the vector of every head, and under ``top_items`` and
    ``top_categories`` the (id, score) lists ranked from them by the offline rule
    (`hup.hup_recommender.rank_profiles` on the featurizer's memory at that event).
    """
    per_user: dict[str, list[Event]] = defaultdict(list)
    for session in sessions:
        per_user[session.user_id].extend(session.events)
    profiles, stamps = {}, {}
    vocab = profiler.checkpoint.vocabularies
    for user, events in per_user.items():
        state = profiler.featurizer.initial_state()
        feats, accepted, states = [], [], []
        for event in events:
            state, f, _ = profiler.featurizer.apply(state, event)
            if f is not None:
                feats.append(f)
                states.append(state)
                accepted.append(event.ts)
        stamps[user] = accepted
        if not feats:
            profiles[user] = []
            continue
        batch = collate_features([feats])
        with torch.no_grad():
            out = profiler.model(batch, torch.nonzero(batch["valid"]))
        inputs = dict(out)
        if profiler.model.repeat_heads is not None:
            inputs.update(collate_repeat([repeat_inputs(s) for s in states]))
        opened = [s.item_id if s.has_open and s.item_id else None for s in states]
        k_items, k_categories = profiler.top_items, profiler.top_n
        items, levels = rank_profiles(
            profiler.model, inputs, k_items + RANKING_MARGIN, k_categories + RANKING_MARGIN, opened
        )
        finest = vocab.categories[-1].tokens
        profiles[user] = []
        for n in range(len(feats)):
            ranked_items = [(vocab.items.tokens[i], s) for i, s in zip(*items[n], strict=True)]
            ranked_categories = [(finest[i], s) for i, s in zip(*levels[-1][n], strict=True)]
            profiles[user].append(
                {
                    **{k: v[n] for k, v in out.items()},
                    "top_items": ranked_items[:k_items],
                    "top_items_beyond": ranked_items[k_items:],
                    "top_categories": ranked_categories[:k_categories],
                    "top_categories_beyond": ranked_categories[k_categories:],
                }
            )
    return Reference(profiles, stamps)


def vector_diff(message: Mapping, reference: Mapping[str, Any]) -> float:
    """Largest absolute difference between a published profile's vectors and the reference's."""
    got = message["profile"]
    pairs = [("item", got["item"]), ("micro", got["micro"])] + [
        (f"category{k}", v) for k, v in enumerate(got["category"])
    ]
    vectors = {k for k in reference if not k.startswith("top_")}
    assert {head for head, _ in pairs} == vectors, sorted(reference)
    return max((torch.tensor(v) - reference[head]).abs().max().item() for head, v in pairs)


Agreement = Literal["same", "tie_order", "differs"]


def ranking_agreement(
    published: Sequence[tuple[str, float]],
    top: Sequence[tuple[str, float]],
    beyond: Sequence[tuple[str, float]] = (),
) -> Agreement:
    """How a published (id, score) ranking agrees with the reference's ``top`` (and ``beyond``).

    ``same``: the ids of ``top``, in its order. ``tie_order``: other ids or another order,
    but only as scores tied within `TOLERANCE` allow: as many distinct ids, each with a
    reference score (in ``top`` or ``beyond``) within `TOLERANCE` of the reference's score
    at the place it is published. The stream applies an event in a batch of other users,
    and its floats round differently from the offline pass's by about 1e-8, which decides
    the order of ids whose scores tie that closely. Anything else ``differs``.
    """
    ids = [i for i, _ in published]
    if ids == [i for i, _ in top]:
        return "same"
    if len(ids) != len(top) or len(set(ids)) != len(ids):
        return "differs"
    scores = dict([*top, *beyond])
    tied = all(
        i in scores and abs(scores[i] - expected) <= TOLERANCE
        for i, (_, expected) in zip(ids, top, strict=True)
    )
    return "tie_order" if tied else "differs"


def ranking_agreements(message: Mapping, reference: Mapping[str, Any]) -> dict[str, Agreement]:
    """`ranking_agreement` of the message's ``top_items`` and ``top_categories``."""
    return {
        key: ranking_agreement(
            [(c["id"], c["score"]) for c in message[key]],
            reference[key],
            reference.get(f"{key}_beyond", ()),
        )
        for key in ("top_items", "top_categories")
    }


def score_diff(message: Mapping, reference: Mapping[str, Any]) -> float:
    """Largest difference between a published id's score and the reference's score of that id.

    The rankings must agree (`ranking_agreements`): each published id has a reference score.
    """
    worst = 0.0
    for key in ("top_items", "top_categories"):
        scores = dict([*reference[key], *reference.get(f"{key}_beyond", ())])
        worst = max([worst, *(abs(c["score"] - scores[c["id"]]) for c in message[key])])
    return worst


def profile_diff(message: Mapping, reference: Mapping[str, Any]) -> float:
    """Largest absolute difference between a published profile and the reference.

    Every level's vector, and the score of every id in ``top_items`` and
    ``top_categories`` against the reference's score of that id. The ids must be the
    reference's in its order, but for ids whose scores tie within `TOLERANCE`
    (`ranking_agreement`).
    """
    worst = vector_diff(message, reference)
    for key, agreement in ranking_agreements(message, reference).items():
        published = [(c["id"], c["score"]) for c in message[key]]
        assert agreement != "differs", (
            f"{key} of {message['user_id']} seq {message['seq']} (vectors differ by "
            f"{worst:.3g}): published {published}, reference {reference[key]}"
        )
    return max(worst, score_diff(message, reference))


def without_clock(message: Mapping) -> dict:
    """A profile message minus its wall-clock publish time (differs on a re-publish)."""
    return {k: v for k, v in message.items() if k != "published_ts"}


def assert_same_republish(message: Mapping, first: Mapping, tolerance: float) -> None:
    """A re-published (user, seq) profile is the first one again.

    Every field but the publish time is identical, and the vectors and category scores
    (rounded to 6 decimals) agree within
    `tolerance`: the event was re-applied in a batch of other users, and a batched
    matmul's float rounding depends on the batch (stepping one user alone and in a
    batch of 40 differs by up to 1.5e-8), so bit-equality is not a property of the step.
    """
    numeric = ("profile", "top_categories", "top_items")
    assert {k: v for k, v in without_clock(message).items() if k not in numeric} == {
        k: v for k, v in without_clock(first).items() if k not in numeric
    }
    for key in ("top_categories", "top_items"):
        got_top, want_top = message[key], first[key]
        assert [c["id"] for c in got_top] == [c["id"] for c in want_top], key
        assert all(
            abs(a["score"] - b["score"]) < tolerance for a, b in zip(got_top, want_top, strict=True)
        ), key
    got, want = message["profile"], first["profile"]
    pairs = [(got["item"], want["item"]), (got["micro"], want["micro"])] + list(
        zip(got["category"], want["category"], strict=True)
    )
    worst = max((torch.tensor(a) - torch.tensor(b)).abs().max().item() for a, b in pairs)
    assert worst < tolerance, worst


def wait_ready(worker: WorkerProcess, timeout: float = START_TIMEOUT_S) -> None:
    """Block until the worker logs that it is ready (partitions assigned, tables recovered)."""
    deadline = time.monotonic() + timeout
    while "[^Worker]: Ready" not in worker.log_path.read_text(errors="replace"):
        if not worker.alive():
            raise AssertionError(f"worker exited with {worker.process.returncode}\n{worker.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"worker not ready after {timeout:.0f}s\n{worker.log()}")
        time.sleep(0.1)


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for a worker's metrics endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """A worker's Prometheus samples, keyed by series name with labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310 - a local test worker
        text = page.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def http_get(url: str) -> tuple[int, bytes]:
    """GET ``url``: (status, body), also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local test URL
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def poll_http(
    url: str, until: int, worker: WorkerProcess, timeout: float = 60.0
) -> tuple[int, bytes]:
    """GET ``url`` until it answers with status ``until`` (the worker may not listen yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = http_get(url)
        except OSError:  # not listening yet
            status, body = 0, b""
        if status == until:
            return status, body
        assert worker.alive(), f"worker exited\n{worker.log()}"
        assert time.monotonic() < deadline, f"{url}: {status} {body!r}\n{worker.log()}"
        time.sleep(0.2)

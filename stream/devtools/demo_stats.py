"""What the demo measures: sends, profiles, dead letters and latencies, and how it prints them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["DemoStats", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of values at or below it.

    NaN for no values. ``percentile([1, 2, 3, 4], 50) == 2``.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{1000 * seconds:.0f} ms"


@dataclass
class DemoStats:
    """Counters fed by the replay thread (`on_sent`) and the consumer loop (the rest).

    `on_sent` runs in the producer thread and only inserts new keys and bumps a counter;
    the consumer loop only reads those keys, so no lock is needed under the GIL.
    """

    clock: Callable[[], float] = time.time
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    send_seconds: float = 0.0  # set by the replay when it is done; estimated until then
    first_send: float | None = None  # monotonic
    producing: bool = True
    sent_at: dict[tuple[str, str], float] = field(default_factory=dict)
    profiles: int = 0
    worker_latency: list[float] = field(default_factory=list)  # published_ts - event_ts
    e2e_latency: list[float] = field(default_factory=list)  # consumed - sent (wall clock)
    last_profile: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_user: dict[str, int] = field(default_factory=dict)
    foreign: int = 0  # profiles of events this run did not send (an older run's, a probe)
    dlq: int = 0
    dlq_reasons: list[str] = field(default_factory=list)
    last_arrival: float = field(default_factory=time.monotonic)
    first_profile: float | None = None  # monotonic
    latest_profile: float = 0.0  # monotonic

    def on_sent(self, user_id: str, event_id: str | None, sent_at: float) -> None:
        """Remember when an event left (keyed by user and event id)."""
        if event_id is not None:
            self.sent_at[(user_id, event_id)] = sent_at
        now = time.monotonic()
        if self.first_send is None:
            self.first_send = now
        self.sent += 1
        self.send_seconds = now - self.first_send

    def on_profile(self, value: bytes) -> bool:
        """Count a profile of this run; return False for any other message."""
        consumed = self.clock()
        try:
            message = orjson.loads(value)
            key = (str(message["user_id"]), str(message["event_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.foreign += 1
            return False
        sent = self.sent_at.get(key)
        if sent is None:
            self.foreign += 1
            return False
        self.profiles += 1
        self.last_arrival = time.monotonic()
        self.latest_profile = self.last_arrival
        if self.first_profile is None:
            self.first_profile = self.last_arrival
        self.e2e_latency.append(consumed - sent)
        published, event_ts = message.get("published_ts"), message.get("event_ts")
        if isinstance(published, int | float) and isinstance(event_ts, int | float):
            self.worker_latency.append(published - event_ts)
        self.last_profile[key[0]] = message
        self.per_user[key[0]] = self.per_user.get(key[0], 0) + 1
        return True

    def on_dead_letter(self, value: bytes) -> None:
        """Count a dead letter and keep its reason."""
        self.dlq += 1
        self.last_arrival = time.monotonic()
        try:
            reason = str(orjson.loads(value).get("reason", "?"))
        except (orjson.JSONDecodeError, AttributeError):
            reason = value[:200].decode(errors="replace")
        if len(self.dlq_reasons) < 20:
            self.dlq_reasons.append(reason)

    def elapsed(self) -> float:
        """Seconds since the stats were made."""
        return time.monotonic() - self.started

    def send_rate(self) -> float:
        """Events sent per second so far."""
        return self.sent / self.send_seconds if self.send_seconds > 0 else 0.0

    def profile_rate(self) -> float:
        """Profiles received per second, from the first to the last."""
        if self.first_profile is None or self.latest_profile <= self.first_profile:
            return 0.0
        return (self.profiles - 1) / (self.latest_profile - self.first_profile)

    def line(self) -> str:
        """The live one-line summary."""
        rate = self.send_rate()
        return (
            f"[{self.elapsed():5.1f} s] sent {self.sent} ({rate:.0f} ev/s)  "
            f"profiles {self.profiles}  dlq {self.dlq}  "
            f"worker p50 {_ms(percentile(self.worker_latency, 50))}  "
            f"end-to-end p50 {_ms(percentile(self.e2e_latency, 50))} "
            f"p99 {_ms(percentile(self.e2e_latency, 99))}"
        )

    def report(self, vector_values: int = 5) -> list[str]:
        """The final summary, one string per line."""
        rate = self.send_rate()
        lines = [
            f"events sent          {self.sent} in {self.send_seconds:.1f} s ({rate:.0f} events/s)",
            f"profiles received    {self.profiles}"
            + (f" (+{self.foreign} not from this replay)" if self.foreign else "")
            + f", {self.profile_rate():.0f} profiles/s",
            "latency published_ts - event_ts   "
            f"p50 {_ms(percentile(self.worker_latency, 50))}  "
            f"p99 {_ms(percentile(self.worker_latency, 99))}",
            "latency consumed - sent           "
            f"p50 {_ms(percentile(self.e2e_latency, 50))}  "
            f"p99 {_ms(percentile(self.e2e_latency, 99))}",
            f"dead letters         {self.dlq}"
            + (f", e.g. {self.dlq_reasons[0]!r}" if self.dlq_reasons else ""),
        ]
        if self.per_user:
            user = max(self.per_user, key=lambda u: self.per_user[u])
            message = self.last_profile[user]
            tops = ", ".join(
                f"{c['id']} {c['score']:.2f}" for c in message.get("top_categories", [])
            )
            items = ", ".join(
                f"{c['id']} {c['score']:.2f}" for c in message.get("top_items", [])[:5]
            )
            item = message.get("profile", {}).get("item") or []
            head = ", ".join(f"{v:+.3f}" for v in item[:vector_values])
            lines += [
                f"profile of {user}: model {message.get('model_version')}, "
                f"seq {message.get('seq')}",
                f"  top categories     {tops}",
                f"  top items          {items}",
                f"  item vector        [{head}, ...] ({len(item)} values)",
            ]
        return lines

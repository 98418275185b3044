"""The worker's Prometheus metrics, built on an injected registry (never the global one)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from stream.processor import BatchResult, OutputProfile

__all__ = ["Metrics"]

# Event time to publish spans producer delay, batching and the model step; the
# profile is "real time" when it lands in the sub-second buckets.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every metric the worker exports. Labels never carry user ids."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the metrics on ``registry`` (one registry per app, so tests can make many)."""
        self.registry = registry
        self.events = Counter(
            "hup_events",
            "Input records by outcome: consumed, applied, skipped_duplicate, dlq, dropped_*, "
            "state_reset_*; oov_item, oov_category and clamped_gap flag applied events.",
            ["outcome"],
            registry=registry,
        )
        self.profiles_published = Counter(
            "hup_profiles_published", "Profiles delivered to the output topic.", registry=registry
        )
        self.event_to_profile = Histogram(
            "hup_event_to_profile_seconds",
            "From the event's own timestamp to the delivery of its profile.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.processing = Histogram(
            "hup_processing_seconds",
            "From consuming the event to the delivery of its profile.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_step = Histogram(
            "hup_model_step_seconds",
            "Model time per batch (featurize and step, all waves).",
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "hup_batch_size", "Records per batch.", buckets=_BATCH_BUCKETS, registry=registry
        )
        self.model = Info("hup_model", "The loaded model checkpoint.", registry=registry)

    def set_model(self, version: str, path: str) -> None:
        """Record which checkpoint the worker runs."""
        self.model.info({"version": version, "path": path})

    def observe_batch(self, size: int, result: BatchResult) -> None:
        """Count a processed batch's outcomes and model time."""
        self.batch_size.observe(size)
        self.model_step.observe(result.step_seconds)
        for outcome, count in result.outcomes.items():
            if count:
                self.events.labels(outcome).inc(count)

    def observe_published(self, profiles: Iterable[OutputProfile], now: float) -> None:
        """Count profiles delivered at wall-clock ``now`` and their latencies."""
        n = 0
        for profile in profiles:
            n += 1
            self.event_to_profile.observe(max(0.0, now - profile.event_ts))
            if profile.received_ts:
                self.processing.observe(max(0.0, now - profile.received_ts))
        self.profiles_published.inc(n)

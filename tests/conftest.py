"""Shared fixtures: one Kafka broker per test session (configured, testcontainers or embedded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stream.broker import start_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a broker that lives for the whole session.

    Started lazily, so test runs that never ask for Kafka never start one.
    """
    with start_broker() as handle:
        yield handle.bootstrap_servers

"""Shared fixtures: one Kafka broker per test session (configured, testcontainers or embedded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from stream.broker import start_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a broker that lives for the whole session.

    Started lazily, so test runs that never ask for Kafka never start one.
    """
    with start_broker() as handle:
        yield handle.bootstrap_servers


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny matmuls: extra threads only contend with the broker and workers for 2 cores."""
    torch.set_num_threads(1)

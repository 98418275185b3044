"""Shared fixtures: one Kafka broker per session, and a small checkpoint with synthetic traffic.

The broker is a configured one, a testcontainer or the embedded tansu; the checkpoint and
the traffic serve the stream and state tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from hup.config import VARIANTS
from hup.hup_checkpoint import save_untrained_checkpoint
from hup.runtime import Profiler
from hup.sessions import Dataset
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy
from stream.devtools.broker import start_broker


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


@pytest.fixture(scope="session")
def make_random_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Dataset, str], Path]:
    """Write an untrained (seeded) checkpoint for a synthetic dataset; returns its directory.

    The vocabulary covers the first half of the sessions only, so the rest exercises OOV
    ids. Random weights are enough to test the plumbing and exact parity. The model is the
    default one (`hup`, repeat-aware), so its published `top_items` are checked too.
    """

    def write(dataset: Dataset, name: str) -> Path:
        assert dataset.taxonomy is not None, "synthetic datasets carry a taxonomy"
        half = dataset.sessions[: len(dataset.sessions) // 2]
        directory = tmp_path_factory.mktemp(name)
        events = (e for s in half for e in s.events)
        save_untrained_checkpoint(
            directory, events, Taxonomy(dataset.taxonomy), window=8, **VARIANTS["hup"]
        )
        return directory

    return write


@pytest.fixture(scope="session")
def traffic() -> Dataset:
    """A few dozen synthetic users with a 3-level taxonomy."""
    return generate(SyntheticConfig(users=40, seed=11, min_events=5, max_events=50))


@pytest.fixture(scope="session")
def checkpoint_dir(
    make_random_checkpoint: Callable[[Dataset, str], Path], traffic: Dataset
) -> Path:
    """An untrained (random) checkpoint: enough to test the plumbing and exact parity."""
    return make_random_checkpoint(traffic, "model")


@pytest.fixture
def profiler(checkpoint_dir: Path) -> Profiler:
    """The checkpoint loaded as the worker loads it."""
    return Profiler.load(checkpoint_dir)

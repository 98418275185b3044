"""Factories for stream tests: a small untrained checkpoint and synthetic traffic."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hup.runtime import Profiler
from hup.sessions import Dataset
from hup.synthetic import SyntheticConfig, generate


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

"""Fixtures for the worker's integration tests: a checkpoint, its profiler, synthetic traffic."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from harness import Reference, offline_reference

from hup.runtime import Profiler
from hup.sessions import Dataset
from hup.synthetic import SyntheticConfig, generate


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # The reference forward passes are tiny; with the broker and the worker busy on
    # the same two cores, torch's default thread pool made them 12x slower.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def it_traffic() -> Dataset:
    """Several hundred synthetic users: the stream the worker is fed."""
    return generate(SyntheticConfig(users=300, seed=5, min_events=5, max_events=30))


@pytest.fixture(scope="session")
def it_model(make_random_checkpoint: Callable[[Dataset, str], Path], it_traffic: Dataset) -> Path:
    """An untrained checkpoint whose vocabulary covers half the users (the rest hit OOV)."""
    return make_random_checkpoint(it_traffic, "it-model")


@pytest.fixture(scope="session")
def it_profiler(it_model: Path) -> Profiler:
    return Profiler.load(it_model)


@pytest.fixture(scope="session")
def it_reference(it_profiler: Profiler, it_traffic: Dataset) -> Reference:
    """The offline profiles of every user of `it_traffic` (one session per user)."""
    return offline_reference(it_profiler, it_traffic.sessions)

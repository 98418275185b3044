"""Shared fixtures: one Kafka broker per test session (configured, testcontainers or embedded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from hup.checkpoint import save_checkpoint
from hup.config import HupConfig
from hup.data import Dataset
from hup.features import FeatureSpec
from hup.model import HupModel
from hup.vocab import Taxonomy, build_vocabularies
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


@pytest.fixture(scope="session")
def make_random_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Dataset, str], Path]:
    """Write an untrained (seeded) checkpoint for a synthetic dataset; returns its directory.

    The vocabulary covers the first half of the sessions only, so the rest exercises OOV
    ids. Random weights are enough to test the plumbing and exact parity.
    """

    def write(dataset: Dataset, name: str) -> Path:
        assert dataset.taxonomy is not None, "synthetic datasets carry a taxonomy"
        taxonomy = Taxonomy(dataset.taxonomy)
        half = dataset.sessions[: len(dataset.sessions) // 2]
        vocab = build_vocabularies((e for s in half for e in s.events), taxonomy.n_levels, taxonomy)
        torch.manual_seed(0)
        model = HupModel(
            HupConfig(
                n_items=len(vocab.items),
                n_categories=tuple(len(v) for v in vocab.categories),
                window=8,
            )
        )
        directory = tmp_path_factory.mktemp(name)
        save_checkpoint(directory, model, FeatureSpec(n_levels=taxonomy.n_levels), vocab)
        return directory

    return write

"""Fixtures for the zoo tests: small synthetic splits and a tiny, fast budget."""

from __future__ import annotations

import pytest
import torch

from hup.sessions import Session, split_sessions
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy

torch.set_num_threads(1)

Splits = tuple[list[Session], list[Session], list[Session], Taxonomy]


def _splits(config: SyntheticConfig) -> Splits:
    dataset = generate(config)
    train, valid, test = split_sessions(dataset.sessions)
    assert dataset.taxonomy is not None
    return train, valid, test, Taxonomy(dataset.taxonomy)


@pytest.fixture(scope="session")
def learnable() -> Splits:
    """108 skus under 9 leaves: enough structure that a few steps beat POP clearly."""
    return _splits(
        SyntheticConfig(
            users=120,
            seed=7,
            levels=2,
            branching=3,
            items_per_leaf=12,
            min_events=10,
            max_events=30,
        )
    )


@pytest.fixture(scope="session")
def tiny() -> Splits:
    """A few dozen short sessions over a large catalogue (k items always fit)."""
    return _splits(SyntheticConfig(users=40, seed=3, min_events=3, max_events=15))

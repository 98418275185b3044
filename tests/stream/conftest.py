"""Factories for stream tests: a small untrained checkpoint and synthetic traffic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hup.checkpoint import save_checkpoint
from hup.config import HupConfig
from hup.data import Dataset
from hup.features import FeatureSpec
from hup.model import HupModel
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy, build_vocabularies


@pytest.fixture(scope="session")
def traffic() -> Dataset:
    """A few dozen synthetic users with a 3-level taxonomy."""
    return generate(SyntheticConfig(users=40, seed=11, min_events=5, max_events=50))


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, traffic: Dataset) -> Path:
    """An untrained (random) checkpoint: enough to test the plumbing and exact parity."""
    taxonomy = Taxonomy(traffic.taxonomy)
    half = traffic.sessions[: len(traffic.sessions) // 2]  # the rest exercises OOV ids
    vocab = build_vocabularies((e for s in half for e in s.events), taxonomy.n_levels, taxonomy)
    torch.manual_seed(0)
    model = HupModel(
        HupConfig(
            n_items=len(vocab.items),
            n_categories=tuple(len(v) for v in vocab.categories),
            window=8,
        )
    )
    directory = tmp_path_factory.mktemp("model")
    save_checkpoint(directory, model, FeatureSpec(n_levels=taxonomy.n_levels), vocab)
    return directory

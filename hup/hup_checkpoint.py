"""HUP's checkpoints: a `HupModel` with its feature spec and vocabularies, saved and loaded.

The files are the shared layout of `hup.checkpoint_files`; ``config.json`` holds the
`HupConfig` under ``"model"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hup.checkpoint_files import FORMAT, content_version, read_files, spec_to_json, write_files
from hup.config import HupConfig
from hup.exceptions import CheckpointError
from hup.features import FeatureSpec
from hup.model import HupModel
from hup.neighbours import NeighbourTable
from hup.vocab import Taxonomy, Vocabularies, build_vocabularies

__all__ = [
    "Checkpoint",
    "load_checkpoint",
    "randomize_neighbours",
    "save_checkpoint",
    "save_untrained_checkpoint",
]


@dataclass(frozen=True)
class Checkpoint:
    """A loaded model with everything needed to featurize and step events."""

    model: HupModel
    spec: FeatureSpec
    vocabularies: Vocabularies
    version: str
    info: dict[str, Any]


def save_checkpoint(
    directory: Path,
    model: HupModel,
    spec: FeatureSpec,
    vocabularies: Vocabularies,
    info: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint directory and return its model version."""
    config = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "features": spec_to_json(spec),
        "info": info or {},
    }
    return write_files(directory, config, vocabularies, model.state_dict())


def save_untrained_checkpoint(
    directory: Path,
    events: Iterable[Any],
    taxonomy: Taxonomy | None = None,
    *,
    seed: int = 0,
    **config: Any,
) -> str:
    """Write a checkpoint with seeded random weights over the vocabulary of ``events``.

    For what does not depend on the weights: the stream's plumbing, exact parity of
    the incremental step, throughput and state size. Training a model for these would
    cost minutes and prove nothing more. ``config`` overrides `HupConfig` fields.
    """
    n_levels = taxonomy.n_levels if taxonomy is not None else 1
    vocabularies = build_vocabularies(events, n_levels, taxonomy)
    torch.manual_seed(seed)
    model = HupModel(
        HupConfig(
            n_items=len(vocabularies.items),
            n_categories=tuple(len(v) for v in vocabularies.categories),
            **config,
        )
    )
    randomize_neighbours(model, seed)
    directory.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(directory, model, FeatureSpec(n_levels=n_levels), vocabularies)


def randomize_neighbours(model: HupModel, seed: int = 0) -> None:
    """Fill the model's co-visitation tables with seeded random ids and weights.

    An untrained model's tables are empty, which would leave their path through the
    explore channel untested by the plumbing and parity checks that use such models.
    """
    if model.repeat_heads is None:
        return
    generator = torch.Generator().manual_seed(seed)
    for table in model.repeat_heads.neighbour_modules():
        n_ids, k = table.ids.shape[1:]
        ids = torch.randint(0, n_ids, (n_ids, k), generator=generator)
        weights = torch.rand(n_ids, k, generator=generator)
        table.install(NeighbourTable(ids.numpy(), weights.numpy()))


def load_checkpoint(directory: Path | str, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint; every failure is a `CheckpointError` that says what and where."""
    directory = Path(directory)
    config, spec, vocabularies, weights = read_files(directory, device)
    if config.get("kind", "hup") != "hup":
        raise CheckpointError(
            f"model checkpoint {directory} holds a {config.get('kind')} model "
            f"({config.get('name')}), not HUP; load it with hup.zoo.zoo_checkpoint"
        )
    try:
        model_config = HupConfig.from_dict(config["model"])
        model = HupModel(model_config)
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"model checkpoint {directory} is unreadable: {exc}") from exc
    if vocabularies.n_levels != spec.n_levels or len(vocabularies.items) != model_config.n_items:
        raise CheckpointError(f"model checkpoint {directory}: vocabularies do not match the config")
    model.to(device).eval()
    return Checkpoint(model, spec, vocabularies, content_version(directory), config.get("info", {}))

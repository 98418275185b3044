"""Zoo checkpoints: the shared layout of `hup.checkpoint_files` with the model's registry name.

``config.json`` adds ``"kind": "zoo"`` and ``"name"`` (the registry name that picks the
class), and ``"model"`` holds that class's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hup.checkpoint_files import FORMAT, content_version, read_files, spec_to_json, write_files
from hup.exceptions import CheckpointError
from hup.features import FeatureSpec
from hup.vocab import Vocabularies
from hup.zoo.base import SequenceModel

__all__ = ["ZooCheckpoint", "load_zoo_checkpoint", "save_zoo_checkpoint"]


@dataclass(frozen=True)
class ZooCheckpoint:
    """A loaded zoo model with its featurizer's spec and vocabularies (a `ProfileSource`)."""

    name: str  # registry name, the model class's `SequenceModel.name`
    model: SequenceModel
    spec: FeatureSpec
    vocabularies: Vocabularies
    version: str
    info: dict[str, Any]


def save_zoo_checkpoint(
    directory: Path,
    name: str,
    model: SequenceModel,
    spec: FeatureSpec,
    vocabularies: Vocabularies,
    info: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint directory and return its version (``<name>-<content hash>``)."""
    config = {
        "format": FORMAT,
        "kind": "zoo",
        "name": name,
        "model": model.config.to_dict(),  # type: ignore[operator]
        "features": spec_to_json(spec),
        "info": info or {},
    }
    return write_files(directory, config, vocabularies, model.state_dict(), prefix=name)


def load_zoo_checkpoint(
    directory: Path | str, classes: Mapping[str, type[SequenceModel]], device: str = "cpu"
) -> ZooCheckpoint:
    """Load a zoo checkpoint of one of ``classes`` (by registry name).

    Raises:
        CheckpointError: The directory is unreadable or holds no model of ``classes``; the
            message names the directory.
    """
    directory = Path(directory)
    config, spec, vocabularies, weights = read_files(directory, device)
    name = config.get("name")
    if config.get("kind") != "zoo" or not isinstance(name, str) or name not in classes:
        raise CheckpointError(
            f"model checkpoint {directory} is not a zoo model checkpoint "
            f"(kind {config.get('kind', 'hup')!r}, name {name!r})"
        )
    cls = classes[name]
    try:
        model = cls(cls.config_class.from_dict(config["model"]))
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"model checkpoint {directory} is unreadable: {exc}") from exc
    if len(vocabularies.items) != model.config.n_items or vocabularies.n_levels != spec.n_levels:
        raise CheckpointError(f"model checkpoint {directory}: vocabularies do not match the config")
    model.to(device).eval()
    version = content_version(directory, name)
    return ZooCheckpoint(name, model, spec, vocabularies, version, config.get("info", {}))

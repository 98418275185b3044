"""Checkpoint directories: weights (safetensors), config, vocabularies, feature spec, version.

Nothing is unpickled on load: weights are safetensors, everything else JSON. The model
version is a content hash of those files, so two checkpoints with the same version are
interchangeable and a state written under another version is detectably foreign.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hup.config import HupConfig
from hup.exceptions import CheckpointError
from hup.features import FeatureSpec
from hup.model import HupModel
from hup.vocab import Vocabularies

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

FORMAT = 1
_CONFIG, _VOCAB, _WEIGHTS, _VERSION = "config.json", "vocab.json", "weights.safetensors", "VERSION"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded model with everything needed to featurize and step events."""

    model: HupModel
    spec: FeatureSpec
    vocabularies: Vocabularies
    version: str
    info: dict[str, Any]


def _version(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in (_CONFIG, _VOCAB, _WEIGHTS):
        digest.update((directory / name).read_bytes())
    return "hup-" + digest.hexdigest()[:12]


def save_checkpoint(
    directory: Path,
    model: HupModel,
    spec: FeatureSpec,
    vocabularies: Vocabularies,
    info: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint directory and return its model version."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "features": {
            "n_levels": spec.n_levels,
            "gap_edges": list(spec.gap_edges),
            "dwell_edges": list(spec.dwell_edges),
        },
        "info": info or {},
    }
    (directory / _CONFIG).write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    (directory / _VOCAB).write_bytes(vocabularies.to_json())
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / _WEIGHTS))
    version = _version(directory)
    (directory / _VERSION).write_text(version + "\n")
    return version


def load_checkpoint(directory: Path | str, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint; every failure is a `CheckpointError` that says what and where."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model checkpoint {directory} does not exist or is not a directory")
    for name in (_CONFIG, _VOCAB, _WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(f"model checkpoint {directory} has no {name}")
    try:
        config = orjson.loads((directory / _CONFIG).read_bytes())
        if config.get("format") != FORMAT:
            raise CheckpointError(
                f"{directory / _CONFIG}: checkpoint format {config.get('format')!r}, "
                f"this version reads {FORMAT}"
            )
        model_config = HupConfig.from_dict(config["model"])
        features = config["features"]
        spec = FeatureSpec(
            n_levels=features["n_levels"],
            gap_edges=tuple(features["gap_edges"]),
            dwell_edges=tuple(features["dwell_edges"]),
        )
        vocabularies = Vocabularies.from_json((directory / _VOCAB).read_bytes())
        model = HupModel(model_config)
        model.load_state_dict(load_file(str(directory / _WEIGHTS), device=device))
    except CheckpointError:
        raise
    except (
        orjson.JSONDecodeError,
        SafetensorError,
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        OSError,
    ) as exc:
        raise CheckpointError(f"model checkpoint {directory} is unreadable: {exc}") from exc
    if vocabularies.n_levels != spec.n_levels or len(vocabularies.items) != model_config.n_items:
        raise CheckpointError(f"model checkpoint {directory}: vocabularies do not match the config")
    model.to(device).eval()
    return Checkpoint(model, spec, vocabularies, _version(directory), config.get("info", {}))

"""The checkpoint directory layout HUP's and the zoo's checkpoints share.

``config.json``, ``vocab.json``, ``weights.safetensors`` and ``VERSION``: nothing is
unpickled on load, weights are safetensors and everything else JSON. The model version
is a content hash of those files (the config without its timing fields), so two
checkpoints with the same version are interchangeable and a state written under another
version is detectably foreign.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hup.exceptions import CheckpointError
from hup.features import FeatureSpec
from hup.vocab import Vocabularies

__all__ = [
    "FORMAT",
    "TIMING_KEYS",
    "content_version",
    "read_config",
    "read_files",
    "spec_from_json",
    "spec_to_json",
    "without_timing",
    "write_files",
]

FORMAT = 1
_CONFIG, _VOCAB, _WEIGHTS, _VERSION = "config.json", "vocab.json", "weights.safetensors", "VERSION"


# Keys of config.json that record how long something took (each epoch's ``seconds`` in
# the training history). They differ between two otherwise identical trainings.
TIMING_KEYS = frozenset({"seconds"})


def without_timing(value: Any) -> Any:
    """``value`` (parsed JSON) without the `TIMING_KEYS` of any object, at any depth."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def content_version(directory: Path, prefix: str = "hup") -> str:
    """``<prefix>-<hash>`` of config, vocabularies and weights: equal versions, same model.

    The config is hashed without its timing fields and with sorted keys, so that two
    identical trainings (same data, options and seed) give the same version: a
    retraining that reproduces the model does not reset every user's stored state.
    """
    digest = hashlib.sha256()
    try:
        config = orjson.loads((directory / _CONFIG).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"model checkpoint {directory} is unreadable: {exc}") from exc
    digest.update(orjson.dumps(without_timing(config), option=orjson.OPT_SORT_KEYS))
    for name in (_VOCAB, _WEIGHTS):
        digest.update((directory / name).read_bytes())
    return f"{prefix}-" + digest.hexdigest()[:12]


def spec_to_json(spec: FeatureSpec) -> dict[str, Any]:
    """The feature spec as saved in ``config.json`` (shared with the zoo's checkpoints)."""
    return {
        "n_levels": spec.n_levels,
        "gap_edges": list(spec.gap_edges),
        "dwell_edges": list(spec.dwell_edges),
    }


def spec_from_json(features: dict[str, Any]) -> FeatureSpec:
    """Inverse of `spec_to_json`."""
    return FeatureSpec(
        n_levels=features["n_levels"],
        gap_edges=tuple(features["gap_edges"]),
        dwell_edges=tuple(features["dwell_edges"]),
    )


def write_files(
    directory: Path,
    config: dict[str, Any],
    vocabularies: Vocabularies,
    state: dict[str, Any],
    prefix: str = "hup",
) -> str:
    """Write config JSON, vocabularies, safetensors weights and VERSION; return the version."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _CONFIG).write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    (directory / _VOCAB).write_bytes(vocabularies.to_json())
    weights = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(weights, str(directory / _WEIGHTS))
    version = content_version(directory, prefix)
    (directory / _VERSION).write_text(version + "\n")
    return version


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory (raises `CheckpointError` when missing/bad)."""
    if not directory.is_dir():
        raise CheckpointError(f"model checkpoint {directory} does not exist or is not a directory")
    for name in (_CONFIG, _VOCAB, _WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(f"model checkpoint {directory} has no {name}")
    try:
        config: dict[str, Any] = orjson.loads((directory / _CONFIG).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"model checkpoint {directory} is unreadable: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise CheckpointError(
            f"{directory / _CONFIG}: checkpoint format {found!r}, this version reads {FORMAT}"
        )
    return config


def read_files(
    directory: Path, device: str = "cpu"
) -> tuple[dict[str, Any], FeatureSpec, Vocabularies, dict[str, Any]]:
    """Config, feature spec, vocabularies and weights of a checkpoint, never unpickling.

    Raises:
        CheckpointError: Anything is missing or unreadable; the message names the directory.
    """
    config = read_config(directory)
    try:
        spec = spec_from_json(config["features"])
        vocabularies = Vocabularies.from_json((directory / _VOCAB).read_bytes())
        weights = load_file(str(directory / _WEIGHTS), device=device)
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
    return config, spec, vocabularies, weights

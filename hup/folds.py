"""Fold checkpoints: the directory layout `hup train --folds K` writes and their evaluation.

``DIR/fold-k`` holds fold k's checkpoint, trained on that fold's training and validation
sessions (`hup.splits.protocol_splits`); ``DIR/folds.json`` names the data spec and K. A
fold's checkpoint records ``fold_data(spec, k, K)`` as its training data, never the bare
spec, so `hup evaluate` without ``--folds`` refuses it: it has seen the sessions that the
single split tests on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from hup.baselines import protocol_baselines
from hup.evaluate import FoldedReport, score_points, summarize_folds
from hup.exceptions import CheckpointError
from hup.peers import peer_baselines
from hup.recommender_contract import Recommender
from hup.splits import Split
from hup.vocab import Taxonomy
from hup.zoo.registry import load_recommender, recommender_taxonomy

__all__ = [
    "MANIFEST",
    "check_fold_manifest",
    "evaluate_fold_checkpoints",
    "fold_data",
    "fold_dir",
    "read_fold_manifest",
    "write_fold_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST = "folds.json"
"""The manifest file of a fold checkpoint directory."""


def fold_dir(directory: Path, fold: int) -> Path:
    """Where fold ``fold`` (1-based) of a fold checkpoint directory lives."""
    return directory / f"fold-{fold}"


def fold_data(data: str, fold: int, n_folds: int) -> str:
    """The training data a fold's checkpoint records: the spec and the fold."""
    return f"{data} (fold {fold} of {n_folds})"


def write_fold_manifest(directory: Path, data: str, splits: Sequence[Split]) -> Path:
    """Write ``directory/folds.json``: data spec, K, and each fold's directory and split sizes."""
    manifest = {
        "data": data,
        "folds": len(splits),
        "splits": [
            {
                "fold": s.fold,
                "dir": fold_dir(Path(), s.fold).name,
                "train": len(s.train),
                "valid": len(s.valid),
                "test": len(s.test),
                "test_start": s.test_start,
            }
            for s in splits
        ],
    }
    path = directory / MANIFEST
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return path


def read_fold_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a fold checkpoint directory; None when there is none.

    Raises:
        CheckpointError: The manifest exists but is not JSON with ``data`` and ``folds``.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable fold manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not {"data", "folds"} <= set(manifest):
        raise CheckpointError(f"{path}: a fold manifest needs 'data' and 'folds'")
    return manifest


def check_fold_manifest(directory: Path, data: str, n_folds: int) -> None:
    """Refuse a directory whose folds are not ``n_folds`` folds of ``data``.

    Raises:
        CheckpointError: No manifest, another K or another data spec; the message says which.
    """
    manifest = read_fold_manifest(directory)
    if manifest is None:
        raise CheckpointError(
            f"{directory} holds no fold checkpoints ({MANIFEST}); train them with "
            f"`hup train --folds {n_folds}`"
        )
    if manifest["folds"] != n_folds:
        raise CheckpointError(f"{directory} holds {manifest['folds']} folds, not --folds {n_folds}")
    if manifest["data"] != data:
        raise CheckpointError(
            f"{directory}'s folds were trained on {manifest['data']}; evaluate them on the "
            f"same --data (got {data})"
        )


def _load_fold(
    directory: Path, split: Split, data: str, device: str, given: Taxonomy | None
) -> tuple[Recommender, str, dict[str, Any], Taxonomy | None]:
    path = fold_dir(directory, split.fold)
    recommender, version, info = load_recommender(path, device)
    trained_on = info.get("options", {}).get("data")
    expected = fold_data(data, split.fold, split.n_folds)
    if trained_on and trained_on != expected:
        raise CheckpointError(f"{path} was trained on {trained_on}, not on {expected}")
    taxonomy = recommender_taxonomy(recommender)
    if given is not None and given != taxonomy:
        raise CheckpointError(
            f"--taxonomy: {path} was trained with another taxonomy or none, and evaluation "
            "uses the checkpoint's; drop the option"
        )
    return recommender, version, info, taxonomy


def evaluate_fold_checkpoints(
    directory: Path,
    data: str,
    splits: Sequence[Split],
    device: str = "cpu",
    baselines: bool = True,
    given_taxonomy: Taxonomy | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
    command: str | None = None,
) -> tuple[FoldedReport, list[dict[str, Any]]]:
    """Evaluate fold k's checkpoint (and the baselines, fitted on fold k) on fold k's test block.

    One fold's model is in memory at a time; the per-point figures of every fold are kept and
    pooled (`hup.evaluate.summarize_folds`).

    Args:
        directory: The fold checkpoint directory (checked against ``data`` and K first).
        data: The dataset spec, as given to `hup train --folds`.
        splits: ``protocol_splits(dataset, K)`` of the dataset it names.
        device: Where each model is loaded.
        baselines: Also run the protocol's baselines.
        given_taxonomy: A taxonomy the caller expects every fold to have been trained with.
        seed: Bootstrap seed.
        n_resamples: Bootstrap replicates.
        command: The command line, recorded in the reports.

    Returns:
        The folded report, and per fold ``{"fold", "model_version", "training"}``.

    Raises:
        CheckpointError: The directory's folds do not match, or a fold's checkpoint is
            missing, unreadable or trained on something else.
    """
    check_fold_manifest(directory, data, len(splits))
    parts, models = [], []
    for split in splits:
        recommender, version, info, taxonomy = _load_fold(
            directory, split, data, device, given_taxonomy
        )
        others = [*protocol_baselines(), *peer_baselines()] if baselines else []
        recommenders = [recommender, *others]
        logger.info("fold %d of %d: %s", split.fold, split.n_folds, version)
        parts.append(
            score_points(
                recommenders,
                split.train,
                split.valid,
                split.test,
                taxonomy=taxonomy,
                test_start=split.test_start,
            )
        )
        models.append({"fold": split.fold, "model_version": version, "training": info})
    return summarize_folds(parts, seed, n_resamples, command), models

"""The fold checkpoint layout: manifest written, read and checked; what a fold records as data."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hup.data import load_dataset
from hup.exceptions import CheckpointError
from hup.folds import (
    MANIFEST,
    check_fold_manifest,
    fold_data,
    fold_dir,
    read_fold_manifest,
    write_fold_manifest,
)
from hup.splits import protocol_splits

DATA = "synthetic:users=20,seed=1,min_events=3,max_events=6"


def test_manifest_round_trip_and_checks(tmp_path: Path) -> None:
    splits = protocol_splits(load_dataset(DATA), 4)
    assert read_fold_manifest(tmp_path) is None  # a single checkpoint has none
    path = write_fold_manifest(tmp_path, DATA, splits)
    assert path == tmp_path / MANIFEST
    manifest = read_fold_manifest(tmp_path)
    assert manifest is not None and (manifest["data"], manifest["folds"]) == (DATA, 4)
    assert [s["dir"] for s in manifest["splits"]] == [
        fold_dir(tmp_path, k).name for k in range(1, 5)
    ]
    assert sum(s["test"] for s in manifest["splits"]) == 20
    check_fold_manifest(tmp_path, DATA, 4)
    with pytest.raises(CheckpointError, match="holds 4 folds, not --folds 5"):
        check_fold_manifest(tmp_path, DATA, 5)
    with pytest.raises(CheckpointError, match="trained on synthetic:.*got jd:x"):
        check_fold_manifest(tmp_path, "jd:x", 4)
    with pytest.raises(CheckpointError, match="holds no fold checkpoints"):
        check_fold_manifest(tmp_path / "elsewhere", DATA, 4)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", orjson.dumps({"folds": 2})])
def test_a_broken_manifest_is_a_checkpoint_error_naming_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MANIFEST).write_bytes(content)
    with pytest.raises(CheckpointError, match=str(tmp_path / MANIFEST)):
        read_fold_manifest(tmp_path)


def test_fold_data_never_equals_the_spec() -> None:
    assert fold_data(DATA, 2, 5) == f"{DATA} (fold 2 of 5)"
    assert fold_data(DATA, 2, 5) != DATA

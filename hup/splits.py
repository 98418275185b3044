"""The protocol's splits: the 70/10/20 split or K rotations of it, with train_frac applied.

``../shared/docs/evaluation.md``, sections Split, Folds and Harder variants:

* one split (``n_folds`` None or 1): sessions in file order, the first 70 % train, the next
  10 % validation, the last 20 % test (`hup.sessions.split_sessions`);
* K folds: the sessions cut into K equal blocks in file order (the last one takes the
  remainder); fold k tests on block k, validates on the last 10 % of all sessions that come
  before block k in rotation order (blocks k-1, k-2, ..., wrapping around to the end of the
  file) and trains on the rest, so each session is a test session exactly once;
* ``train_frac`` (a property of the dataset spec) keeps the first part of every training set.

A training set is in rotation order, oldest first: the sessions right before the validation
set are its most recent ones, as in the single split, where rotation order is file order.
`train_frac` therefore drops the training sessions nearest to validation and test, and
models that read session order as time (recency) see the fold's own time line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hup.sessions import Dataset, Session, split_sessions

__all__ = ["Split", "fold_blocks", "keep_first", "protocol_splits"]


@dataclass(frozen=True)
class Split:
    """The sessions of one train/validation/test split.

    Attributes:
        fold: 1..n_folds (1 of 1 for the single split).
        n_folds: How many splits the protocol made of the dataset.
        train: Training sessions, oldest first (after ``train_frac``).
        valid: Validation sessions, in file order.
        test: Test sessions, in file order.
        test_start: Position of ``test[0]`` in the dataset; the test sessions are one block,
            so ``test[i]`` is session ``test_start + i``: a label that is unique across folds.
    """

    fold: int
    n_folds: int
    train: list[Session]
    valid: list[Session]
    test: list[Session]
    test_start: int


def keep_first(sessions: Sequence[Session], fraction: float) -> list[Session]:
    """The first ``floor(fraction * n)`` sessions (at least one of a non-empty list).

    Args:
        sessions: A training set, oldest first.
        fraction: In (0, 1]; 1 keeps everything.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_frac must be in (0, 1], got {fraction}")
    # The epsilon keeps 0.7 * 1000 = 700.0000000000001 and 0.29 * 100 = 28.999999999999996
    # at 700 and 29: a fraction given in decimal means the decimal count.
    n_keep = max(1, math.floor(fraction * len(sessions) + 1e-9)) if sessions else 0
    return list(sessions[:n_keep])


def fold_blocks(n_sessions: int, n_folds: int) -> list[range]:
    """The K test blocks: equal slices in file order, the last one taking the remainder."""
    if n_folds < 1 or n_folds > n_sessions:
        raise ValueError(f"{n_folds} folds need 1 <= K <= the number of sessions ({n_sessions})")
    size = n_sessions // n_folds
    return [
        range(k * size, n_sessions if k == n_folds - 1 else (k + 1) * size) for k in range(n_folds)
    ]


def protocol_splits(dataset: Dataset, n_folds: int | None = None) -> list[Split]:
    """Every split the protocol makes of ``dataset``, with its ``train_frac`` applied.

    Args:
        dataset: Sessions in file order (already cut by ``max_len`` when the spec says so).
        n_folds: None or 1 for the single 70/10/20 split; K >= 2 for K rotations.

    Returns:
        One split, or K in fold order.

    Raises:
        ValueError: ``n_folds`` is below 1 or above the number of sessions.
    """
    sessions = dataset.sessions
    if n_folds is None or n_folds == 1:
        train, valid, test = split_sessions(sessions)
        return [
            Split(
                1, 1, keep_first(train, dataset.train_frac), valid, test, len(sessions) - len(test)
            )
        ]
    n = len(sessions)
    n_valid = n // 10  # 10 % of all sessions, as in the single split
    splits = []
    for fold, block in enumerate(fold_blocks(n, n_folds), start=1):
        # The sessions before block k in rotation order, oldest first: from the block after it
        # to the end of the file, then from the start of the file to the block before it.
        before = [*sessions[block.stop :], *sessions[: block.start]]
        cut = max(0, len(before) - n_valid)
        splits.append(
            Split(
                fold=fold,
                n_folds=n_folds,
                train=keep_first(before[:cut], dataset.train_frac),
                valid=before[cut:],
                test=list(sessions[block.start : block.stop]),
                test_start=block.start,
            )
        )
    return splits

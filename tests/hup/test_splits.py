"""The protocol's splits: K rotations (fold boundaries, rotation validation), train_frac."""

from __future__ import annotations

import pytest

from hup.schema import MicroEvent
from hup.sessions import Dataset, Session, split_sessions
from hup.splits import fold_blocks, keep_first, protocol_splits


def _sessions(n: int) -> list[Session]:
    return [
        Session(
            str(i),
            str(i),
            (MicroEvent(user_id=str(i), ts=0.0, item_id="a", categories=["c"], behavior=5),),
        )
        for i in range(n)
    ]


def _dataset(n: int, train_frac: float = 1.0) -> Dataset:
    return Dataset(name="t", sessions=_sessions(n), taxonomy=None, train_frac=train_frac)


def _ids(sessions: list[Session]) -> list[int]:
    return [int(s.session_id) for s in sessions]


def test_five_folds_of_1000_sessions_test_each_block_once() -> None:
    splits = protocol_splits(_dataset(1000), 5)
    assert [(s.fold, s.n_folds) for s in splits] == [(k, 5) for k in range(1, 6)]
    for k, split in enumerate(splits):
        assert _ids(split.test) == list(range(200 * k, 200 * (k + 1)))
        assert split.test_start == 200 * k
        assert (len(split.train), len(split.valid), len(split.test)) == (700, 100, 200)
        # Train, validation and test partition the sessions.
        everything = _ids(split.train) + _ids(split.valid) + _ids(split.test)
        assert sorted(everything) == list(range(1000))
    tested = sorted(i for s in splits for i in _ids(s.test))
    assert tested == list(range(1000))


def test_validation_is_the_last_10_percent_before_the_test_block_in_rotation_order() -> None:
    splits = protocol_splits(_dataset(1000), 5)
    # Fold 1: nothing comes before block 1 in the file, so rotation wraps to the file's end.
    assert _ids(splits[0].valid) == list(range(900, 1000))
    assert _ids(splits[0].train) == list(range(200, 900))
    # Fold 3 tests on 400..599: validation is the end of block 2, training wraps around.
    assert _ids(splits[2].valid) == list(range(300, 400))
    assert _ids(splits[2].train) == [*range(600, 1000), *range(0, 300)]
    assert _ids(splits[4].valid) == list(range(700, 800))
    assert _ids(splits[4].train) == list(range(0, 700))


def test_the_last_block_takes_the_remainder() -> None:
    assert fold_blocks(1003, 5) == [
        range(0, 200),
        range(200, 400),
        range(400, 600),
        range(600, 800),
        range(800, 1003),
    ]
    splits = protocol_splits(_dataset(1003), 5)
    assert [len(s.test) for s in splits] == [200, 200, 200, 200, 203]
    assert all(len(s.valid) == 100 for s in splits)


@pytest.mark.parametrize("folds", [None, 1])
def test_no_folds_is_the_plain_70_10_20_split(folds: int | None) -> None:
    dataset = _dataset(1000)
    (split,) = protocol_splits(dataset, folds)
    assert (split.train, split.valid, split.test) == tuple(split_sessions(dataset.sessions))
    assert (split.fold, split.n_folds, split.test_start) == (1, 1, 800)


def test_train_frac_keeps_the_first_part_of_every_training_set_only() -> None:
    full, half = _dataset(1000), _dataset(1000, train_frac=0.5)
    (plain,) = protocol_splits(half)
    assert _ids(plain.train) == list(range(350))
    assert plain.valid == protocol_splits(full)[0].valid
    assert plain.test == protocol_splits(full)[0].test
    for whole, cut in zip(protocol_splits(full, 5), protocol_splits(half, 5), strict=True):
        assert cut.train == whole.train[:350]
        assert (cut.valid, cut.test) == (whole.valid, whole.test)


def test_keep_first_counts_decimal_fractions_exactly() -> None:
    sessions = _sessions(1000)
    assert len(keep_first(sessions, 0.7)) == 700
    assert len(keep_first(sessions[:100], 0.29)) == 29
    assert len(keep_first(sessions[:10], 0.01)) == 1  # never empty
    assert keep_first([], 0.5) == []
    with pytest.raises(ValueError, match="train_frac"):
        keep_first(sessions, 0.0)


@pytest.mark.parametrize("folds", [0, -2, 11])
def test_impossible_fold_counts_are_refused(folds: int) -> None:
    with pytest.raises(ValueError, match=f"{folds} folds need"):
        protocol_splits(_dataset(10), folds)


def test_k_equal_to_the_session_count_still_tests_each_session_once() -> None:
    splits = protocol_splits(_dataset(10), 10)
    assert [_ids(s.test) for s in splits] == [[i] for i in range(10)]
    assert all(len(s.valid) == 1 and len(s.train) == 8 for s in splits)

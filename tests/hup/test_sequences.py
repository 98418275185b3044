"""Sessions -> features -> training examples: the prediction points and the batches."""

from __future__ import annotations

import pytest
import torch

from hup.features import EventFeatures, FeatureSpec, Featurizer
from hup.model import FEATURE_KEYS
from hup.sequences import (
    FeaturizedSession,
    batches,
    count_clamped_gaps,
    featurize_session,
    training_positions,
)
from hup.sessions import Session
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy, build_vocabularies


def _feature(is_micro: int, item: int, item_change: int = 0) -> EventFeatures:
    """A hand-made event: only the fields `training_positions` reads carry meaning."""
    return EventFeatures(
        is_micro=is_micro,
        item=item,
        categories=(item,),
        behavior=1,
        gap=0,
        dwell=0,
        item_change=item_change,
        item_gap=0,
        category_change=(item_change,),
        category_gap=(0,),
        category_dwell=(0,),
    )


def _micro(item: int, change: bool = False) -> EventFeatures:
    return _feature(1, item, int(change))


def _dwell(item: int) -> EventFeatures:
    return _feature(0, item)


def test_positions_are_last_micro_of_each_run_and_targets_the_next_run_start() -> None:
    features = [
        _micro(1, change=True),  # 0 run A starts
        _micro(1),  # 1
        _dwell(1),  # 2 closes the visit: never a position, never a target
        _micro(2, change=True),  # 3 run B
        _dwell(2),  # 4
        _micro(2),  # 5 a new visit of the same run (no change)
        _dwell(2),  # 6
        _micro(3, change=True),  # 7 run C
        _micro(1, change=True),  # 8 run A again
        _dwell(1),  # 9
    ]
    assert training_positions(features) == [(1, 3), (5, 7), (7, 8)]


@pytest.mark.parametrize(
    "features",
    [
        [],
        [_micro(1, change=True)],
        [_micro(1, change=True), _micro(1), _dwell(1), _micro(1)],  # one run, two visits
        [_dwell(1), _dwell(1)],
    ],
)
def test_no_positions_without_a_second_run(features: list[EventFeatures]) -> None:
    assert training_positions(features) == []


def test_featurize_session_indexes_the_latest_accepted_feature(
    make_micro, make_dwell, taxonomy
) -> None:
    events = (
        make_dwell(0.0, 5.0, item="A"),  # no open visit: dropped
        make_micro(1.0, item="A"),
        make_dwell(9.0, 8.0, item="B"),  # not the open item: dropped
        make_dwell(10.0, 9.0, item="A"),
        make_micro(20.0, item="B"),
    )
    vocab = build_vocabularies(events, 3, taxonomy)
    featurizer = Featurizer(FeatureSpec(n_levels=3), vocab)
    featurized = featurize_session(featurizer, Session("s", "u1", events))
    assert featurized.feature_at_event == [-1, 0, 0, 1, 2]
    assert [f.is_micro for f in featurized.features] == [1, 0, 1]
    assert [f.item_change for f in featurized.features] == [1, 0, 1]
    assert training_positions(featurized.features) == [(0, 2)]


def test_out_of_order_timestamps_are_counted(make_micro, make_dwell, taxonomy) -> None:
    events = (
        make_micro(10.0, item="A"),
        make_micro(4.0, item="B"),  # before the previous micro event: clamped
        make_dwell(3.0, 2.0, item="B"),  # dwell events have no gap of their own
        make_micro(30.0, item="A"),
        make_micro(29.0, item="A"),  # clamped again (same run)
    )
    session = Session("s", "u1", events)
    featurizer = Featurizer(FeatureSpec(n_levels=3), build_vocabularies(events, 3, taxonomy))
    assert featurize_session(featurizer, session).n_clamped == 2
    assert count_clamped_gaps([session, session], 3, taxonomy) == 4
    in_order = Session("t", "u1", tuple(make_micro(float(t), item="AB"[t % 2]) for t in range(5)))
    assert count_clamped_gaps([in_order], 3, taxonomy) == 0


@pytest.fixture(scope="module")
def featurized() -> list[FeaturizedSession]:
    dataset = generate(SyntheticConfig(users=12, seed=7, min_events=2, max_events=10))
    taxonomy = Taxonomy(dataset.taxonomy)
    vocab = build_vocabularies(
        (e for s in dataset.sessions for e in s.events), taxonomy.n_levels, taxonomy
    )
    featurizer = Featurizer(FeatureSpec(n_levels=taxonomy.n_levels), vocab)
    sessions = [featurize_session(featurizer, s) for s in dataset.sessions]
    # One session with a single run has no training point and must be left out.
    single_run = FeaturizedSession(sessions[0].features[:1], [0])
    return [*sessions, single_run]


def _row(batch: dict[str, torch.Tensor], row: int) -> list[EventFeatures]:
    """The valid part of one batch row back as `EventFeatures`."""
    length = int(batch["valid"][row].sum())
    assert batch["valid"][row, :length].all(), "valid is a prefix"

    def value(key: str, t: int):
        v = batch[key][row, t]
        return tuple(v.tolist()) if v.ndim else int(v)

    return [EventFeatures(*(value(k, t) for k in FEATURE_KEYS)) for t in range(length)]


def test_batches_cover_usable_sessions_once_with_targets_at_target_positions(featurized) -> None:
    usable = [s.features for s in featurized if training_positions(s.features)]
    assert len(usable) == len(featurized) - 1
    seen = []
    generator = torch.Generator().manual_seed(0)
    for batch, positions, targets in batches(featurized, 5, generator):
        rows = [_row(batch, r) for r in range(batch["valid"].shape[0])]
        seen.extend(rows)
        expected = [(r, t, u) for r, f in enumerate(rows) for t, u in training_positions(f)]
        assert positions.tolist() == [[r, t] for r, t, _ in expected]
        # Positions lie in the valid area, on micro events.
        assert batch["valid"][positions[:, 0], positions[:, 1]].all()
        assert batch["is_micro"][positions[:, 0], positions[:, 1]].all()
        assert targets["item"].tolist() == [rows[r][u].item for r, _, u in expected]
        assert targets["categories"].tolist() == [
            list(rows[r][u].categories) for r, _, u in expected
        ]
        assert targets["categories"].shape == (len(expected), 3)
    assert sorted(seen) == sorted(usable)


def test_batches_group_by_length_and_shuffle_reproducibly(featurized) -> None:
    def lengths(generator):
        return [b["valid"].sum(1).tolist() for b, _, _ in batches(featurized, 4, generator)]

    in_order = lengths(None)
    flat = [n for group in in_order for n in group]
    assert flat == sorted(flat)  # no generator: shortest group first, each sorted
    first = lengths(torch.Generator().manual_seed(3))
    assert first == lengths(torch.Generator().manual_seed(3))
    assert sorted(map(sorted, first)) == sorted(map(sorted, in_order))

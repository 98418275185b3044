"""The causal featurizer: buckets, runs, visits, gaps, dwell and category dwell, event by event."""

from collections.abc import Callable

import pytest

from hup.features import EventFeatures, FeatureFlags, FeatureSpec, FeatureState, Featurizer
from hup.schema import DwellEvent, Event, MicroEvent
from hup.vocab import Taxonomy, Vocabularies

MicroFactory = Callable[..., MicroEvent]
DwellFactory = Callable[..., DwellEvent]

SPEC = FeatureSpec(n_levels=3)


@pytest.fixture
def featurizer(make_vocabularies: Callable[..., Vocabularies]) -> Featurizer:
    return Featurizer(SPEC, make_vocabularies())


def _run(
    featurizer: Featurizer, events: list[Event], state: FeatureState | None = None
) -> tuple[FeatureState, list[tuple[EventFeatures | None, FeatureFlags]]]:
    state = state if state is not None else featurizer.initial_state()
    out = []
    for event in events:
        state, features, flags = featurizer.apply(state, event)
        out.append((features, flags))
    return state, out


@pytest.mark.parametrize(("seconds", "bucket"), [
    (0.0, 0), (0.99, 0), (1.0, 1), (14.99, 1), (15.0, 2), (40.0, 3), (90.0, 4), (1e6, 4),
])  # fmt: skip
def test_gap_buckets_are_left_closed(seconds: float, bucket: int) -> None:
    assert SPEC.gap_bucket(seconds) == bucket
    assert SPEC.n_gap_buckets == 5


@pytest.mark.parametrize(("seconds", "bucket"), [
    (0.0, 0), (14.99, 0), (15.0, 1), (39.99, 1), (40.0, 2), (99.99, 2), (100.0, 3),
    (599.99, 3), (600.0, 4), (1e6, 4),
])  # fmt: skip
def test_dwell_buckets_are_left_closed(seconds: float, bucket: int) -> None:
    assert SPEC.dwell_bucket(seconds) == bucket
    assert SPEC.n_dwell_buckets == 5


def test_featurizer_rejects_vocabularies_of_another_depth(
    make_vocabularies: Callable[..., Vocabularies],
) -> None:
    with pytest.raises(ValueError, match="3 category levels, spec 2"):
        Featurizer(FeatureSpec(n_levels=2), make_vocabularies())


def _f(
    is_micro: int,
    item: int,
    behavior: int,
    gap: int,
    dwell: int,
    item_change: int,
    item_gap: int,
    category_change: tuple[int, int, int],
    category_gap: tuple[int, int, int],
    category_dwell: tuple[int, int, int],
) -> EventFeatures:
    # Item A has the category ids (1, 1, 1) and item B (1, 2, 2): see the vocabulary fixture.
    categories = (1, 1, 1) if item == 1 else (1, 2, 2)
    return EventFeatures(
        is_micro,
        item,
        categories,
        behavior,
        gap,
        dwell,
        item_change,
        item_gap,
        category_change,
        category_gap,
        category_dwell,
    )


def test_hand_built_sequence(
    featurizer: Featurizer, make_micro: MicroFactory, make_dwell: DwellFactory
) -> None:
    # Gap edges 1/15/40/90 s, dwell edges 15/40/100/600 s. A and B share c1 only.
    events: list[Event] = [
        make_micro(100.0, "A", behavior=1),  # 0: first event, run A starts
        make_micro(120.0, "A", behavior=6),  # 1: gap 20, run dwell 20
        make_dwell(125.0, 50.0, "A"),  # 2: closes the visit, run dwell := 50
        make_dwell(126.0, 60.0, "A"),  # 3: visit already closed -> dropped
        make_dwell(130.0, 70.0, "B"),  # 4: B is not open -> dropped
        make_micro(160.0, "A", behavior=9),  # 5: new visit of run A; gap 40 (from 120)
        make_micro(185.0, "A", behavior=10),  # 6: run dwell 50 + 25 = 75
        make_micro(195.0, "B", behavior=1),  # 7: run B; item gap 95 (since 100)
        make_micro(225.0, "B", behavior=4),  # 8: run dwell 30; c1 dwell 75 + 30 = 105
        make_micro(235.0, "A", behavior=2),  # 9: run A again; item gap 40 (since 195)
    ]
    expected: list[EventFeatures | None] = [
        #  micro item beh gap dwell chg igap cat_change  cat_gap    cat_dwell
        _f(1, 1, 1, 0, 0, 1, 0, (1, 1, 1), (0, 0, 0), (0, 0, 0)),
        _f(1, 1, 6, 2, 1, 0, 0, (0, 0, 0), (0, 0, 0), (1, 1, 1)),
        _f(0, 1, 6, 2, 2, 0, 0, (0, 0, 0), (0, 0, 0), (2, 2, 2)),
        None,
        None,
        _f(1, 1, 9, 3, 2, 0, 0, (0, 0, 0), (0, 0, 0), (2, 2, 2)),
        _f(1, 1, 10, 2, 2, 0, 0, (0, 0, 0), (0, 0, 0), (2, 2, 2)),
        _f(1, 2, 1, 1, 0, 1, 4, (0, 1, 1), (0, 4, 4), (2, 0, 0)),
        _f(1, 2, 4, 2, 1, 0, 4, (0, 0, 0), (0, 4, 4), (3, 1, 1)),
        _f(1, 1, 2, 1, 0, 1, 3, (0, 1, 1), (0, 3, 3), (3, 0, 0)),
    ]
    _, out = _run(featurizer, events)
    for index, ((features, flags), want) in enumerate(zip(out, expected, strict=True)):
        assert features == want, f"event {index}"
        if index == 3:
            assert flags == FeatureFlags(dropped="dwell_visit_closed")
        elif index == 4:
            assert flags == FeatureFlags(dropped="dwell_not_open_item")
        else:
            assert flags == FeatureFlags(), f"event {index}"


def test_dropped_dwell_leaves_the_state_unchanged(
    featurizer: Featurizer, make_micro: MicroFactory, make_dwell: DwellFactory
) -> None:
    state, _ = _run(featurizer, [make_micro(0.0, "A"), make_dwell(5.0, 5.0, "A")])
    for event in (make_dwell(6.0, 60.0, "A"), make_dwell(6.0, 60.0, "B")):
        new, features, flags = featurizer.apply(state, event)
        assert features is None
        assert flags.dropped is not None
        assert new is state


def test_dwell_without_any_micro_event_is_dropped(
    featurizer: Featurizer, make_dwell: DwellFactory
) -> None:
    state = featurizer.initial_state()
    new, features, flags = featurizer.apply(state, make_dwell(1.0, 3.0, "A"))
    assert (new, features, flags) == (state, None, FeatureFlags(dropped="dwell_not_open_item"))


def test_new_visit_after_dwell_adds_to_the_closed_dwell(
    featurizer: Featurizer, make_micro: MicroFactory, make_dwell: DwellFactory
) -> None:
    events: list[Event] = [
        make_micro(0.0, "A"),
        make_dwell(10.0, 30.0, "A"),  # run dwell 30 (the reported value, not the 10 s elapsed)
        make_micro(500.0, "A"),  # new visit: 30 + 0
        make_micro(520.0, "A"),  # 30 + 20 = 50
        make_dwell(530.0, 580.0, "A"),  # 30 + 580 = 610
    ]
    state, out = _run(featurizer, events)
    dwell = [f.dwell for f, _ in out if f is not None]
    assert dwell == [0, 1, 1, 2, 4]
    assert [f.item_change for f, _ in out if f is not None] == [1, 0, 0, 0, 0]
    assert state.run_dwell == pytest.approx(610.0)


def test_out_of_order_timestamps_clamp_to_zero_and_are_flagged(
    featurizer: Featurizer, make_micro: MicroFactory
) -> None:
    state, _ = _run(featurizer, [make_micro(100.0, "A"), make_micro(130.0, "A")])
    # Same item, earlier than both the previous micro event and the visit start.
    _, features, flags = featurizer.apply(state, make_micro(50.0, "A"))
    assert features is not None
    assert flags.gap_clamped
    assert (features.gap, features.dwell) == (0, 0)
    # Another item, earlier than the run start: the item and category gaps clamp too.
    _, features, flags = featurizer.apply(state, make_micro(50.0, "B"))
    assert features is not None
    assert flags.gap_clamped
    assert (features.gap, features.item_gap, features.category_gap) == (0, 0, (0, 0, 0))


def test_in_order_events_are_not_flagged(featurizer: Featurizer, make_micro: MicroFactory) -> None:
    _, out = _run(featurizer, [make_micro(100.0, "A"), make_micro(100.0, "B")])
    assert not any(flags.gap_clamped for _, flags in out)


def test_unknown_item_and_categories_get_the_oov_id(
    featurizer: Featurizer, make_micro: MicroFactory
) -> None:
    state = featurizer.initial_state()
    _, features, flags = featurizer.apply(
        state, make_micro(0.0, "Z", categories=["c1", "c1a", "nope"])
    )
    assert features is not None
    assert (features.item, features.categories) == (0, (1, 1, 0))
    assert flags.item_oov and flags.category_oov
    _, features, flags = featurizer.apply(state, make_micro(0.0, "A"))
    assert features is not None
    assert (features.item, features.categories) == (1, (1, 1, 1))
    assert not flags.item_oov and not flags.category_oov


def test_leaf_only_categories_without_taxonomy_pad_with_oov(
    featurizer: Featurizer, make_micro: MicroFactory
) -> None:
    _, features, flags = featurizer.apply(
        featurizer.initial_state(), make_micro(0.0, "A", categories=["c1a1"])
    )
    assert features is not None
    assert features.categories == (0, 0, 1)
    assert flags.category_oov and not flags.item_oov


def test_leaf_only_categories_with_taxonomy_restore_the_path(
    make_vocabularies: Callable[..., Vocabularies], taxonomy: Taxonomy, make_micro: MicroFactory
) -> None:
    featurizer = Featurizer(SPEC, make_vocabularies(taxonomy))
    state = featurizer.initial_state()
    for cats, ids in ((["c1a1"], (1, 1, 1)), (["c1b", "c1b1"], (1, 2, 2))):
        _, features, flags = featurizer.apply(state, make_micro(0.0, "A", categories=cats))
        assert features is not None
        assert features.categories == ids
        assert flags == FeatureFlags()
    # A leaf the taxonomy does not know still falls back to padding.
    _, features, flags = featurizer.apply(state, make_micro(0.0, "A", categories=["c1a", "zz"]))
    assert features is not None
    assert features.categories == (0, 1, 0)
    assert flags.category_oov


def test_categories_deeper_than_the_model_keep_the_finest_levels(
    featurizer: Featurizer, make_micro: MicroFactory
) -> None:
    event = make_micro(0.0, "B", categories=["root", "c1", "c1b", "c1b1"])
    _, features, flags = featurizer.apply(featurizer.initial_state(), event)
    assert features is not None
    assert features.categories == (1, 2, 2)
    assert not flags.category_oov


def test_apply_is_pure(
    featurizer: Featurizer, make_micro: MicroFactory, make_dwell: DwellFactory
) -> None:
    state, _ = _run(
        featurizer, [make_micro(0.0, "A"), make_dwell(3.0, 20.0, "A"), make_micro(9.0, "B")]
    )
    before = repr(state)  # repr, not ==: the state may hold NaN
    events: list[Event] = [
        make_micro(20.0, "B"),
        make_micro(30.0, "A"),
        make_dwell(25.0, 4.0, "B"),
        make_micro(1.0, "B"),
    ]
    for event in events:
        first = featurizer.apply(state, event)
        assert repr(state) == before
        second = featurizer.apply(state, event)
        assert repr(first) == repr(second)
        assert repr(state) == before

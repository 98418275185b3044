import itertools
from collections import Counter
from pathlib import Path

import pytest

from hup.jd import read_jd
from hup.schema import DwellEvent, MicroEvent
from hup.sessions import Session
from hup.synthetic import SyntheticConfig, build_taxonomy, generate, iter_sessions

CONFIG = SyntheticConfig(users=300, seed=7)


@pytest.fixture(scope="module")
def sessions() -> list[Session]:
    return generate(CONFIG).sessions


def _micro(sessions: list[Session]) -> list[MicroEvent]:
    return [e for s in sessions for e in s.events if isinstance(e, MicroEvent)]


def _visits(session: Session) -> list[tuple[list[MicroEvent], DwellEvent]]:
    """Split a session at its dwell events; fails if a dwell event is missing or extra."""
    visits, pending = [], []
    for event in session.events:
        if isinstance(event, MicroEvent):
            pending.append(event)
        else:
            assert pending, "a dwell event without a visit before it"
            visits.append((pending, event))
            pending = []
    assert not pending, "the session ends inside a visit"
    return visits


def test_same_seed_same_sessions_and_other_seed_differs(sessions: list[Session]) -> None:
    assert generate(CONFIG).sessions == sessions
    assert generate(SyntheticConfig(users=300, seed=8)).sessions != sessions


def test_a_user_does_not_depend_on_how_many_users_are_generated(sessions: list[Session]) -> None:
    assert list(iter_sessions(SyntheticConfig(users=5, seed=7))) == sessions[:5]


def test_generation_is_lazy() -> None:
    huge = SyntheticConfig(users=10**9, seed=1, levels=5, branching=8)
    first = next(iter_sessions(huge))
    assert first.user_id == "u0"
    assert all(len(e.categories) == 5 for e in first.events if isinstance(e, MicroEvent))


def test_categories_are_taxonomy_paths() -> None:
    dataset = generate(SyntheticConfig(users=50, seed=2, levels=4, branching=3))
    assert dataset.taxonomy == build_taxonomy(SyntheticConfig(levels=4, branching=3))
    assert dataset.taxonomy is not None and len(dataset.taxonomy) == 3**4
    for event in _micro(dataset.sessions):
        assert len(event.categories) == 4
        assert dataset.taxonomy[event.categories[-1]] == tuple(event.categories)


def test_session_lengths_and_time_order(sessions: list[Session]) -> None:
    for session in sessions:
        n_micro = sum(isinstance(e, MicroEvent) for e in session.events)
        assert CONFIG.min_events <= n_micro <= CONFIG.max_events
        assert {e.user_id for e in session.events} == {session.user_id}
        stamps = [e.ts for e in session.events]
        assert stamps == sorted(stamps)
        assert stamps[0] >= CONFIG.start_ts


def test_every_visit_is_followed_by_one_dwell_event_of_its_item(sessions: list[Session]) -> None:
    for session in sessions:
        previous_item = None
        for micro, dwell in _visits(session):
            assert len(micro) <= 6
            assert {e.item_id for e in micro} == {dwell.item_id}
            assert micro[0].behavior <= 5, "a visit opens with an entry behaviour"
            assert all(e.behavior >= 6 for e in micro[1:])
            inside = micro[-1].ts - micro[0].ts
            assert dwell.dwell_s >= inside
            assert dwell.ts >= micro[-1].ts + (dwell.dwell_s - inside)
            # Back-to-back visits of one sku would merge into one JD run.
            assert dwell.item_id != previous_item
            previous_item = dwell.item_id


def test_behaviour_mix_is_jd_like(sessions: list[Session]) -> None:
    counts = Counter(int(e.behavior) for e in _micro(sessions))
    share = {code: counts[code] / sum(counts.values()) for code in range(1, 11)}
    # JD samples: 5 ~ 0.48-0.54, 7 ~ 0.14-0.17, 6 ~ 0.06-0.10, 4 ~ 0.06-0.09, 9 ~ 0.06.
    assert 0.40 < share[5] < 0.58
    assert share[5] > share[7] > share[8]
    assert 0.04 < share[9] < 0.09
    assert 0.0005 < share[10] < 0.01
    assert sum(share[c] for c in (6, 7, 8)) == pytest.approx(0.3, abs=0.06)


def test_gaps_are_mostly_seconds_to_minutes(sessions: list[Session]) -> None:
    gaps = [
        b.ts - a.ts
        for s in sessions
        for a, b in itertools.pairwise(e for e in s.events if isinstance(e, MicroEvent))
    ]
    within = sum(1 <= g <= 90 for g in gaps) / len(gaps)
    assert within > 0.75


def test_next_item_is_predictable_from_the_current_leaf(sessions: list[Session]) -> None:
    # The most popular items of the leaf just visited must beat global popularity by far,
    # or a sequential model would have nothing to learn.
    train, test = sessions[:200], sessions[200:]
    starts = [[v[0][0] for v in _visits(s)] for s in train]
    popular = Counter(e.item_id for run in starts for e in run)
    by_leaf: dict[str, Counter[str]] = {}
    for event in itertools.chain.from_iterable(starts):
        by_leaf.setdefault(event.categories[-1], Counter())[event.item_id] += 1
    hits, points = Counter(), 0
    for session in test:
        visits = [v[0][0] for v in _visits(session)]
        for last, target in itertools.pairwise(visits):
            points += 1
            top = [i for i, _ in popular.most_common(21) if i != last.item_id][:20]
            leaf = by_leaf.get(last.categories[-1], Counter()).most_common(21)
            hits["pop"] += target.item_id in top
            hits["leaf"] += target.item_id in [i for i, _ in leaf if i != last.item_id][:20]
    assert hits["leaf"] / points > 2 * hits["pop"] / points


def test_layout_survives_a_jd_round_trip(tmp_path: Path) -> None:
    # Written as JD tokens and read back, a session gives the same events: the generator and
    # the JD reader share one layout.
    (session,) = iter_sessions(SyntheticConfig(users=1, seed=4))
    leaves: dict[str, int] = {}
    tokens = []
    for micro, dwell in _visits(session):
        stamps = [e.ts for e in micro] + [dwell.ts]
        for event, interval in zip(micro, itertools.pairwise(stamps), strict=True):
            leaf = leaves.setdefault(event.categories[-1], len(leaves))
            gap = int(interval[1] - interval[0])
            tokens.append(
                f"{event.item_id[1:]}+{int(event.behavior)}+{leaf}+{gap}+{int(dwell.dwell_s)}"
            )
    path = tmp_path / "round.txt"
    path.write_text(" ".join(tokens) + "\n", encoding="utf-8")
    (back,) = read_jd(path, base_ts=session.events[0].ts)

    def shape(s: Session) -> list[tuple[str, str, float, float]]:
        return [
            (
                e.kind,
                e.item_id.removeprefix("i"),
                e.ts,
                e.dwell_s if isinstance(e, DwellEvent) else 0,
            )
            for e in s.events
        ]

    assert shape(back) == shape(session)

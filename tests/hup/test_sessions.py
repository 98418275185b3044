"""Sessions: the protocol's split and the event stream a producer sends."""

import pytest

from hup.schema import MicroEvent
from hup.sessions import Session, iter_events, split_sessions


def _micro(user: str, ts: float, item: str = "i1") -> MicroEvent:
    return MicroEvent(user_id=user, ts=ts, item_id=item, categories=["c"], behavior=5)


def _session(session_id: str, user: str, *stamps: float) -> Session:
    return Session(session_id, user, tuple(_micro(user, ts) for ts in stamps))


@pytest.mark.parametrize(("n", "sizes"), [(1000, (700, 100, 200)), (10, (7, 1, 2)), (3, (2, 0, 1))])
def test_split_is_70_10_20_in_file_order(n: int, sizes: tuple[int, int, int]) -> None:
    sessions = [_session(str(i), str(i), 0.0) for i in range(n)]
    parts = split_sessions(sessions)
    assert tuple(map(len, parts)) == sizes
    assert [s.session_id for part in parts for s in part] == [s.session_id for s in sessions]


def test_iter_events_interleaves_users_by_time_but_keeps_each_user_in_order() -> None:
    # User a's second session starts "before" its first one ends; its order must still hold.
    sessions = [
        _session("a1", "a", 0.0, 10.0),
        _session("b1", "b", 1.0, 2.0, 30.0),
        _session("a2", "a", 5.0, 20.0),
    ]
    stream = list(iter_events(sessions))
    assert len(stream) == 7
    assert [e.ts for e in stream if e.user_id == "a"] == [0.0, 10.0, 5.0, 20.0]
    assert [e.ts for e in stream if e.user_id == "b"] == [1.0, 2.0, 30.0]
    assert [e.ts for e in stream][:3] == [0.0, 1.0, 2.0]

from pathlib import Path

import pytest

from hup.data import (
    Dataset,
    Session,
    iter_events,
    load_dataset,
    read_jsonl,
    split_sessions,
    write_jsonl,
)
from hup.exceptions import DataFormatError
from hup.schema import DwellEvent, Event, MicroEvent
from hup.synthetic import SyntheticConfig


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


def test_jsonl_round_trip(tmp_path: Path) -> None:
    events: list[Event] = [
        MicroEvent(user_id="u", ts=1.5, item_id="i", categories=["a", "b"], behavior=9),
        DwellEvent(kind="dwell", user_id="u", ts=2.5, item_id="i", dwell_s=1.0, event_id="e"),
    ]
    path = tmp_path / "events.jsonl"
    assert write_jsonl(events, path) == 2
    assert b'"behavior":9' in path.read_bytes()
    assert list(read_jsonl(path)) == events


def test_read_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id":"u","ts":1,"item_id":"i","categories":["c"],"behavior":5}\n\n{}\n')
    with pytest.raises(DataFormatError, match=rf"{path}, line 3: field 'user_id'"):
        list(read_jsonl(path))


def test_jd_spec_concatenates_files_in_order_without_time_overlap(tmp_path: Path) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("1+5+2+3+3\n1+5+2+90000+4\n", encoding="utf-8")
    second.write_text("7+5+2+3+3\n", encoding="utf-8")
    dataset = load_dataset(f"jd:{first},{second}")
    assert dataset.name == "first+second"
    assert dataset.taxonomy is None
    assert [s.user_id for s in dataset.sessions] == ["first:1", "first:2", "second:1"]
    end_of_first = max(e.ts for s in dataset.sessions[:2] for e in s.events)
    assert dataset.sessions[2].events[0].ts > end_of_first


def test_jd_spec_rejects_files_with_the_same_stem(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    for path in (tmp_path / "s.txt", tmp_path / "x" / "s.txt"):
        path.write_text("1+5+2+3+3\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="distinct names"):
        load_dataset(f"jd:{tmp_path / 's.txt'},{tmp_path / 'x' / 's.txt'}")


def test_synthetic_spec_sets_config_fields() -> None:
    dataset = load_dataset("synthetic:users=5,seed=3,levels=2,branching=3,start_ts=10.5")
    assert isinstance(dataset, Dataset)
    assert len(dataset.sessions) == 5
    assert dataset.taxonomy is not None and len(dataset.taxonomy) == 9
    assert "seed=3" in dataset.name
    assert min(e.ts for s in dataset.sessions for e in s.events) >= 10.5


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            "synthetic:users=5,colour=red",
            r"unknown synthetic option 'colour'; allowed: users, seed",
        ),
        ("synthetic:users", "is not key=value"),
        ("synthetic:users=many", "users='many': not int"),
        ("synthetic:users=5,levels=0", "levels >= 1"),
        ("synthetic:min_events=9,max_events=3", "min_events <= max_events"),
        ("jd:", "names no file"),
        ("csv:/tmp/x.csv", "unknown dataset scheme 'csv'"),
        ("", "unknown dataset scheme ''"),
    ],
)
def test_bad_specs_raise_format_errors(spec: str, problem: str) -> None:
    with pytest.raises(DataFormatError, match=problem):
        load_dataset(spec)


def test_every_config_field_is_an_allowed_option() -> None:
    with pytest.raises(DataFormatError) as info:
        load_dataset("synthetic:nope=1")
    for name in SyntheticConfig.__dataclass_fields__:
        assert name in str(info.value)

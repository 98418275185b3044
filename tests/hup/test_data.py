from pathlib import Path

import pytest

from hup.data import load_dataset
from hup.exceptions import DataFormatError
from hup.schema import MicroEvent
from hup.sessions import Dataset, Session, cut_session
from hup.synthetic import SyntheticConfig


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


# sku 11: one visit of 3 micro-behaviours (dwell 40); sku 22: one (dwell 25); sku 33: one visit
# of two micro-behaviours (dwell 9). Second line: a single micro-behaviour.
VARIANT_JD = (
    "11+5+7+10+40 11+7+7+20+40 11+9+7+5+40 22+2+8+30+25 33+4+7+3+9 33+6+7+1+9\n44+5+7+2+2\n"
)


def _layout(session: Session) -> list[tuple[str, str, float]]:
    return [(e.kind, e.item_id, e.ts) for e in session.events]


def test_max_len_cuts_sessions_and_leaves_the_cut_visit_open(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text(VARIANT_JD, encoding="utf-8")
    plain = load_dataset(f"jd:{path}")
    cut = load_dataset(f"jd:{path},max_len=5")
    assert cut.name == "v,max_len=5" and cut.train_frac == 1.0
    long, short = cut.sessions
    assert short == plain.sessions[1]  # 1 micro-behaviour: nothing to cut
    micro = [e for e in long.events if isinstance(e, MicroEvent)]
    assert len(micro) == 5
    base = plain.sessions[0].events[0].ts
    # The visits of 11 and 22 ended before the cut and keep their dwell events; the visit of
    # 33 goes on after it (its sixth micro-behaviour), so it keeps none: its dwell (9 s) and
    # the time of its dwell event would reveal what happened after the cut.
    assert [(k, i, ts - base) for k, i, ts in _layout(long)] == [
        ("micro", "11", 0.0),
        ("micro", "11", 10.0),
        ("micro", "11", 30.0),
        ("dwell", "11", 35.0),
        ("micro", "22", 35.0),
        ("dwell", "22", 65.0),
        ("micro", "33", 65.0),
    ]
    assert max(e.ts for e in long.events) == micro[-1].ts
    assert long.events == plain.sessions[0].events[: len(long.events)]


def test_cut_session_keeps_a_session_of_exactly_max_len_whole(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text(VARIANT_JD, encoding="utf-8")
    session = load_dataset(f"jd:{path}").sessions[0]
    assert cut_session(session, 6) == session  # its final dwell event stays
    assert cut_session(session, 100) == session
    # Cut right at a visit boundary: the visit of 22 is still open at its last micro event.
    assert [e.kind for e in cut_session(session, 4).events] == [
        "micro",
        "micro",
        "micro",
        "dwell",
        "micro",
    ]


def test_train_frac_is_carried_on_the_dataset_and_sessions_are_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text(VARIANT_JD, encoding="utf-8")
    plain = load_dataset(f"jd:{path}")
    half = load_dataset(f"jd:{path},train_frac=0.5")
    assert half.train_frac == 0.5 and plain.train_frac == 1.0
    assert half.sessions == plain.sessions
    both = load_dataset(f"jd:{path}, max_len=2 ,train_frac=0.25")
    assert both.name == "v,max_len=2,train_frac=0.25" and both.train_frac == 0.25
    assert all(sum(isinstance(e, MicroEvent) for e in s.events) <= 2 for s in both.sessions)


def test_synthetic_spec_takes_the_variant_options_too() -> None:
    plain = load_dataset("synthetic:users=6,seed=1,min_events=5,max_events=30")
    cut = load_dataset(
        "synthetic:users=6,seed=1,min_events=5,max_events=30,max_len=4,train_frac=0.5"
    )
    assert cut.train_frac == 0.5 and cut.taxonomy == plain.taxonomy
    assert cut.sessions == [cut_session(s, 4) for s in plain.sessions]
    assert cut.name == f"{plain.name},max_len=4,train_frac=0.5"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("max_len=0", "max_len='0': expected an integer >= 1"),
        ("max_len=2.5", "max_len='2.5': expected an integer >= 1"),
        ("max_len=", "max_len='': expected an integer >= 1"),
        ("train_frac=0", "train_frac='0': expected a number in \\(0, 1\\]"),
        ("train_frac=1.5", "train_frac='1.5'"),
        ("train_frac=nan", "train_frac='nan'"),
        ("train_frac=half", "train_frac='half'"),
        ("max_len=3,max_len=4", "max_len is given twice"),
        ("maxlen=3", "unknown jd option 'maxlen'.*allowed: max_len, train_frac"),
    ],
)
def test_bad_variant_options_name_the_option(tmp_path: Path, options: str, problem: str) -> None:
    path = tmp_path / "v.txt"
    path.write_text(VARIANT_JD, encoding="utf-8")
    with pytest.raises(DataFormatError, match=problem):
        load_dataset(f"jd:{path},{options}")


def test_bad_synthetic_variant_option_names_it() -> None:
    with pytest.raises(DataFormatError, match="train_frac='2'"):
        load_dataset("synthetic:users=3,train_frac=2")
    with pytest.raises(DataFormatError) as info:
        load_dataset("synthetic:nope=1")
    assert "max_len" in str(info.value) and "train_frac" in str(info.value)

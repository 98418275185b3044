from pathlib import Path

import pytest

from hup.exceptions import DataFormatError
from hup.jd import DEFAULT_BASE_TS, SESSION_SPACING_S, read_jd
from hup.schema import Behavior, DwellEvent, MicroEvent

JD_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "jd"

# sku 11: one visit of 3 micro-behaviours (dwell 40); sku 22: one; then sku 11 again twice in
# a row with different dwell values, i.e. two visits back to back.
SAMPLE = "11+5+7+10+40 11+7+7+20+40 11+9+7+5+40 22+2+8+30+25 11+4+7+3+3 11+6+7+1+9\n"


def _write(tmp_path: Path, text: str, name: str = "tiny.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_timestamps_are_rebuilt_from_intervals(tmp_path: Path) -> None:
    (session,) = read_jd(_write(tmp_path, SAMPLE), base_ts=1000.0)
    micro = [e for e in session.events if isinstance(e, MicroEvent)]
    assert [e.ts for e in micro] == [1000.0, 1010.0, 1030.0, 1035.0, 1065.0, 1068.0]
    assert [e.behavior for e in micro][:3] == [Behavior(5), Behavior(7), Behavior(9)]
    assert micro[0].categories == ["7"]
    assert micro[0].item_id == "11"
    assert session.user_id == session.session_id == "tiny:1"
    assert [e.event_id for e in micro] == [f"tiny:1:{i}" for i in range(6)]


def test_dwell_event_closes_each_visit_at_the_next_micro_time(tmp_path: Path) -> None:
    (session,) = read_jd(_write(tmp_path, SAMPLE), base_ts=1000.0)
    layout = [(e.kind, e.item_id, e.ts) for e in session.events]
    assert layout == [
        ("micro", "11", 1000.0),
        ("micro", "11", 1010.0),
        ("micro", "11", 1030.0),
        ("dwell", "11", 1035.0),
        ("micro", "22", 1035.0),
        ("dwell", "22", 1065.0),
        ("micro", "11", 1065.0),
        ("dwell", "11", 1068.0),  # same sku, new dwell value: a new visit
        ("micro", "11", 1068.0),
        ("dwell", "11", 1069.0),  # the last visit ends after its own interval
    ]
    dwells = [e.dwell_s for e in session.events if isinstance(e, DwellEvent)]
    assert dwells == [40.0, 25.0, 3.0, 9.0]


def test_default_base_puts_each_line_on_its_own_day_and_skips_blank_lines(tmp_path: Path) -> None:
    sessions = read_jd(_write(tmp_path, "1+5+2+3+3\n\n   \n4+5+2+3+3\n"))
    assert [s.user_id for s in sessions] == ["tiny:1", "tiny:4"]
    assert sessions[0].events[0].ts == DEFAULT_BASE_TS
    assert sessions[1].events[0].ts == DEFAULT_BASE_TS + 3 * SESSION_SPACING_S


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1+5+2+3", "expected 5"),
        ("1+5+2+3+3+9", "expected 5"),
        ("1+x+2+3+3", "behavior 'x' is not an integer"),
        ("1+5+2+3.5+3", "interval '3.5' is not an integer"),
        ("a1+5+2+3+3", "sku 'a1' is not an integer"),
        ("1+11+2+3+3", "behavior 11 is outside 1..10"),
        ("1+0+2+3+3", "behavior 0 is outside 1..10"),
        ("1+5+2+-3+3", "interval -3 is negative"),
        ("1+5+2+3+-1", "dwell -1 is negative"),
    ],
)
def test_malformed_token_names_file_line_and_token(tmp_path: Path, line: str, problem: str) -> None:
    path = _write(tmp_path, f"1+5+2+3+3\n\n1+5+2+3+3 {line}\n")
    with pytest.raises(DataFormatError) as info:
        read_jd(path)
    message = str(info.value)
    assert f"{path}, line 3, token 1" in message
    assert problem in message


def test_non_utf8_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"1+5+2+3+3 \xff\n")
    with pytest.raises(DataFormatError, match="not UTF-8"):
        read_jd(path)


@pytest.mark.parametrize(
    ("name", "micro", "skus", "leaves"),
    [
        ("JD_Appliances_sample.txt", 57_332, 9_134, 71),
        ("JD_Computers_sample.txt", 43_014, 9_289, 77),
    ],
)
def test_real_files_match_the_published_statistics(
    name: str, micro: int, skus: int, leaves: int
) -> None:
    path = JD_DIR / name
    if not path.is_file():
        pytest.skip(f"JD sample {path} is absent (it lives beside the repo, never in it)")
    sessions = read_jd(path)
    events = [e for s in sessions for e in s.events if isinstance(e, MicroEvent)]
    assert len(sessions) == 1000
    assert len(events) == micro
    assert len({e.item_id for e in events}) == skus
    assert len({e.categories[-1] for e in events}) == leaves
    for session in sessions:
        stamps = [e.ts for e in session.events]
        assert stamps == sorted(stamps)
        assert isinstance(session.events[-1], DwellEvent)

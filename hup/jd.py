"""Reader of the JD Micro Behaviors session files into micro and dwell events."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hup.exceptions import DataFormatError
from hup.schema import Behavior, DwellEvent, Event, MicroEvent
from hup.sessions import Session

__all__ = ["DEFAULT_BASE_TS", "SESSION_SPACING_S", "read_jd"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_TS = 1_600_000_000.0
# The files carry no dates, so each line gets its own day; per-user order is all that matters,
# and a day apart keeps nearly every session (all but one per sample file) from overlapping.
SESSION_SPACING_S = 86_400.0

_INTEGER = re.compile(r"-?[0-9]+")  # ASCII only: int() would also accept other Unicode digits
_FIELDS = ("sku", "behavior", "category", "interval", "dwell")


def _parse_token(token: str, where: str) -> tuple[str, Behavior, str, int, int]:
    fields = token.split("+")
    if len(fields) != len(_FIELDS):
        raise DataFormatError(
            f"{where}: expected {len(_FIELDS)} '+'-separated fields "
            f"(sku+behavior+category+interval+dwell), got {len(fields)} in {token!r}"
        )
    for name, value in zip(_FIELDS, fields, strict=True):
        if not _INTEGER.fullmatch(value):
            raise DataFormatError(f"{where}: {name} {value!r} is not an integer in {token!r}")
    sku, code, category, interval, dwell = fields
    if not 1 <= int(code) <= len(Behavior):
        raise DataFormatError(f"{where}: behavior {code} is outside 1..{len(Behavior)}")
    if int(interval) < 0:
        raise DataFormatError(f"{where}: interval {interval} is negative")
    if int(dwell) < 0:
        raise DataFormatError(f"{where}: dwell {dwell} is negative")
    return sku, Behavior(int(code)), category, int(interval), int(dwell)


def _parse_line(line: str, user_id: str, base_ts: float, where: str) -> tuple[Event, ...]:
    tokens = [_parse_token(t, f"{where}, token {i}") for i, t in enumerate(line.split())]
    events: list[Event] = []
    offset = 0  # integer seconds since base_ts: exact, unlike a running float sum
    for i, (sku, behavior, category, interval, dwell) in enumerate(tokens):
        events.append(
            MicroEvent(
                user_id=user_id,
                ts=base_ts + offset,
                item_id=sku,
                categories=[category],
                behavior=behavior,
                event_id=f"{user_id}:{i}",
            )
        )
        offset += interval
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        # A visit is a run of one sku sharing one dwell value. The user left the page by the
        # next micro-behaviour, so the dwell event carries that time (ts_i + interval_i).
        if following is None or (following[0], following[4]) != (sku, dwell):
            events.append(
                DwellEvent(
                    kind="dwell",
                    user_id=user_id,
                    ts=base_ts + offset,
                    item_id=sku,
                    dwell_s=dwell,
                    event_id=f"{user_id}:{i}:dwell",
                )
            )
    return tuple(events)


def read_jd(path: Path, base_ts: float | None = None) -> list[Session]:
    """Read a JD Micro Behaviors file, one session per non-blank line.

    Timestamps are rebuilt from the intervals (a JD interval is the time to the next
    micro-behaviour): the session on line index ``k`` starts at
    ``base_ts + k * SESSION_SPACING_S``. Each visit (a maximal run of tokens with the same sku
    and dwell) is closed by a `DwellEvent` right after its last micro event.

    Args:
        path: The JD file; its stem prefixes user, session and event ids.
        base_ts: Start time of the first line's session; `DEFAULT_BASE_TS` when None.

    Returns:
        The sessions in file order; user and session id are ``f"{path.stem}:{line_no}"``.

    Raises:
        DataFormatError: A token or line is malformed; the message names file, line, token.
    """
    start = DEFAULT_BASE_TS if base_ts is None else base_ts
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc})") from exc
    sessions = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        user_id = f"{path.stem}:{index + 1}"
        events = _parse_line(
            line, user_id, start + index * SESSION_SPACING_S, f"{path}, line {index + 1}"
        )
        sessions.append(Session(session_id=user_id, user_id=user_id, events=events))
    logger.info("read %d JD sessions from %s", len(sessions), path)
    return sessions

"""The rate-limited log of dead letters: a flood logs a few lines and a count."""

from __future__ import annotations

import logging

import pytest

from stream.ratelog import RateLimitedLog


def test_a_flood_logs_a_few_lines_then_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelog"),
        lines=3,
        window_s=60.0,
        what="dead letters",
        clock=lambda: now[0],
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for i in range(25):
            log.log("letter %d", i)
        assert [r.getMessage() for r in caplog.records] == ["letter 0", "letter 1", "letter 2"]
        assert log.suppressed == 22
        now[0] = 61.0
        log.log("letter %d", 25)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[3].startswith("22 more dead letters not logged in the last 61 s")
    assert messages[4] == "letter 25" and log.suppressed == 0


def test_a_quiet_window_logs_no_summary(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelog"), lines=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        log.log("one")
        now[0] = 120.0
        log.log("two")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]

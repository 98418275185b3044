"""Log lines that a flood of bad input cannot multiply: at most a few per interval.

A producer gone wrong can send thousands of bad records a second; one WARNING line per
dead letter would then bury every other line of the worker's log (and cost more than
the dead letters). The counts stay exact in the metrics (``hup_events_total{outcome=
"dlq"}`` and ``over_limit_*``); the log keeps examples and says how many it left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["DEAD_LETTER_LINES", "DEAD_LETTER_WINDOW_S", "RateLimitedLog"]

# At most this many dead-letter lines per window, then one summary line per window.
DEAD_LETTER_LINES = 10
DEAD_LETTER_WINDOW_S = 60.0


class RateLimitedLog:
    """At most ``lines`` lines per ``window_s`` seconds on ``logger``; the rest are counted.

    When a window with left-out lines has passed, the next call first logs how many were
    left out, so a quiet period after a flood still reports it once the next line comes.
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        *,
        lines: int = DEAD_LETTER_LINES,
        window_s: float = DEAD_LETTER_WINDOW_S,
        what: str = "lines",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bind the logger; ``what`` names the left-out lines in the summary."""
        self._logger = logger
        self._level = level
        self._lines = lines
        self._window_s = window_s
        self._what = what
        self._clock = clock
        self._window_start = clock()
        self._logged = 0
        self.suppressed = 0  # left out in the current window

    def log(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless this window has had its lines."""
        now = self._clock()
        if now - self._window_start >= self._window_s:
            if self.suppressed:
                self._logger.log(
                    self._level,
                    "%d more %s not logged in the last %.0f s (the metrics count them all)",
                    self.suppressed,
                    self._what,
                    now - self._window_start,
                )
            self._window_start, self._logged, self.suppressed = now, 0, 0
        if self._logged < self._lines:
            self._logged += 1
            self._logger.log(self._level, message, *args)
        else:
            self.suppressed += 1

"""The worker's one-line refusal to start, importable before faust's internals are checked.

`stream.worker.main` refuses a faust that lacks an internal the guards patch before it
imports any module that touches faust's private parts (`stream.internals`), so this
module imports nothing from faust; `stream.startup` re-exports both names.
"""

from __future__ import annotations

import sys
from typing import NoReturn

__all__ = ["EXIT_CANNOT_START", "refuse_to_start"]

# The exit status of a worker that refuses to start (as the CLIs' usage errors).
EXIT_CANNOT_START = 2


def refuse_to_start(reason: str) -> NoReturn:
    """End the process before it starts: ``reason`` in one line on stderr, exit status 2."""
    print(f"hup worker: cannot start: {reason}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CANNOT_START)

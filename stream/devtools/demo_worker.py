"""The demo's worker subprocess: start it with a log file, watch it, read its log, stop it."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

__all__ = ["WorkerError", "WorkerProcess"]

# faust drains, commits and closes its tables on SIGTERM; give it time before SIGKILL.
_STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerError(RuntimeError):
    """The worker did not start, died, or never consumed; its log says why."""


def _die_with_parent() -> None:
    # In the child before exec: if the demo is SIGKILLed its cleanup never runs, so ask
    # the kernel to SIGTERM the worker when the demo dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerProcess:
    """A running ``python -m stream.worker`` whose output goes to ``log_path``."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        """Wrap a started process (use `start`)."""
        self.process = process
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        env: Mapping[str, str],
        log_path: Path,
        argv: list[str] | None = None,
    ) -> WorkerProcess:
        """Launch the worker (default ``python -m stream.worker``) with ``env``.

        Its own session, so a Ctrl-C in the terminal reaches only the demo, which then
        stops the worker in order (after the replay, before the broker).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(  # our own interpreter and module
                argv or [sys.executable, "-m", "stream.worker"],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def check(self) -> None:
        """Raise `WorkerError` if the worker has exited."""
        code = self.process.poll()
        if code is not None:
            raise WorkerError(f"exited with code {code}")

    def tail(self, lines: int = 30) -> list[str]:
        """The last lines of the worker's log."""
        try:
            with self.log_path.open("rb") as log_file:
                last = deque(log_file, maxlen=lines)
        except OSError:
            return []
        return [line.decode(errors="replace").rstrip() for line in last]

    def stop(self, grace: float = _STOP_GRACE_S) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the exit code."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(grace)
        return int(self.process.returncode)

"""Entry point of the profile worker: ``python -m stream.worker``.

Equivalent to ``faust -A stream.app worker --without-web -l info`` (the web
flag follows HUP_WEB_PORT, the level HUP_LOG_LEVEL). Both read every setting
from the environment (see `stream.settings.Settings`). The worker refuses to
start, with one line on stderr and exit status 2 (`stream.startup.refuse_to_start`),
when HUP_MODEL is unset or unreadable, its web or metrics port is taken, no broker
answers within HUP_STARTUP_TIMEOUT_S, or the installed faust lacks an internal its
guards patch (`stream.guards.internals`, checked here before the app's modules,
which use them, are imported). SIGTERM/SIGINT stop it gracefully: the agent
finishes or abandons its batch (an abandoned batch is not acked), faust commits
acked offsets and flushes its producer.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stream.guards import FaustInternalsError, check_internals
from stream.settings import Settings
from stream.startup import refuse_to_start

__all__ = ["main", "worker_argv"]


def worker_argv(settings: Settings) -> list[str]:
    """The ``faust worker`` arguments for these settings."""
    web = ["--web-port", str(settings.web_port)] if settings.web_port else ["--without-web"]
    return ["worker", *web, "--loglevel", settings.log_level]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the worker until it is stopped; extra ``argv`` is passed on to ``faust worker``."""
    settings = Settings()
    try:
        # Before stream.app is imported: its modules import some of these internals.
        check_internals()
    except FaustInternalsError as exc:
        refuse_to_start(str(exc))
    # faust's CLI (click) reads sys.argv; the app module builds the app from the
    # same environment, so import it only after the arguments are in place.
    extra = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0], *worker_argv(settings), *extra]
    from stream.app import app

    app.main()


if __name__ == "__main__":
    main()

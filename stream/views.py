"""The worker's HTTP API: the latest profile of a user, liveness and readiness.

``GET /profiles/{user_id}`` answers from the ``latest-profile`` table, which holds
the last profile message published for each user as a compact record
(`stream.profile`: the vectors as float32 bytes, about half the message's size), from
which the answer is rebuilt byte for byte as published (the output schema,
stream/schemas/profile.schema.json). The profile cannot be recomputed from the state
instead: it is what `Profiler.apply` returns when *stepping* an event, and the message
also carries the event's ``ts``/``event_id`` and the ``published_ts``, which the state
does not keep. The agent stages each user's last profile with the user's state and
writes both at its next commit (`stream.agents.ProfileBatches`); the view answers from
the staged record first, so a profile is served from the batch that published it on.
A staged profile has been sent but may not be delivered yet: a reader can see it a few
milliseconds before the topic's consumers do, and after a crash the restarted worker
publishes it again.

The table is co-partitioned with the state and the input (keyed by user id), and
`app.table_route` sends the request to the worker owning the key's partition.

With HUP_API_TOKEN set, ``/profiles`` answers only requests that carry
``Authorization: Bearer <token>`` (checked before routing, and again by the owner,
which receives the same header; every worker of a cluster needs the same token).
``/health`` and ``/ready`` stay open for probes and carry no user data. A request
aiohttp cannot parse (a URL or header line over its 8190-byte limit) is answered 400
and logged as one INFO line instead of aiohttp's ERROR with a traceback.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Protocol, cast

import faust
import orjson
from aiohttp.http_exceptions import BadHttpMessage
from faust.exceptions import ConsumerNotStarted
from faust.tables.manager import TableManager
from faust.types import TableT
from faust.web import Request, Response, View

from stream.guards import StagedTable
from stream.profile import LatestRecordError, render_latest

__all__ = [
    "UNAUTHORIZED",
    "UNKNOWN_USER",
    "UNREADABLE",
    "Records",
    "authorized",
    "install_views",
    "is_ready",
    "lookup_profile",
    "quiet_bad_requests",
]

UNKNOWN_USER = orjson.dumps({"error": "unknown user"})
UNREADABLE = orjson.dumps({"error": "stored profile unreadable"})
UNAUTHORIZED = {"error": "missing or wrong bearer token"}
_JSON = "application/json"
logger = logging.getLogger(__name__)
_Handler = Callable[..., Awaitable[Response]]


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (always, if no token).

    Compared in constant time, so the answer's timing does not reveal a prefix.
    """
    if token is None:
        return True
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values may hold undecodable bytes (surrogate escapes): compare bytes.
    return hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
    )


def _guarded(token: str | None, max_id_chars: int) -> Callable[[_Handler], _Handler]:
    """Refuse a request without the token (401) or with an over-long user id (400)."""

    def decorate(handler: _Handler) -> _Handler:
        @wraps(handler)
        async def get(web: View, request: Request, *args: Any, **kwargs: Any) -> Response:
            if not authorized(request.headers.get("Authorization"), token):
                return web.json(
                    UNAUTHORIZED, status=401, headers={"WWW-Authenticate": 'Bearer realm="hup"'}
                )
            user_id = request.match_info.get("user_id", "")
            if len(user_id) > max_id_chars:
                error = f"user id of {len(user_id)} characters, over the limit of {max_id_chars}"
                return web.json({"error": error}, status=400)
            return await handler(web, request, *args, **kwargs)

        return get

    return decorate


class _BadRequestFilter(logging.Filter):
    """aiohttp's ERROR-with-traceback for an unparsable request, as one INFO line.

    Such a request is the client's error (aiohttp answers it 400), and anyone who can
    reach the port could otherwise fill the log with tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            detail = re.sub(r"\s+", " ", str(error.message)).strip()[:200]
            record.msg = "answered 400 to a malformed or over-long HTTP request from %s: %s"
            record.args = (remote, detail)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_bad_requests() -> None:
    """Install `_BadRequestFilter` on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequestFilter) for f in server_log.filters):
        server_log.addFilter(_BadRequestFilter())


class Records(Protocol):
    """Latest-profile records by user-id bytes (a table, or staged records before it)."""

    def get(self, key: bytes) -> bytes | None:
        """The record of ``key``, or None."""
        ...


def lookup_profile(table: Records, user_id: str) -> tuple[int, bytes]:
    """The HTTP status and JSON body for ``GET /profiles/{user_id}``.

    Args:
        table: The latest-profile record per user-id bytes (`stream.profile`).
        user_id: The user id from the URL.

    Returns:
        ``(200, profile message)``, ``(404, {"error": "unknown user"})``, or
        ``(500, {"error": ...})`` (logged) for a record that cannot be read.
    """
    raw = table.get(user_id.encode())
    if raw is None:
        return 404, UNKNOWN_USER
    try:
        return 200, render_latest(user_id, raw)
    except LatestRecordError as exc:
        logger.error("user %r: latest-profile record unreadable: %s", user_id[:200], exc)
        return 500, UNREADABLE


def is_ready(*, rebalancing: bool, recovered: bool, assigned: int) -> bool:
    """Whether the worker serves its partitions: assigned, not rebalancing, tables recovered."""
    return assigned > 0 and recovered and not rebalancing


def _readiness(app: faust.App) -> tuple[bool, dict[str, Any]]:
    try:
        assigned = len(app.consumer.assignment())
    except ConsumerNotStarted:  # the web server can answer before the consumer runs
        assigned = 0
    # TableManagerT does not declare `recovery`; faust's one implementation has it.
    recovered = cast(TableManager, app.tables).recovery.completed.is_set()
    detail = {"rebalancing": app.rebalancing, "recovered": recovered, "assigned": assigned}
    return is_ready(rebalancing=app.rebalancing, recovered=recovered, assigned=assigned), detail


class _StagedFirst:
    """The latest-profile records as the view reads them: staged ones before the table's."""

    def __init__(self, staged: StagedTable, table: Records) -> None:
        self._staged = staged
        self._table = table

    def get(self, key: bytes) -> bytes | None:
        value = self._staged.get(key)
        return value if value is not None else self._table.get(key)


def install_views(
    app: faust.App,
    latest: TableT,
    *,
    staged: StagedTable | None = None,
    token: str | None = None,
    max_id_chars: int = 256,
) -> None:
    """Register ``/profiles/{user_id}``, ``/health`` and ``/ready`` on ``app``'s web server.

    Args:
        app: The worker app.
        latest: The latest-profile table.
        staged: The agent's latest profiles not written to ``latest`` yet.
        token: The bearer token ``/profiles`` requires (HUP_API_TOKEN); None: none.
        max_id_chars: Longer user ids are answered 400 (HUP_MAX_ID_CHARS: none is stored).
    """
    quiet_bad_requests()
    records: Records = latest if staged is None else _StagedFirst(staged, latest)

    @app.page("/profiles/{user_id}")
    @_guarded(token, max_id_chars)
    @app.table_route(table=latest, match_info="user_id")
    async def profile(web: View, request: Request, user_id: str) -> Response:
        # No current event here: faust's RocksDB store looks the key up in every
        # partition database this worker has, and only the owner's holds it.
        status, body = lookup_profile(records, user_id)
        return web.bytes(body, content_type=_JSON, status=status)

    @app.page("/health")
    async def health(web: View, request: Request) -> Response:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: View, request: Request) -> Response:
        ok, detail = _readiness(app)
        return web.json({"ready": ok, **detail}, status=200 if ok else 503)

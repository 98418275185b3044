"""The worker's HTTP API: the latest profile of a user, liveness and readiness.

``GET /profiles/{user_id}`` answers from the ``latest-profile`` table, which holds
the last profile message published for each user, byte for byte (the output
schema, stream/schemas/profile.schema.json). Storing it costs one profile of
bytes per user, but is exact and cheap to serve. Recomputing it from the state
would not be: a profile is what `Profiler.apply` returns when *stepping* an event,
so it cannot be re-derived from the state alone without stepping again, and the
message also carries the event's ``ts``/``event_id`` and the ``published_ts``,
which the state does not keep. The agent writes the table in the same batch as
the state, after the profiles are delivered and before the state, so a served
profile has always been published, and a crash in between re-publishes and
rewrites it (see `stream.agents.process_and_publish`).

The table is co-partitioned with the state and the input (keyed by user id), and
`app.table_route` sends the request to the worker owning the key's partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import faust
import orjson
from faust.exceptions import ConsumerNotStarted
from faust.tables.manager import TableManager
from faust.types import TableT
from faust.web import Request, Response, View

__all__ = ["UNKNOWN_USER", "install_views", "is_ready", "lookup_profile"]

UNKNOWN_USER = orjson.dumps({"error": "unknown user"})
_JSON = "application/json"


def lookup_profile(table: Mapping[bytes, bytes], user_id: str) -> tuple[int, bytes]:
    """The HTTP status and JSON body for ``GET /profiles/{user_id}``.

    Args:
        table: The latest profile message per user-id bytes.
        user_id: The user id from the URL.

    Returns:
        ``(200, profile message)``, or ``(404, {"error": "unknown user"})``.
    """
    raw = table.get(user_id.encode())
    if raw is None:
        return 404, UNKNOWN_USER
    return 200, raw


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


def install_views(app: faust.App, latest: TableT) -> None:
    """Register ``/profiles/{user_id}``, ``/health`` and ``/ready`` on ``app``'s web server."""

    @app.page("/profiles/{user_id}")
    @app.table_route(table=latest, match_info="user_id")
    async def profile(web: View, request: Request, user_id: str) -> Response:
        # No current event here: faust's RocksDB store looks the key up in every
        # partition database this worker has, and only the owner's holds it.
        status, body = lookup_profile(latest, user_id)
        return web.bytes(body, content_type=_JSON, status=status)

    @app.page("/health")
    async def health(web: View, request: Request) -> Response:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: View, request: Request) -> Response:
        ok, detail = _readiness(app)
        return web.json({"ready": ok, **detail}, status=200 if ok else 503)

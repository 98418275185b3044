"""The profile query API without Kafka: lookups, readiness, the views and the latest table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace

import faust
import orjson
import pytest
import torch
from aiohttp import web
from faust.exceptions import SameNode
from faust.types import TP, Message
from faust.web import Response
from prometheus_client import CollectorRegistry

from hup.runtime import Profiler
from hup.sessions import Dataset, iter_events
from state.store import MemoryStore
from stream.agents import ProfileBatches, process_and_send
from stream.app import create_app, faust_options
from stream.guards.tables import BatchStore, StagedTable
from stream.metrics import Metrics
from stream.processor import InputRecord, Processor
from stream.settings import Settings
from stream.topics import LATEST_TABLE, topic_specs
from stream.views import UNKNOWN_USER, authorized, is_ready, lookup_profile, quiet_bad_requests


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _records(events) -> list[InputRecord]:
    records = []
    for offset, event in enumerate(events):
        value = orjson.dumps(event.model_dump(mode="json", exclude_none=True))
        records.append(InputRecord(value, "mb", 0, offset, event.user_id.encode(), 1.0))
    return records


async def _delivered(key: bytes | None, value: bytes) -> asyncio.Future[object]:
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def test_lookup_returns_the_stored_message_or_unknown_user() -> None:
    table = {b"alice": b'{"user_id":"alice"}'}

    assert lookup_profile(table, "alice") == (200, b'{"user_id":"alice"}')
    assert lookup_profile(table, "bob") == (404, UNKNOWN_USER)
    assert orjson.loads(UNKNOWN_USER) == {"error": "unknown user"}


def test_ready_only_when_assigned_recovered_and_not_rebalancing() -> None:
    assert is_ready(rebalancing=False, recovered=True, assigned=3)
    assert not is_ready(rebalancing=True, recovered=True, assigned=3)
    assert not is_ready(rebalancing=False, recovered=False, assigned=3)
    assert not is_ready(rebalancing=False, recovered=True, assigned=0)


@pytest.mark.parametrize("coalesce", [False, True])
def test_the_batch_writes_each_users_last_published_profile(
    profiler: Profiler, traffic: Dataset, coalesce: bool
) -> None:
    records = _records(iter_events(traffic.sessions[:4]))
    latest = MemoryStore()
    sent: list[tuple[bytes | None, bytes]] = []

    async def send(key: bytes | None, value: bytes) -> asyncio.Future[object]:
        sent.append((key, value))
        return await _delivered(key, value)

    async def run() -> None:
        sent = await process_and_send(
            records,
            BatchStore(MemoryStore()),
            Processor(profiler, coalesce=coalesce, require_user_key=True),
            send,
            _delivered,
            Metrics(CollectorRegistry()),
            latest=latest,
        )
        await sent.delivered

    asyncio.run(run())

    last = {key: value for key, value in sent}
    assert len(last) == 4 and len(latest) == 4
    for key, value in last.items():
        assert key is not None
        # Stored as a compact record (stream.profile), served byte for byte as published.
        assert lookup_profile(latest, key.decode()) == (200, value)
        stored = latest.get(key)
        assert stored is not None and len(stored) < 0.7 * len(value)


def _event(app: faust.App, record: InputRecord) -> faust.Event:
    message = Message(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=0.0,
        timestamp_type=0,
        headers={},
        key=record.key,
        value=record.value,
        checksum=None,
        tp=TP(record.topic, record.partition),
    )
    return faust.Event(app, record.key, record.value, {}, message)


def test_a_failed_delivery_writes_no_latest_profile(profiler: Profiler, traffic: Dataset) -> None:
    state: dict[bytes, bytes] = {}
    latest: dict[bytes, bytes] = {}

    async def failing(key: bytes | None, value: bytes) -> asyncio.Future[object]:
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_exception(RuntimeError("broker down"))
        return done

    async def confirm() -> None:
        pass

    processor = Processor(profiler, require_user_key=True)
    batches = ProfileBatches(
        StagedTable(state),
        StagedTable(latest),
        confirm,
        lambda: processor,
        failing,
        _delivered,
        Metrics(CollectorRegistry()),
        save_interval_s=3.0,
        save_max_bytes=2**26,
    )
    app = faust.App("views-failed-test")
    events = [_event(app, r) for r in _records(iter_events(traffic.sessions[:2]))]

    async def run() -> None:
        assert await batches.handle(events, lambda: True)
        assert len(batches.latest) == 2  # staged: the view may serve them already
        with pytest.raises(RuntimeError, match="broker down"):
            await batches.save(lambda: True)

    asyncio.run(run())
    assert latest == {} and state == {}
    assert len(batches.latest) == 0  # and no longer served


@pytest.fixture
def app(profiler: Profiler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    app = create_app(Settings(app_id="views-test", datadir=tmp_path), profiler=profiler)

    async def same_node(*args: object, **kwargs: object) -> None:
        raise SameNode()  # as the router does when this worker owns the key

    monkeypatch.setattr(app.router, "route_req", same_node)
    return app


def test_the_latest_table_is_co_partitioned_and_backed_up(app, profiler: Profiler) -> None:
    latest = app.tables[LATEST_TABLE]
    settings = Settings(app_id="views-test")

    assert latest.partitions == app.tables["profile-state"].partitions == settings.partitions
    specs = {s.name: s for s in topic_specs(settings)}
    assert specs[f"views-test-{LATEST_TABLE}-changelog"].config == {"cleanup.policy": "compact"}


def test_the_views_answer_from_the_latest_table(app) -> None:
    views = app.web.views
    assert {"/profiles/{user_id}", "/health", "/ready"} <= set(views)
    app.tables[LATEST_TABLE]._data = {b"alice": b'{"user_id":"alice"}'}

    def request(**match_info: str) -> SimpleNamespace:
        return SimpleNamespace(match_info=match_info, headers={})

    async def get(path: str, **match_info: str):
        return await views[path].get(request(**match_info), **match_info)

    found = asyncio.run(get("/profiles/{user_id}", user_id="alice"))
    missing = asyncio.run(get("/profiles/{user_id}", user_id="bob"))
    health = asyncio.run(get("/health"))

    assert (found.status, found.body) == (200, b'{"user_id":"alice"}')
    assert found.content_type == "application/json"
    assert missing.status == 404 and orjson.loads(missing.body) == {"error": "unknown user"}
    assert health.status == 200


def test_the_profile_view_answers_from_the_agents_staged_profiles_first(
    profiler: Profiler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile is served from the batch that published it on, before the save writes it."""
    created: list[StagedTable] = []

    class Recorded(StagedTable):
        def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
            super().__init__(table)
            created.append(self)

    monkeypatch.setattr("stream.app.StagedTable", Recorded)
    app = create_app(Settings(app_id="staged-views-test", datadir=tmp_path), profiler=profiler)

    async def same_node(*args: object, **kwargs: object) -> None:
        raise SameNode()

    monkeypatch.setattr(app.router, "route_req", same_node)
    [staged] = created  # the latest profiles the agent stages
    app.tables[LATEST_TABLE]._data = {
        b"alice": b'{"user_id":"alice","seq":1}',
        b"bob": b'{"user_id":"bob","seq":4}',
    }
    for user, seq in ((b"alice", 2), (b"carol", 1)):
        event = _event(app, InputRecord(b"{}", "mb", 0, 9, user))
        staged.stage(user, b'{"user_id":"%s","seq":%d}' % (user, seq), event)

    def get(user_id: str) -> Response:
        request = SimpleNamespace(match_info={"user_id": user_id}, headers={})
        return asyncio.run(app.web.views["/profiles/{user_id}"].get(request, user_id=user_id))

    assert get("alice").body == b'{"user_id":"alice","seq":2}'  # staged, not the table's
    assert get("bob").body == b'{"user_id":"bob","seq":4}'  # nothing staged: the table's
    assert get("carol").body == b'{"user_id":"carol","seq":1}'  # not in the table yet
    assert get("dave").status == 404
    staged.begin_save()  # taken by a save, not written yet: still served
    assert get("alice").body == b'{"user_id":"alice","seq":2}'
    staged.discard()  # a save that failed or was given up
    assert get("alice").body == b'{"user_id":"alice","seq":1}'
    assert get("carol").status == 404


def test_an_unstarted_worker_is_alive_but_not_ready(app) -> None:
    ready = app.web.views["/ready"]

    response = asyncio.run(ready.get(SimpleNamespace(match_info={})))

    assert response.status == 503
    assert orjson.loads(response.body)["ready"] is False


# --- closed by default -------------------------------------------------------------------------


def test_only_the_apis_pages_are_served(profiler: Profiler, tmp_path: Path) -> None:
    app = create_app(Settings(app_id="pages-test", datadir=tmp_path), profiler=profiler)
    app.web.blueprints.apply(app.web)
    # faust's "/" answers {"status": "OK"}; its /table, /router, /graph, /stats are off.
    assert set(app.web.views) == {"/", "/profiles/{user_id}", "/health", "/ready"}


def test_the_servers_bind_loopback_unless_told() -> None:
    assert faust_options(Settings())["web_bind"] == "127.0.0.1"
    assert Settings().metrics_bind == "127.0.0.1"
    assert faust_options(Settings(web_bind="0.0.0.0"))["web_bind"] == "0.0.0.0"  # noqa: S104


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (None, False),
        ("Bearer s3cret", True),
        ("bearer  s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("Bearer s3cr\udcffet", False),  # undecodable header bytes
    ],
)
def test_authorized_needs_the_bearer_token(header: str | None, ok: bool) -> None:
    assert authorized(header, "s3cret") is ok
    assert authorized(header, None)  # no token configured: open


@pytest.fixture
def guarded_app(profiler: Profiler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = Settings(app_id="token-test", datadir=tmp_path, api_token="s3cret")  # noqa: S106
    app = create_app(settings, profiler=profiler)
    routed = []

    async def same_node(*args: object, **kwargs: object) -> None:
        routed.append(args)
        raise SameNode()

    monkeypatch.setattr(app.router, "route_req", same_node)
    app.tables[LATEST_TABLE]._data = {b"alice": b'{"user_id":"alice"}'}
    app.routed = routed
    return app


def _get_profile(app, user_id: str, headers: dict[str, str]):
    request = SimpleNamespace(match_info={"user_id": user_id}, headers=headers)
    return asyncio.run(app.web.views["/profiles/{user_id}"].get(request, user_id=user_id))


def test_profiles_need_the_token_and_refusals_are_not_routed(guarded_app) -> None:
    refused = _get_profile(guarded_app, "alice", {})
    wrong = _get_profile(guarded_app, "alice", {"Authorization": "Bearer nope"})
    assert (refused.status, wrong.status) == (401, 401)
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"s3cret" not in refused.body
    assert guarded_app.routed == []  # never forwarded to another worker

    found = _get_profile(guarded_app, "alice", {"Authorization": "Bearer s3cret"})
    assert (found.status, found.body) == (200, b'{"user_id":"alice"}')
    health = asyncio.run(guarded_app.web.views["/health"].get(SimpleNamespace(headers={})))
    assert health.status == 200  # probes need no token


def test_an_over_long_user_id_is_a_400(guarded_app) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    response = _get_profile(guarded_app, "u" * 257, auth)
    assert (
        response.status == 400 and "over the limit of 256" in orjson.loads(response.body)["error"]
    )
    assert _get_profile(guarded_app, "u" * 256, auth).status == 404


def test_an_unparsable_request_is_one_info_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_bad_requests()

    async def scenario() -> bytes:
        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        web_app = web.Application()
        web_app.router.add_get("/health", health)
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            answer = await reader.read(200)
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        answer = asyncio.run(scenario())
    assert answer.split(b" ")[1] == b"400"
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records, "aiohttp logged nothing"
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in records)
    assert "over-long" in records[0].getMessage()
    assert "Traceback" not in caplog.text

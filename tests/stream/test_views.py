"""The profile query API without Kafka: lookups, readiness, the views and the latest table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import torch
from faust.exceptions import SameNode
from prometheus_client import CollectorRegistry

from hup.data import Dataset, iter_events
from hup.runtime import Profiler
from state.store import MemoryStore
from stream.agents import process_and_publish
from stream.app import LATEST_TABLE, create_app, topic_specs
from stream.metrics import Metrics
from stream.processor import InputRecord, Processor
from stream.settings import Settings
from stream.tablestore import BatchStore
from stream.views import UNKNOWN_USER, is_ready, lookup_profile


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

    asyncio.run(
        process_and_publish(
            records,
            BatchStore(MemoryStore()),
            Processor(profiler, coalesce=coalesce, require_user_key=True),
            send,
            _delivered,
            Metrics(CollectorRegistry()),
            latest=latest,
        )
    )

    last = {key: value for key, value in sent}
    assert len(last) == 4 and len(latest) == 4
    for key, value in last.items():
        assert key is not None
        assert latest.get(key) == value


def test_a_failed_delivery_writes_no_latest_profile(profiler: Profiler, traffic: Dataset) -> None:
    latest = MemoryStore()

    async def failing(key: bytes | None, value: bytes) -> asyncio.Future[object]:
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_exception(RuntimeError("broker down"))
        return done

    with pytest.raises(RuntimeError):
        asyncio.run(
            process_and_publish(
                _records(iter_events(traffic.sessions[:2])),
                BatchStore(MemoryStore()),
                Processor(profiler, require_user_key=True),
                failing,
                _delivered,
                Metrics(CollectorRegistry()),
                latest=latest,
            )
        )
    assert len(latest) == 0


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


def test_an_unstarted_worker_is_alive_but_not_ready(app) -> None:
    ready = app.web.views["/ready"]

    response = asyncio.run(ready.get(SimpleNamespace(match_info={})))

    assert response.status == 503
    assert orjson.loads(response.body)["ready"] is False

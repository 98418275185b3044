"""The input consumer's fetch wait (`stream.guards.fetchwait`): the app's, not faust's 1500 ms."""

from __future__ import annotations

from types import SimpleNamespace

import faust
import pytest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from stream.app import create_app
from stream.guards import fetchwait
from stream.settings import Settings


def test_the_worker_consumer_waits_at_most_the_configured_fetch_wait(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(Settings(app_id="fetch-test", datadir=tmp_path, fetch_max_wait_ms=15))
    assert fetchwait.fetch_max_wait_ms(app) == 15
    faust_consumer = SimpleNamespace(_fetch_max_wait_ms=1500)  # what faust 0.15 builds
    monkeypatch.setattr(
        fetchwait, "_faust_create_worker_consumer", lambda thread, t: faust_consumer
    )
    create = AIOKafkaConsumerThread._create_worker_consumer
    assert create is fetchwait._create_worker_consumer  # noqa: SLF001
    assert create(SimpleNamespace(app=app), None)._fetch_max_wait_ms == 15
    other = SimpleNamespace(_fetch_max_wait_ms=1500)
    monkeypatch.setattr(fetchwait, "_faust_create_worker_consumer", lambda thread, t: other)
    # An app that did not ask (the no-op bench worker, say) keeps faust's.
    assert create(SimpleNamespace(app=faust.App("fetch-other")), None)._fetch_max_wait_ms == 1500

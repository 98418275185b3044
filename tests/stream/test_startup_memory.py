"""The worker freezes its start-up objects and collects the young generation less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream.metrics import Metrics
from stream.settings import Settings
from stream.startup import GC_GEN0_THRESHOLD, WorkerContext
from stream.topics import topic_specs


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_prepare_freezes_the_loaded_model_and_raises_the_young_threshold(
    restored_gc: None, checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stream.startup.ensure_topics", lambda *args, **kwargs: None)
    monkeypatch.setattr(WorkerContext, "_detect_embedded_broker", lambda self: None)  # no broker
    gc.unfreeze()
    settings = Settings(
        model=checkpoint_dir,
        datadir=tmp_path / "data",
        kafka_bootstrap_servers="k:9092",
        web_port=0,
        metrics_port=0,
    )
    context = WorkerContext(settings, Metrics(CollectorRegistry()), topic_specs(settings))
    context.prepare()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    # The loaded model is frozen: no collection walks it again (get_objects lists only
    # the collected generations).
    profiler = context.processor.profiler
    assert gc.is_tracked(profiler)
    assert not any(o is profiler for o in gc.get_objects())

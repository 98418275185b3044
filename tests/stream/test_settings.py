"""Settings from the environment: blank values, and the worker's refusal without a model."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import AliasChoices

from stream import startup
from stream.metrics import Metrics
from stream.settings import Settings
from stream.startup import WorkerContext
from stream.topics import topic_specs


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "HUP_KAFKA_BOOTSTRAP_SERVERS", "HUP_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "name",
    [
        "HUP_MODEL",
        "HUP_BROKER_LOG",
        "HUP_KAFKA_SSL_CAFILE",
        "HUP_KAFKA_SASL_USERNAME",
        "HUP_KAFKA_SASL_PASSWORD",
        "KAFKA_BOOTSTRAP_SERVERS",
    ],
)
@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_optional_variable_is_unset(
    name: str, blank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, blank)
    settings = Settings()
    field = {"KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers"}.get(
        name, name.removeprefix("HUP_").lower()
    )
    assert getattr(settings, field) is None
    assert settings.bootstrap_servers == "127.0.0.1:9092"


@pytest.mark.parametrize("value", [None, "", " "], ids=["unset", "empty", "blank"])
def test_the_worker_refuses_to_start_without_a_model(
    value: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if value is not None:
        monkeypatch.setenv("HUP_MODEL", value)
    context = WorkerContext(Settings(), Metrics(CollectorRegistry()), [])
    with pytest.raises(SystemExit) as refused:
        context.prepare()
    assert refused.value.code == 2
    message = capsys.readouterr().err
    assert "HUP_MODEL is not set" in message
    assert "config.json" not in message


def test_the_worker_refuses_a_bad_ranking_option_in_one_line(
    checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUP_ANN_MIN_ITEMS", "lots")
    context = WorkerContext(Settings(model=checkpoint_dir), Metrics(CollectorRegistry()), [])
    with pytest.raises(SystemExit) as refused:
        context.prepare()
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "HUP_ANN_MIN_ITEMS must be an integer, got 'lots'" in line


REPO = Path(__file__).parents[2]


def _section(path: Path, heading: str) -> str:
    """The text of one ``## heading`` section of a Markdown file."""
    text = path.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_the_configuration_reference_documents_every_variable() -> None:
    assert "docs/operations.md#configuration-reference" in (REPO / "README.md").read_text()
    reference = _section(REPO / "docs" / "operations.md", "Configuration reference")
    for name, field in Settings.model_fields.items():
        names = [f"HUP_{name.upper()}"]
        if isinstance(field.validation_alias, AliasChoices):
            names = [str(choice) for choice in field.validation_alias.choices]
        for env in names:
            assert f"`{env}`" in reference, env


def test_the_operations_guide_lists_every_topic_the_worker_creates() -> None:
    topics = _section(REPO / "docs" / "operations.md", "Topics")
    settings = Settings()
    for spec in topic_specs(settings):  # the re-keying topic is documented with its variable
        assert f"`{spec.name.replace(settings.app_id, '{app_id}')}`" in topics, spec.name


def test_the_worker_creates_its_data_dir_with_parents(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(startup, "ensure_topics", lambda *args, **kwargs: [])
    monkeypatch.setattr(startup, "is_embedded_broker", lambda *args, **kwargs: False)
    datadir = tmp_path / "fresh" / "checkout" / "data" / "worker"
    settings = Settings(model=checkpoint_dir, datadir=datadir, metrics_port=0, web_port=0)
    WorkerContext(settings, Metrics(CollectorRegistry()), []).prepare()
    assert datadir.is_dir()


def test_an_unusable_data_dir_is_refused_in_one_line(
    checkpoint_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(startup, "ensure_topics", lambda *args, **kwargs: [])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = Settings(model=checkpoint_dir, datadir=blocker / "worker")
    with pytest.raises(SystemExit) as refused:
        WorkerContext(settings, Metrics(CollectorRegistry()), []).prepare()
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"cannot create HUP_DATADIR {blocker / 'worker'}" in line

"""Topic creation: the security settings of its admin client, and the check of existing topics."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource
from prometheus_client import CollectorRegistry

from stream import startup
from stream.metrics import Metrics
from stream.settings import Settings
from stream.startup import WorkerContext
from stream.topics import (
    TopicSpec,
    check_cleanup_policies,
    client_security_config,
    ensure_topics,
)

# Replaced by a real PEM bundle: librdkafka reads the CA file when a client is made.
_CA = "<ca bundle>"
_SASL: dict[str, Any] = {
    "kafka_sasl_username": "svc-hup",
    "kafka_sasl_password": "s3cret",
}


# --- the security mapping ------------------------------------------------------------------


def test_plaintext_adds_nothing() -> None:
    assert client_security_config(Settings()) == {}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"kafka_security_protocol": "SSL"},
            {"security.protocol": "SSL", "ssl.ca.location": "probe"},
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": _CA},
            {"security.protocol": "SSL", "ssl.ca.location": _CA},
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", **_SASL},
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "svc-hup",
                "sasl.password": "s3cret",
            },
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_ssl_cafile": _CA,
                **_SASL,
            },
            {
                "security.protocol": "SASL_SSL",
                "ssl.ca.location": _CA,
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "svc-hup",
                "sasl.password": "s3cret",
            },
        ),
    ],
    ids=["ssl-system-cas", "ssl-cafile", "sasl-plaintext", "sasl-ssl-scram"],
)
def test_security_settings_map_onto_librdkafka(
    settings: dict[str, Any], expected: dict[str, str]
) -> None:
    cafile = pytest.importorskip("certifi").where()

    def real(values: dict[str, Any]) -> dict[str, Any]:
        return {k: cafile if v == _CA else v for k, v in values.items()}

    config = client_security_config(Settings(**real(settings)))
    assert config == real(expected)
    # librdkafka knows every property and value (it validates them on construction).
    AdminClient({**config, "bootstrap.servers": "127.0.0.1:9"})


def test_the_worker_creates_topics_with_its_security_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, list[TopicSpec], Mapping[str, str] | None]] = []

    def fake_ensure(
        bootstrap: str,
        specs: list[TopicSpec],
        *,
        timeout: float = 30.0,
        client_config: Mapping[str, str] | None = None,
    ) -> list[str]:
        calls.append((bootstrap, list(specs), client_config))
        return []

    monkeypatch.setattr(startup, "ensure_topics", fake_ensure)
    settings = Settings(
        kafka_bootstrap_servers="kafka-1:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        **_SASL,
    )
    specs = [TopicSpec("hup-profiles-profile-state-changelog", 3, 3, {"cleanup.policy": "compact"})]
    WorkerContext(settings, Metrics(CollectorRegistry()), specs)._create_topics()
    assert calls == [
        (
            "kafka-1:9093",
            specs,
            {
                "security.protocol": "SASL_SSL",
                "ssl.ca.location": "probe",
                "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.username": "svc-hup",
                "sasl.password": "s3cret",
            },
        )
    ]


# --- the check of existing topics ----------------------------------------------------------


class _Entry:
    def __init__(self, value: str | None) -> None:
        self.value = value


class _FakeAdmin:
    """Answers DescribeConfigs from a table: a value, None (not reported) or an error."""

    def __init__(self, policies: Mapping[str, str | None | KafkaException]) -> None:
        self.policies = policies
        self.asked: list[str] = []

    def describe_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, Future[Any]]:
        answers: dict[ConfigResource, Future[Any]] = {}
        for resource in resources:
            self.asked.append(resource.name)
            future: Future[Mapping[str, object]] = Future()
            policy = self.policies[resource.name]
            if isinstance(policy, KafkaException):
                future.set_exception(policy)
            elif policy is None:
                future.set_result({})
            else:
                future.set_result({"cleanup.policy": _Entry(policy)})
            answers[resource] = future
        return answers


def _compacted(name: str) -> TopicSpec:
    return TopicSpec(name, config={"cleanup.policy": "compact"})


def test_a_changelog_that_is_not_compacted_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    admin = _FakeAdmin(
        {
            "deleted": "delete",
            "both": "compact,delete",
            "fine": "compact",
            "fine-spaced": " compact ",
            "unknown": None,
            "denied": KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)),
        }
    )
    specs = [_compacted(name) for name in admin.policies]
    specs.append(TopicSpec("input", config={"retention.ms": "1000"}))  # no policy: not asked
    with caplog.at_level(logging.INFO, logger="stream.topics"):
        wrong = check_cleanup_policies(admin, specs)
    assert wrong == ["deleted", "both"]
    assert "input" not in admin.asked
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "topic deleted exists with cleanup.policy=delete, not compact" in warnings[0]
    assert "--add-config cleanup.policy=compact" in warnings[0]
    assert "cleanup.policy=compact,delete" in warnings[1]
    assert "could not check the cleanup.policy of topic denied" in warnings[2]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("unknown" in m and "does not report its cleanup.policy" in m for m in infos)


def test_ensure_topics_checks_existing_topics_on_the_broker(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:8]
    deleted, unset, compacted = (f"{kind}-{tag}" for kind in ("deleted", "unset", "compacted"))
    ensure_topics(
        kafka_bootstrap,
        [
            TopicSpec(deleted, config={"cleanup.policy": "delete"}),
            TopicSpec(unset),
            _compacted(compacted),
        ],
    )
    specs = [_compacted(deleted), _compacted(unset), _compacted(compacted)]
    with caplog.at_level(logging.INFO, logger="stream.topics"):
        assert ensure_topics(kafka_bootstrap, specs) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and f"topic {deleted} exists with cleanup.policy=delete" in warnings[0]
    )
    # tansu reports only configs set explicitly (T4): an unset policy is unknown, not wrong.
    assert any(unset in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_a_new_topic_is_not_checked(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="stream.topics"):
        created = ensure_topics(kafka_bootstrap, [_compacted(f"new-{uuid.uuid4().hex[:8]}")])
    assert len(created) == 1
    assert not [r for r in caplog.records if "cleanup.policy" in r.getMessage()]

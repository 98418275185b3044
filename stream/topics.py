"""The worker's channels: its topics and tables, created with explicit configs on any cluster.

`Topics` holds what the app declares (input, outputs, the two tables, the re-keying
topic) and `topic_specs` what each needs on the broker. The worker creates its topics
itself at start-up, so that a changelog is compacted
wherever it runs: a changelog deleted by age loses users' state for good. Topic
creation therefore uses the same security settings as the worker's own clients
(`client_security_config`), and a topic that already exists is checked for the one
config that matters for correctness, ``cleanup.policy``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from stream.settings import Settings

if TYPE_CHECKING:
    from faust.types import TopicT

    from stream.guards import ConfirmedTable

__all__ = [
    "EMBEDDED_CLUSTER_ID",
    "LATEST_TABLE",
    "BrokersUnreachableError",
    "TopicSpec",
    "Topics",
    "check_cleanup_policies",
    "client_security_config",
    "ensure_topics",
    "is_embedded_broker",
    "topic_specs",
]

log = logging.getLogger(__name__)

# Creating a topic that exists, without the right to create topics: Kafka checks the
# ACL first, so a pre-created topic on a locked-down cluster answers with one of these.
_NOT_AUTHORIZED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)

# The table of the last profile message published per user. Named here rather than in
# Settings: nothing about it is configurable.
LATEST_TABLE = "latest-profile"

# The cluster id the embedded broker (`stream.devtools.broker`) reports. The worker
# corrects high watermarks (`stream.guards.highwater`) only on a cluster with this id.
EMBEDDED_CLUSTER_ID = "hup-embedded-tansu"


class BrokersUnreachableError(Exception):
    """No broker of the bootstrap list answered a metadata request in time.

    The message names the servers, the time waited and librdkafka's last error.
    """


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create with explicit configs.

    Explicit configs because tansu neither auto-creates topics with sane
    settings nor reports broker defaults through DescribeConfigs.
    """

    name: str
    partitions: int = 1
    replication: int = 1
    # Topic-level configs, e.g. {"retention.ms": "86400000"} or
    # {"cleanup.policy": "compact"} for a changelog.
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    """The worker's channels: input, outputs, and the per-user tables."""

    events: TopicT
    profiles: TopicT
    dead_letters: TopicT
    state: ConfirmedTable
    latest: ConfirmedTable  # the last profile message published per user (stream.views)
    by_user: TopicT | None = None  # the input re-keyed by user_id (HUP_REPARTITION=1)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the worker needs, with explicit configs (tansu reports no defaults, T4)."""
    retention = {"retention.ms": str(settings.retention_ms)}

    def spec(name: str, config: dict[str, str]) -> TopicSpec:
        return TopicSpec(name, settings.partitions, settings.replication, config)

    specs = [
        spec(settings.input_topic, retention),
        spec(settings.output_topic, retention),
        spec(settings.dlq_topic, retention),
        # The changelog is the state's backup: compacted, never deleted by age.
        spec(settings.changelog_topic, {"cleanup.policy": "compact"}),
        spec(f"{settings.app_id}-{LATEST_TABLE}-changelog", {"cleanup.policy": "compact"}),
    ]
    if settings.repartition:
        specs.append(spec(settings.repartition_topic, retention))
    return specs


def client_security_config(settings: Settings) -> dict[str, str]:
    """The librdkafka properties for the HUP_KAFKA_* security settings (empty for PLAINTEXT).

    The same settings faust's clients get as ``broker_credentials`` (`stream.app`), in
    confluent-kafka's vocabulary. Without HUP_KAFKA_SSL_CAFILE, TLS verifies the
    brokers against the system CAs (``probe``), as faust's default SSL context does.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, str] = {"security.protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        cafile = settings.kafka_ssl_cafile
        config["ssl.ca.location"] = str(cafile) if cafile else "probe"
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username or ""
        config["sasl.password"] = password.get_secret_value() if password else ""
    return config


class _DescribesConfigs(Protocol):
    """The part of `AdminClient` that `check_cleanup_policies` uses."""

    def describe_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> Mapping[ConfigResource, Future[Any]]:
        """Futures of each resource's config entries, by name."""
        ...


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    timeout: float = 30.0,
    client_config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet, with their explicit configs.

    Idempotent: an existing topic is left as it is (its configs are not altered), but
    its ``cleanup.policy`` is checked against the spec's (`check_cleanup_policies`).
    Every broker call is bounded by ``timeout``.

    Args:
        bootstrap: Kafka bootstrap servers.
        specs: The topics.
        timeout: Seconds for each broker call.
        client_config: Extra admin client properties, e.g. `client_security_config`.

    Returns:
        The names of the topics this call created.

    Raises:
        BrokersUnreachableError: no broker answered within ``timeout``. librdkafka's own
            log is off for this client (it would log every failed connection attempt);
            its last error is in the message instead.
        KafkaException: for any error other than "topic already exists" (or "not
            authorized" for a topic that exists).
    """
    specs = list(specs)
    if not specs:
        return []
    errors: list[KafkaError] = []
    # librdkafka takes callbacks in the config dict, which its type stubs do not allow.
    config: dict[str, Any] = {
        **(client_config or {}),
        "bootstrap.servers": bootstrap,
        "log_level": 0,
        "error_cb": errors.append,
    }
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        last = errors[-1] if errors else exc.args[0]
        raise BrokersUnreachableError(
            f"no Kafka broker answered at {bootstrap} within {timeout:g} s: {last.str()}"
        ) from None
    new_topics = [
        NewTopic(s.name, s.partitions, s.replication, config=dict(s.config)) for s in specs
    ]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    created: list[str] = []
    existing: list[str] = []
    refused: dict[str, KafkaException] = {}
    for name, future in futures.items():
        try:
            future.result(timeout)
        except TimeoutError:
            raise BrokersUnreachableError(
                f"the brokers at {bootstrap} did not create topic {name} within {timeout:g} s"
            ) from None
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                existing.append(name)
            elif code in _NOT_AUTHORIZED:
                refused[name] = exc
            else:
                raise
        else:
            created.append(name)
    if refused:
        present = set(admin.list_topics(timeout=timeout).topics)
        for name, error in refused.items():
            if name not in present:
                raise error
            log.info("topic %s exists (this client may not create topics)", name)
            existing.append(name)
    log.info("topics created: %s", created or "none")
    check_cleanup_policies(admin, [s for s in specs if s.name in existing], timeout=timeout)
    return created


def check_cleanup_policies(
    admin: _DescribesConfigs, specs: Iterable[TopicSpec], *, timeout: float = 30.0
) -> list[str]:
    """Warn about existing topics whose ``cleanup.policy`` differs from their spec's.

    Only specs that set ``cleanup.policy`` (the changelogs: ``compact``) are checked. A
    broker that does not report the config is not taken to be wrong: tansu reports only
    configs set explicitly, never the broker's defaults (docs/broker-notes.md, T4), so a
    missing value is unknown and only logged. Nothing here stops the worker: a failed
    describe is logged too.

    Returns:
        The names of the topics whose policy is known to differ.
    """
    wanted = {s.name: s.config["cleanup.policy"] for s in specs if "cleanup.policy" in s.config}
    if not wanted:
        return []
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in wanted]
    try:
        futures = admin.describe_configs(resources, request_timeout=timeout)
    except KafkaException as exc:
        log.warning("could not check the cleanup.policy of %s: %s", ", ".join(wanted), exc)
        return []
    wrong: list[str] = []
    for resource, future in futures.items():
        name = resource.name
        try:
            entry = future.result(timeout).get("cleanup.policy")
        except KafkaException as exc:
            log.warning("could not check the cleanup.policy of topic %s: %s", name, exc)
            continue
        actual = getattr(entry, "value", None)
        if actual is None:
            log.info(
                "topic %s exists; the broker does not report its cleanup.policy (it should "
                "be %s), so it is not checked",
                name,
                wanted[name],
            )
        elif _policies(actual) != _policies(wanted[name]):
            wrong.append(name)
            log.warning(
                "topic %s exists with cleanup.policy=%s, not %s: the broker may delete its "
                "records by age or size, and state restored from it would lose users. "
                "Fix it with: kafka-configs.sh --alter --entity-type topics --entity-name %s "
                "--add-config cleanup.policy=%s",
                name,
                actual,
                wanted[name],
                name,
                wanted[name],
            )
    return wrong


def _policies(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def is_embedded_broker(
    bootstrap: str, *, client_config: Mapping[str, str] | None = None, timeout: float = 30.0
) -> bool:
    """Whether the cluster at ``bootstrap`` is the embedded broker of the dev tools.

    Told by the cluster id it reports (`EMBEDDED_CLUSTER_ID`): the worker applies its
    tansu work-arounds (`stream.guards.highwater`) to that broker only, never to a real Kafka.

    Raises:
        KafkaException: The cluster did not answer a metadata request within ``timeout``.
    """
    admin = AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})
    return admin.list_topics(timeout=timeout).cluster_id == EMBEDDED_CLUSTER_ID

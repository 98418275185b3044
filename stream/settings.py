"""Runtime configuration of the stream processes, read once from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hup.schema import DEFAULT_LIMITS, InputLimits

__all__ = [
    "DEFAULT_MAX_REQUEST_SIZE",
    "BrokerChoice",
    "SaslMechanism",
    "SecurityProtocol",
    "Settings",
]

BrokerChoice = Literal["auto", "testcontainers", "embedded"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_DAY_MS = 24 * 3600 * 1000
# faust's (and Kafka's Java producer's) default producer max request size.
DEFAULT_MAX_REQUEST_SIZE = 1_000_000


class Settings(BaseSettings):
    """Process settings; every field is an env var ``HUP_<FIELD>`` unless noted.

    Frozen so a value read at start-up cannot drift while a worker runs.
    """

    model_config = SettingsConfigDict(env_prefix="HUP_", frozen=True, extra="ignore")

    # --- Broker ------------------------------------------------------------------
    # An existing Kafka cluster. When set, no broker is started (read from the
    # conventional KAFKA_BOOTSTRAP_SERVERS, or HUP_KAFKA_BOOTSTRAP_SERVERS).
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "HUP_KAFKA_BOOTSTRAP_SERVERS"),
    )
    # Which broker start_broker() starts when no bootstrap servers are given:
    # "auto" tries testcontainers when a Docker daemon answers, else embedded tansu.
    broker: BrokerChoice = "auto"
    # Port of the foreground embedded broker (`python -m stream.devtools.broker`); the worker
    # connects to 127.0.0.1 on it when KAFKA_BOOTSTRAP_SERVERS is not set.
    broker_port: int = Field(default=9092, ge=1, le=65535)
    # Seconds to wait for a started broker to answer a metadata request.
    broker_startup_timeout: float = Field(default=30.0, gt=0)
    # Where the embedded broker writes its log; default is a fresh temp file.
    broker_log: Path | None = None
    # Image for the testcontainers broker.
    kafka_image: str = "confluentinc/cp-kafka:7.6.0"
    # Security of the worker's Kafka connections, mapped onto faust's broker_credentials.
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # CA bundle to verify the brokers' certificates (SSL, SASL_SSL); default: system CAs.
    kafka_ssl_cafile: Path | None = None

    # --- Worker ------------------------------------------------------------------
    # Checkpoint directory of the model (`hup train --out DIR`); the worker refuses
    # to start without a readable one.
    model: Path | None = None
    # Consumer group id, and prefix of the table's changelog topic.
    app_id: str = "hup-profiles"
    input_topic: str = "micro-behaviors"
    output_topic: str = "user-profiles"
    dlq_topic: str = "micro-behaviors-dlq"
    # Partitions of the topics the worker creates; the state table is co-partitioned
    # with the input, so this must equal the input topic's partition count.
    partitions: int = Field(default=3, ge=1)
    # Replication factor of the topics the worker creates (1 on a single broker).
    replication: int = Field(default=1, ge=1)
    # retention.ms of the input, output and dead-letter topics (default 7 days).
    retention_ms: int = Field(default=7 * _DAY_MS, ge=-1)
    # Per-partition RocksDB state lives in {datadir}/v1/tables/.
    datadir: Path = Path("data/worker")
    # At most this many events per model batch, waiting at most batch_within_s from its
    # first event for it to fill; a batch closes earlier once no event has come for
    # batch_idle_s (stream.guards.take). A backlog arrives without pauses and fills whole
    # batches; under light load a batch closes as soon as the events that came are in.
    batch_size: int = Field(default=256, ge=1)
    batch_within_s: float = Field(default=0.02, gt=0)
    batch_idle_s: float = Field(default=0.002, gt=0)
    # The state and latest-profile tables are saved, and the events acked, once per save
    # instead of once per batch (stream.agents.ProfileBatches): a save runs once
    # save_interval_s has passed since the last one, or once the values staged in memory
    # reach save_max_mb MiB. Between saves each user's newest state waits in memory, so
    # a user's k events in an interval cost one state record instead of k. A crash
    # consumes the unsaved events again (their profiles are published again, identical
    # but for published_ts), so the interval bounds that repeat. 0: save every batch.
    save_interval_s: float = Field(default=10.0, ge=0, le=300)
    save_max_mb: int = Field(default=64, ge=0)
    # Publish only each user's last profile of a batch instead of one per event.
    coalesce: bool = False
    # Re-key the input by the event's user_id (stream.rekey, through the topic
    # `repartition_topic`) before touching state, for producers that do not key by
    # user_id. A user's order is kept only if the producer's key still sends all of
    # the user's events to one partition (a device or session id does; no key or a
    # random one does not).
    repartition: bool = False
    # The input topic is written by transactional producers: their commit markers take
    # offsets the consumer never returns, so such a hole is committed over once the
    # records on both sides are processed. Otherwise (the default) a hole is never
    # committed over: the partition is read again from it (stream.guards.acks).
    input_transactional: bool = False
    # Categories listed with every profile.
    top_n: int = Field(default=5, ge=1)
    # Items (skus) listed with every profile, ranked by the model (`top_items`). Exact
    # ranking over the whole vocabulary below HUP_ANN_MIN_ITEMS items, from ANN candidates
    # above (hup.candidates.RankingOptions reads the HUP_ANN_* variables).
    top_items: int = Field(default=20, ge=1, le=1000)
    # torch intra-op threads. The step's matmuls are tiny: more threads than cores
    # (worker + broker share them) made them 7x slower on a 2-core machine.
    torch_threads: int = Field(default=1, ge=1)
    # Consumer group session timeout. tansu takes half of it to complete a join, and
    # a restarted worker waits for the dead member's session to expire; 6 is enough there.
    session_timeout_s: float = Field(default=10.0, gt=0, le=90)
    # aiokafka's max_batch_size in bytes: how much of one partition goes in one produce
    # request. A state record is ~15 KB, so Kafka's usual 16 KB sends one per request;
    # 1 MiB (under the brokers' default message.max.bytes) carries a batch's records of
    # a partition at once. Safe on tansu too: recovery reads true end offsets (T1).
    producer_max_batch_size: int = Field(default=1_048_576, ge=1)
    # The largest produce request in bytes (faust's producer_max_request_size, and its
    # default). Every record the worker writes (profile, dead letter, state and
    # latest-profile changelog records) must fit in it less 1 KiB of framing: dead letters
    # keep a prefix of the original bytes, and an event whose profile or state would not
    # fit is dead-lettered (stream.publish). Keep it at most the brokers' message.max.bytes.
    producer_max_request_size: int = Field(default=DEFAULT_MAX_REQUEST_SIZE, ge=65_536)
    # librdkafka's linger.ms for the output producer (profiles, dead letters, changelog
    # records): how long a record may wait for others to share its produce request, which
    # adds to every profile's latency; a backlog's 256-event batches fill requests anyway.
    output_linger_ms: float = Field(default=1.0, ge=0, le=1000)
    # The longest the input consumer's fetch request waits at the broker for records
    # (aiokafka's fetch_max_wait_ms; faust fixes it at 1500). Kafka answers as soon as a
    # record arrives, so there it only bounds idle polling; the embedded tansu broker
    # always waits the full time when a fetch finds nothing, so there it adds up to this
    # much to every event's latency (docs/broker-notes.md, T6).
    fetch_max_wait_ms: int = Field(default=20, ge=1, le=10_000)
    # Commit consumed offsets after this many acked events or seconds, whichever first.
    # Redelivered events are skipped by offset, so this only bounds re-reading.
    commit_every: int = Field(default=1000, ge=1)
    commit_interval_s: float = Field(default=1.0, gt=0)
    # Keep RocksDB's write-ahead log in the tables' local stores. Off by default: the
    # changelog topics are the tables' log, and after a crash faust reads back from them
    # what the store had not flushed (stream.guards.localstore).
    store_wal: bool = False
    # Standby replicas of the state table on other workers (faster failover).
    standby_replicas: int = Field(default=0, ge=0)
    # Bounds on one input event (`hup.schema.InputLimits`): an event beyond one is
    # dead-lettered with a reason naming it and counted (hup_events{outcome="over_limit_*"}).
    max_id_chars: int = Field(default=DEFAULT_LIMITS.max_id_chars, ge=20)  # 2^64 has 20 digits
    max_event_id_chars: int = Field(default=DEFAULT_LIMITS.max_event_id_chars, ge=1)
    max_category_levels: int = Field(default=DEFAULT_LIMITS.max_category_levels, ge=1)
    max_dwell_s: float = Field(default=DEFAULT_LIMITS.max_dwell_s, gt=0)
    # How far an event's ts may be ahead of the worker's clock. The gap to a user's next
    # event is measured from the last ts, so one far-future ts would leave every later gap
    # at zero; training data is not held to it (its times are the data's own).
    max_future_s: float = Field(default=86_400.0, ge=0)
    # Memory for the decoded states the worker wrote last (`state.userstate.StateCache`), in
    # MiB: an active user's next batch then skips decoding its state. 0 turns it off.
    state_cache_mb: int = Field(default=256, ge=0)
    # Users whose last event is older than this many seconds (by event time) are removed
    # from the state and latest-profile tables, with a tombstone in each changelog. 0: never.
    state_ttl_s: float = Field(default=0.0, ge=0)
    # Seconds the worker waits at start-up for the brokers to answer before it gives up.
    startup_timeout_s: float = Field(default=30.0, gt=0)
    # Prometheus metrics HTTP port; 0 disables the endpoint.
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    # The address the metrics endpoint listens on: loopback unless set (e.g. 0.0.0.0).
    metrics_bind: str = "127.0.0.1"
    # faust's web server port (the profile query API, /health, /ready); 0 disables it.
    web_port: int = Field(default=6066, ge=0, le=65535)
    # The address the web server listens on: loopback unless set. Set HUP_API_TOKEN too
    # whenever it is not loopback.
    web_bind: str = "127.0.0.1"
    # When set, GET /profiles/{user_id} requires "Authorization: Bearer <token>".
    api_token: SecretStr | None = None
    # The host name other workers use to reach this one's web port: a query for a user
    # whose partition another worker owns is forwarded to that worker's advertised
    # http://{web_host}:{web_port}. Empty means faust's default, the machine's host name.
    web_host: str = ""
    # Log level of the worker (faust -l).
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator(
        "kafka_bootstrap_servers",
        "broker_log",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "model",
        "api_token",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `HUP_MODEL=` (say, a compose file's unset ${VAR}) would otherwise be Path(""),
        # which is ".", and the worker would report "." as a checkpoint without config.json.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"HUP_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "HUP_KAFKA_SASL_USERNAME and HUP_KAFKA_SASL_PASSWORD"
            )
        return self

    @property
    def bootstrap_servers(self) -> str:
        """Where the worker connects: the configured cluster, else the local broker process."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @property
    def input_limits(self) -> InputLimits:
        """The bounds the processor holds each input event to."""
        return InputLimits(
            max_id_chars=self.max_id_chars,
            max_event_id_chars=self.max_event_id_chars,
            max_category_levels=self.max_category_levels,
            max_dwell_s=self.max_dwell_s,
        )

    @property
    def heartbeat_interval_s(self) -> float:
        """Consumer heartbeat: well below the session timeout (Kafka's advice is a third)."""
        return self.session_timeout_s / 6

    @property
    def table_name(self) -> str:
        """The per-user state table."""
        return "profile-state"

    @property
    def changelog_topic(self) -> str:
        """The table's changelog topic, named the way faust names it."""
        return f"{self.app_id}-{self.table_name}-changelog"

    @property
    def repartition_topic(self) -> str:
        """Where the re-keying stage forwards the input (``HUP_REPARTITION=1``).

        The app id is in the name so that two apps reading one input never share it.
        """
        return f"{self.input_topic}-{self.app_id}-by-user"

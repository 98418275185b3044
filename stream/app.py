"""The faust App of the profile worker: its configuration, topics and tables.

Run it with ``python -m stream.worker`` or, equivalently,
``faust -A stream.app worker --without-web -l info``.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

import faust
from prometheus_client import CollectorRegistry

from hup.runtime import Profiler
from stream.agents import install_agent
from stream.guards import ConfirmedTable, StagedTable, set_fetch_wait, skip_store_wal
from stream.metrics import Metrics
from stream.settings import Settings
from stream.startup import WorkerContext
from stream.sweeper import install_sweeper
from stream.topics import LATEST_TABLE, Topics, topic_specs
from stream.views import install_views

__all__ = ["app", "broker_credentials", "create_app", "faust_options"]


def faust_options(settings: Settings) -> dict[str, Any]:
    """Faust settings; see docs/broker-notes.md for why each non-default one is set."""
    return {
        "broker": [f"kafka://{host.strip()}" for host in settings.bootstrap_servers.split(",")],
        "broker_credentials": broker_credentials(settings),
        "store": "rocksdb://",  # not "rocksdict://" (F1); faust uses rocksdict underneath
        "datadir": str(settings.datadir),
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        "broker_commit_every": settings.commit_every,
        "broker_commit_interval": settings.commit_interval_s,
        "consumer_auto_offset_reset": "earliest",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication,
        "topic_allow_declare": True,
        "topic_disable_leader": True,
        "producer_acks": -1,
        "producer_linger": 0.0,
        "producer_max_batch_size": settings.producer_max_batch_size,
        "producer_max_request_size": settings.producer_max_request_size,
        # Exactly-once needs aiokafka's idempotent producer, which tansu rejects (T2);
        # at-least-once plus the processor's offset check is exactly-once for state.
        "processing_guarantee": "at_least_once",
        "table_standby_replicas": settings.standby_replicas,
        "web_enabled": settings.web_port != 0,
        "web_port": settings.web_port or 6066,
        "web_bind": settings.web_bind,
        **({"web_host": settings.web_host} if settings.web_host else {}),
        # Closed by default: faust's own pages dump raw table contents (/table/...), the
        # cluster's hosts and partition assignment (/router/), sensor statistics and the
        # service graph. Routed /profiles queries do not need /router: app.router
        # answers from the assignor inside the process.
        "debug": False,
        "web_tables_enabled": False,
        "web_router_enabled": False,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_metrics_enabled": False,
        "autodiscover": False,
        # Changelog writes the agent can await before acking (faust's own flush gives up).
        "Table": ConfirmedTable,
    }


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust credentials for HUP_KAFKA_SECURITY_PROTOCOL (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context = (
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if protocol in ("SSL", "SASL_SSL")
        else None
    )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


def create_app(
    settings: Settings,
    *,
    profiler: Profiler | None = None,
    registry: CollectorRegistry | None = None,
) -> faust.App:
    """Build the worker app.

    Args:
        settings: The process settings.
        profiler: A loaded model; by default HUP_MODEL is loaded when the worker starts.
        registry: Where the metrics register; by default a fresh registry of this app's own.

    Returns:
        The app, with its agent installed; ``app.main()`` runs it.
    """
    app = faust.App(settings.app_id, **faust_options(settings))
    set_fetch_wait(app, settings.fetch_max_wait_ms)
    if not settings.store_wal:
        skip_store_wal(app)
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "partitions": settings.partitions,
        "replicas": settings.replication,
        "retention": settings.retention_ms / 1000,
        "config": {"retention.ms": str(settings.retention_ms)},
    }
    topics = Topics(
        events=app.topic(settings.input_topic, **raw),
        profiles=app.topic(settings.output_topic, **raw),
        dead_letters=app.topic(settings.dlq_topic, **raw),
        by_user=app.topic(settings.repartition_topic, **raw) if settings.repartition else None,
        # bytes keys and values travel raw in the changelog too (broker notes, finding 2).
        state=cast(
            ConfirmedTable,
            app.Table(
                settings.table_name,
                key_type=bytes,
                value_type=bytes,
                partitions=settings.partitions,
            ),
        ),
        # Keyed like the state, so co-partitioned with it and with the input.
        latest=cast(
            ConfirmedTable,
            app.Table(
                LATEST_TABLE, key_type=bytes, value_type=bytes, partitions=settings.partitions
            ),
        ),
    )
    context = WorkerContext(
        settings, Metrics(registry or CollectorRegistry()), topic_specs(settings), profiler
    )
    # faust types this signal so that no receiver satisfies mypy (mode's own SyncSignal does).
    app.on_worker_init.connect(context.prepare)  # type: ignore[arg-type]
    latest = StagedTable(topics.latest)
    install_agent(app, topics, context, latest)
    install_views(
        app,
        topics.latest,
        staged=latest,
        token=settings.api_token.get_secret_value() if settings.api_token else None,
        max_id_chars=settings.max_id_chars,
    )
    if settings.state_ttl_s:
        install_sweeper(app, topics, settings.state_ttl_s, context.metrics)
    return app


app = create_app(Settings())

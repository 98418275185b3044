"""What a worker prepares before it consumes: the model, torch threads, ports, topics, metrics.

Whatever keeps the worker from starting (a faust without an internal the guards patch,
no model, an unusable data directory, a port in use, no broker answering) ends it here,
before faust starts its services and logs "Ready": one line on stderr naming the problem
and exit status 2 (`refuse_to_start`), never a traceback.
"""

from __future__ import annotations

import gc
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import torch
from confluent_kafka import KafkaException
from prometheus_client import start_http_server

from hup.exceptions import CheckpointError, RankingOptionsError
from hup.runtime import Profiler
from state.userstate import StateCache
from stream.guards import FaustInternalsError, check_internals
from stream.metrics import Metrics, RateLimitedLog
from stream.processor import Processor
from stream.publish import max_record_bytes
from stream.settings import Settings
from stream.topics import (
    BrokersUnreachableError,
    TopicSpec,
    client_security_config,
    ensure_topics,
    is_embedded_broker,
)

__all__ = [
    "EXIT_CANNOT_START",
    "GC_GEN0_THRESHOLD",
    "WorkerContext",
    "refuse_to_start",
    "settle_memory",
]

logger = logging.getLogger(__name__)

# Allocations between two youngest-generation collections once the worker runs. Every
# event allocates a few dozen short-lived containers (features, states, profile dicts),
# so CPython's default of 700 collects several times per batch for nothing.
GC_GEN0_THRESHOLD = 50_000
# The exit status of a worker that refuses to start (as the CLIs' usage errors).
EXIT_CANNOT_START = 2


def refuse_to_start(reason: str) -> NoReturn:
    """End the process before it starts: ``reason`` in one line on stderr, exit status 2."""
    print(f"hup worker: cannot start: {reason}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CANNOT_START)


def settle_memory() -> None:
    """Freeze what start-up allocated and collect the young generation less often.

    The model, the featurizer's vocabularies and faust's app are hundreds of thousands
    of long-lived objects; without `gc.freeze` every full collection walks all of them
    again (about 8 % of the worker's time). Frozen objects are never
    collected, which is right for what lives as long as the process.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    logger.info(
        "gc: %d start-up objects frozen, young generation collected every %d allocations",
        gc.get_freeze_count(),
        GC_GEN0_THRESHOLD,
    )


class WorkerContext:
    """What the agent needs besides faust: settings, metrics and the model loaded at start-up.

    One per app (built by `stream.app.create_app`), so nothing lives at module level.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        topics: Sequence[TopicSpec],
        profiler: Profiler | None = None,
    ) -> None:
        """Bind the pieces; ``profiler`` preloads the model (tests), else `prepare` loads it."""
        self.settings = settings
        self.metrics = metrics
        self.topics = list(topics)
        # Whether the cluster is the embedded tansu broker; known once `prepare` ran.
        self.embedded_broker = False
        self._processor: Processor | None = None
        self._prepared = False
        # One per worker, shared by the agents: a flood of bad input logs a few lines.
        self.dead_letter_log = RateLimitedLog(
            logging.getLogger("stream.agents"), what="dead letters"
        )
        if profiler is not None:
            self._use(profiler)

    @property
    def processor(self) -> Processor:
        """The batch processor; only available once the model is loaded."""
        if self._processor is None:
            raise RuntimeError("the model is not loaded: the worker was not prepared")
        return self._processor

    def load_model(self) -> None:
        """Load HUP_MODEL unless already loaded.

        Raises:
            CheckpointError: HUP_MODEL is unset, missing or unreadable (the message says which).
        """
        if self._processor is not None:
            return
        if self.settings.model is None:
            raise CheckpointError("HUP_MODEL is not set; point it at a checkpoint directory")
        self._use(
            Profiler.load(
                self.settings.model,
                top_n=self.settings.top_n,
                top_items=self.settings.top_items,
            )
        )

    def _use(self, profiler: Profiler) -> None:
        self._processor = Processor(
            profiler,
            coalesce=self.settings.coalesce,
            require_user_key=True,
            max_record_bytes=max_record_bytes(self.settings.producer_max_request_size),
            require_origin=self.settings.repartition,
            limits=self.settings.input_limits,
            max_future_s=self.settings.max_future_s,
            state_cache=StateCache(self.settings.state_cache_mb * 2**20)
            if self.settings.state_cache_mb
            else None,
        )
        self.metrics.set_model(profiler.version, str(self.settings.model or ""))
        logger.info("model %s loaded from %s", profiler.version, self.settings.model)

    def prepare(self, sender: Any = None, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Get the worker ready, or refuse to start with one line saying why (`refuse_to_start`).

        Connected to faust's ``on_worker_init`` signal, which fires synchronously
        before the event loop runs, so the ``SystemExit`` ends the process with exit
        status 2 instead of a crash-and-restart loop. faust 0.15 sends that signal
        twice under ``app.main()`` (once itself, once from its CLI): only the first
        call prepares, or the metrics port would be found taken by this very worker.
        """
        if self._prepared:
            return
        self._prepared = True
        try:
            # Also here for `faust -A stream.app worker`, which skips stream.worker.main.
            check_internals()
        except FaustInternalsError as exc:
            refuse_to_start(str(exc))
        torch.set_num_threads(self.settings.torch_threads)
        try:
            self.load_model()
        except (CheckpointError, RankingOptionsError) as exc:
            refuse_to_start(str(exc))
        self._create_datadir()
        self._check_web_port()
        self._serve_metrics()
        self._create_topics()
        self._detect_embedded_broker()
        settle_memory()

    def _create_datadir(self) -> None:
        # faust creates HUP_DATADIR without its parents, so a fresh checkout (no data/)
        # or a new volume path would fail with a traceback when the app starts.
        datadir = self.settings.datadir
        try:
            datadir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            refuse_to_start(f"cannot create HUP_DATADIR {datadir}: {exc.strerror or exc}")

    def _check_web_port(self) -> None:
        # faust binds its web server only after recovery, and a port in use then ends the
        # worker with a traceback after it logged "Ready". Trying the bind here (as aiohttp
        # binds: SO_REUSEADDR) catches a port in use before anything starts.
        port, bind = self.settings.web_port, self.settings.web_bind
        if not port:
            return
        try:
            infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _, address in infos:
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(address)
        except OSError as exc:
            refuse_to_start(
                f"the web port {bind}:{port} (HUP_WEB_BIND, HUP_WEB_PORT) is not available: "
                f"{exc.strerror or exc}"
            )

    def _serve_metrics(self) -> None:
        """Expose the registry on HUP_METRICS_BIND:HUP_METRICS_PORT (port 0: do not)."""
        port, bind = self.settings.metrics_port, self.settings.metrics_bind
        if not port:
            return
        try:
            start_http_server(port, addr=bind, registry=self.metrics.registry)
        except OSError as exc:
            refuse_to_start(
                f"the metrics port {bind}:{port} (HUP_METRICS_BIND, HUP_METRICS_PORT) is not "
                f"available: {exc.strerror or exc}"
            )
        logger.info("metrics on http://%s:%d/metrics", bind, port)

    def _create_topics(self) -> None:
        # With the worker's own security settings: on a SASL/SSL cluster too, every topic
        # gets its explicit configs (the changelogs compacted), unless it exists already.
        # The first broker call: an unreachable cluster ends the start-up here.
        servers = self.settings.bootstrap_servers
        try:
            ensure_topics(
                servers,
                self.topics,
                timeout=self.settings.startup_timeout_s,
                client_config=client_security_config(self.settings),
            )
        except BrokersUnreachableError as exc:
            refuse_to_start(f"{exc} (KAFKA_BOOTSTRAP_SERVERS, HUP_STARTUP_TIMEOUT_S)")
        except KafkaException as exc:
            refuse_to_start(f"cannot create topics on {servers}: {exc}")

    def _detect_embedded_broker(self) -> None:
        # The tansu high-watermark correction (stream.guards.highwater) is for the embedded
        # broker only: against Kafka it would cost a fetch per partition for nothing.
        servers = self.settings.bootstrap_servers
        try:
            self.embedded_broker = is_embedded_broker(
                servers, client_config=client_security_config(self.settings)
            )
        except KafkaException as exc:
            refuse_to_start(f"no answer from {servers}: {exc}")
        logger.info(
            "broker %s: %s",
            servers,
            "the embedded broker (tansu high-watermark correction on)"
            if self.embedded_broker
            else "Kafka (tansu high-watermark correction off)",
        )

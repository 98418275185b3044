"""What a worker prepares before it consumes: the model, torch threads, topics, metrics endpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from confluent_kafka import KafkaException
from prometheus_client import start_http_server

from hup.exceptions import CheckpointError
from hup.runtime import Profiler
from stream import internals
from stream.broker import is_embedded_broker
from stream.limits import max_record_bytes
from stream.metrics import Metrics
from stream.processor import Processor
from stream.settings import Settings
from stream.topics import TopicSpec, client_security_config, ensure_topics

__all__ = ["WorkerContext"]

logger = logging.getLogger(__name__)


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
        self._use(Profiler.load(self.settings.model, top_n=self.settings.top_n))

    def _use(self, profiler: Profiler) -> None:
        self._processor = Processor(
            profiler,
            coalesce=self.settings.coalesce,
            require_user_key=True,
            max_record_bytes=max_record_bytes(self.settings.producer_max_request_size),
            require_origin=self.settings.repartition,
        )
        self.metrics.set_model(profiler.version, str(self.settings.model or ""))
        logger.info("model %s loaded from %s", profiler.version, self.settings.model)

    def prepare(self, sender: Any = None, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Get the worker ready, or refuse to start with one line saying why.

        Connected to faust's ``on_worker_init`` signal, which fires synchronously
        before the event loop runs, so a ``SystemExit`` here ends the process with
        its message and exit status 1 instead of a crash-and-restart loop.
        """
        try:
            # Also here for `faust -A stream.app worker`, which skips stream.worker.main.
            internals.check()
        except internals.FaustInternalsError as exc:
            raise SystemExit(f"hup worker: cannot start: {exc}") from None
        torch.set_num_threads(self.settings.torch_threads)
        try:
            self.load_model()
        except CheckpointError as exc:
            raise SystemExit(f"hup worker: cannot start: {exc}") from None
        self._create_datadir()
        self._create_topics()
        self._detect_embedded_broker()

    def _create_datadir(self) -> None:
        # faust creates HUP_DATADIR without its parents, so a fresh checkout (no data/)
        # or a new volume path would fail with a traceback when the app starts.
        datadir = self.settings.datadir
        try:
            datadir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(
                f"hup worker: cannot create HUP_DATADIR {datadir}: {exc.strerror or exc}"
            ) from None

    def _create_topics(self) -> None:
        # With the worker's own security settings: on a SASL/SSL cluster too, every topic
        # gets its explicit configs (the changelogs compacted), unless it exists already.
        try:
            ensure_topics(
                self.settings.bootstrap_servers,
                self.topics,
                client_config=client_security_config(self.settings),
            )
        except KafkaException as exc:
            raise SystemExit(
                f"hup worker: cannot create topics on {self.settings.bootstrap_servers}: {exc}"
            ) from None

    def _detect_embedded_broker(self) -> None:
        # The tansu high-watermark correction (stream.highwater) is for the embedded
        # broker only: against Kafka it would cost a fetch per partition for nothing.
        try:
            self.embedded_broker = is_embedded_broker(
                self.settings.bootstrap_servers,
                client_config=client_security_config(self.settings),
            )
        except KafkaException as exc:
            raise SystemExit(
                f"hup worker: cannot start: no answer from {self.settings.bootstrap_servers}: {exc}"
            ) from None
        logger.info(
            "broker %s: %s",
            self.settings.bootstrap_servers,
            "the embedded broker (tansu high-watermark correction on)"
            if self.embedded_broker
            else "Kafka (tansu high-watermark correction off)",
        )

    async def serve_metrics(self) -> None:
        """Expose the registry over HTTP on HUP_METRICS_PORT (0: do not)."""
        port = self.settings.metrics_port
        if port:
            start_http_server(port, registry=self.metrics.registry)
            logger.info("metrics on http://0.0.0.0:%d/metrics", port)

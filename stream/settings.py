"""Runtime configuration of the stream processes, read once from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BrokerChoice", "Settings"]

BrokerChoice = Literal["auto", "testcontainers", "embedded"]


class Settings(BaseSettings):
    """Process settings; every field is an env var ``HUP_<FIELD>`` unless noted.

    Frozen so a value read at start-up cannot drift while a worker runs.
    """

    model_config = SettingsConfigDict(env_prefix="HUP_", frozen=True, extra="ignore")

    # An existing Kafka cluster. When set, no broker is started (read from the
    # conventional KAFKA_BOOTSTRAP_SERVERS, or HUP_KAFKA_BOOTSTRAP_SERVERS).
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "HUP_KAFKA_BOOTSTRAP_SERVERS"),
    )
    # Which broker start_broker() starts when no bootstrap servers are given:
    # "auto" tries testcontainers when a Docker daemon answers, else embedded tansu.
    broker: BrokerChoice = "auto"
    # Port of the foreground embedded broker (`python -m stream.broker`).
    broker_port: int = Field(default=9092, ge=1, le=65535)
    # Seconds to wait for a started broker to answer a metadata request.
    broker_startup_timeout: float = Field(default=30.0, gt=0)
    # Where the embedded broker writes its log; default is a fresh temp file.
    broker_log: Path | None = None
    # Image for the testcontainers broker.
    kafka_image: str = "confluentinc/cp-kafka:7.6.0"

"""Bring the infrastructure up for a command: the broker (embedded unless configured)
and the topics. Returns the configuration with real bootstrap servers in it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec

from pipeline import tansu_compat
from pipeline.embedded import EmbeddedBroker
from pipeline.topics import ensure_topics
from schemas.config import TidingsConfig


@dataclass
class Infrastructure:
    """The configuration to hand to the parts, and the embedded broker if one is used."""

    config: TidingsConfig
    broker: EmbeddedBroker | None

    def close(self) -> None:
        """Stop the embedded broker if this process started it."""
        if self.broker is not None:
            self.broker.stop()


def with_bootstrap(config: TidingsConfig, bootstrap: str) -> TidingsConfig:
    """`config` pointed at the embedded broker (tansu) at `bootstrap`."""
    kafka = msgspec.structs.replace(config.kafka, bootstrap_servers=[bootstrap], broker="tansu")
    return msgspec.structs.replace(config, kafka=kafka)


def embedded_broker(config: TidingsConfig) -> EmbeddedBroker:
    """The embedded broker of the configured data directory (not started)."""
    return EmbeddedBroker(config.data_path, config.embedded)


def bring_up(config: TidingsConfig, create_topics: bool = True) -> Infrastructure:
    """Attach to (or start) the embedded broker when no bootstrap servers are configured,
    then create missing topics."""
    broker: EmbeddedBroker | None = None
    if config.kafka.embedded:
        broker = embedded_broker(config)
        config = with_bootstrap(config, broker.attach_or_start())
    if config.kafka.is_tansu:
        tansu_compat.install()
    infra = Infrastructure(config, broker)
    if create_topics:
        try:
            asyncio.run(ensure_topics(config.kafka, config.topic_prefix))
        except BaseException:
            infra.close()
            raise
    return infra

"""Email server profiles: tidings.toml's `[server_profiles.NAME]` are the base, the
records on `server.profiles` (published by `tidings profile add` or the Email Router
migration) replace a file profile of the same name, and a tombstone removes a
published one.

`publish_profiles` is the one way tidings writes that topic; `effective_profiles`
is the one rule merging the two places (connectors apply the same rule through
connectors/profiles_view.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pipeline.publish import publish
from schemas.base import utc_now
from schemas.config import TidingsConfig
from schemas.mailbox import ServerProfile, ServerProfileConfig
from schemas.topics import SERVER_PROFILES


class ProfileSource(StrEnum):
    """Where the profile in force comes from."""

    FILE = "tidings.toml"
    TOPIC = "server.profiles"
    TOPIC_OVER_FILE = "server.profiles (replaces tidings.toml)"


@dataclass(frozen=True)
class EffectiveProfile:
    """A profile in force, and where it comes from."""

    name: str
    profile: ServerProfile
    source: ProfileSource


def profile_records(
    profiles: Mapping[str, ServerProfile],
) -> list[tuple[str, ServerProfileConfig]]:
    """(key, value) records for server.profiles, one per profile, keyed by name."""
    now = utc_now()
    return [
        (name, ServerProfileConfig(name=name, profile=profile, updated_at=now))
        for name, profile in sorted(profiles.items())
    ]


async def publish_profiles_async(
    config: TidingsConfig, profiles: Mapping[str, ServerProfile]
) -> int:
    """Publish `profiles` on server.profiles and wait for the acks; returns the count.

    `config` must point at a reachable broker whose topics exist (the
    configuration `bring_up` returns).
    """
    if not profiles:
        return 0
    return await publish(
        config.kafka, config.topic_prefix, SERVER_PROFILES, profile_records(profiles)
    )


def publish_profiles(config: TidingsConfig, profiles: dict[str, ServerProfile]) -> int:
    """Publish `profiles` (name → profile) on server.profiles, each replacing any profile
    of that name (the file's too, for every connector); returns how many were published.

    Blocking: call it outside an event loop, with the configuration `bring_up`
    returned (a reachable broker, topics created). Publishing the same profile
    again is harmless (the topic is compacted by name).
    """
    return asyncio.run(publish_profiles_async(config, profiles))


def remove_profile(config: TidingsConfig, name: str) -> int:
    """Publish the tombstone of a published profile (a tidings.toml profile of the same
    name is in force again); returns 1. Blocking, like `publish_profiles`."""
    return asyncio.run(publish(config.kafka, config.topic_prefix, SERVER_PROFILES, [(name, None)]))


async def read_published(config: TidingsConfig) -> dict[str, ServerProfile]:
    """The profiles published on server.profiles (tombstones applied)."""
    from pipeline.idle import read_compacted

    records = await read_compacted(config, SERVER_PROFILES)
    return {name: record.profile for name, record in records.items()}


def effective_profiles(
    file_profiles: Mapping[str, ServerProfile], published: Mapping[str, ServerProfile]
) -> dict[str, EffectiveProfile]:
    """The profiles in force by name: the file's, each replaced by a published one of
    the same name, plus the published ones the file does not have."""
    merged = {
        name: EffectiveProfile(name, profile, ProfileSource.FILE)
        for name, profile in file_profiles.items()
    }
    for name, profile in published.items():
        source = ProfileSource.TOPIC_OVER_FILE if name in file_profiles else ProfileSource.TOPIC
        merged[name] = EffectiveProfile(name, profile, source)
    return dict(sorted(merged.items()))

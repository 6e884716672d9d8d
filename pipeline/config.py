"""Load the typed configuration: `tidings.toml` (or --config) plus TIDINGS_* overrides.

An environment variable names a field path with double underscores:
`TIDINGS_KAFKA__BOOTSTRAP_SERVERS=a:9092,b:9092`, `TIDINGS_DATA_DIR=/var/lib/tidings`,
`TIDINGS_PROCESSORS__CORRELATION__TOKEN_PREFIX=ACME`. List fields take
comma-separated values; numbers and booleans are converted.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import msgspec

from schemas.config import TidingsConfig

ENV_PREFIX = "TIDINGS_"
DEFAULT_CONFIG_FILE = "tidings.toml"


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says which and why."""


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> TidingsConfig:
    """Read `path` (or ./tidings.toml when present), apply environment overrides, validate."""
    environ = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = path or (Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).exists() else None)
    if source is not None:
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {source} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from exc
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and name != "TIDINGS_CONFIG":
            _apply_override(data, name[len(ENV_PREFIX) :].lower().split("__"), value, name)
    try:
        return msgspec.convert(data, TidingsConfig, strict=False)
    except msgspec.ValidationError as exc:
        where = f"in {source}" if source else "in the environment"
        raise ConfigError(f"invalid configuration {where}: {exc}") from exc


def _apply_override(data: dict[str, Any], path: list[str], value: str, name: str) -> None:
    target_type: Any = TidingsConfig
    node = data
    for depth, part in enumerate(path):
        hints = _field_types(target_type)
        if part not in hints:
            raise ConfigError(f"{name}: no setting named {'.'.join(path[: depth + 1])}")
        target_type = hints[part]
        if depth == len(path) - 1:
            node[part] = _coerce(value, target_type)
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"{name}: {where} is set to a value in the file, not a table")
        node = child


def _field_types(struct_type: Any) -> dict[str, Any]:
    """Field types of a Struct, or of the Struct in an optional (`SecretRef | None`)."""
    for candidate in (struct_type, *get_args(struct_type)):
        if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
            return get_type_hints(candidate)
    return {}


def _coerce(value: str, target_type: Any) -> Any:
    """Strings become lists for list fields; msgspec converts the rest (strict=False)."""
    candidates = [target_type, *get_args(target_type)]
    if any(get_origin(t) is list for t in candidates):
        return [item.strip() for item in value.split(",") if item.strip()]
    if value == "" and type(None) in get_args(target_type):
        return None
    return value

"""JSON Schema export, so other teams can consume tidings' topics without Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.topics import TOPICS, TopicSpec


def topic_schema(spec: TopicSpec[Any], prefix: str) -> dict[str, Any]:
    """The JSON Schema of one topic's values, with the topic's key and policy noted."""
    assert spec.value_type is not None
    schema = msgspec.json.schema(spec.value_type)
    schema["title"] = spec.name(prefix)
    schema["description"] = spec.description
    schema["x-tidings"] = {
        "topic": spec.name(prefix),
        "key": spec.key,
        "cleanup.policy": str(spec.cleanup),
        "value": spec.value_type.__name__,
        "written_by": spec.writers,
        "read_by": spec.readers,
    }
    return schema


def export_schemas(directory: Path, prefix: str) -> list[Path]:
    """Write one `<topic>.schema.json` per topic with a value type; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for spec in TOPICS:
        if spec.value_type is None:
            continue
        path = directory / f"{spec.name(prefix)}.schema.json"
        path.write_text(json.dumps(topic_schema(spec, prefix), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written

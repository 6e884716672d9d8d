"""The one encode/decode path for every topic payload: JSON by msgspec."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from schemas.errors import DecodeError

T = TypeVar("T", bound=msgspec.Struct)


class Codec(Generic[T]):
    """Encodes and decodes one Struct type; decoding validates types and required fields."""

    def __init__(self, value_type: type[T]) -> None:
        self.value_type = value_type
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(value_type)

    def encode(self, value: T) -> bytes:
        """The JSON bytes of `value`."""
        return self._encoder.encode(value)

    def decode(self, data: bytes, topic: str = "", partition: int = -1, offset: int = -1) -> T:
        """Decode and validate `data`; raises DecodeError saying where it sat and why."""
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise DecodeError(topic, partition, offset, str(exc)) from exc

    def decode_nullable(
        self, data: bytes | None, topic: str = "", partition: int = -1, offset: int = -1
    ) -> T | None:
        """Like `decode`, but a tombstone (None or empty) decodes to None."""
        if not data:
            return None
        return self.decode(data, topic, partition, offset)

    def decode_record(self, record: Any, topic: str, partition: int) -> tuple[str, T | None] | None:
        """The key and value (None: a tombstone) of a consumed record, or None for a record
        without a key; an undecodable value raises DecodeError saying where it sat."""
        key = decode_key(record.key)
        if key is None:
            return None
        return key, self.decode_nullable(record.value, topic, partition, record.offset)


def encode_key(key: str) -> bytes:
    """Topic keys are UTF-8 strings."""
    return key.encode("utf-8")


def decode_key(key: bytes | None) -> str | None:
    """The string form of a topic key; undecodable bytes are replaced, never fatal."""
    return None if key is None else key.decode("utf-8", errors="replace")

"""Secret references: where a secret lives (an environment variable or a file),
never the secret itself. Safe to put on a topic, in a log line or an error."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


class SecretRef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a secret lives: an environment variable or a file. Never the secret itself."""

    env: str | None = None
    file: str | None = None

    def resolve(self) -> str:
        """Read the secret; raises LookupError naming the reference (not the value)."""
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        if self.file:
            try:
                data = Path(self.file).read_bytes()
            except OSError as exc:
                raise LookupError(f"cannot read secret file {self.file}: {exc.strerror}") from None
            try:
                return data.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise LookupError(f"secret file {self.file} is not UTF-8 text") from None
        raise LookupError("secret reference names neither env nor file")

    def __str__(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"

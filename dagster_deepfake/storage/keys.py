"""Content-addressed partition keys (docs/ARCHITECTURE.md §3): `v_` + first 16 hex digits of the file's SHA-256."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

PARTITION_PREFIX = "v_"
PARTITION_KEY_RE = re.compile(r"^v_[0-9a-f]{16}$")
_CHUNK = 4 * 1024 * 1024


def sha256_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def partition_key_for_sha256(sha256: str) -> str:
    return PARTITION_PREFIX + sha256[:16]


def is_partition_key(value: str) -> bool:
    """True for a well-formed key; anything else never reaches Dagster or a storage path."""
    return bool(PARTITION_KEY_RE.match(value))


def require_partition_key(value: str) -> str:
    if not is_partition_key(value):
        raise ValueError(f"not a video partition key (expected v_ + 16 hex digits): {value!r}")
    return value

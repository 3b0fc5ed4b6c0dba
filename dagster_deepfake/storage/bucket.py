"""The upload bucket: a folder of incoming videos behind fsspec (`file://…` or `s3://…`)."""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec

from dagster_deepfake.storage.keys import sha256_stream

# Names a client writes while an upload is still in flight; never picked up.
_IN_FLIGHT_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".uploading")


@dataclass(frozen=True)
class BucketObject:
    """One object: `key` is relative to the bucket root, `uri` is the full URL."""

    uri: str
    key: str
    size: int
    mtime: float


def _mtime(info: dict[str, Any]) -> float:
    for field in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return value.timestamp()
        return float(value)
    return 0.0


class UploadBucket:
    """List, read and write uploads under one root URL."""

    def __init__(
        self, uri: str, suffixes: list[str] | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.suffixes = tuple(s.lower() for s in (suffixes or []))

    def ensure(self) -> None:
        if not self.fs.exists(self.root):
            self.fs.makedirs(self.root, exist_ok=True)

    def _accept(self, key: str) -> bool:
        name = posixpath.basename(key)
        lower = name.lower()
        if name.startswith(".") or lower.endswith(_IN_FLIGHT_SUFFIXES):
            return False
        return not self.suffixes or lower.endswith(self.suffixes)

    def list_objects(self) -> list[BucketObject]:
        """Every accepted object below the root (recursive), sorted by (mtime, key)."""
        if not self.fs.exists(self.root):
            return []
        found = self.fs.find(self.root, detail=True, withdirs=False)
        objects = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            key = posixpath.relpath(path, self.root)
            if not self._accept(key):
                continue
            objects.append(
                BucketObject(
                    uri=self.fs.unstrip_protocol(path),
                    key=key,
                    size=int(info.get("size") or 0),
                    mtime=_mtime(info),
                )
            )
        objects.sort(key=lambda o: (o.mtime, o.key))
        return objects

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"unsafe bucket key: {key!r}")
        return posixpath.join(self.root, key)

    def open(self, key: str) -> BinaryIO:
        return self.fs.open(self._path(key), "rb")

    def sha256(self, key: str) -> str:
        with self.open(key) as fh:
            return sha256_stream(fh)

    def put_file(self, local_path: str, key: str) -> BucketObject:
        """Upload `local_path` as `key` (written under a temporary name, then moved into place)."""
        target = self._path(key)
        tmp = target + ".uploading"
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        self.fs.put_file(local_path, tmp)
        self.fs.mv(tmp, target)
        info = self.fs.info(target)
        return BucketObject(
            uri=self.fs.unstrip_protocol(target), key=key, size=int(info["size"]), mtime=_mtime(info)
        )

    def get_file(self, key: str, local_path: str) -> None:
        self.fs.get_file(self._path(key), local_path)


def open_uri(uri: str, storage_options: dict[str, Any] | None = None) -> BinaryIO:
    """Open any object by its full URL (the `source_uri` recorded at registration)."""
    return fsspec.open(uri, "rb", **(storage_options or {})).open()

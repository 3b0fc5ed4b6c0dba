"""The upload bucket: a folder of incoming videos behind fsspec (`file://…` or `s3://…`).

One code path for both: only the URL differs. Object-store keys are opaque strings (a key
may contain spaces, commas, unicode or a literal `..` segment and is still a valid upload),
so keys are cut from listed paths literally, never normalised; only on a local filesystem,
where `..` would walk out of the folder, are such keys refused.
"""

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
    """When the object arrived: S3 `LastModified`, or on a local disk the later of mtime and ctime.

    ctime matters locally because `mv old.mp4 uploads/` keeps the file's old mtime but sets
    ctime to the moment of the move; with mtime alone the sensor cursor would never see it.
    """
    local = [float(info[f]) for f in ("mtime", "created") if isinstance(info.get(f), int | float)]
    if local:
        return max(local)
    for field in ("LastModified", "last_modified"):
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
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = "file" in tuple(self.fs.protocol) or "local" in tuple(self.fs.protocol)
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
        # fsspec caches listings per filesystem instance (shared across ticks in one process);
        # a sensor must see the bucket as it is now.
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            return []
        # `find` pages through the whole listing (S3 ListObjectsV2 returns 1,000 keys a page).
        found = self.fs.find(self.root, detail=True, withdirs=False)
        prefix = self.root + "/"
        objects = []
        for path, info in found.items():
            if info.get("type") == "directory" or not path.startswith(prefix):
                continue
            key = path[len(prefix) :]
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
        unsafe = ("", ".", "..") if self.is_local else ("",)
        if not key or key.startswith("/") or any(p in unsafe for p in parts):
            raise ValueError(f"unsafe bucket key: {key!r}")
        return f"{self.root}/{key}"

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

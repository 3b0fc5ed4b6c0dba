"""The upload bucket: a folder of incoming videos behind fsspec (`file://…` or `s3://…`).

One code path for both: only the URL differs. Object-store keys are opaque strings (a key
may contain spaces, commas, unicode or a literal `..` segment and is still a valid upload),
so keys are cut from listed paths literally, never normalised; only on a local filesystem,
where `..` would walk out of the folder, are such keys refused.

Only regular files are uploads. On a local folder the listing uses `lstat` and never follows a
symbolic link, to a file or to a directory, inside the bucket or out of it: a link is listed
as skipped, with FIFOs, sockets and devices, and never opened. Every local open is
`O_NONBLOCK | O_NOFOLLOW` and checks the type with `fstat` before a byte is read, so an
object swapped for a FIFO after listing cannot block the reader. S3 has no such objects.
Reads inside a sensor tick take a deadline (`sha256(key, deadline=...)`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import posixpath
import stat
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec

from dagster_deepfake.errors import InvalidVideoError
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


@dataclass(frozen=True)
class SkippedObject:
    """Something in the bucket that is not a regular file: `what` says what it is."""

    key: str
    what: str


@dataclass(frozen=True)
class BucketListing:
    objects: list[BucketObject]
    skipped: list[SkippedObject]


class NotRegularFileError(InvalidVideoError):
    """The object is a FIFO, socket, device or symbolic link: never read."""


class ReadDeadlineError(TimeoutError):
    """A bounded read ran out of time; nothing was registered, the object is read again later."""


_CHUNK = 4 * 1024 * 1024


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for log lines ("a FIFO (named pipe)", …)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link (not followed)"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def open_regular_file(path: str) -> BinaryIO:
    """Open a local path for reading only if it is a regular file, without ever blocking.

    `O_NONBLOCK` makes opening a FIFO return at once (a plain open waits for a writer forever),
    `O_NOFOLLOW` refuses a symbolic link, and `fstat` on the open descriptor checks what was
    really opened (no window between a check and the open).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        # ELOOP for a link, ENXIO for a socket, …: say what it is when it is not a regular file
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, f"{describe_mode(mode)}, not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, f"{describe_mode(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


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
        """Every accepted regular file below the root (recursive), sorted by (mtime, key)."""
        return self.scan().objects

    def scan(self) -> BucketListing:
        """Accepted regular files, sorted by (mtime, key), and what was skipped as not one."""
        # fsspec caches listings per filesystem instance (shared across ticks in one process);
        # a sensor must see the bucket as it is now.
        self.fs.invalidate_cache()
        if self.is_local:
            return self._scan_local()
        if not self.fs.exists(self.root):
            return BucketListing([], [])
        # `find` pages through the whole listing (S3 ListObjectsV2 returns 1,000 keys a page).
        found = self.fs.find(self.root, detail=True, withdirs=False)
        prefix = self.root + "/"
        objects, skipped = [], []
        for path, info in found.items():
            kind = info.get("type")
            if kind == "directory" or not path.startswith(prefix):
                continue
            key = path[len(prefix) :]
            if not self._accept(key):
                continue
            if kind != "file":
                skipped.append(SkippedObject(key, f"of type {kind!r}, not a regular file"))
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
        return BucketListing(objects, skipped)

    def _scan_local(self) -> BucketListing:
        """Walk the folder with lstat only: links (to files or folders) are never followed."""
        objects, skipped = [], []
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            try:
                entries = list(os.scandir(posixpath.join(self.root, rel_dir) if rel_dir else self.root))
            except (FileNotFoundError, NotADirectoryError):
                continue  # the root or a sub-folder went away between listing and walking
            for entry in entries:
                key = posixpath.join(rel_dir, entry.name) if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(key)
                    continue
                if not self._accept(key):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped.append(SkippedObject(key, describe_mode(st.st_mode)))
                    continue
                objects.append(
                    BucketObject(
                        uri=self.fs.unstrip_protocol(entry.path),
                        key=key,
                        size=st.st_size,
                        # a `mv` into the bucket keeps the old mtime but sets ctime (see _mtime)
                        mtime=max(st.st_mtime, st.st_ctime),
                    )
                )
        objects.sort(key=lambda o: (o.mtime, o.key))
        skipped.sort(key=lambda s: s.key)
        return BucketListing(objects, skipped)

    def _path(self, key: str) -> str:
        parts = key.split("/")
        unsafe = ("", ".", "..") if self.is_local else ("",)
        if not key or key.startswith("/") or any(p in unsafe for p in parts):
            raise ValueError(f"unsafe bucket key: {key!r}")
        return f"{self.root}/{key}"

    def open(self, key: str) -> BinaryIO:
        """Read an object; locally only a regular file, never through a link, never blocking."""
        if self.is_local:
            return open_regular_file(self._path(key))
        return self.fs.open(self._path(key), "rb")

    def sha256(self, key: str, *, deadline: float | None = None) -> str:
        """SHA-256 of the object, read in chunks; ReadDeadlineError once `time.monotonic()` passes
        `deadline` (None: no limit)."""
        if deadline is None:
            with self.open(key) as fh:
                return sha256_stream(fh)
        digest = hashlib.sha256()
        with self.open(key) as fh:
            while True:
                if time.monotonic() > deadline:
                    raise ReadDeadlineError(
                        f"{key}: not read within the sensor tick's time; read again later"
                    )
                chunk = fh.read(_CHUNK)
                if not chunk:
                    return digest.hexdigest()
                digest.update(chunk)

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
    """Open any object by its full URL (the `source_uri` recorded at registration).

    A local file is opened like a bucket object: a regular file only (NotRegularFileError for a
    FIFO, socket, device or link, which a run must not block on or read through).
    """
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if "file" in tuple(fs.protocol) or "local" in tuple(fs.protocol):
        return open_regular_file(path)
    return fsspec.open(uri, "rb", **(storage_options or {})).open()

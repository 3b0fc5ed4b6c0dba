"""Turning bucket objects into videos: the sensor's logic, free of Dagster.

The cursor is a last-modified high-water mark plus the keys taken near it. Objects are
taken in (mtime, key) order, so two objects with the same mtime are never skipped or
repeated; an object younger than `settle_seconds` (maybe still uploading) waits for a
later tick; an object that shows up late with an older timestamp (an S3 multipart upload is
stamped with its start time) is still taken within `lookback_seconds`.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

from dagster_deepfake.storage.bucket import BucketObject, UploadBucket
from dagster_deepfake.storage.keys import partition_key_for_sha256
from dagster_deepfake.storage.postgres import ResultsDB

# How far behind the newest taken object the sensor still looks for late arrivals. S3 stamps
# a multipart upload with the time it was *initiated*, so a 2 GB upload that takes minutes
# appears with a LastModified older than objects registered meanwhile.
DEFAULT_LOOKBACK_SECONDS = 900.0


@dataclass
class ScanCursor:
    """High-water mark plus the keys taken within `lookback` of it (key -> arrival time).

    An object is new when it arrived after the mark, or within the lookback window and not
    already taken at that very arrival time. Equal timestamps (S3 has one-second resolution)
    are told apart by key, so nothing is skipped or repeated.
    """

    mtime: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)

    @property
    def keys_at_mtime(self) -> list[str]:
        return sorted(k for k, t in self.seen.items() if t == self.mtime)

    def to_json(self) -> str:
        return json.dumps({"mtime": self.mtime, "seen": dict(sorted(self.seen.items()))})

    @classmethod
    def from_json(cls, text: str | None) -> ScanCursor:
        if not text:
            return cls()
        data = json.loads(text)
        mtime = float(data.get("mtime", 0.0))
        seen = {str(k): float(t) for k, t in (data.get("seen") or {}).items()}
        seen.update({k: mtime for k in data.get("keys", [])})  # cursors written before `seen`
        return cls(mtime=mtime, seen=seen)

    def is_new(self, obj: BucketObject, lookback: float = 0.0) -> bool:
        if obj.mtime > self.mtime:
            return True
        return obj.mtime >= self.mtime - lookback and self.seen.get(obj.key) != obj.mtime

    def advanced(self, taken: list[BucketObject], lookback: float) -> ScanCursor:
        mtime = max([self.mtime, *(o.mtime for o in taken)])
        seen = {**self.seen, **{o.key: o.mtime for o in taken}}
        return ScanCursor(mtime, {k: t for k, t in seen.items() if t >= mtime - lookback})


@dataclass
class ScanResult:
    objects: list[BucketObject]
    cursor: ScanCursor
    waiting: int  # objects left for a later tick (still settling, or over the per-tick limit)


def select_new_objects(
    objects: list[BucketObject],
    cursor: ScanCursor,
    *,
    now: float,
    settle_seconds: float,
    limit: int,
    lookback_seconds: float = 0.0,
) -> ScanResult:
    """New objects in (mtime, key) order, at most `limit`, and the cursor after taking them.

    Objects younger than `settle_seconds` may still be growing (a local copy in progress, a
    client rewriting a key): they and everything after them wait for a later tick, so the
    cursor never passes an object that was not taken.
    """
    pending = sorted(
        (o for o in objects if cursor.is_new(o, lookback_seconds)), key=lambda o: (o.mtime, o.key)
    )
    taken: list[BucketObject] = []
    for obj in pending:
        if now - obj.mtime < settle_seconds or len(taken) >= limit:
            break
        taken.append(obj)
    if not taken:
        return ScanResult([], cursor, len(pending))
    return ScanResult(taken, cursor.advanced(taken, lookback_seconds), len(pending) - len(taken))


@dataclass(frozen=True)
class Registration:
    video_id: str
    sha256: str
    source_uri: str
    file_name: str
    new_video: bool


def register_object(
    bucket: UploadBucket, obj: BucketObject, db: ResultsDB, *, uploader: str | None = None
) -> Registration:
    """Hash the object, record the video (first upload wins the source columns) and its job."""
    sha = bucket.sha256(obj.key)
    video_id = partition_key_for_sha256(sha)
    existing = db.get_video(video_id)
    file_name = posixpath.basename(obj.key)
    if existing is None:
        db.upsert_video(
            video_id=video_id,
            sha256=sha,
            source_uri=obj.uri,
            file_name=file_name,
            uploader=uploader,
            size_bytes=obj.size,
        )
    db.create_job(video_id, video_id, obj.uri)
    return Registration(video_id, sha, obj.uri, file_name, existing is None)

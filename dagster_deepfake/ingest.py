"""Turning bucket objects into videos: the sensor's logic, free of Dagster.

The cursor is (last-modified, keys seen at exactly that time). Objects are taken in
(mtime, key) order, so two objects with the same mtime are never skipped or repeated,
and an object younger than `settle_seconds` (maybe still uploading) waits for a later tick.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

from dagster_deepfake.storage.bucket import BucketObject, UploadBucket
from dagster_deepfake.storage.keys import partition_key_for_sha256
from dagster_deepfake.storage.postgres import ResultsDB


@dataclass
class ScanCursor:
    mtime: float = 0.0
    keys_at_mtime: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"mtime": self.mtime, "keys": sorted(self.keys_at_mtime)})

    @classmethod
    def from_json(cls, text: str | None) -> ScanCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(mtime=float(data.get("mtime", 0.0)), keys_at_mtime=list(data.get("keys", [])))

    def is_new(self, obj: BucketObject) -> bool:
        return obj.mtime > self.mtime or (obj.mtime == self.mtime and obj.key not in self.keys_at_mtime)


@dataclass
class ScanResult:
    objects: list[BucketObject]
    cursor: ScanCursor
    waiting: int  # objects left for a later tick (still settling, or over the per-tick limit)


def select_new_objects(
    objects: list[BucketObject], cursor: ScanCursor, *, now: float, settle_seconds: float, limit: int
) -> ScanResult:
    """New objects in (mtime, key) order, at most `limit`, and the cursor after taking them."""
    pending = sorted((o for o in objects if cursor.is_new(o)), key=lambda o: (o.mtime, o.key))
    taken: list[BucketObject] = []
    for obj in pending:
        if now - obj.mtime < settle_seconds or len(taken) >= limit:
            break
        taken.append(obj)
    if not taken:
        return ScanResult([], cursor, len(pending))
    last = taken[-1].mtime
    keys = [o.key for o in taken if o.mtime == last]
    if last == cursor.mtime:
        keys = cursor.keys_at_mtime + keys
    return ScanResult(taken, ScanCursor(last, sorted(set(keys))), len(pending) - len(taken))


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

"""Turning bucket objects into videos: the sensor's logic, free of Dagster.

The cursor is a last-modified high-water mark plus the keys taken near it. Objects are
taken in (mtime, key) order, so two objects with the same mtime are never skipped or
repeated; an object that shows up late with an older timestamp (an S3 multipart upload is
stamped with its start time) is still taken within `lookback_seconds`.

Settling: an object is taken only once the sensor has seen the same (size, mtime) for at least
`settle_seconds`, measured from the first tick that saw it in that state (kept in the cursor as
`pending`), and its mtime is at least that old. A writer that pauses mid-upload is seen again
with a new size or mtime before it is taken, so one upload stays one partition; only a writer
that stays silent across two ticks `settle_seconds` apart can still be cut (write under a
temporary name such as `*.part` and rename to be safe).
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
# At most this many not-yet-settled objects and skipped non-files are remembered in the cursor
# (the rest are simply first seen on a later tick); keeps the cursor small on a huge backlog.
MAX_TRACKED = 1000


@dataclass
class ScanCursor:
    """High-water mark plus the keys taken within `lookback` of it (key -> arrival time).

    An object is new when it arrived after the mark, or within the lookback window and not
    already taken at that very arrival time. Equal timestamps (S3 has one-second resolution)
    are told apart by key, so nothing is skipped or repeated.
    """

    mtime: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)
    # key -> (size, mtime, first seen): new objects not taken yet, for the settle check
    pending: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    # key -> what it is: non-regular files already reported (logged once, not every tick)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def keys_at_mtime(self) -> list[str]:
        return sorted(k for k, t in self.seen.items() if t == self.mtime)

    def to_json(self) -> str:
        data: dict[str, object] = {"mtime": self.mtime, "seen": dict(sorted(self.seen.items()))}
        if self.pending:
            data["pending"] = {k: list(v) for k, v in sorted(self.pending.items())}
        if self.skipped:
            data["skipped"] = dict(sorted(self.skipped.items()))
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | None) -> ScanCursor:
        if not text:
            return cls()
        data = json.loads(text)
        mtime = float(data.get("mtime", 0.0))
        seen = {str(k): float(t) for k, t in (data.get("seen") or {}).items()}
        seen.update({k: mtime for k in data.get("keys", [])})  # cursors written before `seen`
        pending = {
            str(k): (int(v[0]), float(v[1]), float(v[2])) for k, v in (data.get("pending") or {}).items()
        }
        skipped = {str(k): str(v) for k, v in (data.get("skipped") or {}).items()}
        return cls(mtime=mtime, seen=seen, pending=pending, skipped=skipped)

    def is_new(self, obj: BucketObject, lookback: float = 0.0) -> bool:
        if obj.mtime > self.mtime:
            return True
        return obj.mtime >= self.mtime - lookback and self.seen.get(obj.key) != obj.mtime

    def advanced(
        self, taken: list[BucketObject], lookback: float, pending: dict[str, tuple[int, float, float]]
    ) -> ScanCursor:
        mtime = max([self.mtime, *(o.mtime for o in taken)])
        seen = {**self.seen, **{o.key: o.mtime for o in taken}}
        return ScanCursor(
            mtime, {k: t for k, t in seen.items() if t >= mtime - lookback}, pending, dict(self.skipped)
        )

    def with_skipped(self, skipped: dict[str, str]) -> ScanCursor:
        """This cursor remembering `skipped` (what the listing holds now) as reported."""
        kept = dict(sorted(skipped.items())[:MAX_TRACKED])
        return ScanCursor(self.mtime, dict(self.seen), dict(self.pending), kept)


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

    An object not yet seen unchanged (same size and mtime) for `settle_seconds`, or younger
    than that, may still be growing (a copy in progress, a paused writer, a client rewriting a
    key): it and everything after it wait for a later tick, so the cursor never passes an
    object that was not taken. Every waiting object's state is remembered in the cursor.
    """
    pending = sorted(
        (o for o in objects if cursor.is_new(o, lookback_seconds)), key=lambda o: (o.mtime, o.key)
    )
    taken: list[BucketObject] = []
    waiting: dict[str, tuple[int, float, float]] = {}
    for obj in pending:
        before = cursor.pending.get(obj.key)
        first_seen = before[2] if before is not None and before[:2] == (obj.size, obj.mtime) else now
        settled = now - first_seen >= settle_seconds and now - obj.mtime >= settle_seconds
        if not waiting and settled and len(taken) < limit:
            taken.append(obj)
        elif len(waiting) < MAX_TRACKED:
            waiting[obj.key] = (obj.size, obj.mtime, first_seen)
        else:
            break
    if not taken:
        unchanged = ScanCursor(cursor.mtime, dict(cursor.seen), waiting, dict(cursor.skipped))
        return ScanResult([], unchanged, len(pending))
    return ScanResult(taken, cursor.advanced(taken, lookback_seconds, waiting), len(pending) - len(taken))


@dataclass(frozen=True)
class Registration:
    video_id: str
    sha256: str
    source_uri: str
    file_name: str
    new_video: bool


def register_object(
    bucket: UploadBucket,
    obj: BucketObject,
    db: ResultsDB,
    *,
    uploader: str | None = None,
    deadline: float | None = None,
) -> Registration:
    """Hash the object, record the video (first upload wins the source columns) and its job.

    With a `deadline` (time.monotonic()), ReadDeadlineError when hashing takes longer; nothing is
    recorded then.
    """
    sha = bucket.sha256(obj.key, deadline=deadline)
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

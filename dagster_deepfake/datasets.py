"""Registering a labelled dataset (FaceForensics++, Celeb-DF v2, a CSV) as videos and jobs.

Every file is hashed to its content-addressed partition key, recorded in `videos` with its
dataset, label and split, and gets a queued job. The Dagster layer then adds the partitions
(in batches) and its dataset sensor requests the runs.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.storage.postgres import ResultsDB


@dataclass(frozen=True)
class DatasetRegistration:
    video_ids: list[str]
    duplicates: int  # rows whose bytes equal another row's (same partition)
    missing: list[str]  # paths that do not exist


def register_manifest(
    db: ResultsDB,
    manifest: pd.DataFrame,
    *,
    dataset_name: str,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> DatasetRegistration:
    """Hash and record every manifest row; returns the distinct partition keys in manifest order."""
    paths = [str(p) for p in manifest["path"]]
    missing = [p for p in paths if not Path(p).is_file()]
    present = manifest[[Path(p).is_file() for p in paths]]

    def _hash(path: str) -> str:
        digest = sha256_file(path)
        if on_progress:
            on_progress(1)
        return digest

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(pool.map(_hash, [str(p) for p in present["path"]]))
    seen: list[str] = []
    seen_set: set[str] = set()
    for digest, row in zip(digests, present.itertuples(index=False), strict=True):
        video_id = partition_key_for_sha256(digest)
        if video_id in seen_set:
            continue
        seen_set.add(video_id)
        seen.append(video_id)
        path = Path(str(row.path)).resolve()
        record = {
            "video_id": video_id,
            "sha256": digest,
            "source_uri": path.as_uri(),
            "file_name": path.name,
            "uploader": f"dataset:{dataset_name}",
            "size_bytes": path.stat().st_size,
            "dataset": dataset_name,
            "label": str(row.label),
        }
        existing = db.get_video(video_id)
        if existing is not None:  # first upload keeps its source columns; the label is added
            record.update({k: existing[k] for k in ("source_uri", "file_name", "uploader")})
        db.upsert_video(**record)
        db.create_job(video_id, video_id, path.as_uri())
    return DatasetRegistration(seen, len(present) - len(seen), missing)

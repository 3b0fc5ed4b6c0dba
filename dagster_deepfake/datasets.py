"""Registering a labelled dataset (FaceForensics++, Celeb-DF v2, a CSV) as videos and jobs.

Every file is hashed to its content-addressed partition key, recorded in `videos` with its
dataset, label and split, and gets a queued job. The Dagster layer then adds the partitions
(in batches) and its dataset sensor requests the runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dagster_deepfake.config import Settings
from dagster_deepfake.storage import layout
from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file
from dagster_deepfake.storage.postgres import ResultsDB, embedded_postgres_url


@dataclass(frozen=True)
class DatasetRegistration:
    video_ids: list[str]
    duplicates: int  # rows whose bytes equal another row's (same partition)
    missing: list[str]  # paths that do not exist
    name: str = ""
    manifest_path: str = ""
    manifest: pd.DataFrame | None = None


def register_dataset(
    settings: Settings,
    kind: str,
    root: str | Path,
    *,
    name: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DatasetRegistration:
    """Parse a dataset (ffpp | celebdf | csv), store its manifest and record every video and job.

    The manifest lands at `<artifact_root>/datasets/<name>/manifest.parquet`, where the
    `dataset_manifest` asset finds every registered dataset. The caller adds the partitions.
    """
    from dagster_deepfake.training.manifests import load_manifest, manifest_hash, write_manifest

    p = settings.platform
    manifest = load_manifest(kind, root)  # type: ignore[arg-type]
    name = name or f"{kind}-{manifest_hash(manifest)}"
    store = ArtifactStore(
        p.artifact_root, s3_storage_options(p.artifact_root, p.s3_endpoint_url, p.s3_region)
    )
    relpath = layout.dataset_manifest_rel(name)
    with tempfile.TemporaryDirectory(prefix="ddf-manifest-") as tmp:  # local or S3 alike
        store.write_bytes(relpath, write_manifest(manifest, Path(tmp) / "manifest.parquet").read_bytes())
    manifest_path = store.full_url(relpath)
    db = ResultsDB(p.postgres_url or embedded_postgres_url(p.postgres_data_dir))
    db.create_schema()
    if on_start:
        on_start(len(manifest))
    reg = register_manifest(db, manifest, dataset_name=name, on_progress=on_progress)
    return DatasetRegistration(reg.video_ids, reg.duplicates, reg.missing, name, str(manifest_path), manifest)


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

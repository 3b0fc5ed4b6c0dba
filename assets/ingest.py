"""`raw_video` and `frames`: ingest the upload, probe it, sample frames at the contract's rate."""

from collections.abc import Callable

import dagster as dg

from assets.common import fail_video_on_bad_input, image_md
from assets.partitions import videos_partitions
from dagster_deepfake import stages
from dagster_deepfake.config import Settings
from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.frames import FrameSampler
from dagster_deepfake.media.probe import VideoProbe
from dagster_deepfake.storage import stage_io
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import ResultsDB
from resources import ArtifactStoreResource, PostgresResource, SettingsResource, UploadBucketResource


@dg.asset(
    partitions_def=videos_partitions,
    group_name="per_video",
    kinds={"video", "postgres", "parquet"},
    description="The uploaded video copied into the artifact store, probed and validated (docs/ARCHITECTURE.md).",
)
def raw_video(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
    upload_bucket: UploadBucketResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    db = postgres.db()
    with fail_video_on_bad_input(db, video_id, "raw_video"):
        _, metadata = materialize_raw_video(
            artifacts.store(),
            db,
            settings.get(),
            video_id,
            context.run.run_id,
            upload_bucket.bucket().storage_options,
            context.log.warning,
        )
    return dg.MaterializeResult(metadata=metadata)


def materialize_raw_video(
    store: ArtifactStore,
    db: ResultsDB,
    s: Settings,
    video_id: str,
    run_id: str,
    storage_options: dict | None,
    warn: Callable[[str], None],
) -> tuple[stages.ProbedVideo, dict]:
    """`raw_video`'s work (also a batch's, assets/one_pass.py): ingest, probe, the `videos` rows.
    Raises DeepfakeError when the input is at fault."""
    video = db.get_video(video_id)
    if video is None:
        raise InvalidVideoError(video_id, "no upload is registered for this partition")
    db.set_job_status(video_id, "running", run_id=run_id)
    # the upload bucket's endpoint and region: an s3:// source is read where it was listed
    ingested = stages.ingest_stage(
        store, video_id, video["source_uri"], video["file_name"], s, storage_options=storage_options
    )
    store.write_table(
        "videos",
        video_id,
        stage_io.video_row(ingested, video["source_uri"], video["file_name"], video["uploader"]),
    )
    db.upsert_video(**{**video, "probe": {**ingested.probe.to_dict(), "warnings": ingested.warnings}})
    p: VideoProbe = ingested.probe
    for warning in ingested.warnings:
        warn(f"{video_id}: {warning}")
    return ingested, {
        "file_name": video["file_name"],
        "source_uri": video["source_uri"],
        "duration_s": dg.MetadataValue.float(p.duration),
        "resolution": p.resolution,
        "fps": dg.MetadataValue.float(p.fps),
        "codec": p.codec,
        "container": p.container,
        "rotation": p.rotation,
        "has_audio": p.has_audio,
        "size_bytes": p.size_bytes,
        "warnings": dg.MetadataValue.json(ingested.warnings),
        "artifact": dg.MetadataValue.path(p.path),
    }


@dg.asset(
    partitions_def=videos_partitions,
    deps=[raw_video],
    group_name="per_video",
    kinds={"video", "parquet"},
    description="Frames sampled at `data.frame_rate` FPS (lossless PNG) and their index (frame_id, timestamp).",
)
def frames(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    store = artifacts.store()
    db = postgres.db()
    s = settings.get()
    with (
        fail_video_on_bad_input(db, video_id, "frames"),
        store.local_path(stage_io.find_source_rel(store, video_id)) as local,
    ):
        sampler = stages.frames_stage(local, stored_probe(db, video_id), s)
        summary = stage_io.persist_frames(store, video_id, sampler)
    return dg.MaterializeResult(
        metadata=record_frames(db, s, video_id, sampler, summary, context.log.warning)
    )


def stored_probe(db: ResultsDB, video_id: str) -> VideoProbe:
    """The probe `raw_video` kept with the video's row."""
    return VideoProbe(**{k: v for k, v in (db.get_video(video_id)["probe"] or {}).items() if k != "warnings"})


def record_frames(
    db: ResultsDB,
    s: Settings,
    video_id: str,
    sampler: FrameSampler,
    summary: stage_io.FramesSummary,
    warn: Callable[[str], None],
) -> dict:
    """After the frames are written: decode warnings kept with the probe (the report carries
    them) and `frames`' metadata."""
    for warning in sampler.warnings:
        warn(f"{video_id}: {warning}")
    if sampler.warnings:
        video = db.get_video(video_id)
        probe_doc = dict(video["probe"] or {})
        probe_doc["warnings"] = list(dict.fromkeys([*probe_doc.get("warnings", []), *sampler.warnings]))
        db.upsert_video(**{**video, "probe": probe_doc})
    table = summary.table
    return {
        "frame_count": dg.MetadataValue.int(len(table)),
        "frame_rate": dg.MetadataValue.float(float(s.data.frame_rate)),  # config default may be an int
        "first_ts": dg.MetadataValue.float(float(table.timestamp.min())),
        "last_ts": dg.MetadataValue.float(float(table.timestamp.max())),
        "warnings": dg.MetadataValue.json(sampler.warnings),
        "thumbnail": dg.MetadataValue.md(image_md(summary.thumbnail_jpeg or b"", "first sampled frame")),
    }

"""`raw_video` and `frames`: ingest the upload, probe it, sample frames at the contract's rate."""

import dagster as dg

from assets.common import fail_video_on_bad_input, image_md
from assets.partitions import videos_partitions
from dagster_deepfake import stages
from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.probe import VideoProbe
from dagster_deepfake.storage import stage_io
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
    video = db.get_video(video_id)
    with fail_video_on_bad_input(db, video_id, "raw_video"):
        if video is None:
            raise InvalidVideoError(video_id, "no upload is registered for this partition")
        db.set_job_status(video_id, "running", run_id=context.run.run_id)
        store = artifacts.store()
        ingested = stages.ingest_stage(
            store,
            video_id,
            video["source_uri"],
            video["file_name"],
            settings.get(),
            # the upload bucket's endpoint and region: an s3:// source is read where it was listed
            storage_options=upload_bucket.bucket().storage_options,
        )
    store.write_table(
        "videos",
        video_id,
        stage_io.video_row(ingested, video["source_uri"], video["file_name"], video["uploader"]),
    )
    db.upsert_video(**{**video, "probe": {**ingested.probe.to_dict(), "warnings": ingested.warnings}})
    p: VideoProbe = ingested.probe
    for warning in ingested.warnings:
        context.log.warning(f"{video_id}: {warning}")
    return dg.MaterializeResult(
        metadata={
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
    )


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
    probe = VideoProbe(
        **{k: v for k, v in (db.get_video(video_id)["probe"] or {}).items() if k != "warnings"}
    )
    s = settings.get()
    rate = s.data.frame_rate
    with (
        fail_video_on_bad_input(db, video_id, "frames"),
        store.local_path(stage_io.find_source_rel(store, video_id)) as local,
    ):
        sampler = stages.frames_stage(local, probe, s)
        summary = stage_io.persist_frames(store, video_id, sampler)
    for warning in sampler.warnings:
        context.log.warning(f"{video_id}: {warning}")
    if sampler.warnings:  # kept with the probe so the report carries them
        video = db.get_video(video_id)
        probe_doc = dict(video["probe"] or {})
        probe_doc["warnings"] = list(dict.fromkeys([*probe_doc.get("warnings", []), *sampler.warnings]))
        db.upsert_video(**{**video, "probe": probe_doc})
    table = summary.table
    return dg.MaterializeResult(
        metadata={
            "frame_count": dg.MetadataValue.int(len(table)),
            "frame_rate": dg.MetadataValue.float(float(rate)),  # config default may be an int
            "first_ts": dg.MetadataValue.float(float(table.timestamp.min())),
            "last_ts": dg.MetadataValue.float(float(table.timestamp.max())),
            "warnings": dg.MetadataValue.json(sampler.warnings),
            "thumbnail": dg.MetadataValue.md(image_md(summary.thumbnail_jpeg or b"", "first sampled frame")),
        }
    )

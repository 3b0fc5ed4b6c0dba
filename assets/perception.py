"""`aligned_faces`, `optical_flow`, `audio`: the per-video stages between frames and the model."""

from collections.abc import Iterable

import dagster as dg
import pandas as pd

from assets.common import fail_video_on_bad_input, image_md
from assets.ingest import frames, raw_video, stored_probe
from assets.partitions import videos_partitions
from dagster_deepfake import stages
from dagster_deepfake.config import Settings
from dagster_deepfake.errors import NoFaceFoundError
from dagster_deepfake.faces.extract import FaceExtraction
from dagster_deepfake.flow import FlowFeatures
from dagster_deepfake.media.frames import SampledFrame
from dagster_deepfake.media.probe import VideoProbe
from dagster_deepfake.plots import line_plot_png
from dagster_deepfake.storage import stage_io
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.track_scores import track_units
from resources import ArtifactStoreResource, PostgresResource, SettingsResource

# Below this share of sampled frames with exactly one face the check warns a reviewer.
MIN_FACE_COVERAGE = 0.5


@dg.asset(
    partitions_def=videos_partitions,
    deps=[frames],
    group_name="per_video",
    kinds={"onnx", "parquet"},
    description="RetinaFace (conf ≥ 0.95) on every sampled frame; frames with exactly one face are "
    "similarity-aligned to 224×224; the rest are skipped with a reason.",
)
def aligned_faces(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    store = artifacts.store()
    with fail_video_on_bad_input(postgres.db(), video_id, "aligned_faces"):
        _, metadata = materialize_aligned_faces(
            store, settings.get(), video_id, stage_io.load_frames(store, video_id)
        )
    return dg.MaterializeResult(metadata=metadata)


def materialize_aligned_faces(
    store: ArtifactStore, s: Settings, video_id: str, frames: Iterable[SampledFrame]
) -> tuple[FaceExtraction, dict]:
    """`aligned_faces`' work (also a batch's): detect, align, persist; NoFaceFoundError keeps the
    face table (every frame's skip reason) for the reviewer before it propagates."""
    cfg = s.data.faces
    try:
        extraction = stages.faces_stage(frames, s, video_id)
    except NoFaceFoundError as exc:
        stage_io.persist_faces(store, video_id, exc.extraction)
        raise
    strip = stage_io.persist_faces(store, video_id, extraction)
    return extraction, {
        "sampled_frames": extraction.num_frames,
        "faces_kept": extraction.num_kept,
        "face_coverage": dg.MetadataValue.float(round(extraction.coverage, 4)),
        "skipped_no_face": extraction.skip_counts.get("no_face", 0),
        "skipped_multiple_faces": extraction.skip_counts.get("multiple_faces", 0),
        "face_tracks": "off (data.faces.max_faces: 1)"
        if extraction.tracks is None
        else f"{len(extraction.tracks.track_ids)} ({len(extraction.tracks.scorable_ids)} long enough to score)",
        "detector": f"{cfg.detector} (confidence ≥ {cfg.confidence_threshold})",
        "face_strip": dg.MetadataValue.md(image_md(strip, "aligned faces", "image/png")),
    }


@dg.asset_check(asset=aligned_faces, description="Share of sampled frames with exactly one face.")
def face_coverage_check(
    context: dg.AssetCheckExecutionContext, artifacts: ArtifactStoreResource
) -> dg.AssetCheckResult:
    video_id = context.partition_key if context.has_partition_key else None
    return dg.AssetCheckResult(**face_coverage(artifacts.store().read_table("faces", video_id)))


def face_coverage(table: pd.DataFrame) -> dict:
    """`face_coverage_check`'s verdict on a face table (also logged by a batch)."""
    coverage = float(table["kept"].mean()) if len(table) else 0.0
    return {
        "passed": coverage >= MIN_FACE_COVERAGE,
        "severity": dg.AssetCheckSeverity.WARN,
        "metadata": {
            "face_coverage": dg.MetadataValue.float(round(coverage, 4)),
            "threshold": MIN_FACE_COVERAGE,
            "skip_reasons": dg.MetadataValue.json(table["skip_reason"].value_counts().to_dict()),
        },
        "description": None
        if coverage >= MIN_FACE_COVERAGE
        else f"only {coverage:.0%} of sampled frames have one face",
    }


@dg.asset(
    partitions_def=videos_partitions,
    deps=[aligned_faces],
    group_name="per_video",
    kinds={"opencv", "parquet"},
    description="Farneback flow between consecutive aligned faces: mean and spread of the motion "
    "magnitude inside the face ellipse (px of the 224 crop per sampled-frame step); zeros when "
    "`data.optical_flow_enabled` is false.",
)
def optical_flow(
    context: dg.AssetExecutionContext, settings: SettingsResource, artifacts: ArtifactStoreResource
) -> dg.MaterializeResult:
    video_id = context.partition_key
    s = settings.get()
    store = artifacts.store()
    if s.data.faces.max_faces > 1:  # faces as tracks: each scorable track's own flow, before `flow`
        tracks = stage_io.load_face_tracks(store, video_id, s.data.faces.tracking.min_frames)
        flows = {
            u.track_id: (stages.flow_stage(u.crops, u.frame_ids, s), u.timestamps)
            for u in track_units(tracks)
        }
        stage_io.persist_track_flow(store, video_id, flows)
    _, metadata = materialize_optical_flow(store, s, video_id, stage_io.load_face_crops(store, video_id))
    return dg.MaterializeResult(metadata=metadata)


def materialize_optical_flow(
    store: ArtifactStore, s: Settings, video_id: str, faces: stage_io.FaceCrops
) -> tuple[FlowFeatures, dict]:
    """`optical_flow`'s work for the verdict's faces (also a batch's): flow, its table, a plot."""
    flow = stages.flow_stage(faces.crops, faces.frame_ids, s, return_fields=True)
    table = stage_io.persist_flow(store, video_id, flow, faces.timestamps)
    plot = line_plot_png(
        table["timestamp"],
        {"mean |flow|": table["flow_mean"], "spread": table["flow_std"]},
        title="motion inside the face",
        ylabel="px / frame",
    )
    return flow, {
        "enabled": s.data.optical_flow_enabled,
        "pairs": int(flow.has_predecessor.sum()),
        "gaps_over_1": int((flow.gaps > 1).sum()),
        "flow_mean_avg": dg.MetadataValue.float(round(float(table["flow_mean"].mean()), 4)),
        "flow_mean_max": dg.MetadataValue.float(round(float(table["flow_mean"].max()), 4)),
        "flow_plot": dg.MetadataValue.md(image_md(plot, "flow over time", "image/png")),
    }


@dg.asset(
    partitions_def=videos_partitions,
    deps=[raw_video],
    group_name="per_video",
    kinds={"ffmpeg", "parquet"},
    description="16 kHz mono 16-bit PCM via ffmpeg and WebRTC VAD speech segments. "
    "No audio track or silence is normal (has_audio false / no speech), not an error.",
)
def audio(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    store = artifacts.store()
    db = postgres.db()
    with (
        fail_video_on_bad_input(db, video_id, "audio"),
        store.local_path(stage_io.find_source_rel(store, video_id)) as local,
    ):
        _, metadata = materialize_audio(store, settings.get(), video_id, local, stored_probe(db, video_id))
    return dg.MaterializeResult(metadata=metadata)


def materialize_audio(
    store: ArtifactStore, s: Settings, video_id: str, local: str, probe: VideoProbe
) -> tuple[stages.AudioEvidence, dict]:
    """`audio`'s work (also a batch's): PCM and speech segments from the local copy of the video."""
    result = stages.audio_stage(local, probe, s)
    table = stage_io.persist_audio(store, video_id, result)
    cfg, speech = s.data.audio, result.speech
    duration = len(result.pcm) / result.sample_rate if result.pcm is not None else 0.0
    metadata: dict = {
        "has_audio": result.pcm is not None,
        "audio_seconds": dg.MetadataValue.float(round(duration, 3)),
        "speech_seconds": dg.MetadataValue.float(round(float(speech.speech_seconds), 3)),
        "speech_segments": len(table),
        "vad": f"WebRTC, aggressiveness {cfg.vad_aggressiveness}, {cfg.vad_frame_ms} ms frames"
        if s.data.vad_enabled
        else "off (data.vad_enabled: false): the whole track is encoded",
    }
    if len(table):
        metadata["segments"] = dg.MetadataValue.md(
            "| start (s) | end (s) |\n|---|---|\n"
            + "\n".join(f"| {r.start:.2f} | {r.end:.2f} |" for r in table.head(20).itertuples())
        )
    return result, metadata

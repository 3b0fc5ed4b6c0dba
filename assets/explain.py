"""`saliency` (Grad-CAM on the top-5 frames, audio anomalies, agreement) and `report` (the contract JSON)."""

import dataclasses
import datetime as dt
import json

import dagster as dg
import pandas as pd

from assets.common import GPU_POOL, GPU_QUEUE_TAGS, image_md
from assets.model import audio_embeddings, predictions
from assets.partitions import videos_partitions
from dagster_deepfake import stages
from dagster_deepfake.config import Settings
from dagster_deepfake.evidence import Evidence
from dagster_deepfake.report import build_document
from dagster_deepfake.storage import stage_io
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import ResultsDB
from dagster_deepfake.track_scores import rename_heat_maps, track_units
from resources import (
    ArtifactStoreResource,
    ModelStoreResource,
    PostgresResource,
    SettingsResource,
    TorchDeviceResource,
)


@dg.asset(
    partitions_def=videos_partitions,
    deps=[predictions, audio_embeddings],
    group_name="per_video",
    kinds={"pytorch", "png"},
    pool=GPU_POOL,
    op_tags=GPU_QUEUE_TAGS,
    description="Grad-CAM heat maps (aligned face and full frame) for the top-5 frames by P(fake), "
    "audio anomalies with timestamps, modality agreement.",
)
def saliency(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    model_store: ModelStoreResource,
    torch_device: TorchDeviceResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    store = artifacts.store()
    device = torch_device.torch_device()
    (model, _), *_ = model_store.load(device)[0]
    s = settings.get()
    embeddings = stage_io.load_audio_embeddings(store, video_id, 1)[0]
    speech = stage_io.load_audio(store, video_id).segments
    frame_reader = stage_io.frame_image_reader(store, video_id)
    if s.data.faces.max_faces > 1:  # faces as tracks: heat maps per track; the document's are the verdict's
        tracks = stage_io.load_face_tracks(store, video_id, s.data.faces.tracking.min_frames)
        flows = stage_io.load_track_flow(store, video_id)
        windows = stage_io.load_track_window_scores(store, video_id)
        per_track = {
            u.track_id: rename_heat_maps(
                stages.saliency_stage(
                    model,
                    u.crops,
                    u.frame_ids,
                    u.timestamps,
                    flows[u.track_id],
                    windows[u.track_id],
                    embeddings,
                    speech,
                    frame_reader,
                    u.landmarks.__getitem__,
                    s,
                    device,
                ),
                u,
            )
            for u in track_units(tracks)
        }
        primary = per_track[stage_io.load_primary_track(store, video_id)]
        heat_maps = {name: png for e in per_track.values() for name, png in e.heat_maps.items()}
        explanation = dataclasses.replace(primary, heat_maps=heat_maps)
        track_rows = {t: e.anomalous_frames for t, e in per_track.items()}
    else:
        faces = stage_io.load_face_crops(store, video_id)
        explanation = stages.saliency_stage(
            model,
            faces.crops,
            faces.frame_ids,
            faces.timestamps,
            stage_io.load_flow_features(store, video_id),
            stage_io.load_window_scores(store, video_id),
            embeddings,
            speech,
            frame_reader,
            stage_io.landmarks_reader(store, video_id),
            s,
            device,
        )
        track_rows = None
    return dg.MaterializeResult(metadata=record_saliency(store, video_id, explanation, track_rows))


def record_saliency(
    store: ArtifactStore, video_id: str, explanation: stages.Explanation, track_rows: dict | None = None
) -> dict:
    """The heat maps and explanation persisted, and `saliency`'s metadata."""
    stage_io.persist_explanation(store, video_id, explanation, track_rows)
    rows, agreement = explanation.anomalous_frames, explanation.modality_agreement
    thumbs = [
        image_md(explanation.heat_maps[r["face_png"]], f"frame {r['frame_id']}", "image/png") for r in rows
    ]
    return {
        "frames": dg.MetadataValue.json([r["frame_id"] for r in rows]),
        "modality_agreement": "null (no usable audio)" if agreement is None else round(agreement, 4),
        "audio_anomalies": dg.MetadataValue.json(explanation.audio_anomalies),
        "heat_maps": dg.MetadataValue.md(" ".join(thumbs)),
    }


@dg.asset(
    partitions_def=videos_partitions,
    deps=[saliency],
    group_name="per_video",
    kinds={"json", "postgres", "parquet"},
    description="The contract's result document: jobs.result (JSONB, the latest), `analyses` (one row per "
    "model version), Parquet `reports`; the job is completed.",
)
def report(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata=materialize_report(
            artifacts.store(), postgres.db(), settings.get(), context.partition_key, context.run.run_id
        )
    )


def materialize_report(store: ArtifactStore, db: ResultsDB, s: Settings, video_id: str, run_id: str) -> dict:
    """`report`'s work (also a batch's): the document from what the stages stored; the job completed."""
    evidence = Evidence.from_store(store, db, video_id, s)
    document = build_document(evidence, lambda name: stage_io.saliency_url(store, video_id, name))
    payload = json.loads(document.to_json())
    store.write_table(
        "reports",
        video_id,
        pd.DataFrame(
            [
                {
                    "video_id": video_id,
                    "job_id": document.job_id,
                    "status": "completed",
                    "document": document.to_json(),
                    "created_at": pd.Timestamp(dt.datetime.now(dt.UTC)),
                }
            ]
        ),
    )
    db.record_analysis(video_id, document.metadata.model_version, result=payload, run_id=run_id)
    db.set_job_status(video_id, "completed", result=payload, run_id=run_id)
    pred = document.prediction
    add = document.additions
    banner = "" if add.weights == "trained" else "**⚠ UNTRAINED WEIGHTS — not a forensic verdict.**\n\n"
    return {
        "verdict": pred.overall_class,
        "p_fake": dg.MetadataValue.float(round(pred.manipulation_confidence, 4)),
        "interval": dg.MetadataValue.json(list(pred.confidence_interval)),
        "modality_agreement": pred.modality_agreement if pred.modality_agreement is not None else "null",
        "model_version": document.metadata.model_version,
        "weights": add.weights,
        "document": dg.MetadataValue.json(payload),
        "summary": dg.MetadataValue.md(
            banner + f"### {pred.overall_class.upper()} — P(fake) {pred.manipulation_confidence:.3f} "
            f"[{pred.confidence_interval[0]:.3f}, {pred.confidence_interval[1]:.3f}]\n\n"
            f"modalities: {', '.join(add.modalities_used)} · agreement: {pred.modality_agreement} · "
            f"frames analysed: {document.metadata.frames_analyzed} · model {document.metadata.model_version}"
        ),
    }

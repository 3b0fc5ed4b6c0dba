"""`saliency` (Grad-CAM on the top-5 frames, audio anomalies, agreement) and `report` (the contract JSON)."""

import datetime as dt
import json

import cv2
import dagster as dg
import numpy as np
import pandas as pd

from assets.common import image_md
from assets.model import audio_embeddings, predictions
from assets.partitions import videos_partitions
from dagster_deepfake import pipeline
from dagster_deepfake.explain.agreement import modality_agreement
from dagster_deepfake.explain.anomalies import find_audio_anomalies
from dagster_deepfake.report import build_document
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
    pool="gpu",
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
    from dagster_deepfake.explain.gradcam import cam_to_frame, compute_saliency, overlay  # heavy: torch

    video_id = context.partition_key
    s = settings.get()
    store = artifacts.store()
    (model, _), *_ = model_store.load(torch_device.torch_device())[0]
    faces = pipeline.load_face_crops(store, video_id)
    flow = pipeline.load_flow_features(store, video_id)
    windows = store.read_table("windows", video_id).sort_values("window_id")
    bounds = np.cumsum([0, *windows["n_frames"].tolist()])
    window_frames = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    features, valid = pipeline.load_audio_embeddings(store, video_id)
    maps = compute_saliency(
        model,
        faces.crops,
        flow,
        faces.frame_ids,
        windows["p_fake"].to_numpy(),
        window_frames,
        audio_features=features,
        audio_valid=valid,
        k=s.explain.top_k_frames,
        device=torch_device.torch_device(),
    )
    face_table = store.read_table("faces", video_id).set_index("frame_id")
    frame_table = store.read_table("frames", video_id).set_index("frame_id")
    store.remove(f"videos/{video_id}/saliency")
    rows, thumbs = [], []
    for m in maps:
        index = int(np.flatnonzero(faces.frame_ids == m.frame_id)[0])
        face_name, frame_name = pipeline.saliency_names(m.frame_id)
        face_png = pipeline.encode_png(overlay(faces.crops[index], m.cam))
        store.write_bytes(pipeline.saliency_rel(video_id, face_name), face_png)
        frame_rgb = cv2.cvtColor(
            cv2.imdecode(np.frombuffer(store.read_bytes(frame_table.loc[m.frame_id, "path"]), np.uint8), 1),
            cv2.COLOR_BGR2RGB,
        )
        frame_cam = cam_to_frame(m.cam, face_table.loc[m.frame_id, "landmarks"], frame_rgb.shape[:2])
        store.write_bytes(
            pipeline.saliency_rel(video_id, frame_name), pipeline.encode_png(overlay(frame_rgb, frame_cam))
        )
        rows.append(
            {
                "frame_id": m.frame_id,
                "timestamp": float(faces.timestamps[index]),
                "window_id": m.window_id,
                "confidence": m.p_fake,
                "face_png": face_name,
                "frame_png": frame_name,
            }
        )
        thumbs.append(image_md(face_png, f"frame {m.frame_id}", "image/png"))

    audio_in = pipeline.load_audio(store, video_id)
    flow_per_window = [float(flow[a:b, 0].mean()) if b > a else 0.0 for a, b in window_frames]
    anomalies = find_audio_anomalies(
        window_starts=windows["start"].to_numpy(),
        window_ends=windows["end"].to_numpy(),
        p_audio_visual=windows["p_fake"].to_numpy(),
        p_video_only=windows["p_fake_video_only"].to_numpy(),
        window_flow=np.array(flow_per_window),
        speech_segments=audio_in.segments,
    )
    agreement = modality_agreement(
        windows["p_fake"].to_numpy(), windows["p_fake_video_only"].to_numpy(), has_speech=features is not None
    )
    explanation = {
        "anomalous_frames": rows,
        "audio_anomalies": [a.to_dict() for a in anomalies],
        "modality_agreement": agreement,
    }
    store.write_bytes(f"videos/{video_id}/saliency/explanation.json", json.dumps(explanation).encode())
    return dg.MaterializeResult(
        metadata={
            "frames": dg.MetadataValue.json([r["frame_id"] for r in rows]),
            "modality_agreement": "null (no usable audio)" if agreement is None else round(agreement, 4),
            "audio_anomalies": dg.MetadataValue.json(explanation["audio_anomalies"]),
            "heat_maps": dg.MetadataValue.md(" ".join(thumbs)),
        }
    )


@dg.asset(
    partitions_def=videos_partitions,
    deps=[saliency],
    group_name="per_video",
    kinds={"json", "postgres", "parquet"},
    description="The contract's result document: jobs.result (JSONB), Parquet `reports`; the job is completed.",
)
def report(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    store = artifacts.store()
    db = postgres.db()
    document = build_document(store, db, video_id)
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
    db.set_job_status(video_id, "completed", result=payload, run_id=context.run.run_id)
    pred = document.prediction
    add = document.additions
    banner = "" if add.weights == "trained" else "**⚠ UNTRAINED WEIGHTS — not a forensic verdict.**\n\n"
    return dg.MaterializeResult(
        metadata={
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
    )

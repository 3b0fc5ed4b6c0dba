"""`audio_embeddings` and `predictions`: the contract model on one video's cached features."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg

from assets.common import GPU_POOL, GPU_QUEUE_TAGS, image_md
from assets.partitions import videos_partitions
from assets.perception import aligned_faces, audio, optical_flow
from dagster_deepfake import stages
from dagster_deepfake.config import Settings
from dagster_deepfake.plots import line_plot_png
from dagster_deepfake.storage import stage_io
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.postgres import ResultsDB
from dagster_deepfake.track_scores import (
    pick_primary,
    track_prediction_table,
    track_units,
    track_window_table,
)
from resources import (
    ArtifactStoreResource,
    ModelStoreResource,
    PostgresResource,
    SettingsResource,
    TorchDeviceResource,
)

if TYPE_CHECKING:  # torch and the model libraries load where a model runs, not with the code location
    from dagster_deepfake.scoring import ScoredVideo


@dg.asset(
    partitions_def=videos_partitions,
    deps=[audio],
    group_name="per_video",
    kinds={"pytorch"},
    pool=GPU_POOL,
    op_tags=GPU_QUEUE_TAGS,
    description="wav2vec2 features of the speech (VAD mask) projected to 512, per ensemble member; "
    "empty without usable audio.",
)
def audio_embeddings(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    model_store: ModelStoreResource,
    torch_device: TorchDeviceResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    store = artifacts.store()
    device = torch_device.torch_device()
    members, _ = model_store.load(device)
    audio_in = stage_io.load_audio(store, video_id)
    _, metadata = materialize_audio_embeddings(store, video_id, members, audio_in, device)
    return dg.MaterializeResult(metadata=metadata)


def materialize_audio_embeddings(
    store: ArtifactStore, video_id: str, members: stages.Members, audio_in: stages.AudioInput, device: str
) -> tuple[list[stages.AudioEmbeddings], dict]:
    """`audio_embeddings`' work (also a batch's)."""
    # Each ensemble member has its own audio encoder, so each encodes the speech itself.
    embeddings = [stages.audio_embeddings_stage(model, audio_in, device) for model, _ in members]
    stage_io.persist_audio_embeddings(store, video_id, embeddings)
    first, manifest = embeddings[0], members[0][1]
    return embeddings, {
        "frames_20ms": len(first.features),
        "speech_frames": int(first.valid.sum()),
        "dim": members[0][0].config.audio.projection_dim,
        "members": len(embeddings),
        "used": "audio" if first.used else "no usable audio: the learned no-audio embedding stands in",
        "audio_encoder_pretrained": manifest.pretrained.audio_encoder,
    }


@dg.asset(
    partitions_def=videos_partitions,
    deps=[aligned_faces, optical_flow, audio_embeddings],
    group_name="per_video",
    kinds={"pytorch", "parquet", "postgres"},
    pool=GPU_POOL,
    op_tags=GPU_QUEUE_TAGS,
    description="Per-window and per-video P(fake), temperature-calibrated, with an interval.",
)
def predictions(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    artifacts: ArtifactStoreResource,
    postgres: PostgresResource,
    model_store: ModelStoreResource,
    torch_device: TorchDeviceResource,
) -> dg.MaterializeResult:
    video_id = context.partition_key
    s = settings.get()
    store = artifacts.store()
    device = torch_device.torch_device()
    members, warnings = model_store.load(device)
    embeddings = stage_io.load_audio_embeddings(store, video_id, len(members))
    face_tracks: dict[str, float] = {}
    # Faces as tracks: every scorable track; the verdict is the most suspicious.
    if s.data.faces.max_faces > 1:
        tracks = stage_io.load_face_tracks(store, video_id, s.data.faces.tracking.min_frames)
        flows = stage_io.load_track_flow(store, video_id)
        by_track = {
            u.track_id: stages.predictions_stage(
                members, u.crops, flows[u.track_id], u.timestamps, embeddings, s, device
            )
            for u in track_units(tracks)
        }
        primary = pick_primary(by_track)
        stage_io.persist_track_predictions(
            store,
            video_id,
            track_prediction_table(video_id, tracks, by_track, primary),
            track_window_table(video_id, by_track),
        )
        scored = by_track[primary]
        face_tracks = {
            f"face {t}" + (" (verdict)" if t == primary else ""): v.p_fake for t, v in by_track.items()
        }
    else:
        faces = stage_io.load_face_crops(store, video_id)
        flow = stage_io.load_flow_features(store, video_id)
        scored = stages.predictions_stage(members, faces.crops, flow, faces.timestamps, embeddings, s, device)
    return dg.MaterializeResult(
        metadata=record_predictions(
            store, postgres.db(), s, video_id, scored, warnings, context.log.warning, face_tracks
        )
    )


def record_predictions(
    store: ArtifactStore,
    db: ResultsDB,
    s: Settings,
    video_id: str,
    scored: "ScoredVideo",
    warnings: list[str],
    warn: Callable[[str], None],
    face_tracks: dict[str, float] | None = None,
) -> dict:
    """The verdict's tables and row (`windows`, `predictions`, PostgreSQL) and `predictions`' metadata;
    `face_tracks`: each track's P(fake) when faces are tracked."""
    store.write_table("windows", video_id, stage_io.window_table(video_id, scored))
    store.write_table("predictions", video_id, stage_io.prediction_table(video_id, scored, warnings))
    db.upsert_prediction(video_id=video_id, n_windows=len(scored.window_probs), **scored.row())
    for warning in warnings:
        warn(f"{video_id}: {warning}")
    centers = [(a + b) / 2 for a, b in scored.window_spans]
    plot = line_plot_png(
        centers,
        {"P(fake)": scored.window_probs, "video only": scored.window_probs_video_only},
        title="P(fake) per 1-second window",
        ylim=(0, 1),
        hline=s.model.classification.threshold,
    )
    weights_banner = "" if scored.trained else "**⚠ UNTRAINED WEIGHTS — not a forensic verdict.** "
    return {
        "verdict": f"{scored.verdict.upper()}",
        "p_fake": dg.MetadataValue.float(round(scored.p_fake, 4)),
        "interval": f"[{scored.ci_low:.3f}, {scored.ci_high:.3f}] ({scored.interval_method})",
        "model_version": scored.model_version,
        "weights": scored.weights,
        "pretrained": dg.MetadataValue.json(scored.pretrained),
        "modalities": ", ".join(scored.modalities),
        "windows": len(scored.window_probs),
        "precision": scored.precision,
        "face_tracks": dg.MetadataValue.json(face_tracks or "off (data.faces.max_faces: 1)"),
        "summary": dg.MetadataValue.md(
            weights_banner + f"Verdict **{scored.verdict}**, P(fake) = {scored.p_fake:.3f} "
            f"[{scored.ci_low:.3f}, {scored.ci_high:.3f}]\n\n"
            + image_md(plot, "P(fake) per window", "image/png")
        ),
    }

"""`dagster-deepfake analyze`: every per-video stage in one process, in memory, with timings.

The same stage functions as the Dagster assets (`dagster_deepfake.stages`), chained without the
artifact store: the video is decoded once and arrays pass from stage to stage. The document
comes from the one builder (`report.build_document`); heat maps are written under `out_dir`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster_deepfake.config import Settings


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)

    @property
    def total(self) -> float:
        return round(sum(self.seconds.values()), 4)


@dataclass
class AnalysisResult:
    video_id: str
    path: str
    probe: dict[str, Any]
    warnings: list[str]
    document: dict[str, Any]
    heat_map_dir: str | None
    timings: dict[str, float] = field(default_factory=dict)


def analyze_file(
    path: str | Path,
    settings: Settings,
    *,
    model_config: str | None = None,
    device: str | None = None,
    out_dir: str | Path | None = None,
) -> AnalysisResult:
    """Run every per-video stage on a local file; raises DeepfakeError subclasses on bad input.

    Heat maps go to `out_dir/<video_id>/` (default: `heat-maps/` beside the video, or the
    temp folder when that is not writable) and the document's `saliency_url`s are their
    `file://` URLs.
    """
    from dagster_deepfake import stages
    from dagster_deepfake.evidence import Evidence
    from dagster_deepfake.media.images import decode_image, encode_jpeg
    from dagster_deepfake.report import build_document
    from dagster_deepfake.runtime import in_background, keep_freed_memory
    from dagster_deepfake.storage.stage_io import prediction_table
    from dagster_deepfake.track_scores import (
        face_entries,
        face_units,
        pick_primary,
        rename_heat_maps,
        track_prediction_table,
        track_window_table,
    )

    keep_freed_memory()  # frames and activations reuse freed memory (runtime.py)
    timer = StageTimer()
    path = Path(path)
    if device is None and settings.platform.device.startswith("cuda"):
        from dagster_deepfake.models.inference import select_device

        device = select_device(settings.platform.device)  # asked for CUDA: say so before any work
    # Otherwise the probe gate comes before torch is imported: a refused file costs about a
    # second and 160 MB, not the ~7 s and 1 GB of loading the model code.
    with timer.stage("probe"):
        probed = stages.probe_stage(path, settings)
    video_id, probe = probed.video_id, probed.probe
    # The model code's imports (~6 s on one core, docs/ARCHITECTURE.md §7) and the checkpoint
    # load run in a thread beside decoding and face detection, which spend their time in ffmpeg
    # and ONNX Runtime with the GIL released (runtime.py): start-up overlaps the first stages.
    loading = in_background(_load_members, settings, model_config, device)
    # Frames are decoded once and streamed into the detector batch by batch. Grad-CAM later
    # overlays its top frames, which are known only after scoring: each frame is kept as a
    # JPEG (~0.1 MB at 720p) rather than as raw RGB (2.7 MB), so memory stays small.
    sampler = stages.frames_stage(path, probe, settings)
    kept_images: dict[int, bytes] = {}

    def counted():
        with timer.stage("frames+faces"):
            for frame in sampler:
                kept_images[frame.frame_id] = encode_jpeg(frame.image)
                yield frame

    extraction = stages.faces_stage(counted(), settings, str(path))
    # One face (the contract's rule) or, with data.faces.max_faces > 1, every scorable face
    # track: each unit goes through the same flow, model and saliency stages (track_scores.py).
    units = face_units(extraction)
    with timer.stage("flow"):
        flows = [stages.flow_stage(u.crops, u.frame_ids, settings).features for u in units]
    with timer.stage("audio+vad"):
        audio = stages.audio_stage(path, probe, settings)
        audio_in = stages.AudioInput.from_pcm(audio.pcm, audio.speech.mask_20ms, audio.speech.segments)
    with timer.stage("model load"):
        # Waits only for what the background load (started after the probe) has not yet done.
        device, members, model_warnings = loading.result()
    with timer.stage("model"):
        embeddings = [stages.audio_embeddings_stage(m, audio_in, device) for m, _ in members]
        scores = [
            stages.predictions_stage(
                members, u.crops, flow, u.timestamps, embeddings, settings, device, keep_feature_maps=True
            )
            for u, flow in zip(units, flows, strict=True)
        ]
    frame_landmarks = extraction.table.set_index("frame_id")["landmarks"].__getitem__
    explanations = []
    with timer.stage("saliency"):
        for unit, flow, scored in zip(units, flows, scores, strict=True):
            explanation = stages.saliency_stage(
                members[0][0],
                unit.crops,
                unit.frame_ids,
                unit.timestamps,
                flow,
                stages.WindowScores.from_scored(scored),
                embeddings[0],
                audio.speech.segments,
                lambda frame_id: decode_image(kept_images[frame_id]),
                unit.landmarks.__getitem__ if unit.landmarks is not None else frame_landmarks,
                settings,
                device,
                # Scoring's backbone maps: Grad-CAM needs no second backbone pass (explain/gradcam.py).
                feature_maps=scored.member_predictions[0].feature_maps,
            )
            scored.member_predictions[0].feature_maps = None
            explanations.append(rename_heat_maps(explanation, unit))
    kept_images.clear()
    face_tracks = None
    primary = 0
    if extraction.tracks is not None:
        by_track = {u.track_id: s for u, s in zip(units, scores, strict=True)}
        primary_id = pick_primary(by_track)
        primary = [u.track_id for u in units].index(primary_id)
        face_tracks = face_entries(
            track_prediction_table(video_id, extraction.tracks, by_track, primary_id),
            track_window_table(video_id, by_track),
            {u.track_id: e.anomalous_frames for u, e in zip(units, explanations, strict=True)},
        )
    scored, explanation = scores[primary], explanations[primary]
    heat_maps = {name: png for e in explanations for name, png in e.heat_maps.items()}
    heat_dir = _write_heat_maps(heat_maps, _heat_map_root(path, out_dir) / video_id)
    evidence = Evidence(
        video_id=video_id,
        file_name=path.name,
        probe=probe.to_dict(),
        warnings=[*probed.warnings, *sampler.warnings, *model_warnings],
        faces=extraction.table,
        speech_segments=list(audio.speech.segments),
        prediction=prediction_table(video_id, scored, model_warnings).iloc[0].to_dict(),
        windows=stages.WindowScores.from_scored(scored),
        explanation=explanation.to_json_dict(),
        vad_enabled=settings.data.vad_enabled,
        optical_flow_enabled=settings.data.optical_flow_enabled,
        processing_time_sec=timer.total,
        timings=dict(timer.seconds),
        face_tracks=face_tracks,
    )

    def url(name: str) -> str | None:
        return (heat_dir / name).resolve().as_uri() if heat_dir else None

    document = build_document(evidence, url)
    return AnalysisResult(
        video_id=video_id,
        path=str(path),
        probe=probe.to_dict(),
        warnings=document.additions.warnings,
        document=json.loads(document.to_json()),
        heat_map_dir=str(heat_dir) if heat_dir else None,
        timings=dict(timer.seconds),
    )


def _load_members(
    settings: Settings, model_config: str | None, device: str | None
) -> tuple[str, list[tuple[Any, Any]], list[str]]:
    """The device and the ensemble's (model, manifest) members with their warnings."""
    from dagster_deepfake.runtime import collector_paused

    with collector_paused():  # torch, transformers, timm: ~1.5 s less (runtime.py)
        from dagster_deepfake.models.inference import select_device
        from dagster_deepfake.models.store import load_ensemble
        from dagster_deepfake.storage.artifacts import ArtifactStore, s3_storage_options

    device = device or select_device(settings.platform.device)
    p = settings.platform
    # Where training publishes: a checkpoint trained on another host is synced first.
    artifacts = ArtifactStore(
        p.artifact_root, s3_storage_options(p.artifact_root, p.s3_endpoint_url, p.s3_region)
    )
    members, warnings = load_ensemble(
        p.checkpoint,
        p.model_dir,
        model_config or settings.model,
        settings.inference.ensemble_size,
        device,
        artifacts,
    )
    return device, members, warnings


def _heat_map_root(video: Path, out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    return video.resolve().parent / "heat-maps"


def _write_heat_maps(heat_maps: dict[str, bytes], folder: Path) -> Path | None:
    """Write the PNGs; None (and no URLs) when the folder cannot be written, e.g. a read-only share."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, png in heat_maps.items():
            (folder / name).write_bytes(png)
    except OSError:
        return None
    return folder


def render_text(result: AnalysisResult, *, timings: bool = False) -> str:
    """What a person reads in the terminal: probe, verdict, evidence, warnings."""
    from dagster_deepfake.report import runtime_label

    doc = result.document
    p, pred, add = result.probe, doc["prediction"], doc["additions"]
    skipped = add["skipped_frames"]
    tracks = add.get("faces")
    faces_line = (
        f"faces      {len(tracks)} face track(s) in {doc['metadata']['frames_analyzed'] + skipped['total']} "
        f"sampled frames ({add['face_coverage']:.0%} with a face); skipped {skipped['by_reason']}"
        if tracks is not None
        else f"faces      {doc['metadata']['frames_analyzed']} of "
        f"{doc['metadata']['frames_analyzed'] + skipped['total']} sampled frames with one face "
        f"({add['face_coverage']:.0%}); skipped {skipped['by_reason']}"
    )
    lines = [
        f"video      {result.path}  ({result.video_id})",
        f"probe      {p['codec']} {p['width']}x{p['height']} @ {p['fps']:.2f} fps, {p['duration']:.2f} s, "
        f"audio: {p['audio_codec'] if p['has_audio'] else 'none'}",
        faces_line,
        f"audio      {add['speech_seconds']:.2f} s of speech"
        + ("" if add["vad_enabled"] else " (VAD off: the whole track)")
        if p["has_audio"]
        else "audio      no audio track",
        f"verdict    {pred['overall_class'].upper()}  P(fake) {pred['manipulation_confidence']:.3f} "
        f"[{pred['confidence_interval'][0]:.3f}, {pred['confidence_interval'][1]:.3f}] "
        f"({add['interval_method']}); modalities {', '.join(add['modalities_used'])}; "
        f"agreement {_agreement(pred['modality_agreement'])}",
        f"model      {doc['metadata']['model_version']}, weights {add['weights']}, "
        f"pretrained {add['pretrained']}",
    ]
    runtime = (add.get("provenance") or {}).get("runtime")
    if runtime:
        lines.append(f"runtime    {runtime_label(runtime)}")
    for face in tracks or []:
        span = f"{face['first_timestamp']:.1f}-{face['last_timestamp']:.1f} s, {face['frames']} frames"
        said = (
            f"P(fake) {face['p_fake']:.3f} [{face['confidence_interval'][0]:.3f}, "
            f"{face['confidence_interval'][1]:.3f}] {face['overall_class'].upper()}"
            if face["scored"]
            else f"not scored: {face['reason']}"
        )
        mark = "  <- the verdict" if face["primary"] else ""
        lines.append(f"face {face['track_id']:<5} {span}: {said}{mark}")
    if result.heat_map_dir:
        lines.append(f"heat maps  {result.heat_map_dir}")
    if not add["optical_flow_enabled"]:
        lines.append("flow       off (data.optical_flow_enabled: false): the flow inputs are zero")
    for warning in result.warnings:
        lines.append(f"warning    {warning}")
    if timings:
        lines.append("timings    " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
        lines.append(f"           total {sum(result.timings.values()):.2f}s")
    return "\n".join(lines)


def _agreement(value: float | None) -> str:
    """Modality agreement as printed: three decimals, or why there is none (a single modality)."""
    return f"{value:.3f}" if value is not None else "none (one modality)"

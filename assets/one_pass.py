"""One video of a batch in one pass: the per-video assets' own work, chained in memory (issue 20).

A batch run (assets/batch.py) used to execute the per-video job for each of its videos: a run of
nine steps per video, each loading its inputs back from the artifact store. On two cores that
was 4.4 s of orchestration per video against 3.6 s of analysis. Here the batch calls the very
functions the assets call (`materialize_*` / `record_*` in assets/ingest.py, perception.py,
model.py, explain.py), hands arrays from one to the next in memory, writes every artifact, table
and row the assets write, and reports each asset's materialization for the video's partition
(`AssetMaterialization` with the assets' own metadata) and the face-coverage check. The result
is the same as a per-video run's (tests/test_batch_runs.py compares them).

What stays a per-video run: faces as tracks (`data.faces.max_faces` > 1), and every video whose
pass raises. Its own run then records the failure the way a run of its own does (the partition
failed, the job row with its reason, an input failure never retried), or passes if the cause
was passing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np

from assets.explain import materialize_report, record_saliency
from assets.ingest import materialize_raw_video, record_frames
from assets.model import materialize_audio_embeddings, record_predictions
from assets.perception import (
    face_coverage,
    face_coverage_check,
    materialize_aligned_faces,
    materialize_audio,
    materialize_optical_flow,
)
from dagster_deepfake import stages
from dagster_deepfake.config import Settings
from dagster_deepfake.storage import stage_io

if TYPE_CHECKING:
    from dagster_deepfake.storage.artifacts import ArtifactStore
    from dagster_deepfake.storage.postgres import ResultsDB


@dataclass
class OnePass:
    """What a batch's videos share: the store, the results database, settings, the model."""

    store: ArtifactStore
    db: ResultsDB
    settings: Settings
    storage_options: dict | None  # the upload bucket's (an s3:// upload is read where it was listed)
    load_model: Callable[[], tuple[stages.Members, list[str], str]]  # members, warnings, device
    warn: Callable[[str], None]

    def handles(self) -> bool:
        """Faces as tracks keep their per-video runs (their stages differ per track)."""
        return self.settings.data.faces.max_faces == 1

    def run(
        self, video_id: str, job_name: str, run_id: str
    ) -> list[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
        """Every asset of `job_name` for one video; the events to log once all of it is stored.

        Raises whatever a stage raises (DeepfakeError when the input is at fault); nothing is
        reported as materialized then.
        """
        store, db, s, warn = self.store, self.db, self.settings, self.warn
        out: dict[str, dict] = {}
        probed, out["raw_video"] = materialize_raw_video(
            store, db, s, video_id, run_id, self.storage_options, warn
        )
        with store.local_path(stage_io.find_source_rel(store, video_id)) as local:
            sampler = stages.frames_stage(local, probed.probe, s)
            writer = stage_io.FrameWriter(store, video_id)
            # Faces are detected on the frames as they are written: one decode for both assets.
            extraction, faces_metadata = materialize_aligned_faces(
                store, s, video_id, writer.passing(sampler)
            )
            out["frames"] = record_frames(db, s, video_id, sampler, writer.close(), warn)
            out["aligned_faces"] = faces_metadata
            faces = stage_io.FaceCrops.from_extraction(extraction)
            flow, out["optical_flow"] = materialize_optical_flow(store, s, video_id, faces)
            audio, out["audio"] = materialize_audio(store, s, video_id, local, probed.probe)
        if job_name != "extract_features":
            out.update(self._verdict(video_id, run_id, audio, faces, flow.features.astype(np.float32)))
        check = face_coverage(extraction.table)
        return [
            *(
                dg.AssetMaterialization(asset_key=name, partition=video_id, metadata=md)
                for name, md in out.items()
            ),
            dg.AssetCheckEvaluation(
                asset_key=face_coverage_check.check_key.asset_key,
                check_name=face_coverage_check.check_key.name,
                partition=video_id,
                **check,
            ),
        ]

    def _verdict(
        self,
        video_id: str,
        run_id: str,
        audio: stages.AudioEvidence,
        faces: stage_io.FaceCrops,
        flow: np.ndarray,
    ) -> dict[str, dict]:
        store, db, s = self.store, self.db, self.settings
        members, warnings, device = self.load_model()
        out: dict[str, dict] = {}
        audio_in = stages.AudioInput.from_pcm(audio.pcm, audio.speech.mask_20ms, audio.speech.segments)
        embeddings, out["audio_embeddings"] = materialize_audio_embeddings(
            store, video_id, members, audio_in, device
        )
        scored = stages.predictions_stage(
            members, faces.crops, flow, faces.timestamps, embeddings, s, device, keep_feature_maps=True
        )
        out["predictions"] = record_predictions(store, db, s, video_id, scored, warnings, self.warn)
        explanation = stages.saliency_stage(
            members[0][0],
            faces.crops,
            faces.frame_ids,
            faces.timestamps,
            flow,
            stages.WindowScores.from_scored(scored),
            embeddings[0],
            audio.speech.segments,
            stage_io.frame_image_reader(store, video_id),
            stage_io.landmarks_reader(store, video_id),
            s,
            device,
            feature_maps=scored.member_predictions[0].feature_maps,  # no second backbone pass
        )
        out["saliency"] = record_saliency(store, video_id, explanation)
        out["report"] = materialize_report(store, db, s, video_id, run_id)
        return out

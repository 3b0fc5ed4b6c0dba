"""Every per-video asset materialized against an ephemeral instance, a real PostgreSQL, real
ffmpeg and the real face detector, with the `tiny` model configuration."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from code_location.definitions import ASSET_CHECKS, PER_VIDEO_ASSETS
from dagster_deepfake.config import ModelConfig
from dagster_deepfake.ingest import register_object
from dagster_deepfake.report import ResultDocument
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.synthetic import generate_clip
from resources import default_resources
from tests.conftest import shared_clip


@pytest.fixture
def tiny_settings(settings, tmp_path):
    settings.model = ModelConfig(
        registry_config="tiny"
    )  # the tiny variant alone (keys from the file would win)
    settings.platform.model_dir = str(tmp_path / "models")
    return settings


def _run(settings, db, path: Path):
    bucket = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)
    reg = register_object(bucket, bucket.put_file(str(path), path.name), db)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [reg.video_id])
    result = dg.materialize(
        [*PER_VIDEO_ASSETS, *ASSET_CHECKS],
        partition_key=reg.video_id,
        resources=default_resources(settings),
        instance=instance,
        raise_on_error=False,
    )
    return reg.video_id, result


def test_synthetic_talking_face_end_to_end(tiny_settings, db, tmp_path):
    clip = generate_clip(
        tmp_path / "talking.mp4", seed=5, duration=3.0, width=320, height=240, audio="speech"
    )
    video_id, result = _run(tiny_settings, db, clip.path)
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    job = db.get_job(video_id)
    assert job["status"] == "completed"
    doc = ResultDocument.model_validate(job["result"])  # the stored JSON is a valid contract document
    assert doc.job_id == video_id and doc.status == "completed"
    assert doc.prediction.overall_class in ("real", "fake")
    p = doc.prediction.manipulation_confidence
    low, high = doc.prediction.confidence_interval
    assert 0 <= low <= p <= high <= 1
    assert (doc.prediction.overall_class == "fake") == (p > 0.5)
    assert doc.additions.modalities_used == ["video", "audio"]
    assert doc.prediction.modality_agreement is not None and 0 <= doc.prediction.modality_agreement <= 1
    assert doc.additions.weights == "untrained" and doc.additions.pretrained == {
        "audio_encoder": False,
        "video_backbone": False,
    }
    assert doc.metadata.frames_analyzed >= 12  # 15 sampled frames, most with the face
    assert doc.metadata.video_duration_sec == pytest.approx(3.0, abs=0.1)
    # One heat map per window (distinct moments, docs/CONFIG.md): 3 windows in a 3 s clip.
    assert len(doc.prediction.anomalous_frames) == min(5, len(doc.additions.windows)) == 3
    speech = sum(e - s for s, e in clip.speech_segments)
    assert doc.additions.speech_seconds == pytest.approx(speech, abs=0.6)

    store = ArtifactStore(tiny_settings.platform.artifact_root)
    for frame in doc.prediction.anomalous_frames:
        name = frame.saliency_url.rsplit("/", 1)[-1]
        assert store.read_bytes(f"videos/{video_id}/saliency/{name}")[:8] == b"\x89PNG\r\n\x1a\n"
    row = db.get_prediction(video_id)
    assert row["trained"] is False and row["pretrained"] == {"audio_encoder": False, "video_backbone": False}
    assert row["p_fake"] == pytest.approx(p)
    windows = store.read_table("windows", video_id)
    assert len(windows) == len(doc.additions.windows) == -(-doc.metadata.frames_analyzed // 5)
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]


def test_shared_clip_without_audio(tiny_settings, db):
    video_id, result = _run(tiny_settings, db, shared_clip("ffpp_c23_neuraltextures_004_982.mp4"))
    assert result.success
    doc = ResultDocument.model_validate(db.get_job(video_id)["result"])
    assert doc.additions.modalities_used == ["video"]
    assert doc.prediction.modality_agreement is None  # nothing to agree with: null, not invented
    assert doc.additions.audio_anomalies == []
    assert any("no audio" in w for w in doc.additions.warnings)
    assert doc.additions.face_coverage > 0.8


def test_no_face_fails_only_that_video(tiny_settings, db, tmp_path):
    empty = generate_clip(tmp_path / "empty.mp4", seed=2, duration=2.0, width=320, height=240, num_faces=0)
    video_id, result = _run(tiny_settings, db, empty.path)
    assert not result.success
    job = db.get_job(video_id)
    assert job["status"] == "failed" and "no face found" in job["reason"]
    faces = ArtifactStore(tiny_settings.platform.artifact_root).read_table("faces", video_id)
    assert (faces["skip_reason"] == "no_face").all()  # the reasons are kept for the reviewer

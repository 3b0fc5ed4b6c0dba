"""An analysis is a video under a model version: a new serving model gives a new result, the
earlier one stays readable, and the same bytes under the same model never run twice."""

from __future__ import annotations

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from code_location.definitions import ASSET_CHECKS, PER_VIDEO_ASSETS, analyze_video_job
from dagster_deepfake.api import create_app
from dagster_deepfake.config import ModelConfig
from dagster_deepfake.ingest import register_object
from dagster_deepfake.models.checkpoint import build_untrained, save_checkpoint
from dagster_deepfake.models.serving import reanalyze_if_stale, serving_model_version
from dagster_deepfake.models.store import current_checkpoint_dir
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.synthetic import generate_clip
from resources import default_resources
from sensors.reanalysis import build_reanalysis_sensor


def _materialize(settings, instance, video_id):
    result = dg.materialize(
        [*PER_VIDEO_ASSETS, *ASSET_CHECKS],
        partition_key=video_id,
        resources=default_resources(settings),
        instance=instance,
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]


def _tick(sensor, instance, settings):
    resources = {"postgres": default_resources(settings)["postgres"]}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        return sensor(ctx)


@pytest.mark.slow
def test_new_model_reanalyses_and_keeps_history(settings, db, tmp_path):
    settings.model = ModelConfig(registry_config="tiny")
    settings.platform.model_dir = str(tmp_path / "models")
    clip = generate_clip(tmp_path / "c.mp4", seed=3, duration=2.0, width=320, height=240, audio="none")
    bucket = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)
    video_id = register_object(bucket, bucket.put_file(str(clip.path), "c.mp4"), db).video_id
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("videos", [video_id])
    client = TestClient(create_app(settings, token=None, db=db))

    _materialize(settings, instance, video_id)
    first = db.get_job(video_id)["result"]["metadata"]["model_version"]
    # serving.py reads manifests only; it must name the version the run really used.
    assert serving_model_version(settings) == first
    assert not db.request_analysis(video_id, first, requested_by="re-upload")  # done already

    # Training publishes another checkpoint: it now serves, and the old verdict says so.
    model, manifest = build_untrained("tiny", seed=7)
    save_checkpoint(
        current_checkpoint_dir(settings.platform.model_dir),
        model,
        manifest.model_copy(update={"model_version": "tiny-test-v2"}),
    )
    assert serving_model_version(settings) == "tiny-test-v2"
    stale = client.get(f"/jobs/{video_id}").json()
    assert stale["model_version"] == first and stale["verdict_is_current"] is False

    # The same bytes arriving again (bucket re-drop, API re-upload) ask for it once.
    assert reanalyze_if_stale(db, settings, video_id, requested_by="re-upload:c.mp4")
    assert not reanalyze_if_stale(db, settings, video_id, requested_by="re-upload:c.mp4")
    assert client.post(f"/jobs/{video_id}/reanalyze").status_code == 409  # already queued
    assert not db.request_analysis(video_id, "tiny-test-v2", requested_by="re-upload")
    queued = client.get(f"/jobs/{video_id}").json()
    assert queued["status"] == "queued" and queued["prediction"] is None

    sensor = build_reanalysis_sensor(analyze_video_job)
    requests = _tick(sensor, instance, settings).run_requests
    assert [r.partition_key for r in requests] == [video_id]
    assert not isinstance(_tick(sensor, instance, settings), dg.SensorResult)  # nothing more
    _materialize(settings, instance, video_id)

    latest = client.get(f"/jobs/{video_id}").json()
    assert latest["status"] == "completed" and latest["metadata"]["model_version"] == "tiny-test-v2"
    assert latest["verdict_is_current"] is True
    history = client.get(f"/jobs/{video_id}/history").json()["items"]
    assert [h["model_version"] for h in history] == ["tiny-test-v2", first]
    assert [h["serving"] for h in history] == [True, False]
    # The earlier verdict stays readable, whole.
    assert history[1]["result"]["metadata"]["model_version"] == first
    assert history[1]["result"]["prediction"]["manipulation_confidence"] == pytest.approx(
        db.list_analyses(video_id)[1]["p_fake"]
    )
    # Same bytes, same model: no second run unless someone asks explicitly.
    assert not reanalyze_if_stale(db, settings, video_id, requested_by="re-upload:c.mp4")
    answer = client.post(f"/jobs/{video_id}/reanalyze")  # an explicit re-run is honoured
    assert answer.status_code == 202 and answer.json()["model_version"] == "tiny-test-v2"
    assert [r.partition_key for r in _tick(sensor, instance, settings).run_requests] == [video_id]

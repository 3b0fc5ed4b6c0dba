"""Upload → sensor → run → completed, through a real HTTP server on loopback, a real PostgreSQL,
the upload sensor and every per-video asset; then the page renders in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess

import dagster as dg
import httpx
import pytest

from code_location.definitions import ASSET_CHECKS, PER_VIDEO_ASSETS, analyze_video_job
from dagster_deepfake.casereport.pdf import chromium_args
from dagster_deepfake.config import ModelConfig
from dagster_deepfake.report import ResultDocument
from dagster_deepfake.synthetic import generate_clip
from resources import default_resources
from sensors.uploads import build_upload_sensor
from tests.conftest import serving_api

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(settings, db, tmp_path):
    settings.model = ModelConfig(
        registry_config="tiny"
    )  # the tiny variant alone (keys from the file would win)
    settings.platform.model_dir = str(tmp_path / "models")
    with serving_api(settings) as base:
        yield base


def test_upload_to_completed_job_and_page(server, settings, tmp_path):
    clip = generate_clip(tmp_path / "talk.mp4", seed=44, duration=3.0, width=320, height=240, audio="speech")
    with open(clip.path, "rb") as fh:
        response = httpx.post(
            f"{server}/analyze-video", files={"file": ("talk.mp4", fh, "video/mp4")}, timeout=60
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert httpx.get(f"{server}/jobs/{job_id}", timeout=10).json()["status"] == "queued"

    # What the daemon does: a sensor tick, then the requested run.
    resources = default_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        tick = build_upload_sensor(analyze_video_job, 15)(ctx)
    assert [r.partition_key for r in tick.run_requests] == [job_id]
    instance.add_dynamic_partitions("videos", [job_id])
    result = dg.materialize(
        [*PER_VIDEO_ASSETS, *ASSET_CHECKS], partition_key=job_id, resources=resources, instance=instance
    )
    assert result.success

    job = httpx.get(f"{server}/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "completed"
    # The answer is the result document itself (the contract's keys at the top level).
    doc = ResultDocument.model_validate(
        {k: job[k] for k in ("job_id", "status", "prediction", "metadata", "additions")}
    )
    frames = doc.prediction.anomalous_frames
    assert len(frames) == min(5, len(doc.additions.windows))  # one per window (distinct moments)
    png = httpx.get(f"{server}{frames[0].saliency_url}", timeout=10)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup installs it)")
    profile = tmp_path / "chromium-profile"
    common = [*chromium_args(CHROMIUM, str(profile)), "--window-size=1200,1800"]
    url = f"{server}/jobs/{job_id}/view"
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    verdict = doc.prediction.overall_class
    assert verdict.upper() in dom.upper() and f"{doc.prediction.manipulation_confidence:.1%}"[:3] in dom
    assert dom.count("<img") >= len(frames) and "untrained" in dom.lower()
    shot = tmp_path / "view.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    (tmp_path.parent / "last-view.png").write_bytes(shot.read_bytes())  # for a person to look at

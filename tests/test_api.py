"""The REST API against the real test PostgreSQL, a local bucket folder and a local artifact store."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dagster_deepfake.api import (
    MULTIPART_OVERHEAD_BYTES,
    InsecureBindError,
    build_server,
    check_bind,
    create_app,
    is_loopback,
    safe_file_name,
)
from dagster_deepfake.config import Settings
from dagster_deepfake.ingest import register_object
from dagster_deepfake.models.serving import serving_model_version
from dagster_deepfake.report import (
    Additions,
    AnomalousFrame,
    AudioAnomaly,
    Metadata,
    Prediction,
    Provenance,
    ResultDocument,
    Runtime,
    WindowScore,
)
from dagster_deepfake.storage.artifacts import ArtifactStore
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.keys import partition_key_for_sha256
from dagster_deepfake.storage.postgres import ResultsDB, videos
from tests.conftest import serving_api

TOKEN = "test-token-7f3a9c"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small generated inputs: a valid clip, a too-small clip, audio only, an image, random bytes."""
    root = tmp_path_factory.mktemp("api-media")
    clip = root / "clip.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
        "-t", "2", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-c:a", "aac", str(clip),
    )  # fmt: skip
    small = root / "small.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "1", "-pix_fmt", "yuv420p", str(small)
    )
    audio = root / "audio.m4a"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "1", "-c:a", "aac", str(audio))
    image = root / "image.png"
    cv2.imwrite(str(image), np.full((240, 320, 3), 127, np.uint8))
    noise = root / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(50_000))
    text = root / "notes.txt"
    text.write_text("this is not a video\n" * 200)
    return {"clip": clip, "small": small, "audio": audio, "image": image, "noise": noise, "text": text}


@pytest.fixture
def client(settings: Settings, db: ResultsDB) -> Iterator[TestClient]:
    with TestClient(create_app(settings, token=None, db=db)) as test_client:
        yield test_client


def _bucket(settings: Settings) -> UploadBucket:
    return UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)


def _upload(client: TestClient, path: Path, name: str | None = None, **kwargs: object) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/analyze-video", files={"file": (name or path.name, fh, "video/mp4")}, **kwargs)


def _job_id(path: Path) -> str:
    return partition_key_for_sha256(hashlib.sha256(path.read_bytes()).hexdigest())


def _document(job_id: str, *, n_frames: int = 6, weights: str = "untrained") -> ResultDocument:
    """A made-up but schema-valid completed result with `n_frames` heat-map frames."""
    frames = [
        AnomalousFrame(
            frame_id=10 * i,
            timestamp=2.0 * i,
            confidence=0.5 + 0.05 * i,
            saliency_url=f"/jobs/{job_id}/saliency/frame_{10 * i:06d}_face.png",
        )
        for i in range(n_frames)
    ]
    return ResultDocument(
        job_id=job_id,
        status="completed",
        prediction=Prediction(
            overall_class="fake",
            overall_confidence=0.8731,
            manipulation_confidence=0.8731,
            modality_agreement=0.62,
            confidence_interval=(0.8102, 0.9214),
            anomalous_frames=frames,
        ),
        metadata=Metadata(
            processing_time_sec=3.2,
            video_duration_sec=12.0,
            frames_analyzed=60,
            model_version="contract-untrained-abc123",
            ensemble_size=1,
        ),
        additions=Additions(
            video_id=job_id,
            file_name="<script>alert(1)</script>.mp4",
            modalities_used=["video", "audio"],
            pretrained={"audio_encoder": False, "video_backbone": True},
            weights=weights,
            interval_method="ensemble_spread",
            audio_anomalies=[AudioAnomaly(start=3.0, end=4.5, score=2.7, kind="embedding_outlier")],
            windows=[
                WindowScore(window_id=i, start=i * 1.0, end=i * 1.0 + 1.0, p_fake=0.1 * i) for i in range(10)
            ],
        ),
    )


def _png_bytes(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


# -- upload ------------------------------------------------------------------------------------------
def test_upload_queues_job_and_drops_file_under_a_safe_key(
    client: TestClient, settings: Settings, db: ResultsDB, media: dict[str, Path]
) -> None:
    response = _upload(client, media["clip"], name="../../etc/evil name.mp4")
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = _job_id(media["clip"])
    assert body["job_id"] == job_id and body["status"] == "queued" and body["duplicate"] is False
    assert body["links"] == {
        "self": f"/jobs/{job_id}",
        "view": f"/jobs/{job_id}/view",
        "history": f"/jobs/{job_id}/history",
    }
    assert response.headers["location"] == f"/jobs/{job_id}"

    objects = _bucket(settings).list_objects()  # what the sensor will see
    assert [o.key for o in objects] == [f"api/{job_id}/evil_name.mp4"]
    stored = Path(settings.platform.upload_uri.removeprefix("file://")) / objects[0].key
    assert stored.read_bytes() == media["clip"].read_bytes()

    job = db.get_job(job_id)
    assert job is not None and job["status"] == "queued" and job["source_uri"] == objects[0].uri
    video = db.get_video(job_id)
    assert video is not None
    assert video["file_name"] == "../../etc/evil name.mp4"  # recorded as given, never used as a path
    assert video["uploader"] == "api"
    assert video["size_bytes"] == media["clip"].stat().st_size


def test_same_bytes_again_is_the_same_job_and_stores_nothing_new(
    client: TestClient, settings: Settings, db: ResultsDB, media: dict[str, Path]
) -> None:
    first = _upload(client, media["clip"], name="first.mp4")
    db.set_job_status(first.json()["job_id"], "running")
    second = _upload(client, media["clip"], name="second.mov")
    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["job_id"] == first.json()["job_id"]
    assert second.json()["duplicate"] is True and second.json()["status"] == "running"
    objects = _bucket(settings).list_objects()
    assert len(objects) == 1 and db.count(videos) == 1
    # The sensor registering the object afterwards keeps the API's file name and uploader.
    registration = register_object(_bucket(settings), objects[0], db)
    assert registration.video_id == first.json()["job_id"] and registration.new_video is False
    assert db.get_video(registration.video_id)["file_name"] == "first.mp4"


@pytest.mark.parametrize(
    ("key", "name", "reason"),
    [
        ("noise", "noise.mp4", "unrecognised binary data"),
        ("image", "photo.mp4", "still image (PNG)"),
        ("text", "notes.mp4", "text"),
        ("audio", "song.mp4", "audio-only"),
    ],
)
def test_non_video_content_is_415_whatever_the_extension(
    client: TestClient,
    settings: Settings,
    db: ResultsDB,
    media: dict[str, Path],
    key: str,
    name: str,
    reason: str,
) -> None:
    response = _upload(client, media[key], name=name)
    assert response.status_code == 415, response.text
    assert reason in response.json()["detail"]
    assert _bucket(settings).list_objects() == [] and db.list_jobs() == []


def test_video_out_of_scope_is_422_with_the_reason(
    client: TestClient, settings: Settings, media: dict[str, Path]
) -> None:
    response = _upload(client, media["small"])
    assert response.status_code == 422
    assert "320x180" in response.json()["detail"] and "240p" in response.json()["detail"]
    assert _bucket(settings).list_objects() == []


def test_malformed_requests_are_clear_4xx(client: TestClient, media: dict[str, Path]) -> None:
    raw = client.post(
        "/analyze-video", content=media["clip"].read_bytes(), headers={"content-type": "video/mp4"}
    )
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["detail"]
    wrong_field = client.post("/analyze-video", files={"video": ("a.mp4", b"xx", "video/mp4")})
    assert wrong_field.status_code == 400 and "'file'" in wrong_field.json()["detail"]
    empty = client.post("/analyze-video", files={"file": ("a.mp4", b"", "video/mp4")})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_over_the_limit_is_413_and_leaves_nothing(
    settings: Settings,
    db: ResultsDB,
    media: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunked: bool,
) -> None:
    data = media["clip"].read_bytes()
    # Far below the clip, so a declared Content-Length is refused before the body is read.
    settings.platform.max_upload_bytes = 1000
    assert len(data) > 1000 + MULTIPART_OVERHEAD_BYTES
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    boundary = "ddfboundary123"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    # Without a Content-Length the limit can only be enforced while the body streams in.
    content = (body[i : i + 8192] for i in range(0, len(body), 8192)) if chunked else body
    with TestClient(create_app(settings, token=None, db=db)) as test_client:
        response = test_client.post("/analyze-video", content=content, headers=headers)
    assert response.status_code == 413
    assert str(settings.platform.max_upload_bytes) in response.json()["detail"]
    assert list(spool.iterdir()) == []  # the partial temp file is removed
    assert _bucket(settings).list_objects() == [] and db.list_jobs() == []


def test_safe_file_name_never_keeps_a_path_and_always_has_an_accepted_suffix() -> None:
    allowed = [".mp4", ".mov", ".mkv"]
    assert safe_file_name("../../a b/c?d.MP4", "mov", allowed) == "c_d.mp4"
    assert safe_file_name("C:\\Users\\x\\clip.mov", "mov", allowed) == "clip.mov"
    assert safe_file_name("..", "mov", allowed) == "upload.mp4"
    assert safe_file_name(None, "matroska", allowed) == "upload.mkv"
    assert safe_file_name("movie.exe", "mov", allowed) == "movie.mp4"
    assert safe_file_name("vidéo.mp4", "mp4", allowed) == "video.mp4"


# -- jobs --------------------------------------------------------------------------------------------
def test_list_jobs_pages_without_gaps_or_repeats(client: TestClient, db: ResultsDB) -> None:
    ids = [f"v_{i:016x}" for i in range(5)]
    for job_id in ids:
        db.create_job(job_id, job_id, f"file:///bucket/{job_id}.mp4")
    db.set_job_status(ids[2], "running")
    seen: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = client.get("/jobs", params={"limit": 2, "offset": offset}).json()
        assert len(page["items"]) <= 2
        seen += [item["job_id"] for item in page["items"]]
        offset = page["next_offset"]
        pages += 1
    assert sorted(seen) == ids and pages == 3
    running = client.get("/jobs", params={"status": "running"}).json()["items"]
    assert [j["job_id"] for j in running] == [ids[2]]
    assert client.get("/jobs", params={"status": "exploded"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


CONTRACT_KEYS = {"job_id", "status", "prediction", "metadata"}


def test_job_answer_is_the_result_document_in_every_state(client: TestClient, db: ResultsDB) -> None:
    job_id = "v_00000000000000aa"
    db.create_job(job_id, job_id, "file:///bucket/x.mp4")

    def answer() -> dict:
        assert client.get(f"/jobs/{job_id}/view").status_code == 200  # the page renders in every state
        return client.get(f"/jobs/{job_id}").json()

    first = answer()
    assert first.keys() >= CONTRACT_KEYS and "result" not in first
    assert first["status"] == "queued" and first["prediction"] is None and first["metadata"] is None
    assert first["started_at"] is None and first["links"]["history"] == f"/jobs/{job_id}/history"

    db.set_job_status(job_id, "running", run_id="run-1")
    running = answer()
    assert running["status"] == "running" and running["started_at"] is not None
    assert running["prediction"] is None

    db.set_job_status(job_id, "failed", reason="no face found in any sampled frame")
    failed = answer()
    assert failed["status"] == "failed" and failed["reason"] == "no face found in any sampled frame"
    assert failed["prediction"] is None

    document = _document(job_id)
    db.set_job_status(job_id, "completed", result=document.model_dump(mode="json"))
    completed = answer()
    assert completed["status"] == "completed" and completed["reason"] is None
    contract = {k: completed[k] for k in (*CONTRACT_KEYS, "additions")}
    assert ResultDocument.model_validate(contract) == document
    assert completed["model_version"] == document.metadata.model_version
    assert completed["verdict_is_current"] is False  # a made-up model: not the one serving here


def test_dataset_video_job_renders_without_a_verdict(client: TestClient, db: ResultsDB) -> None:
    """`extract_features` jobs store a features note, not a document: 200 everywhere, no verdict."""
    job_id = "v_00000000000000ab"
    db.create_job(job_id, job_id, "file:///data/x.mp4")
    db.set_job_status(job_id, "completed", result={"stage": "features", "note": "cached for training"})
    body = client.get(f"/jobs/{job_id}").json()
    assert body["status"] == "completed" and body["stage"] == "features" and body["prediction"] is None
    page = client.get(f"/jobs/{job_id}/view")
    assert page.status_code == 200 and "dataset video" in page.text
    assert client.get(f"/jobs/{job_id}/history").json()["items"] == []


def test_unknown_and_malformed_job_ids(client: TestClient) -> None:
    assert client.get("/jobs/v_0123456789abcdef").status_code == 404
    assert client.get("/jobs/v_0123456789abcdef/view").status_code == 404
    for bad in ("v_XYZ", "v_0123456789ABCDEF", "x_0123456789abcdef", "v_0123456789abcdef0"):
        assert client.get(f"/jobs/{bad}").status_code == 422, bad


def test_saliency_png_is_served_and_names_are_validated(client: TestClient, settings: Settings) -> None:
    job_id = "v_00000000000000bb"
    store = ArtifactStore(settings.platform.artifact_root)
    png = _png_bytes(1)
    store.write_bytes(f"videos/{job_id}/saliency/frame_000010_face.png", png)
    store.write_bytes(f"videos/{job_id}/secret.png", _png_bytes(2))
    served = client.get(f"/jobs/{job_id}/saliency/frame_000010_face.png")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == png
    assert client.get(f"/jobs/{job_id}/saliency/frame_000099_face.png").status_code == 404
    for name in ("..%2Fsecret.png", "%2E%2E%2Fsecret.png", "..png", "frame.svg", "a%00.png", "frame%20x.png"):
        response = client.get(f"/jobs/{job_id}/saliency/{name}")
        assert 400 <= response.status_code < 500, name
        assert response.content != _png_bytes(2)


def test_view_page_of_a_completed_job(client: TestClient, settings: Settings, db: ResultsDB) -> None:
    job_id = "v_00000000000000cc"
    store = ArtifactStore(settings.platform.artifact_root)
    document = _document(job_id, n_frames=6)
    document.additions.provenance = Provenance(
        checkpoints=[],
        runtime=Runtime(device="cpu", precision="fp32", backbone="onnxruntime"),
        settings_sha256="0" * 64,
        settings_sections=[],
        settings={},
    )
    for frame in document.prediction.anomalous_frames:
        store.write_bytes(
            f"videos/{job_id}/saliency/frame_{frame.frame_id:06d}_face.png", _png_bytes(frame.frame_id)
        )
    db.create_job(job_id, job_id, "file:///bucket/x.mp4")
    db.set_job_status(job_id, "completed", result=document.model_dump(mode="json"))

    page = client.get(f"/jobs/{job_id}/view")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "FAKE" in html and "87.3 %" in html and "0.873" in html and "0.810" in html and "0.921" in html
    assert "UNTRAINED MODEL" in html and "audio_encoder" in html  # both warnings: weights and random init
    assert "contract-untrained-abc123" in html
    assert (
        "cpu, fp32, face backbone on ONNX Runtime (exported fp32 graph)" in html
    )  # what computed it (provenance.runtime)
    # Top 5 of the 6 frames by confidence, inlined so the page is self-contained and works behind auth.
    assert html.count('<img src="data:image/png;base64,') == settings.explain.top_k_frames == 5
    assert "frame 0 ·" not in html and "frame 50 ·" in html
    assert "<svg" in html and "<polyline" in html and html.count("audio anomaly embedding_outlier") == 1
    assert "<script>alert(1)</script>" not in html  # everything from the document is escaped


def test_view_page_has_no_banner_for_a_trained_model(
    client: TestClient, db: ResultsDB, settings: Settings
) -> None:
    job_id = "v_00000000000000cd"
    document = _document(job_id, weights="trained")
    document.additions.pretrained = {"audio_encoder": True, "video_backbone": True}
    document.metadata.model_version = serving_model_version(settings)  # the model serving now
    db.create_job(job_id, job_id, "file:///bucket/x.mp4")
    db.set_job_status(job_id, "completed", result=document.model_dump(mode="json"))
    html = client.get(f"/jobs/{job_id}/view").text
    assert "FAKE" in html and 'class="banner"' not in html and "UNTRAINED" not in html
    assert client.get(f"/jobs/{job_id}").json()["verdict_is_current"] is True

    # Once another model serves, the same verdict is flagged as coming from the earlier one.
    document.metadata.model_version = "contract-trained-older"
    db.set_job_status(job_id, "completed", result=document.model_dump(mode="json"))
    html = client.get(f"/jobs/{job_id}/view").text
    assert "This verdict came from model contract-trained-older" in html


def test_view_page_while_pending_and_after_failure(client: TestClient, db: ResultsDB) -> None:
    job_id = "v_00000000000000dd"
    db.create_job(job_id, job_id, "file:///bucket/x.mp4")
    queued = client.get(f"/jobs/{job_id}/view").text
    assert "Status: queued" in queued and 'http-equiv="refresh"' in queued
    db.set_job_status(job_id, "failed", reason="audio-only file: nothing to analyse")
    failed = client.get(f"/jobs/{job_id}/view").text
    assert "Status: failed" in failed and "audio-only file: nothing to analyse" in failed
    assert 'http-equiv="refresh"' not in failed


# -- auth --------------------------------------------------------------------------------------------
def test_bearer_token_is_required_when_configured(
    settings: Settings, db: ResultsDB, media: dict[str, Path]
) -> None:
    job_id = "v_00000000000000ee"
    db.create_job(job_id, job_id, "file:///bucket/x.mp4")
    good = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings, token=TOKEN, db=db)) as c:
        for path in ("/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/view"):
            missing = c.get(path)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
            assert c.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
            assert c.get(path, headers=good).status_code == 200
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
        assert _upload(c, media["clip"]).status_code == 401
        assert _bucket(settings).list_objects() == []
        accepted = _upload(c, media["clip"], headers=good)
        assert accepted.status_code == 202
        assert db.get_video(accepted.json()["job_id"])["uploader"] == "api:token"


def test_openapi_documents_the_upload_and_auth(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    upload = spec["paths"]["/analyze-video"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"202", "200", "413", "415", "422"} <= set(upload["responses"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/view", "/jobs/{job_id}/saliency/{name}"} <= set(
        spec["paths"]
    )


def test_serving_beyond_loopback_needs_a_token(settings: Settings) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert (
        not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("api.example.org")
    )
    with pytest.raises(InsecureBindError, match="token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(InsecureBindError):
        build_server(settings, "0.0.0.0", 8000, token="")
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)


def test_real_http_upload_through_uvicorn(settings: Settings, db: ResultsDB, media: dict[str, Path]) -> None:
    with serving_api(settings, token=TOKEN) as base:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with open(media["clip"], "rb") as fh:
            response = httpx.post(
                f"{base}/analyze-video",
                files={"file": ("clip.mp4", fh, "video/mp4")},
                headers=headers,
                timeout=30,
            )
        assert response.status_code == 202, response.text
        job = httpx.get(f"{base}{response.json()['links']['self']}", headers=headers, timeout=10).json()
        assert job["status"] == "queued" and job["file_name"] == "clip.mp4"
        assert httpx.get(f"{base}/jobs", timeout=10).status_code == 401
    assert os.path.exists(Path(settings.platform.upload_uri.removeprefix("file://")) / "api")

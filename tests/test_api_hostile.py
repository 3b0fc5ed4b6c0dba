"""Hostile requests to the REST API (issue 16): control characters in a file name, paging
parameters out of range, the shape of every 4xx body, and the cap on upload spooling.

The real app on the test PostgreSQL and a local bucket folder. The module writes the
"hostile-api" section of docs/RELIABILITY.md (DAGSTER_DEEPFAKE_WRITE_DOCS=0 skips it).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dagster_deepfake.api import create_app
from dagster_deepfake.config import Settings
from dagster_deepfake.storage.bucket import UploadBucket
from dagster_deepfake.storage.postgres import ResultsDB
from tests.conftest import write_reliability_section

ROWS: dict[str, tuple[str, str]] = {}  # class -> (observed, handled)
CLASSES = ("NUL in the file name", "offset overflow", "huge limit", "422 body shape", "spool cap")


@pytest.fixture(scope="module", autouse=True)
def _section() -> Iterator[None]:
    yield
    if set(ROWS) != set(CLASSES):
        return  # a partial run leaves the document as it was
    lines = [
        "## Hostile API requests",
        "",
        "What the REST API answered (`tests/test_api_hostile.py`, the real app on the test PostgreSQL).",
        "",
        "| class | observed | handled |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {' | '.join(ROWS[name])} |" for name in CLASSES]
    write_reliability_section("hostile-api", lines)


def _record(name: str, response: httpx.Response, ok: bool) -> None:
    detail = " ".join(str(response.json().get("detail")).split())[:120].replace("|", "/")
    ROWS[name] = (f'{response.status_code} `{{"detail": "{detail}"}}`', "yes" if ok else "NO")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile-api") / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-t", "1", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture
def client(settings: Settings, db: ResultsDB) -> Iterator[TestClient]:
    with TestClient(create_app(settings, token=None, db=db)) as test_client:
        yield test_client


def _nothing_stored(settings: Settings, db: ResultsDB) -> bool:
    bucket = UploadBucket(settings.platform.upload_uri, settings.platform.upload_suffixes)
    return bucket.list_objects() == [] and db.list_jobs() == []


def _multipart(data: bytes, filename: bytes) -> tuple[bytes, dict[str, str]]:
    """A hand-made body, so the file name reaches the server byte for byte."""
    boundary = "ddfboundary456"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\nContent-Type: video/mp4\r\n\r\n'
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_control_characters_in_the_file_name_are_400(
    client: TestClient, settings: Settings, db: ResultsDB, clip: Path
) -> None:
    answers = []
    for name in (b"clip\x00.mp4", b"evil\x1b[31m.mp4", b"tab\there.mp4"):
        body, headers = _multipart(clip.read_bytes(), name)
        answers.append(client.post("/analyze-video", content=body, headers=headers))
    ok = all(r.status_code == 400 and "control characters" in r.json()["detail"] for r in answers)
    _record("NUL in the file name", answers[0], ok)
    assert ok, [(r.status_code, r.text) for r in answers]
    assert _nothing_stored(settings, db)
    body, headers = _multipart(clip.read_bytes(), "ünïcödé clip.mp4".encode())
    assert client.post("/analyze-video", content=body, headers=headers).status_code == 202  # not over-eager


def test_out_of_range_paging_is_422_with_a_one_line_reason(client: TestClient) -> None:
    overflow = client.get("/jobs", params={"offset": "9223372036854775808"})
    huge_limit = client.get("/jobs", params={"limit": str(10**30)})
    ok_overflow = overflow.status_code == 422 and "query parameter 'offset'" in overflow.json()["detail"]
    ok_limit = huge_limit.status_code == 422 and "query parameter 'limit'" in huge_limit.json()["detail"]
    _record("offset overflow", overflow, ok_overflow)
    _record("huge limit", huge_limit, ok_limit)
    assert ok_overflow and ok_limit, (overflow.text, huge_limit.text)
    two = client.get("/jobs", params={"offset": "-1", "limit": "abc"}).json()["detail"]
    assert "'offset'" in two and "'limit'" in two and "\n" not in two  # both named, one line
    assert "query parameter 'status'" in client.get("/jobs", params={"status": "exploded"}).json()["detail"]
    assert client.get("/jobs", params={"offset": str(2**62)}).json()["items"] == []  # the largest allowed


def test_every_4xx_body_is_a_detail_string(client: TestClient, clip: Path) -> None:
    answers = {
        "bad job id": client.get("/jobs/not-a-job"),
        "unknown job": client.get("/jobs/v_0000000000000000"),
        "bad heat map name": client.get("/jobs/v_0000000000000000/saliency/x.svg"),
        "unknown route": client.get("/nowhere"),
        "wrong method": client.delete("/jobs"),
        "not a video": client.post(
            "/analyze-video", files={"file": ("a.mp4", b"not a video" * 20, "video/mp4")}
        ),
        "not multipart": client.post("/analyze-video", content=b"x", headers={"content-type": "video/mp4"}),
    }
    shapes = {name: (r.status_code, r.json()) for name, r in answers.items()}
    ok = all(
        400 <= code < 500 and set(body) == {"detail"} and isinstance(body["detail"], str)
        for code, body in shapes.values()
    )
    _record("422 body shape", answers["bad job id"], ok)
    assert ok, shapes


def test_uploads_over_the_spool_budget_are_503_with_retry_after(
    settings: Settings, db: ResultsDB, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))
    one = clip.stat().st_size + 1024  # one upload's body, envelope included
    settings.platform.upload_spool_budget_bytes = 3 * one
    with TestClient(create_app(settings, token=None, db=db)) as c:
        spool = c.app.state.spool
        assert spool.reserve(2 * one + one // 2)  # uploads already in flight hold most of the budget
        with clip.open("rb") as fh:
            refused = c.post("/analyze-video", files={"file": ("clip.mp4", fh, "video/mp4")})
        held = spool.in_use
        spool.release(2 * one + one // 2)
        with clip.open("rb") as fh:
            accepted = c.post("/analyze-video", files={"file": ("clip.mp4", fh, "video/mp4")})
        left = spool.in_use
    ok = (
        refused.status_code == 503
        and refused.headers.get("retry-after") == "10"
        and "upload_spool_budget_bytes" in refused.json()["detail"]
        and held == 2 * one + one // 2  # the refused upload reserved nothing
        and accepted.status_code == 202
        and left == 0  # given back once handled
        and list(spool_dir.iterdir()) == []
    )
    _record("spool cap", refused, ok)
    assert ok, (refused.status_code, refused.headers, refused.text, held, accepted.status_code, left)

"""Helpers shared by the thin per-video assets: failing one partition cleanly, thumbnails."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from dagster_deepfake.errors import DeepfakeError
from dagster_deepfake.storage.postgres import ResultsDB


def image_md(png_or_jpeg: bytes, alt: str, mime: str = "image/jpeg") -> str:
    """Markdown with an inline image, the way Dagster's examples show thumbnails in the UI."""
    return f"![{alt}](data:{mime};base64,{base64.b64encode(png_or_jpeg).decode()})"


@contextmanager
def fail_video_on_bad_input(db: ResultsDB, video_id: str, stage: str) -> Iterator[None]:
    """Turn a user-actionable error into a failed job with its reason and a clean Dagster Failure.

    Only this partition fails; nothing else is touched.
    """
    try:
        yield
    except DeepfakeError as exc:
        reason = f"{stage}: {getattr(exc, 'reason', None) or exc}"
        db.set_job_status(video_id, "failed", reason=reason)
        raise dg.Failure(
            description=reason, metadata={"video_id": video_id, "stage": stage}, allow_retries=False
        ) from exc

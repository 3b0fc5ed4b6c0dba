"""`dagster-deepfake analyze`: every per-video stage in one process, in memory, with timings.

Same stage functions as the Dagster assets (see `pipeline.py`), chained without the
artifact store: the video is decoded once and arrays pass from stage to stage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster_deepfake.config import Settings
from dagster_deepfake.media.frames import sample_frames
from dagster_deepfake.media.probe import probe_video, validate_probe
from dagster_deepfake.storage.keys import partition_key_for_sha256, sha256_file


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
    frames: dict[str, Any]
    stages: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "path": self.path,
            "probe": self.probe,
            "warnings": self.warnings,
            "frames": self.frames,
            **self.stages,
            "timings_sec": {**self.timings, "total": round(sum(self.timings.values()), 4)},
        }


def analyze_file(path: str | Path, settings: Settings, *, model_config: str | None = None) -> AnalysisResult:
    """Run the per-video pipeline on a local file; raises DeepfakeError subclasses on bad input."""
    timer = StageTimer()
    path = Path(path)
    with timer.stage("probe"):
        probe = probe_video(path)
        warnings = validate_probe(
            probe,
            min_height=settings.data.min_height,
            max_height=settings.data.max_height,
            max_duration_seconds=settings.platform.max_duration_seconds,
        )
        video_id = partition_key_for_sha256(sha256_file(str(path)))
    with timer.stage("frames"):
        sampler = sample_frames(path, probe, settings.data.frame_rate)
        frames = list(sampler)
    warnings += sampler.warnings
    frames_info = {
        "frame_rate": settings.data.frame_rate,
        "count": len(frames),
        "first_timestamp": frames[0].timestamp,
        "last_timestamp": frames[-1].timestamp,
        "size": f"{frames[0].image.shape[1]}x{frames[0].image.shape[0]}",
    }
    return AnalysisResult(
        video_id=video_id,
        path=str(path),
        probe=probe.to_dict(),
        warnings=warnings,
        frames=frames_info,
        timings=timer.seconds,
    )


def render_text(result: AnalysisResult, *, timings: bool = False) -> str:
    p = result.probe
    lines = [
        f"video      {result.path}  ({result.video_id})",
        f"probe      {p['codec']} {p['width']}x{p['height']} @ {p['fps']:.2f} fps, {p['duration']:.2f} s, "
        f"audio: {p['audio_codec'] if p['has_audio'] else 'none'}",
        f"frames     {result.frames['count']} sampled at {result.frames['frame_rate']} FPS "
        f"({result.frames['first_timestamp']:.2f}–{result.frames['last_timestamp']:.2f} s)",
    ]
    for name, block in result.stages.items():
        if isinstance(block, dict) and "summary" in block:
            lines.append(f"{name:<10} {block['summary']}")
    for warning in result.warnings:
        lines.append(f"warning    {warning}")
    if timings:
        lines.append("timings    " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
        lines.append(f"           total {sum(result.timings.values()):.2f}s")
    return "\n".join(lines)

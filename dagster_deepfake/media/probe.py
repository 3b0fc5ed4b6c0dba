"""Probe a media file with ffprobe and decide whether it is a video this platform can analyse."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.ffmpeg_bin import ffprobe

# Formats ffprobe reports for still images; such a file renamed .mp4 is not a video.
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "gif", "webp_pipe", "tiff_pipe"}
_IMAGE_CODECS = {"png", "mjpeg", "bmp", "tiff", "webp", "gif"}


@dataclass(frozen=True)
class VideoProbe:
    """What ffprobe says about a file. `width`/`height` are as displayed (rotation applied)."""

    path: str
    size_bytes: int
    container: str
    codec: str
    pix_fmt: str | None
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    fps: float
    duration: float
    n_frames: int | None
    bit_rate: int | None
    has_audio: bool
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None
    variable_frame_rate: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


def _ffprobe_json(path: Path) -> dict[str, Any]:
    cmd = [ffprobe(), "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["ffprobe failed"])[-1]
        raise InvalidVideoError(path, f"not a readable media file ({last.split(': ', 1)[-1]})")
    return json.loads(proc.stdout or "{}")


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text or "0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def _rotation(stream: dict[str, Any]) -> int:
    """Display rotation in degrees (0/90/180/270) from the display matrix or the legacy tag."""
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(tag) % 360 if tag else 0


def probe_video(path: str | os.PathLike[str]) -> VideoProbe:
    """Probe `path`; raise InvalidVideoError with a specific reason when it is not a usable video."""
    path = Path(path)
    if not path.exists():
        raise InvalidVideoError(path, "file does not exist")
    if not path.is_file():
        raise InvalidVideoError(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise InvalidVideoError(path, "empty file (0 bytes)")
    info = _ffprobe_json(path)
    fmt = info.get("format") or {}
    streams = info.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    format_name = str(fmt.get("format_name", ""))
    if not videos:
        kind = "audio-only file" if audios else "no video stream"
        raise InvalidVideoError(path, f"{kind}: nothing to analyse")
    video = videos[0]
    codec = str(video.get("codec_name", "unknown"))
    if format_name in _IMAGE_FORMATS or (codec in _IMAGE_CODECS and int(video.get("nb_frames") or 1) <= 1):
        raise InvalidVideoError(path, f"a still image ({codec}), not a video")
    coded_w, coded_h = int(video.get("width") or 0), int(video.get("height") or 0)
    if coded_w <= 0 or coded_h <= 0:
        raise InvalidVideoError(path, "video stream has no frame size (corrupt header)")
    rotation = _rotation(video)
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    avg = _rate(video.get("avg_frame_rate"))
    real = _rate(video.get("r_frame_rate"))
    fps = avg or real
    duration = float(video.get("duration") or fmt.get("duration") or 0.0)
    if duration <= 0 or fps <= 0:
        raise InvalidVideoError(path, "zero-duration video (no decodable frames)")
    nb = video.get("nb_frames")
    audio = audios[0] if audios else None
    return VideoProbe(
        path=str(path),
        size_bytes=size,
        container=format_name,
        codec=codec,
        pix_fmt=video.get("pix_fmt"),
        width=width,
        height=height,
        coded_width=coded_w,
        coded_height=coded_h,
        rotation=rotation,
        fps=round(fps, 4),
        duration=round(duration, 4),
        n_frames=int(nb) if nb and str(nb).isdigit() else None,
        bit_rate=int(fmt["bit_rate"]) if str(fmt.get("bit_rate", "")).isdigit() else None,
        has_audio=audio is not None,
        audio_codec=audio.get("codec_name") if audio else None,
        audio_sample_rate=int(audio["sample_rate"]) if audio and audio.get("sample_rate") else None,
        audio_channels=int(audio["channels"]) if audio and audio.get("channels") else None,
        # avg and r frame rates differ noticeably for variable-frame-rate streams.
        variable_frame_rate=bool(avg and real and abs(avg - real) / real > 0.01),
    )


def validate_probe(
    probe: VideoProbe, *, min_height: int, max_height: int, max_duration_seconds: float
) -> list[str]:
    """Apply the v1 scope (DESIGN §1). Raise for what is out of scope; return warnings for the rest.

    The size check uses the shorter side so that portrait (rotated) videos are judged like landscape.
    """
    short_side = min(probe.width, probe.height)
    if short_side < min_height:
        raise InvalidVideoError(
            probe.path, f"resolution {probe.resolution} is below the supported minimum of {min_height}p"
        )
    if probe.duration > max_duration_seconds:
        raise InvalidVideoError(
            probe.path,
            f"duration {probe.duration:.1f} s exceeds the configured maximum of {max_duration_seconds:.0f} s",
        )
    warnings: list[str] = []
    if short_side > max_height:
        warnings.append(
            f"resolution {probe.resolution} is above {max_height}p; faces are detected on a downscaled copy"
        )
    if probe.codec not in {"h264", "hevc"}:
        warnings.append(f"codec {probe.codec} is outside the tested H.264/H.265 scope")
    if probe.variable_frame_rate:
        warnings.append("variable frame rate; frames are sampled by timestamp")
    if probe.rotation:
        warnings.append(f"rotated {probe.rotation}° by its display matrix; frames are decoded upright")
    if not probe.has_audio:
        warnings.append("no audio track; the audio branch uses its no-audio embedding")
    return warnings

"""Probe a media file with ffprobe and decide whether it is a video this platform can analyse.

Everything goes through the probe gate (`media.gate`): only real video containers, only the
local file, no external references, a cap on the picture size. Beyond the header, the probe
scans the packet timestamps of the file (no decoding, a fraction of a second for a 15-minute
clip) so that limits hold for what is really there: a file whose streams run much longer than
its header says is refused with both lengths.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media import gate
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
    # Measured from the packets (not the header): seconds the video stream really runs and its
    # count of shown packets (= frames; an edit list's discarded lead-in excluded). None for
    # probes made before the scan existed.
    stream_duration: float | None = None
    n_packets: int | None = None
    # ffprobe's index of the video stream the probe describes (what frame sampling decodes).
    video_stream_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def length(self) -> float:
        """Seconds to treat as the video's length: the header's, or the stream's when longer."""
        return max(self.duration, self.stream_duration or 0.0)

    @property
    def frame_count(self) -> int | None:
        """Frames in the video stream: counted packets when scanned, else the header's count."""
        return self.n_packets if self.n_packets is not None else self.n_frames


# A stream may run this much past its header (last-frame duration, edit-list pre-roll, audio
# priming) before the header counts as lying: max(2 s, 10 %).
_LENGTH_SLACK_S, _LENGTH_SLACK_RATIO = 2.0, 0.10
# The packet scan stops here (about 14 h at 60 FPS); a file with more packets is refused.
_SCAN_PACKET_LIMIT = 3_000_000


def _ffprobe_json(
    path: Path, container: gate.Container, max_pixels: int | None, timeout_s: float
) -> dict[str, Any]:
    cmd = [
        ffprobe(),
        *("-v", "warning", "-hide_banner"),
        *gate.input_args(path, container=container, max_pixels=max_pixels),
        *("-show_format", "-show_streams", "-of", "json"),
    ]
    proc = gate.run_tool(cmd, path, timeout_s=timeout_s, what="ffprobe")
    stderr = proc.stderr.decode(errors="replace")
    if "Skipped opening external track" in stderr:  # the mov demuxer's drefs, kept off by the gate
        raise InvalidVideoError(
            path,
            "an MP4/MOV whose track data is in another file (external data reference), which is never opened",
        )
    if proc.returncode != 0:
        size = gate.oversize_in(stderr)
        if size and max_pixels:
            raise InvalidVideoError(path, gate.pixel_limit_reason(*size, max_pixels))
        last = gate.last_line(stderr, "ffprobe failed", path)
        raise InvalidVideoError(path, f"not a readable media file ({last})")
    try:
        info = json.loads(proc.stdout or b"{}")
    except ValueError:
        raise InvalidVideoError(path, "not a readable media file (ffprobe's answer is not JSON)") from None
    return info if isinstance(info, dict) else {}


@dataclass
class _Extent:
    """What the packets of one stream cover: count, first timestamp, end of the last packet.

    Packets flagged discard (decoded only as references for an edit list's first frame, never
    shown) count in `packets` but not in `shown` nor in the time span."""

    packets: int = 0
    shown: int = 0
    first: float | None = None
    end: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.first is None or self.end is None else self.end - self.first


def _num(text: bytes) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _scan_packets(
    path: Path, container: gate.Container, max_pixels: int | None, timeout_s: float
) -> dict[int, _Extent]:
    """Per stream index: packet count and time span, read from the packets (nothing decoded).

    ffprobe's output is consumed line by line, so memory stays flat however many packets there
    are; the scan is bounded by `timeout_s` and by _SCAN_PACKET_LIMIT packets.
    """
    cmd = [
        ffprobe(),
        *("-v", "error", "-hide_banner"),
        *gate.input_args(path, container=container, max_pixels=max_pixels),
        *("-show_entries", "packet=stream_index,pts_time,dts_time,duration_time,flags", "-of", "csv=p=0"),
    ]
    tool = gate.StreamedTool(cmd, path, what="ffprobe (packet scan)", timeout_s=timeout_s)
    extents: dict[int, _Extent] = {}
    total = 0
    try:
        while line := tool.readline():
            fields = line.strip().split(b",")
            if len(fields) < 5 or not fields[0].isdigit():
                continue
            ext = extents.setdefault(int(fields[0]), _Extent())
            ext.packets += 1
            total += 1
            if b"D" in fields[4]:
                continue
            ext.shown += 1
            pts, dts, dur = _num(fields[1]), _num(fields[2]), _num(fields[3])
            t = pts if pts is not None else dts
            if t is not None:
                ext.first = t if ext.first is None else min(ext.first, t)
                end = t + max(dur or 0.0, 0.0)
                ext.end = end if ext.end is None else max(ext.end, end)
            if total > _SCAN_PACKET_LIMIT:
                tool.stop()
                break
    finally:
        tool.close()
    if total > _SCAN_PACKET_LIMIT:
        raise InvalidVideoError(path, f"holds more than {_SCAN_PACKET_LIMIT:,} packets; not read further")
    return extents


def _check_lengths(
    path: Path, headers: list[tuple[str, dict[str, Any], float]], extents: dict[int, _Extent]
) -> None:
    """Refuse a file whose video or audio stream runs much longer than its header says
    (`headers`: kind, stream, the header's length for that stream; the video first)."""
    for kind, stream, header in headers:
        ext = extents.get(_index(stream))
        seconds = ext.seconds if ext else None
        if seconds is not None and seconds > header + max(_LENGTH_SLACK_S, _LENGTH_SLACK_RATIO * header):
            raise InvalidVideoError(
                path,
                f"the header says {header:.1f} s but the {kind} stream runs {seconds:.1f} s; "
                "a file whose length lies is not analysed",
            )
    kind, video, _ = headers[0]
    ext = extents.get(_index(video))
    nb = str(video.get("nb_frames") or "")
    if ext and nb.isdigit() and ext.packets > 1.1 * int(nb) + 10:
        raise InvalidVideoError(
            path,
            f"the header says {int(nb)} frames but the video stream holds {ext.packets}; "
            "a file whose length lies is not analysed",
        )


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text or "0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def _seconds(text: Any) -> float:
    try:
        value = float(text or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return value if 0 < value < float("inf") else 0.0


def _rotation(stream: dict[str, Any]) -> int:
    """Display rotation in degrees (0/90/180/270) from the display matrix or the legacy tag."""
    for side in stream.get("side_data_list", []) or []:
        if isinstance(side, dict) and "rotation" in side:
            angle = _number(side["rotation"])
            if angle is not None:
                return int(round(angle)) % 360
    angle = _number((stream.get("tags") or {}).get("rotate"))
    return int(round(angle)) % 360 if angle is not None else 0


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if abs(number) < 1e9 else None


def _int(value: Any) -> int | None:
    text = str(value if value is not None else "")
    return int(text) if text.isdigit() else None


def _index(stream: dict[str, Any]) -> int:
    index = _int(stream.get("index"))
    return -1 if index is None else index


def probe_video(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = gate.DEFAULT_MAX_PIXELS,
    timeout_s: float = 60.0,
) -> VideoProbe:
    """Probe `path` through the gate; raise InvalidVideoError with a specific reason when it is
    not a usable video.

    `max_pixels` caps the picture size (width x height) before anything is decoded (ffprobe
    decodes a frame or two to fill in stream facts, so the cap applies to the probe itself);
    `timeout_s` bounds each ffprobe run.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidVideoError(path, "file does not exist")
    if not path.is_file():
        raise InvalidVideoError(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise InvalidVideoError(path, "empty file (0 bytes)")
    container = gate.sniff(path)
    info = _ffprobe_json(path, container, max_pixels, timeout_s)
    fmt = info.get("format") or {}
    streams = [s for s in info.get("streams") or [] if isinstance(s, dict)]
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
    if format_name in _IMAGE_FORMATS or (codec in _IMAGE_CODECS and (_int(video.get("nb_frames")) or 1) <= 1):
        raise InvalidVideoError(path, f"a still image ({codec}), not a video")
    coded_w, coded_h = _int(video.get("width")) or 0, _int(video.get("height")) or 0
    if coded_w <= 0 or coded_h <= 0:
        raise InvalidVideoError(path, "video stream has no frame size (corrupt header)")
    if max_pixels and coded_w * coded_h > max_pixels:
        raise InvalidVideoError(path, gate.pixel_limit_reason(coded_w, coded_h, max_pixels))
    rotation = _rotation(video)
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    avg = _rate(video.get("avg_frame_rate"))
    real = _rate(video.get("r_frame_rate"))
    fps = avg or real
    duration = _seconds(video.get("duration")) or _seconds(fmt.get("duration"))
    if fps <= 0:
        raise InvalidVideoError(path, "zero-duration video (no decodable frames)")
    extents = _scan_packets(path, container, max_pixels, timeout_s)
    scanned = extents.get(_index(video))
    if scanned is None or scanned.shown == 0:
        raise InvalidVideoError(path, "the video stream holds no packets (no decodable frames)")
    if duration <= 0:  # no length in the header (e.g. a streamed WebM/Matroska): what is there
        duration = scanned.seconds or 0.0
    if duration <= 0:
        raise InvalidVideoError(path, "zero-duration video (no decodable frames)")
    # The video is judged by its own header; audio by its own or the container's, whichever is
    # longer (audio may legitimately outlast the picture), else by the video's length.
    headers = [("video", video, duration)]
    headers += [
        ("audio", a, max(_seconds(a.get("duration")), _seconds(fmt.get("duration"))) or duration)
        for a in audios[:1]
    ]
    _check_lengths(path, headers, extents)
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
        n_frames=_int(nb),
        bit_rate=_int(fmt.get("bit_rate")),
        has_audio=audio is not None,
        audio_codec=audio.get("codec_name") if audio else None,
        audio_sample_rate=_int(audio.get("sample_rate")) if audio else None,
        audio_channels=_int(audio.get("channels")) if audio else None,
        # avg and r frame rates differ noticeably for variable-frame-rate streams.
        variable_frame_rate=bool(avg and real and abs(avg - real) / real > 0.01),
        stream_duration=round(scanned.seconds, 4) if scanned.seconds is not None else None,
        n_packets=scanned.shown,
        video_stream_index=_int(video.get("index")),
    )


def validate_probe(
    probe: VideoProbe,
    *,
    min_height: int,
    max_height: int,
    max_duration_seconds: float,
    max_pixels: int | None = gate.DEFAULT_MAX_PIXELS,
    max_frames: int | None = None,
) -> list[str]:
    """Apply the v1 scope (docs/ARCHITECTURE.md §1). Raise for what is out of scope; return warnings for the rest.

    The size check uses the shorter side so that portrait (rotated) videos are judged like landscape.
    Length limits use what the packets say when that is longer than the header (`probe.length`,
    `probe.frame_count`). `max_pixels` caps width x height (default 4096x2160); `max_frames`
    caps the frames to decode (default: `max_duration_seconds` at 120 FPS).
    """
    short_side = min(probe.width, probe.height)
    if short_side < min_height:
        raise InvalidVideoError(
            probe.path, f"resolution {probe.resolution} is below the supported minimum of {min_height}p"
        )
    if max_pixels and probe.coded_width * probe.coded_height > max_pixels:
        raise InvalidVideoError(
            probe.path, gate.pixel_limit_reason(probe.coded_width, probe.coded_height, max_pixels)
        )
    if probe.length > max_duration_seconds:
        raise InvalidVideoError(
            probe.path,
            f"duration {probe.length:.1f} s exceeds the configured maximum of {max_duration_seconds:.0f} s",
        )
    frames = probe.frame_count
    frame_limit = max_frames if max_frames is not None else int(max_duration_seconds * 120)
    if frames is not None and frames > frame_limit:
        raise InvalidVideoError(
            probe.path, f"{frames} frames exceed the limit of {frame_limit} frames per video"
        )
    if frames is not None and frames < 2:
        raise InvalidVideoError(
            probe.path,
            f"too short: {frames} frame{'' if frames == 1 else 's'} ({probe.length:.2f} s); "
            "a single picture has no motion or timing to analyse",
        )
    warnings: list[str] = []
    if short_side > max_height:
        warnings.append(
            f"resolution {probe.resolution} is above {max_height}p; frames are scaled down to "
            f"{max_height}p (shorter side) when decoded"
        )
    if probe.codec not in {"h264", "hevc"}:
        warnings.append(f"codec {probe.codec} is outside the tested H.264/H.265 scope")
    if probe.variable_frame_rate:
        warnings.append("variable frame rate; frames are sampled by timestamp")
    if probe.rotation % 90 == 0 and probe.rotation:
        warnings.append(f"rotated {probe.rotation}° by its display matrix; frames are decoded upright")
    elif probe.rotation:
        warnings.append(
            f"rotated {probe.rotation}° by its display matrix, which is not a multiple of 90°: frames "
            f"are turned by that angle inside the stored {probe.coded_width}x{probe.coded_height} "
            "frame (corners cut off, filled black), so faces may be tilted or clipped"
        )
    if not probe.has_audio:
        warnings.append("no audio track; the audio branch uses its no-audio embedding")
    return warnings

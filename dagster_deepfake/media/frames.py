"""Sample frames at a fixed rate with one ffmpeg decode.

Frame ids are indexes on the sampling grid: frame k is the source frame nearest to
t = k / frame_rate seconds (ffmpeg's `fps` filter), so ids and timestamps are the same
on every run and for every consumer.

The decode is bounded by what was validated, not by what the file holds: the input is opened
through the probe gate (`media.gate`: real containers only, local file only, `-max_pixels`),
reading stops at the probe's length (`-t`), no more than the sampling grid's frame count (+2)
is ever yielded, and frames are scaled inside ffmpeg to at most `max_side` pixels on their
shorter side (1080 by default) before the RGB conversion, so a frame in Python is never larger
than that whatever the input's resolution. Inputs at or below `max_side` decode exactly as
before (the scale step is a pass-through for them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media import gate
from dagster_deepfake.media.ffmpeg_bin import ffmpeg as ffmpeg_binary
from dagster_deepfake.media.probe import VideoProbe

# The contract's scope tops out at 1080p (docs/ARCHITECTURE.md §1): larger frames are scaled down to this
# shorter side while decoding.
DEFAULT_MAX_SIDE = 1080
# Frames yielded beyond the sampling grid of the validated length before sampling stops.
_FRAME_SLACK = 2


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: RGB uint8 (H, W, 3), upright (display rotation applied)."""

    frame_id: int
    timestamp: float
    image: np.ndarray


def output_size(width: int, height: int, max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of decoded frames: the display size, scaled down (aspect kept) so that the
    shorter side is at most `max_side`; unchanged when it already is (or `max_side` is 0/None)."""
    short = min(width, height)
    if not max_side or short <= max_side:
        return width, height
    scale = max_side / short
    if width <= height:
        return max_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_side


@dataclass
class FrameSampler:
    """Iterate over sampled frames; after iteration `warnings` holds what went wrong mid-stream.

    `max_side` caps the decoded frames' shorter side, `max_pixels` the input's picture size
    (refused before decoding, and enforced by the decoder for every frame), `stall_timeout_s`
    the wait for any one frame from ffmpeg (time spent by the consumer does not count).
    """

    path: Path
    probe: VideoProbe
    frame_rate: float
    max_side: int | None = DEFAULT_MAX_SIDE
    max_pixels: int | None = gate.DEFAULT_MAX_PIXELS
    stall_timeout_s: float = 120.0
    warnings: list[str] = field(default_factory=list)
    frames_read: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames this sampler yields."""
        return output_size(self.probe.width, self.probe.height, self.max_side)

    @property
    def frame_limit(self) -> int:
        """The most frames yielded: the sampling grid over the validated length, plus slack."""
        return int(np.floor(self.probe.length * self.frame_rate + 1e-6)) + _FRAME_SLACK

    def _command(self) -> list[str]:
        width, height = self.size
        index = self.probe.video_stream_index
        # The fixed output size also keeps every frame the same size when a stream changes
        # resolution mid-way (a pass-through when nothing needs scaling).
        chain = f"fps=fps={self.frame_rate:g}:round=near,scale={width}:{height}:flags=area"
        return [
            ffmpeg_binary(),
            *("-nostdin", "-hide_banner", "-v", "error"),
            # One second past the validated length: never cuts an honest file (the probe measured
            # its streams), stops a lying one.
            *gate.input_args(self.path, max_pixels=self.max_pixels, duration=self.probe.length + 1.0),
            *("-map", f"0:{index}" if index is not None else "0:v:0", "-vf", chain),
            *("-f", "rawvideo", "-pix_fmt", "rgb24", "-vsync", "passthrough", "pipe:"),
        ]

    def __iter__(self) -> Iterator[SampledFrame]:
        p = self.probe
        if self.max_pixels and p.coded_width * p.coded_height > self.max_pixels:
            raise InvalidVideoError(
                self.path, gate.pixel_limit_reason(p.coded_width, p.coded_height, self.max_pixels)
            )
        width, height = self.size
        frame_bytes = width * height * 3
        limit = self.frame_limit
        tool = gate.StreamedTool(
            self._command(),
            self.path,
            what="ffmpeg (frame sampling)",
            stall_s=self.stall_timeout_s,
            bufsize=frame_bytes,
        )
        at_limit = finished = False
        try:
            while True:
                buf = tool.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                if self.frames_read >= limit:
                    at_limit = True
                    tool.stop()
                    break
                k = self.frames_read
                image = np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
                self.frames_read += 1
                yield SampledFrame(frame_id=k, timestamp=round(k / self.frame_rate, 6), image=image)
            finished = True
        finally:
            if not finished:  # the consumer stopped early or failed: do not wait for the decode
                tool.stop()
            code, stderr = tool.close()
        self._check(code, stderr, at_limit, limit)

    def _check(self, code: int, stderr: str, at_limit: bool, limit: int) -> None:
        last = gate.last_line(stderr, "", self.path) if stderr.strip() else ""
        oversize = gate.oversize_in(stderr)
        if oversize and self.max_pixels:
            where = " mid-stream" if self.frames_read else ""
            raise InvalidVideoError(
                self.path,
                gate.pixel_limit_reason(*oversize, self.max_pixels) + f" (frame size changed{where})",
            )
        if at_limit:
            self.warnings.append(
                f"stopped after {limit} sampled frames: the stream runs past its validated length "
                f"of {self.probe.length:.1f} s"
            )
            return
        if self.frames_read == 0:
            frames = self.probe.frame_count
            if code == 0 and not last and self.probe.length * self.frame_rate < 1:
                held = f"{frames} frame{'' if frames == 1 else 's'}, " if frames is not None else ""
                raise InvalidVideoError(
                    self.path,
                    f"too short: {held}{self.probe.length:.2f} s is less than one sampling interval "
                    f"at {self.frame_rate:g} FPS, so no frame was sampled",
                )
            raise InvalidVideoError(self.path, f"no frame could be decoded ({last or f'ffmpeg exit {code}'})")
        expected = expected_frame_count(self.probe, self.frame_rate)
        if self.frames_read < 0.9 * expected - 1:
            self.warnings.append(
                f"file truncated or corrupt: decoded {self.frames_read} of {expected} expected sampled frames"
                + (f" ({last})" if last else "")
            )
        elif code != 0 or "corrupt" in stderr.lower() or "invalid" in stderr.lower():
            self.warnings.append(
                f"decoding stopped early or hit corrupt data after {self.frames_read} sampled frames: {last}"
            )


def sample_frames(
    path: str | os.PathLike[str],
    probe: VideoProbe,
    frame_rate: float,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int | None = gate.DEFAULT_MAX_PIXELS,
    stall_timeout_s: float = 120.0,
) -> FrameSampler:
    """Frames of `path` at `frame_rate` FPS (the contract's `data.frame_rate`), at most `max_side`
    pixels on their shorter side (`data.max_height`)."""
    return FrameSampler(
        path=Path(path),
        probe=probe,
        frame_rate=frame_rate,
        max_side=max_side,
        max_pixels=max_pixels,
        stall_timeout_s=stall_timeout_s,
    )


def expected_frame_count(probe: VideoProbe, frame_rate: float) -> int:
    """How many frames the sampling grid holds for this duration (used for sanity checks)."""
    return max(1, int(np.floor(probe.duration * frame_rate + 1e-6)))

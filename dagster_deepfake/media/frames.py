"""Sample frames at a fixed rate with one ffmpeg decode.

Frame ids are indexes on the sampling grid: frame k is the source frame nearest to
t = k / frame_rate seconds (ffmpeg's `fps` filter), so ids and timestamps are the same
on every run and for every consumer.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg
import numpy as np

from dagster_deepfake.errors import InvalidVideoError
from dagster_deepfake.media.ffmpeg_bin import ffmpeg as ffmpeg_binary
from dagster_deepfake.media.probe import VideoProbe


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: RGB uint8 (H, W, 3), upright (display rotation applied)."""

    frame_id: int
    timestamp: float
    image: np.ndarray


@dataclass
class FrameSampler:
    """Iterate over sampled frames; after iteration `warnings` holds what went wrong mid-stream."""

    path: Path
    probe: VideoProbe
    frame_rate: float
    warnings: list[str] = field(default_factory=list)
    frames_read: int = 0

    def _command(self) -> list[str]:
        stream = ffmpeg.input(str(self.path)).video.filter("fps", fps=self.frame_rate, round="near")
        out = ffmpeg.output(stream, "pipe:", format="rawvideo", pix_fmt="rgb24", vsync="passthrough")
        args = ffmpeg.compile(out, cmd=ffmpeg_binary())
        return [args[0], "-nostdin", "-v", "error", *args[1:]]

    def __iter__(self) -> Iterator[SampledFrame]:
        width, height = self.probe.width, self.probe.height
        frame_bytes = width * height * 3
        proc = subprocess.Popen(
            self._command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            while True:
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                k = self.frames_read
                image = np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
                self.frames_read += 1
                yield SampledFrame(frame_id=k, timestamp=round(k / self.frame_rate, 6), image=image)
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            code = proc.wait()
        last = stderr.splitlines()[-1] if stderr else ""
        if self.frames_read == 0:
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


def sample_frames(path: str | os.PathLike[str], probe: VideoProbe, frame_rate: float) -> FrameSampler:
    """Frames of `path` at `frame_rate` FPS (the contract's `data.frame_rate`)."""
    return FrameSampler(path=Path(path), probe=probe, frame_rate=frame_rate)


def expected_frame_count(probe: VideoProbe, frame_rate: float) -> int:
    """How many frames the sampling grid holds for this duration (used for sanity checks)."""
    return max(1, int(np.floor(probe.duration * frame_rate + 1e-6)))

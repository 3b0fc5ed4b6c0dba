"""One untrusted file through the media layer, the way every entry point takes it: probe_video,
validate_probe (the default scope), frame sampling to the end, audio extraction.

    python -m tests.media_case FILE [--max-duration S]

Prints one JSON line: outcome "completed" (with frame count and shape, audio seconds) or
"refused" (with the one-line reason), wall time, and peak RSS of this process and of its
ffmpeg/ffprobe children. Anything else (a traceback, a crash, a kill) is a defect; the caller
(tests/test_fuzz.py) runs this in a subprocess with a time and a memory limit.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _peak_rss_kb() -> int:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would include the parent's memory
    from before the exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--max-duration", type=float, default=900.0)
    parser.add_argument("--frame-rate", type=float, default=5.0)
    args = parser.parse_args()
    start = time.perf_counter()
    from dagster_deepfake.errors import DeepfakeError
    from dagster_deepfake.media.audio import extract_audio
    from dagster_deepfake.media.frames import sample_frames
    from dagster_deepfake.media.probe import probe_video, validate_probe

    result: dict = {}
    try:
        probe = probe_video(args.path)
        warnings = validate_probe(
            probe, min_height=240, max_height=1080, max_duration_seconds=args.max_duration
        )
        sampler = sample_frames(args.path, probe, args.frame_rate)
        frames, shape = 0, None
        for frame in sampler:
            frames += 1
            shape = list(frame.image.shape)
        track = extract_audio(args.path, has_audio=True) if probe.has_audio else None
        result = {
            "outcome": "completed",
            "frames": frames,
            "shape": shape,
            "audio_s": round(track.duration, 2) if track is not None else None,
            "warnings": warnings + sampler.warnings,
        }
    except DeepfakeError as exc:
        result = {"outcome": "refused", "reason": getattr(exc, "reason", str(exc))}
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["rss_mb"] = round(_peak_rss_kb() / 1024, 1)
    # The largest ffprobe/ffmpeg child (ru_maxrss carries over fork+exec, so this includes the
    # few tens of MB of this process at the time it started them: an upper bound).
    result["child_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

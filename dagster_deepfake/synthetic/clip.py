"""Render one labelled synthetic talking-face clip and encode it as H.264/AAC MP4.

A clip is a textured background (slow camera pan) with 0, 1 or 2 heads moving smoothly
(translation, scale, in-plane rotation), whose mouths open with a speech envelope and whose
eyes blink now and then. Fakes add the traces of the three manipulations the model contract
covers, to face 0 only:

- ``face_swap``: the inner face of a donor identity, rendered with the same expression, at
  lower resolution and with an imperfect colour match, aligned to this face's landmarks each
  frame (with alignment jitter) and blended in an ellipse that leaves a visible boundary;
- ``reenactment``: pose, blinks and mouth follow another seed's performance; the inner face is
  re-rendered (slightly blurred) and warped by a smooth field that jitters frame to frame;
- ``lip_sync``: the mouth follows a different speech track than the one in the audio stream,
  and the lower face is re-synthesised at low resolution (a blurred mouth region).

Frames are piped as raw RGB into ffmpeg (libx264, yuv420p); the same seed gives the same file.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from dagster_deepfake.media.ffmpeg_bin import ffmpeg
from dagster_deepfake.synthetic.audio import (
    mouth_envelope,
    silent_track,
    speech_track,
    write_wav,
)
from dagster_deepfake.synthetic.face import (
    DisplacementField,
    Identity,
    _Bump,
    make_identity,
    render_expression,
)

AudioMode = Literal["speech", "silence", "none"]
Manipulation = Literal["face_swap", "reenactment", "lip_sync"]
AUDIO_MODES: tuple[str, ...] = ("speech", "silence", "none")
MANIPULATIONS: tuple[str, ...] = ("face_swap", "reenactment", "lip_sync")
# Face-swap donors come from their own identity range, so a donor never shows up as the
# target identity of another clip (that would leak identities across dataset splits).
DONOR_IDENTITY_OFFSET = 1_000_000
_HEAD_HEIGHT_FRACTION = 0.66  # head patch height / frame height (one face)


@dataclass
class SyntheticClip:
    """A generated clip and its ground truth."""

    path: Path
    label: str  # "real" | "fake"
    manipulation: str | None
    identity: int
    seed: int
    duration: float
    fps: float
    width: int
    height: int
    has_audio: bool
    speech_segments: list[tuple[float, float]]
    landmarks: np.ndarray  # (n_frames, num_faces, 5, 2) float32, frame pixel coords
    audio: str = "speech"
    num_faces: int = 1
    n_frames: int = 0
    donor_identity: int | None = None  # face_swap: whose inner face was pasted
    driver_seed: int | None = None  # reenactment / lip_sync: whose motion or speech drives the face
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able metadata (everything but the landmarks array)."""
        out = {k: v for k, v in asdict(self).items() if k != "landmarks"}
        out["path"] = str(self.path)
        out["speech_segments"] = [[float(a), float(b)] for a, b in self.speech_segments]
        return out


# ---------------------------------------------------------------------------------------------
# Scene: background, head motion, placement


def make_background(seed: int, height: int, width: int) -> np.ndarray:
    """A textured, deterministic (by seed) room-like backdrop, (height, width, 3) uint8."""
    rng = np.random.default_rng([seed, 0xB6])
    # A wall colour with gentle lighting variation, not a rainbow.
    wall = rng.uniform(50, 210, 3) * rng.uniform(0.6, 1.0) + rng.uniform(0, 40)
    lighting = rng.normal(0, 22, size=(3, 4, 1)) + rng.normal(0, 8, size=(3, 4, 3))
    image = cv2.resize((wall + lighting).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    mottling = rng.normal(0, 9, size=(max(height // 16, 2), max(width // 16, 2))).astype(np.float32)
    image += cv2.resize(mottling, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    for _ in range(int(rng.integers(3, 8))):  # shelves, frames, windows
        x0, y0 = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        x1 = x0 + int(rng.uniform(0.05, 0.4) * width)
        y1 = y0 + int(rng.uniform(0.05, 0.5) * height)
        opacity = rng.uniform(0.3, 0.8)
        region = image[y0:y1, x0:x1]
        region[:] = region * (1 - opacity) + rng.uniform(20, 235, 3).astype(np.float32) * opacity
        cv2.rectangle(image, (x0, y0), (x1, y1), tuple(float(c) for c in rng.uniform(10, 90, 3)), 1)
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    image += rng.normal(0, 3, size=(height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _smooth_wave(rng: np.random.Generator, t: np.ndarray, fmin: float, fmax: float) -> np.ndarray:
    """A smooth random signal in [-1, 1]: three sinusoids with random frequencies and phases."""
    freqs = rng.uniform(fmin, fmax, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    weights = rng.uniform(0.5, 1.0, 3)
    wave = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
    return (wave / weights.sum()).astype(np.float32)


@dataclass(frozen=True)
class HeadMotion:
    """Per-frame head pose (relative units) and eye closure, deterministic by seed."""

    shift_x: np.ndarray  # (n,) in [-1, 1], times the allowed amplitude
    shift_y: np.ndarray  # (n,)
    scale: np.ndarray  # (n,) around 1
    angle_deg: np.ndarray  # (n,)
    eye_closure: np.ndarray  # (n,) in [0, 1]


def head_motion(seed: int, n_frames: int, fps: float) -> HeadMotion:
    rng = np.random.default_rng([seed, 0x40])
    t = np.arange(n_frames, dtype=np.float32) / fps
    closure = np.zeros(n_frames, np.float32)
    blink_at = rng.uniform(0.3, 2.0)
    while blink_at < t[-1] + 1.0:
        closure = np.maximum(closure, np.clip(1.0 - np.abs(t - blink_at) / 0.1, 0.0, 1.0))
        blink_at += rng.uniform(1.5, 4.5)
    return HeadMotion(
        shift_x=_smooth_wave(rng, t, 0.08, 0.4),
        shift_y=_smooth_wave(rng, t, 0.1, 0.5),
        scale=1.0 + 0.05 * _smooth_wave(rng, t, 0.05, 0.3),
        angle_deg=6.0 * _smooth_wave(rng, t, 0.1, 0.45),
        eye_closure=closure,
    )


@dataclass(frozen=True)
class _Slot:
    """Where a head lives in the frame: centre, base scale and motion amplitudes (pixels)."""

    centre: tuple[float, float]
    scale: float
    amplitude: tuple[float, float]


def _slots(num_faces: int, width: int, height: int, patch_size: tuple[int, int]) -> list[_Slot]:
    pw, ph = patch_size
    slots = []
    for k in range(num_faces):
        slot_w = width / num_faces
        scale = min(_HEAD_HEIGHT_FRACTION * height / ph, 0.75 * slot_w / pw)
        # Room left for motion once the head is at its largest and rotated (~12 % bigger box).
        slack_x = max((slot_w - 1.12 * pw * scale) / 2, 0.0)
        slack_y = max((height - 1.12 * ph * scale) / 2, 0.0)
        slots.append(
            _Slot(
                centre=(slot_w * (k + 0.5), height / 2),
                scale=scale,
                amplitude=(min(0.08 * slot_w, slack_x), min(0.06 * height, slack_y)),
            )
        )
    return slots


def _pose_matrix(slot: _Slot, motion: HeadMotion, i: int, patch_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine taking patch pixels to frame pixels at frame i."""
    pw, ph = patch_size
    scale = slot.scale * float(motion.scale[i])
    angle = np.deg2rad(float(motion.angle_deg[i]))
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = np.array(
        [
            slot.centre[0] + slot.amplitude[0] * float(motion.shift_x[i]),
            slot.centre[1] + slot.amplitude[1] * float(motion.shift_y[i]),
        ]
    )
    offset = target - linear @ np.array([pw / 2, ph / 2])
    return np.hstack([linear, offset[:, None]]).astype(np.float64)


def _body_polygons(patch_size: tuple[int, int]) -> list[np.ndarray]:
    """Neck and shoulders under a head patch, as polygons in patch coordinates."""
    pw, ph = patch_size
    cx = pw / 2
    neck = np.array([[cx - 0.16 * pw, 0.8 * ph], [cx + 0.16 * pw, 0.8 * ph], [cx + 0.2 * pw, 1.25 * ph],
                     [cx - 0.2 * pw, 1.25 * ph]])  # fmt: skip
    angles = np.linspace(np.pi, 2 * np.pi, 24)
    shoulders = np.stack([cx + 0.8 * pw * np.cos(angles), 1.55 * ph + 0.45 * ph * np.sin(angles)], axis=1)
    shoulders = np.vstack([shoulders, [[cx + 0.8 * pw, 3.0 * ph], [cx - 0.8 * pw, 3.0 * ph]]])
    return [neck, shoulders]


def _draw_body(frame: np.ndarray, face: Identity, matrix: np.ndarray) -> None:
    """Neck (skin) and shoulders (clothing) under the head, anti-aliased, moving with it."""
    neck, shoulders = (poly @ matrix[:, :2].T + matrix[:, 2] for poly in _body_polygons(face.size))
    for poly, colour in ((neck, face.skin_rgb / 0.85 * 0.8), (shoulders, face.clothing_rgb)):
        points = np.round(poly * 16).astype(np.int32)[None]  # 4 fractional bits: sub-pixel edges
        cv2.fillPoly(frame, points, tuple(float(c) for c in colour), cv2.LINE_AA, shift=4)


def _paste(frame: np.ndarray, rgba: np.ndarray, matrix: np.ndarray) -> None:
    """Warp a uint8 RGBA patch by `matrix` and alpha-blend it into the uint8 `frame` in place."""
    h, w = rgba.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ matrix.T
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 1, frame.shape[1])
    y1 = min(int(np.ceil(corners[:, 1].max())) + 1, frame.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    local = matrix.copy()
    local[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(
        rgba, local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    alpha = warped[..., 3].astype(np.float32) * (1.0 / 255.0)
    roi = frame[y0:y1, x0:x1]
    # OpenCV's blend runs in C on uint8 (numpy float maths here dominated 720p render time).
    roi[:] = cv2.blendLinear(cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB), roi.copy(), alpha, 1.0 - alpha)


# ---------------------------------------------------------------------------------------------
# Manipulations, applied to a head patch before it is placed into the frame


class _PatchEffect(Protocol):
    def apply(self, patch: np.ndarray, i: int, mouth_open: float, eye_closure: float) -> np.ndarray: ...

    def landmarks(self, i: int) -> np.ndarray: ...


def _resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Down- then up-sample by `factor`: the detail a generator working at low resolution loses."""
    h, w = image.shape[:2]
    small = cv2.resize(
        image, (max(int(w / factor), 1), max(int(h / factor), 1)), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class _FaceSwap:
    """The donor's inner face, aligned to the target's landmarks each frame and blended."""

    def __init__(self, target: Identity, donor: Identity, rng: np.random.Generator, n_frames: int):
        self.target, self.donor = target, donor
        self.factor = rng.uniform(2.2, 3.2)
        mask = target.inner_face_mask[..., None]
        target_mean = (target.rgb * mask).sum((0, 1)) / mask.sum()
        donor_mask = donor.inner_face_mask[..., None]
        donor_mean = (donor.rgb * donor_mask).sum((0, 1)) / donor_mask.sum()
        # Colour transfer that only goes part of the way: a residual tone mismatch at the seam.
        self.colour_shift = (rng.uniform(0.5, 0.8) * (target_mean - donor_mean)).astype(np.float32)
        self.jitter = rng.normal(0.0, 0.6, size=(n_frames, 5, 2)).astype(np.float32)
        self.mask = cv2.GaussianBlur(target.inner_face_mask, (0, 0), rng.uniform(1.0, 2.0))[..., None]

    def apply(self, patch: np.ndarray, i: int, mouth_open: float, eye_closure: float) -> np.ndarray:
        donor = _resample(render_expression(self.donor, mouth_open, eye_closure), self.factor)
        donor += self.colour_shift
        transform = SimilarityTransform.from_estimate(
            self.donor.landmarks, self.target.landmarks + self.jitter[i]
        )
        if not transform:
            raise RuntimeError(f"face-swap alignment failed: {transform}")
        h, w = patch.shape[:2]
        aligned = cv2.warpAffine(
            donor, transform.params[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return patch + (aligned - patch) * self.mask

    def landmarks(self, i: int) -> np.ndarray:
        return self.target.landmarks


class _Reenactment:
    """Re-rendered inner face (slightly blurred) under a smooth warp that jitters per frame."""

    def __init__(self, identity: Identity, rng: np.random.Generator, n_frames: int, fps: float):
        self.identity = identity
        lm, iod = identity.landmarks, identity.interocular
        self.centres = [tuple(lm[0]), tuple(lm[1]), tuple(lm[2]), tuple(lm[3:].mean(0))]
        self.sigmas = [0.3 * iod, 0.3 * iod, 0.3 * iod, 0.35 * iod]
        t = np.arange(n_frames, dtype=np.float32) / fps
        smooth = np.stack([[_smooth_wave(rng, t, 0.3, 1.2) for _ in range(2)] for _ in self.centres])
        self.shifts = 1.8 * smooth.transpose(2, 0, 1) + rng.normal(0, 0.6, size=(n_frames, 4, 2))
        self.whole_face = rng.normal(0, 0.8, size=(n_frames, 2))  # temporal jitter of the inner face
        self.face_centre = tuple(lm.mean(0))
        self.blur = rng.uniform(0.8, 1.3)
        self.mask = identity.inner_face_mask[..., None]

    def _field(self, i: int) -> DisplacementField:
        bumps = [
            _Bump(centre, tuple(self.shifts[i, k]), sigma)
            for k, (centre, sigma) in enumerate(zip(self.centres, self.sigmas, strict=True))
        ]
        bumps.append(_Bump(self.face_centre, tuple(self.whole_face[i]), 0.6 * self.identity.interocular))
        return DisplacementField(bumps)

    def apply(self, patch: np.ndarray, i: int, mouth_open: float, eye_closure: float) -> np.ndarray:
        rendered = cv2.GaussianBlur(patch, (0, 0), self.blur)
        patch = patch + (rendered - patch) * self.mask
        return self._field(i).remap(patch)

    def landmarks(self, i: int) -> np.ndarray:
        return self._field(i).move_points(self.identity.landmarks)


class _LipSync:
    """Lower face re-synthesised at low resolution around the (foreign-audio-driven) mouth."""

    def __init__(self, identity: Identity, rng: np.random.Generator):
        self.identity = identity
        lm, iod = identity.landmarks, identity.interocular
        centre = lm[3:].mean(0) + np.array([0.0, 0.15 * iod])
        h, w = identity.rgb.shape[:2]
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        inside = ((xx - centre[0]) / (0.8 * iod)) ** 2 + ((yy - centre[1]) / (0.5 * iod)) ** 2 <= 1.0
        self.mask = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.12 * iod)[..., None]
        self.factor = rng.uniform(2.5, 3.5)

    def apply(self, patch: np.ndarray, i: int, mouth_open: float, eye_closure: float) -> np.ndarray:
        return patch + (_resample(patch, self.factor) - patch) * self.mask

    def landmarks(self, i: int) -> np.ndarray:
        return self.identity.landmarks


# ---------------------------------------------------------------------------------------------
# Encoding


def _widen_pipe(fd: int) -> None:
    """Ask Linux for a 1 MiB pipe buffer (default 64 KiB): fewer context switches per 720p frame."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


def _ffmpeg_command(
    path: Path, width: int, height: int, fps: float, audio_path: Path | None, crf: int, preset: str
) -> list[str]:
    rate = Fraction(fps).limit_denominator(1001)
    cmd = [
        ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(rate), "-i", "-",
    ]  # fmt: skip
    if audio_path is not None:
        cmd += ["-i", str(audio_path), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "96k"]
    else:
        cmd += ["-an"]
    # Bitexact flags and no metadata: the same seed gives the same bytes.
    cmd += [
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    return cmd


def _validate(
    duration: float, width: int, height: int, fps: float, audio: str, num_faces: int, manip
) -> None:
    if duration <= 0 or fps <= 0:
        raise ValueError(f"duration and fps must be positive, got duration={duration}, fps={fps}")
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 64 (H.264 yuv420p), got {width}x{height}")
    if audio not in AUDIO_MODES:
        raise ValueError(f"audio must be one of {AUDIO_MODES}, got {audio!r}")
    if num_faces not in (0, 1, 2):
        raise ValueError(f"num_faces must be 0, 1 or 2, got {num_faces}")
    if manip is not None and manip not in MANIPULATIONS:
        raise ValueError(f"manipulation must be None or one of {MANIPULATIONS}, got {manip!r}")
    if manip is not None and num_faces == 0:
        raise ValueError("a manipulated clip needs at least one face")


def generate_clip(
    path: str | Path,
    *,
    seed: int = 0,
    duration: float = 3.0,
    width: int = 640,
    height: int = 480,
    fps: float = 25.0,
    audio: AudioMode = "speech",
    num_faces: int = 1,
    identity: int | None = None,
    manipulation: Manipulation | None = None,
    manipulated_face: int = 0,
    absent: tuple[int, float, float] | None = None,
    crf: int = 18,
    preset: str | None = None,
) -> SyntheticClip:
    """Write one synthetic talking-face MP4 to `path` and return its ground truth.

    audio: "speech" (espeak-ng phrases with known speech segments; the mouth follows them),
    "silence" (a silent AAC track; the person does not talk) or "none" (no audio stream; the
    person still talks, as in FaceForensics++ whose audio was stripped).
    identity: the face of face 0 (default: `seed`); a second face gets another identity.
    manipulation: None for a real clip, else "face_swap", "reenactment" or "lip_sync" (face 0).
    manipulated_face: which face the manipulation touches (two-face compositions; faces are
        numbered left to right; face 0 is the one whose voice is the audio track).
    absent: (face, start, end): that face leaves the picture for [start, end) seconds and comes
        back (a person walking out of the shot; its landmarks are NaN meanwhile).
    crf, preset: libx264 quality and speed; the default preset is "veryfast", or "superfast" from
    720p up (x264 dominates the time there: a 30 s 720p clip takes ~4 s instead of ~6.5 s).
    """
    _validate(duration, width, height, fps, audio, num_faces, manipulation)
    if not 0 <= manipulated_face < max(num_faces, 1):
        raise ValueError(f"manipulated_face must be a face index below {num_faces}, got {manipulated_face}")
    if absent is not None and not 0 <= absent[0] < num_faces:
        raise ValueError(f"absent names face {absent[0]}, but the clip has {num_faces}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = seed if identity is None else int(identity)
    n_frames = max(1, round(duration * fps))
    rng = np.random.default_rng([seed, 0xC1])
    driver_seed = seed + 104_729 if manipulation in ("reenactment", "lip_sync") else None
    donor_identity = (
        DONOR_IDENTITY_OFFSET + int(rng.integers(0, 1_000_000)) if manipulation == "face_swap" else None
    )

    own_speech = speech_track(seed, duration) if audio != "silence" or driver_seed is not None else None
    track = own_speech if audio == "speech" else silent_track(duration)
    # What the person's mouth does: own speech, a foreign one (lip-sync/reenactment) or nothing.
    target = manipulated_face
    driven_mouth = (
        mouth_envelope(speech_track(driver_seed, duration), n_frames, fps)
        if driver_seed is not None
        else None
    )
    if audio == "silence":
        speaker_mouth = np.zeros(n_frames, np.float32)
    else:
        assert own_speech is not None
        speaker_mouth = mouth_envelope(own_speech, n_frames, fps)

    faces: list[Identity] = []
    motions: list[HeadMotion] = []
    mouths: list[np.ndarray] = []
    effects: list[_PatchEffect | None] = []
    for f in range(num_faces):
        face = make_identity(identity if f == 0 else identity + 7919 * f)
        faces.append(face)
        motion_seed = driver_seed if (f == target and manipulation == "reenactment") else seed * 8 + f
        motions.append(head_motion(motion_seed, n_frames, fps))
        if f == target and driven_mouth is not None:
            mouths.append(driven_mouth)
        elif f == 0:
            mouths.append(speaker_mouth)
        elif audio == "silence":
            mouths.append(np.zeros(n_frames, np.float32))
        else:  # the second person talks too, on their own schedule
            mouths.append(mouth_envelope(speech_track(seed * 8 + f, duration), n_frames, fps))
        effect: _PatchEffect | None = None
        if f == target and manipulation == "face_swap":
            assert donor_identity is not None
            effect = _FaceSwap(face, make_identity(donor_identity), rng, n_frames)
        elif f == target and manipulation == "reenactment":
            effect = _Reenactment(face, rng, n_frames, fps)
        elif f == target and manipulation == "lip_sync":
            effect = _LipSync(face, rng)
        effects.append(effect)
    slots = _slots(num_faces, width, height, faces[0].size) if faces else []

    pan = max(4, min(width, height) // 60)
    background = make_background(seed, height + 2 * pan, width + 2 * pan)
    pan_motion = np.random.default_rng([seed, 0xCA])
    t = np.arange(n_frames, dtype=np.float32) / fps
    pan_x = np.round(pan + pan * _smooth_wave(pan_motion, t, 0.03, 0.15)).astype(int)
    pan_y = np.round(pan + pan * _smooth_wave(pan_motion, t, 0.03, 0.15)).astype(int)

    landmarks = np.zeros((n_frames, num_faces, 5, 2), np.float32)
    with tempfile.TemporaryDirectory(prefix="synthetic_") as tmp:
        audio_path = None
        if audio != "none":
            audio_path = Path(tmp) / "audio.wav"
            write_wav(audio_path, track.samples, track.sample_rate)
        if preset is None:
            preset = "superfast" if width * height >= 1280 * 720 else "veryfast"
        cmd = _ffmpeg_command(path, width, height, fps, audio_path, crf, preset)
        with open(Path(tmp) / "ffmpeg.log", "w+b") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=log)
            assert proc.stdin is not None
            _widen_pipe(proc.stdin.fileno())
            try:
                for i in range(n_frames):
                    frame = background[pan_y[i] : pan_y[i] + height, pan_x[i] : pan_x[i] + width].copy()
                    for f, face in enumerate(faces):
                        if absent is not None and f == absent[0] and absent[1] <= i / fps < absent[2]:
                            landmarks[i, f] = np.nan  # out of the picture
                            continue
                        motion = motions[f]
                        mouth, closure = float(mouths[f][i]), float(motion.eye_closure[i])
                        patch = render_expression(face, mouth, closure)
                        patch_landmarks = face.landmarks
                        effect = effects[f]
                        if effect is not None:
                            patch = effect.apply(patch, i, mouth, closure)
                            patch_landmarks = effect.landmarks(i)
                        matrix = _pose_matrix(slots[f], motion, i, face.size)
                        _draw_body(frame, face, matrix)
                        rgba = np.dstack([patch, face.alpha * 255.0])
                        _paste(frame, np.clip(rgba + 0.5, 0, 255).astype(np.uint8), matrix)
                        landmarks[i, f] = patch_landmarks @ matrix[:, :2].T + matrix[:, 2]
                    proc.stdin.write(memoryview(frame))
                proc.stdin.close()
            except BrokenPipeError:
                pass
            finally:
                code = proc.wait()
            if code != 0:
                log.seek(0)
                raise RuntimeError(
                    f"ffmpeg failed writing {path}: {log.read().decode(errors='replace')[-2000:]}"
                )

    return SyntheticClip(
        path=path,
        label="real" if manipulation is None else "fake",
        manipulation=manipulation,
        identity=identity,
        seed=seed,
        duration=n_frames / fps,
        fps=fps,
        width=width,
        height=height,
        has_audio=audio != "none",
        speech_segments=list(track.segments) if audio == "speech" else [],
        landmarks=landmarks,
        audio=audio,
        num_faces=num_faces,
        n_frames=n_frames,
        donor_identity=donor_identity,
        driver_seed=driver_seed,
        extra={"manipulated_face": target} if num_faces > 1 and manipulation else {},
    )

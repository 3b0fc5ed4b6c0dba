"""Labelled, deterministic synthetic talking-face videos for tests, demos and smoke training.

>>> from dagster_deepfake.synthetic import generate_clip
>>> clip = generate_clip("real.mp4", seed=3, duration=3.0, width=320, height=240)
>>> clip.landmarks.shape  # (frames, faces, 5, 2)
(75, 1, 5, 2)
"""

from __future__ import annotations

from dagster_deepfake.synthetic.clip import (
    AUDIO_MODES,
    MANIPULATIONS,
    SyntheticClip,
    generate_clip,
    make_background,
)
from dagster_deepfake.synthetic.dataset import generate_dataset
from dagster_deepfake.synthetic.face import ASTRONAUT_LANDMARKS, LANDMARK_NAMES, Identity, make_identity

__all__ = [
    "ASTRONAUT_LANDMARKS",
    "AUDIO_MODES",
    "LANDMARK_NAMES",
    "MANIPULATIONS",
    "Identity",
    "SyntheticClip",
    "generate_clip",
    "generate_dataset",
    "make_background",
    "make_identity",
]

"""Farneback flow between aligned crops and its two-number summary."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from dagster_deepfake.faces.align import face_ellipse_mask
from dagster_deepfake.flow import FEATURE_NAMES, compute_flow_features

MEDIA = Path("/work/shared/media")


@pytest.fixture(scope="module")
def face_crop() -> np.ndarray:
    """A 224x224 textured RGB crop around the astronaut's face."""
    return cv2.resize(data.astronaut()[0:300, 80:380], (224, 224), interpolation=cv2.INTER_AREA)


def shift(image: np.ndarray, dx: float, dy: float = 0.0) -> np.ndarray:
    """Translate by (dx, dy) pixels (content moves right/down for positive values)."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_identical_crops_have_no_motion(face_crop: np.ndarray) -> None:
    crops = np.stack([face_crop] * 4)
    result = compute_flow_features(crops, [0, 1, 2, 3])
    assert result.features.shape == (4, 2) and result.features.dtype == np.float32
    assert np.abs(result.features).max() < 0.05


@pytest.mark.parametrize(("dx", "dy"), [(2, 0), (0, 4), (3, -3), (2.5, 0)])
def test_translation_magnitude_is_recovered_in_crop_pixels(
    face_crop: np.ndarray, dx: float, dy: float
) -> None:
    crops = np.stack([face_crop, shift(face_crop, dx, dy)])
    result = compute_flow_features(crops, [7, 8])
    magnitude = float(np.hypot(dx, dy))
    mean, std = result.features[1]
    assert mean == pytest.approx(magnitude, rel=0.15)
    assert std < 0.25 * magnitude  # a rigid shift moves every face pixel alike


def test_full_resolution_and_downscaled_flow_agree(face_crop: np.ndarray) -> None:
    crops = np.stack([face_crop, shift(face_crop, 3, 1)])
    small = compute_flow_features(crops, [0, 1], work_size=112).features[1, 0]
    full = compute_flow_features(crops, [0, 1], work_size=224).features[1, 0]
    assert small == pytest.approx(full, rel=0.2)


def test_gap_between_kept_crops_divides_the_flow(face_crop: np.ndarray) -> None:
    # Frames 1 and 2 were skipped: 6 px over 3 sampled-frame steps is 2 px per step.
    crops = np.stack([face_crop, shift(face_crop, 6)])
    result = compute_flow_features(crops, [0, 3])
    assert result.gaps.tolist() == [0, 3]
    assert result.features[1, 0] == pytest.approx(2.0, rel=0.15)


def test_first_crop_has_no_predecessor(face_crop: np.ndarray) -> None:
    crops = np.stack([shift(face_crop, 5), face_crop, face_crop])
    result = compute_flow_features(crops, [4, 5, 6])
    assert result.has_predecessor.tolist() == [False, True, True]
    assert result.features[0].tolist() == [0.0, 0.0]
    assert result.features[1, 0] > 3  # the 5 px jump is attributed to the second crop

    one = compute_flow_features(face_crop[None], [0])
    assert one.features.shape == (1, 2) and not one.has_predecessor[0]
    none = compute_flow_features(np.empty((0, 224, 224, 3), np.uint8), [])
    assert none.features.shape == (0, 2)


def test_motion_outside_the_face_ellipse_is_ignored(face_crop: np.ndarray) -> None:
    moved = shift(face_crop, 6)
    mask = face_ellipse_mask(224)
    # Outside a dilated ellipse the background moves; the face itself stays still.
    near_face = cv2.dilate(mask.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    second = np.where(near_face[..., None], face_crop, moved)
    background_only = compute_flow_features(np.stack([face_crop, second]), [0, 1]).features[1, 0]
    everywhere = compute_flow_features(np.stack([face_crop, moved]), [0, 1]).features[1, 0]
    assert background_only < 0.15 * everywhere


def test_fields_point_in_the_direction_of_motion(face_crop: np.ndarray) -> None:
    crops = np.stack([face_crop, shift(face_crop, 3, 0), shift(face_crop, 3, 2)])
    result = compute_flow_features(crops, [0, 1, 2], return_fields=True)
    assert result.fields is not None
    assert result.fields.shape == (3, 2, 28, 28) and result.fields.dtype == np.float16
    assert not result.fields[0].any()
    small_mask = cv2.resize(
        face_ellipse_mask(224).astype(np.uint8), (28, 28), interpolation=cv2.INTER_NEAREST
    )
    inside = small_mask.astype(bool)
    dx1, dy1 = (result.fields[1, c][inside].astype(np.float32).mean() for c in range(2))
    dx2, dy2 = (result.fields[2, c][inside].astype(np.float32).mean() for c in range(2))
    assert dx1 == pytest.approx(3, rel=0.15) and abs(dy1) < 0.3
    assert abs(dx2) < 0.3 and dy2 == pytest.approx(2, rel=0.15)
    assert compute_flow_features(crops, [0, 1, 2]).fields is None


def test_invalid_inputs_are_rejected(face_crop: np.ndarray) -> None:
    crops = np.stack([face_crop] * 3)
    with pytest.raises(ValueError, match="increasing"):
        compute_flow_features(crops, [0, 2, 2])
    with pytest.raises(ValueError, match="frame ids"):
        compute_flow_features(crops, [0, 1])
    with pytest.raises(ValueError, match="square"):
        compute_flow_features(crops[:, :, :100], [0, 1, 2])


def test_to_frame_matches_the_flow_table(face_crop: np.ndarray) -> None:
    result = compute_flow_features(np.stack([face_crop, shift(face_crop, 2)]), [3, 4])
    frame = result.to_frame([0.6, 0.8])
    assert list(frame.columns) == ["frame_id", "timestamp", *FEATURE_NAMES, "has_predecessor"]
    assert frame["frame_id"].tolist() == [3, 4]
    assert frame["flow_mean"].iloc[1] == pytest.approx(result.features[1, 0])
    with pytest.raises(ValueError):
        result.to_frame([0.6])


@pytest.mark.skipif(
    not (MEDIA.is_dir() and os.environ.get("DEEPFAKE_BENCH")), reason="set DEEPFAKE_BENCH=1 to measure"
)
def test_measure_flow_on_real_faces() -> None:
    """Flow for 149 pairs of aligned faces from a shared clip: prints timings, asserts none."""
    from dagster_deepfake.config import FacesConfig
    from dagster_deepfake.faces import create_detector, extract_faces

    cap = cv2.VideoCapture(str(MEDIA / "ffpp_c23_real_004.mp4"))
    frames = []
    while len(frames) < 150:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append((len(frames), len(frames) / 25, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    cfg = FacesConfig()
    crops = extract_faces(frames, create_detector(cfg), cfg).crops
    ids = np.arange(len(crops))
    for work_size in (112, 224):
        start = time.perf_counter()
        result = compute_flow_features(crops, ids, work_size=work_size)
        print(
            f"\nflow {len(crops) - 1} pairs at {work_size}px: {time.perf_counter() - start:.2f} s, "
            f"mean features {result.features[1:].mean(0)}"
        )

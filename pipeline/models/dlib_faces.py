"""dlib's face models and the FFHQ alignment: detect, 68 landmarks, align, describe, measure.

Real weights from PyPI: `dlib-bin` (dlib's HOG detector is built in) and `face_recognition_models`
(dlib's 68- and 5-point landmark predictors, the CNN detector and the 128-d ResNet descriptor; found
by file, without importing that package, whose `__init__` needs setuptools' pkg_resources). A folder
holding the same four `.dat` files works too (`models_dir`).

`ffhq_align` is NVlabs ffhq-dataset's `recreate_aligned_images` procedure: the oriented quad from the eye
and mouth landmarks (centre `eye_avg + 0.1 * eye_to_mouth`, half-side `max(2 |eye_to_eye|, 1.8
|eye_to_mouth|)`), shrink a big image first, crop with a border, pad with reflection blurred towards
the mean colour, transform the quad to a square and resize to `size`. It returns the crop, the quad and
the share of the quad outside the photo (how much of the crop is padding).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

FILES = {"landmarks68": "shape_predictor_68_face_landmarks.dat", "landmarks5": "shape_predictor_5_face_landmarks.dat",
         "descriptor": "dlib_face_recognition_resnet_model_v1.dat", "cnn": "mmod_human_face_detector.dat"}
# Licences, for the dataset card (dlib-models' README): the 68-point predictor is trained on iBUG 300-W,
# whose licence excludes commercial use; the others are CC0 (public domain).
LICENCES = {
    "dlib HOG face detector": "Boost Software License (dlib)",
    "shape_predictor_68_face_landmarks": "trained on iBUG 300-W: the dataset's licence excludes commercial use",
    "dlib_face_recognition_resnet_model_v1": "CC0 1.0 (public domain)",
    "mmod_human_face_detector": "CC0 1.0 (public domain)",
}


def models_folder(models_dir: str | None = None) -> Path:
    """The folder with dlib's model files: `models_dir`, else the face_recognition_models package's."""
    if models_dir:
        folder = Path(models_dir).expanduser()
    else:
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("dlib's models are missing: pip install face_recognition_models "
                                    "(or give models_dir, a folder with shape_predictor_68_face_landmarks.dat)")
        folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [f for k, f in FILES.items() if k != "cnn" and not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)}")
    return folder


@dataclass
class Face:
    bbox: tuple[int, int, int, int]  # left, top, right, bottom in photo pixels
    score: float
    landmarks: np.ndarray  # (68, 2) float, photo pixels


class DlibFaces:
    """dlib's detector, landmark predictor and descriptor, loaded once."""

    def __init__(self, models_dir: str | None = None, detector: str = "hog", upsample: int = 1):
        import dlib

        folder = models_folder(models_dir)
        self.dlib = dlib
        self.detector_kind = detector
        self.upsample = upsample
        if detector == "cnn":
            self.detector = dlib.cnn_face_detection_model_v1(str(folder / FILES["cnn"]))
        else:
            self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(folder / FILES["landmarks68"]))
        self.encoder = dlib.face_recognition_model_v1(str(folder / FILES["descriptor"]))
        self.folder = folder

    def detect(self, rgb: np.ndarray, max_side: int = 1024) -> list[Face]:
        """Faces with 68 landmarks, in the photo's pixels; detection runs on a copy at most `max_side`."""
        h, w = rgb.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        small = rgb if scale == 1.0 else np.asarray(Image.fromarray(rgb).resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR))
        if self.detector_kind == "cnn":
            found = [(d.rect, float(d.confidence)) for d in self.detector(small, self.upsample)]
        else:
            rects, scores, _ = self.detector.run(small, self.upsample, 0.0)
            found = list(zip(rects, [float(s) for s in scores], strict=True))
        faces = []
        for rect, score in found:
            shape = self.predictor(small, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64) / scale
            faces.append(Face((round(rect.left() / scale), round(rect.top() / scale), round(rect.right() / scale),
                               round(rect.bottom() / scale)), score, pts))
        return faces

    def landmarks_in(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        rect = self.dlib.rectangle(*[int(v) for v in box])
        return np.array([[p.x, p.y] for p in self.predictor(rgb, rect).parts()], np.float64)

    def descriptor(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """dlib's 128-d face descriptor from the 68 landmarks (Euclidean distance < 0.6: the same person)."""
        rect = self.dlib.rectangle(*[int(v) for v in (*landmarks.min(0), *landmarks.max(0))])
        parts = [self.dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
        shape = self.dlib.full_object_detection(rect, parts)
        return np.asarray(self.encoder.compute_face_descriptor(rgb, shape), np.float32)


def ffhq_quad(lm: np.ndarray) -> np.ndarray:
    """The oriented crop quad (4 corners) of NVlabs' FFHQ procedure from 68 landmarks."""
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    mouth_left, mouth_right = lm[48], lm[54]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def padding_share(quad: np.ndarray, width: int, height: int) -> float:
    """Share of the quad's area outside the photo (sampled on a grid)."""
    u = np.linspace(0.0, 1.0, 48)
    uu, vv = np.meshgrid(u, u)
    a, b, _, d = quad
    pts = a + uu[..., None] * (d - a) + vv[..., None] * (b - a)
    inside = (pts[..., 0] >= 0) & (pts[..., 0] < width) & (pts[..., 1] >= 0) & (pts[..., 1] < height)
    return float(1.0 - inside.mean())


def ffhq_align(img: Image.Image, lm: np.ndarray, size: int = 1024, transform_size: int = 4096,
               enable_padding: bool = True) -> tuple[Image.Image, np.ndarray]:
    """(aligned crop of `size` x `size`, the quad in the photo's pixels), the FFHQ way."""
    quad = ffhq_quad(lm)
    qsize = np.hypot(*(quad[2] - quad[0])) * 0.5 / np.sqrt(2) * 2  # = 2 * |x|, the quad's side
    quad_out = quad.copy()
    img = img.convert("RGB")
    # Shrink.
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad = quad / shrink
        qsize = qsize / shrink
    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))),
            int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]),
            min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - crop[0:2]
    # Pad.
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))),
           int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0),
           max(pad[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blur = float(qsize * 0.02)
        blurred = np.float32(Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255))).filter(
            ImageFilter.GaussianBlur(blur)))
        arr += (blurred - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad = quad + pad[:2]
    # Transform.
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                        Image.Resampling.BILINEAR)
    if size < transform_size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img, quad_out


def to_crop(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Photo pixels -> aligned-crop pixels for points, through the quad (corners: tl, bl, br, tr)."""
    a, b, _, d = quad
    basis = np.stack([d - a, b - a], axis=1)  # columns: the crop's x and y axes in the photo
    uv = np.linalg.solve(basis, (points - a).T).T
    return uv * size


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian (4-neighbour) of a 256x256 grey crop: low means blurry."""
    g = np.asarray(Image.fromarray(gray).resize((256, 256), Image.Resampling.BILINEAR), np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def yaw(lm: np.ndarray) -> float:
    """Head turn from the landmarks: the nose tip's offset from the eyes' midline over half the eye
    distance (0 frontal, about +-1 in profile)."""
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    axis = eye_right - eye_left
    half = np.hypot(*axis) / 2 or 1.0
    mid = (eye_left + eye_right) / 2
    return float(np.dot(lm[30] - mid, axis / (2 * half)) / half)


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash: signs of the 8x8 low-frequency DCT of a 32x32 grey copy against its median."""
    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    n = np.arange(32)
    dct = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
    coeffs = (dct @ g @ dct.T)[:8, :8].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def grey_mirror_hashes(img: Image.Image) -> tuple[int, int]:
    """The pHash of the image and of its mirror: a mirrored copy is a near-duplicate too."""
    return phash(img), phash(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def info(faces: Any) -> dict[str, str]:
    return {"models": str(faces.folder), "detector": faces.detector_kind}

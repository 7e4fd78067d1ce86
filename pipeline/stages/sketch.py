"""Sketch: U2Net portrait line drawings (`u2net_portrait.pth`), black lines on white, `sketches/<key>.png`.

Preprocessing follows the reference `u2net_portrait_demo.py` step by step: OpenCV's frontal-face Haar
cascade (`detectMultiScale(gray, 1.1, 4)`), the largest face, the box grown by 0.4w left and right,
0.6h up and 0.2h down (white where it leaves the image), white padding to a square when the sides
differ by more than 2 px, INTER_AREA resize to 512; the input divided by its maximum, then the demo's
normalisation, which applies the ImageNet statistics reversed over RGB (R uses mean 0.406 / std 0.225,
G 0.456 / 0.224, B 0.485 / 0.229). Output: 1 - the fused map d0, min-max normalised, x255, uint8.
Where the cascade finds no face the whole image is used (resized to 512) and the row is flagged `no_face`.

Placement: the model draws the 512x512 face crop. With `placement: image` (default) the drawing is
mapped back into the image's frame (white outside the crop), so a sketch lines up pixel for pixel with
its image and its mask, which a spatial condition for training needs; `placement: crop` keeps the
reference's 512x512 crop (flagged `crop_frame`: it does not line up with the image, so it is not a
spatial condition for training). `face_box` records the detected face (x, y, w, h) in image pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.core.config import StageConfig, loading_model, must_exist, volatile
from pipeline.core.devices import batch_independent, resolve_device, torch_dtype
from pipeline.core.identity import file_identity
from pipeline.core.ledger import OK, atomic_write_bytes
from pipeline.core.stage import Stage, StageContext
from pipeline.data.images import load_rgb

# The demo's normalisation: ImageNet statistics applied in reversed channel order (R, G, B rows).
PORTRAIT_MEAN = np.array([0.406, 0.456, 0.485], np.float32)
PORTRAIT_STD = np.array([0.225, 0.224, 0.229], np.float32)
CASCADE = "haarcascade_frontalface_default.xml"


def load_cascade(path: Path | None = None):
    """OpenCV's bundled frontal-face cascade (OpenCV 4.x), or the XML at `path`."""
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError("this OpenCV has no CascadeClassifier (OpenCV 5): install opencv-python-headless<5")
    if path is None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if folder is None:
            raise RuntimeError("OpenCV ships no Haar cascades here: install opencv-python-headless<5 or set "
                               f"cascade: /usr/share/opencv4/haarcascades/{CASCADE}")
        path = Path(folder) / CASCADE
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"cannot load the Haar cascade {path}")
    return cascade


def detect_face(img: np.ndarray, cascade, scale: float = 1.1, neighbors: int = 4) -> tuple[int, int, int, int] | None:
    """The largest face (x, y, w, h) the cascade finds in an RGB image, or None."""
    import cv2

    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    faces = cascade.detectMultiScale(gray, scale, neighbors)
    if len(faces) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
    return x, y, w, h


def crop_face(img: np.ndarray, face: tuple[int, int, int, int] | None,
              size: int = 512) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The reference crop: (size x size x 3 uint8, region (left, top, right, bottom) in image pixels).

    The region may extend past the image (that part is white in the crop); without a face it is the
    whole image.
    """
    import cv2

    height, width = img.shape[:2]
    if face is None:
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), (0, 0, width, height)
    x, y, w, h = face
    left, right = x - int(w * 0.4), x + w + int(w * 0.4)
    top, bottom = y - int(h * 0.6), y + h + int(h * 0.2)
    pads = ((max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width)), (0, 0))
    im = img[max(top, 0):min(bottom, height), max(left, 0):min(right, width)]
    im = np.pad(im, pads, mode="constant", constant_values=255)
    hf, wf = im.shape[:2]
    if hf - 2 > wf:  # pad to a square so the face is not squashed by the resize
        p = int((hf - wf) / 2)
        im = np.pad(im, ((0, 0), (p, p), (0, 0)), mode="constant", constant_values=255)
        left, right = left - p, right + p
    elif wf - 2 > hf:
        p = int((wf - hf) / 2)
        im = np.pad(im, ((p, p), (0, 0), (0, 0)), mode="constant", constant_values=255)
        top, bottom = top - p, bottom + p
    return cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA), (left, top, right, bottom)


def normalise(crop: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): divided by its maximum, reversed ImageNet statistics."""
    x = crop.astype(np.float32) / max(float(crop.max()), 1.0)
    return ((x - PORTRAIT_MEAN) / PORTRAIT_STD).transpose(2, 0, 1)


def to_sketch(d0: np.ndarray) -> tuple[np.ndarray, bool]:
    """Fused map (H, W) in [0, 1] -> (uint8 drawing, flat): 1 - d0, min-max normalised, x255 (truncated)."""
    pred = 1.0 - d0.astype(np.float32)
    lo, hi = float(pred.min()), float(pred.max())
    if hi - lo < 1e-8:  # nothing drawn: a white page, flagged
        return np.full(pred.shape, 255, np.uint8), True
    return ((pred - lo) / (hi - lo) * 255).astype(np.uint8), False


def paste_back(sketch: np.ndarray, region: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Map a crop's drawing back into the image frame (white where the crop does not reach)."""
    import cv2

    left, top, right, bottom = region
    height, width = shape
    rw, rh = right - left, bottom - top
    interp = cv2.INTER_AREA if rw < sketch.shape[1] else cv2.INTER_LINEAR
    drawn = cv2.resize(sketch, (rw, rh), interpolation=interp)
    canvas = np.full((height, width), 255, np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(bottom, height), min(right, width)
    canvas[y0:y1, x0:x1] = drawn[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas


@dataclass(frozen=True)
class SketchConfig(StageConfig):
    """Settings of the sketch stage.

    Args:
        model: `u2net_portrait.pth` (a plain U2NET(3,1) state dict) or a folder holding it.
        placement: `image` (sketch in the image's frame and size) or `crop` (the reference 512 crop).
        size: the model's input size (the reference uses 512).
        scale_factor: Haar cascade `detectMultiScale` scale step (reference 1.1).
        min_neighbors: Haar cascade `detectMultiScale` minNeighbors (reference 4).
        cascade: a Haar cascade XML; empty uses OpenCV's bundled frontal-face cascade.
        dtype: model precision; float32 is the reference.
        device: `auto` (CUDA when available), `cpu`, `cuda`, ...
    """

    model: Path | None = must_exist(None)
    placement: Literal["image", "crop"] = "image"
    size: int = 512
    scale_factor: float = 1.1
    min_neighbors: int = 4
    cascade: Path | None = must_exist(None)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = volatile("auto")
    batch_size: int = volatile(8)

    def __post_init__(self) -> None:
        if self.model is None:
            raise ValueError("model: set it to u2net_portrait.pth (xuebinqin/U-2-Net's portrait weights)")
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a multiple of 32 (U2Net pools five times), got {self.size}")
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be above 1.0, got {self.scale_factor}")


class SketchStage(Stage):
    """Loads U2Net and the cascade once; per batch crops faces, draws them in one forward pass, writes PNGs."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("sketch", pa.string()), ("face_box", pa.list_(pa.int32())), ("flags", pa.list_(pa.string())),
    ])
    version: ClassVar[str] = "1"

    def __init__(self, cfg: SketchConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        import torch

        from pipeline.models.u2net import load_u2net

        self.torch = torch
        self.device = resolve_device(cfg.device)
        self.dtype = torch_dtype(cfg.dtype)
        with loading_model("stages.sketch.model", cfg.model,
                           "set it to u2net_portrait.pth (xuebinqin/U-2-Net's portrait weights) or a folder holding it"):
            self.net = load_u2net(cfg.model).to(self.device, self.dtype)
        with loading_model("stages.sketch.cascade", cfg.cascade or CASCADE,
                           "set it to an OpenCV Haar cascade XML, or leave it empty for OpenCV's own"):
            self.cascade = load_cascade(cfg.cascade)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        cfg = self.cfg
        rows: list[dict[str, Any]] = []
        todo: list[tuple[dict[str, Any], np.ndarray, tuple[int, int, int, int], tuple[int, int]]] = []
        for key, path in zip(batch["key"], batch["path"], strict=True):
            row: dict[str, Any] = {"key": str(key), "status": OK, "error": "", "flags": []}
            rows.append(row)
            try:
                src = Path(str(path))
                img = np.array(load_rgb(src if src.is_absolute() else self.ctx.out / src))
            except Exception as e:  # noqa: BLE001 - a file that stopped decoding is a row, not a crash
                row.update(status="decode_error", error=f"{type(e).__name__}: {e}")
                continue
            face = detect_face(img, self.cascade, cfg.scale_factor, cfg.min_neighbors)
            row["face_box"] = list(face) if face else None
            if face is None:
                row["flags"].append("no_face")
            crop, region = crop_face(img, face, cfg.size)
            todo.append((row, crop, region, img.shape[:2]))
        if todo:
            x = self.torch.from_numpy(np.stack([normalise(c) for _, c, _, _ in todo]))
            with self.torch.inference_mode():
                d0 = batch_independent(lambda b: self.net(b)[0], x.to(self.device, self.dtype),
                                       self.cfg.batch_size)
                d0 = d0[:, 0].float().cpu().numpy()  # (N, S, S)
            for (row, _, region, shape), fused in zip(todo, d0, strict=True):
                drawing, flat = to_sketch(fused)
                if flat:
                    row["flags"].append("flat_output")
                if cfg.placement == "image":
                    drawing = paste_back(drawing, region, shape)
                else:  # the reference's face crop does not line up with the image (or its mask)
                    row["flags"].append("crop_frame")
                buf = io.BytesIO()
                Image.fromarray(drawing, "L").save(buf, "PNG")
                row["sketch"] = f"sketches/{row['key']}.png"
                atomic_write_bytes(self.ctx.out / row["sketch"], buf.getvalue())
        return {c: [r.get(c) for r in rows] for c in ["key", "status", "error", *self.schema.names]}

    @classmethod
    def fingerprint(cls, cfg: SketchConfig) -> str:
        """Also fingerprints the weights (and a custom cascade) by content."""
        files = [cfg.model] + ([cfg.cascade] if cfg.cascade else [])
        return f"{super().fingerprint(cfg)}:{':'.join(file_identity(p) for p in files)}"

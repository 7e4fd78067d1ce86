"""The CelebAMask-HQ label space every mask in facecurate uses (ids 0..18), its colours and file names."""

from __future__ import annotations

import numpy as np

# (id, name, RGB colour); EC²Face groups are computed from data (pipeline.data.attributes), never kept here
CLASSES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (0, "background", (0, 0, 0)),
    (1, "skin", (204, 0, 0)),
    (2, "nose", (76, 153, 0)),
    (3, "eye_g", (204, 204, 0)),
    (4, "l_eye", (51, 51, 255)),
    (5, "r_eye", (204, 0, 204)),
    (6, "l_brow", (0, 255, 255)),
    (7, "r_brow", (255, 204, 204)),
    (8, "l_ear", (102, 51, 0)),
    (9, "r_ear", (255, 0, 0)),
    (10, "mouth", (102, 204, 0)),
    (11, "u_lip", (255, 255, 0)),
    (12, "l_lip", (0, 0, 153)),
    (13, "hair", (0, 0, 204)),
    (14, "hat", (255, 51, 153)),
    (15, "ear_r", (0, 204, 204)),
    (16, "neck_l", (0, 51, 0)),
    (17, "neck", (255, 153, 51)),
    (18, "cloth", (0, 204, 0)),
)
NAMES: tuple[str, ...] = tuple(c[1] for c in CLASSES)
NUM_CLASSES = len(CLASSES)
PALETTE = np.array([c[2] for c in CLASSES], dtype=np.uint8)  # (19, 3)
NAME_TO_ID = {n: i for i, n in enumerate(NAMES)}

# CelebAMask-HQ ships one binary PNG per class, `<%05d>_<name>.png`; when they overlap, later classes in
# this order overwrite earlier ones (the dataset's own g_mask.py order, which is the table order).
MERGE_ORDER: tuple[str, ...] = NAMES[1:]


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids -> (H, W, 3) uint8 colours; ids outside 0..18 are black."""
    label = np.asarray(label)
    out = np.zeros((*label.shape, 3), np.uint8)
    valid = label < NUM_CLASSES
    out[valid] = PALETTE[label[valid]]
    return out


def merge_binary_masks(masks: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Per-class binary masks (name -> array, non-zero first channel = member) to one uint8 label map."""
    unknown = set(masks) - set(MERGE_ORDER)
    if unknown:
        raise ValueError(f"unknown CelebAMask-HQ class names: {sorted(unknown)}")
    label = np.zeros(shape, np.uint8)
    for name in MERGE_ORDER:
        m = masks.get(name)
        if m is None:
            continue
        m = np.asarray(m)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != shape:
            raise ValueError(f"mask {name} has shape {m.shape}, expected {shape}")
        label[m != 0] = NAME_TO_ID[name]
    return label


def class_pixel_counts(label: np.ndarray) -> np.ndarray:
    """Pixels per class id, int64 (19,)."""
    return np.bincount(np.asarray(label, np.uint8).ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES].astype(np.int64)

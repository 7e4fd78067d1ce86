"""What every face parser shares: the result type, label-space checks, logits to label maps, agreement.

Every parser returns label maps in CelebAMask-HQ ids (0..18, `pipeline.data.labels`) at the image's own
size. Each model family has its own channel order; the mappings live here so they are tested in one
place:
- Segformer (`jonathandinu/face-parsing`): the table order. Its config's `id2label` names were wrong
  before the "Fix labels" revision while the weights never changed, so channels map by index; the
  names are only checked to be the 19 classes (in any order), which refuses models of other label sets.
- FaRL celebm (through facer): its own order with mirrored names (`rr` is the `l_ear` file); mapped by
  index with `FARL_TO_CELEBAMASK` (FaRL's farl/datasets/celebamask_hq.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.data.labels import NAMES, NUM_CLASSES

# FaRL/facer celebm channel order and where each channel goes in CelebAMask-HQ ids.
FARL_CELEBM_NAMES: tuple[str, ...] = (
    "background", "neck", "face", "cloth", "rr", "lr", "rb", "lb", "re", "le", "nose", "imouth", "llip",
    "ulip", "hair", "eyeg", "hat", "earr", "neck_l",
)
FARL_TO_CELEBAMASK = np.array([0, 17, 1, 18, 8, 9, 6, 7, 4, 5, 2, 10, 12, 11, 13, 3, 14, 15, 16], np.uint8)

# Spellings seen in face-parsing configs, normalised to our class names (the pre-fix Segformer config
# says `skin.png`; model cards say `eyeglasses`, `earring`, ...).
ALIASES = {"eyeglasses": "eye_g", "eye_glasses": "eye_g", "glasses": "eye_g", "earring": "ear_r",
           "earrings": "ear_r", "necklace": "neck_l", "clothing": "cloth", "clothes": "cloth",
           "upper_lip": "u_lip", "lower_lip": "l_lip", "left_eye": "l_eye", "right_eye": "r_eye",
           "left_brow": "l_brow", "right_brow": "r_brow", "left_ear": "l_ear", "right_ear": "r_ear",
           "bg": "background"}
# Above this many output pixels, logits are upsampled to a smaller size and the label map is enlarged
# with nearest neighbour: 19 float32 channels at 4000x3000 would take 0.9 GB per image.
MAX_UPSAMPLE_PIXELS = 2048 * 2048


@dataclass
class Parsed:
    """One image's result: a label map, or a reason code and a readable error."""

    label: np.ndarray | None
    status: str = "ok"
    error: str = ""


def normalise_label_name(name: str) -> str:
    n = re.sub(r"\.(png|jpg)$", "", str(name).strip().lower()).replace(" ", "_").replace("-", "_")
    return ALIASES.get(n, n)


def check_label_space(id2label: Mapping[int | str, str], model: str) -> str | None:
    """Refuse a model whose labels are not the 19 CelebAMask-HQ classes; returns a warning or None.

    Channels are mapped by index (see the module docstring), so a set of the right 19 names in another
    order is accepted with a warning rather than re-ordered.
    """
    labels = {int(k): v for k, v in id2label.items()}
    if sorted(labels) != list(range(len(labels))) or len(labels) != NUM_CLASSES:
        sample = ", ".join(str(labels[k]) for k in sorted(labels)[:5])
        raise ValueError(f"{model}: predicts {len(labels)} labels ({sample}, ...); facecurate needs a face "
                         f"parser with the {NUM_CLASSES} CelebAMask-HQ classes ({', '.join(NAMES[:4])}, ...)")
    names = [normalise_label_name(labels[i]) for i in range(NUM_CLASSES)]
    unknown = sorted(set(names) - set(NAMES))
    if unknown or len(set(names)) != NUM_CLASSES:
        missing = sorted(set(NAMES) - set(names))
        raise ValueError(f"{model}: its id2label does not map onto the CelebAMask-HQ classes "
                         f"(unknown: {', '.join(unknown) or '-'}; missing: {', '.join(missing) or '-'})")
    if names != list(NAMES):
        return (f"{model}: id2label names are not in the CelebAMask-HQ table order (as in "
                f"jonathandinu/face-parsing before its 'Fix labels' revision); channels are mapped by index")
    return None


def logits_to_label(logits, size: tuple[int, int], lut: np.ndarray | None = None) -> np.ndarray:
    """(C, h, w) logits -> (H, W) uint8 ids: bilinear upsampling to `size`, argmax, optional id mapping."""
    import torch
    import torch.nn.functional as F

    h, w = size
    scale = min(1.0, (MAX_UPSAMPLE_PIXELS / max(1, h * w)) ** 0.5)
    target = (max(1, round(h * scale)), max(1, round(w * scale)))
    up = F.interpolate(logits[None].float(), size=target, mode="bilinear", align_corners=False)
    label = up.argmax(1)[0].to(torch.uint8).cpu().numpy()
    if target != (h, w):
        from PIL import Image

        label = np.asarray(Image.fromarray(label, "L").resize((w, h), Image.Resampling.NEAREST))
    return lut[label] if lut is not None else label


def confusion(pred: np.ndarray, ref: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """(n, n) int64 matrix: rows are `ref` ids, columns `pred` ids (ids >= n are ignored)."""
    pred = np.asarray(pred, np.int64).ravel()
    ref = np.asarray(ref, np.int64).ravel()
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in size: {pred.shape} vs {ref.shape}")
    keep = (pred < n) & (ref < n)
    return np.bincount(ref[keep] * n + pred[keep], minlength=n * n).reshape(n, n)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per class from a confusion matrix; NaN where the class is in neither map."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    """mIoU between two label maps over the classes present in either (the parse agreement)."""
    iou = iou_per_class(confusion(a, b))
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 1.0


class Parser:
    """A loaded face parser: `__call__(images, aligned) -> [Parsed]`, one per image, in image order.

    Args:
        device: `cpu`, `cuda`, `cuda:1`, ...
    """

    name: str = ""
    forward_batch: int = 8  # rows of every forward pass, whatever the batch (load_parser sets it)

    def __init__(self, device: str):
        self.device = device

    def __call__(self, images: list[np.ndarray], aligned: list[bool]) -> list[Parsed]:
        raise NotImplementedError

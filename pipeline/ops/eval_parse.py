"""`facecurate eval-parse OUT`: parser accuracy against CelebAMask-HQ ground truth.

Ground truth is what ingest merged into `gt_masks/<key>.png` (512x512 for CelebAMask-HQ, whose images
are 1024x1024); predictions are resized to the ground truth's size with nearest neighbour. Scores come
from one confusion matrix summed over all evaluated images (the usual dataset-level definition):
pixel accuracy = correct / all pixels; IoU_c = TP / (TP + FP + FN); mIoU = mean IoU over the classes
present in the ground truth or the predictions of the evaluated set (a class absent from both is left
out, not counted as 0 or 1). `miou_no_background` leaves class 0 out as well.

Predictions evaluated: the primary masks (`masks/`), each parser's own maps when the parse stage ran
with `save_all` (`parser_masks/<parser>/`), or any folder of label maps given with `--masks`.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from PIL import Image
from rich.table import Table

from pipeline.core.ledger import OK, atomic_write_bytes
from pipeline.core.stage import StageContext
from pipeline.data.labels import NAMES, NUM_CLASSES
from pipeline.parsers.base import confusion, iou_per_class


def read_label(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A label map as uint8 (H, W); resized with nearest neighbour to `size` (W, H) when given."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "1"):
            raise ValueError(f"{path}: mode {img.mode}, expected a single-channel label map")
        img = img.convert("L")
        if size is not None and img.size != size:
            img = img.resize(size, Image.Resampling.NEAREST)
        return np.asarray(img)


def scores(conf: np.ndarray) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU (None where a class is in neither map), mIoU with and without background."""
    iou = iou_per_class(conf)
    total = conf.sum()
    return {
        "pixels": int(total),
        "pixel_accuracy": float(np.trace(conf) / total) if total else None,
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "miou_no_background": float(np.nanmean(iou[1:])) if np.isfinite(iou[1:]).any() else None,
        "per_class_iou": {NAMES[i]: (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)},
    }


def prediction_sources(out: Path) -> dict[str, Path]:
    """name -> folder: `primary (<parser>)` for masks/, plus parser_masks/<parser>/ when present."""
    found: dict[str, Path] = {}
    if (out / "masks").is_dir():
        t = StageContext(out).ledger("parse").read(["status", "parser", "primary"])
        t = t.filter(pc.and_(pc.equal(t["status"], OK), pc.equal(t["primary"], True)))
        parsers = Counter(t["parser"].to_pylist())
        label = "+".join(p for p, _ in parsers.most_common()) or "masks"
        found[f"primary ({label})"] = out / "masks"
    extra = out / "parser_masks"
    if extra.is_dir():
        found.update({p.name: p for p in sorted(extra.iterdir()) if p.is_dir()})
    return found


def evaluate(out: Path, sources: dict[str, Path] | None = None, split: str | None = None,
             workers: int = 4) -> dict[str, Any]:
    """Score every prediction source against the ground truth of `out`'s index (optionally one split)."""
    ctx = StageContext(out)
    index = ctx.index(["key", "split", "gt_mask"])
    index = index.filter(pc.is_valid(index["gt_mask"]))
    if split:
        index = index.filter(pc.equal(index["split"], split))
    gt = dict(zip(index["key"].to_pylist(), index["gt_mask"].to_pylist(), strict=True))
    if not gt:
        where = f" in split {split!r}" if split else ""
        raise ValueError(f"{out}: no image with a ground-truth mask{where} (ingest a CelebAMask-HQ source)")
    sources = sources if sources is not None else prediction_sources(out)
    if not sources:
        raise ValueError(f"{out}: no predicted masks (run `facecurate parse {out}` first, or pass --masks)")

    def one(folder: Path, key: str) -> np.ndarray | None:
        pred_path = folder / f"{key}.png"
        if not pred_path.exists():
            return None
        truth = read_label(out / gt[key])
        pred = read_label(pred_path, (truth.shape[1], truth.shape[0]))
        return confusion(pred, truth)

    results: dict[str, Any] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PNG decoding releases the GIL
        for name, folder in sources.items():
            conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
            missing = []
            for key, c in zip(gt, pool.map(lambda k, f=folder: one(f, k), gt), strict=True):
                if c is None:
                    missing.append(key)
                else:
                    conf += c
            results[name] = {"folder": _shown(folder, out), "images": len(gt) - len(missing), "missing": len(missing),
                             "missing_keys": missing[:20], **scores(conf), "confusion": conf.tolist()}
    return {"split": split, "ground_truth_images": len(gt), "sources": results}


def _shown(folder: Path, out: Path) -> str:
    """A folder of the run relative to it (the report reads the same wherever the run lives); any other
    folder (`--masks`) as given."""
    try:
        return folder.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(folder)


def write_report(report: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(path, json.dumps(report, indent=1).encode())


def table(report: dict[str, Any]) -> Table:
    """Classes down, prediction sources across: IoU per class, then pixel accuracy and mIoU."""
    names = list(report["sources"])
    split = f", split {report['split']}" if report["split"] else ""
    t = Table(title=f"parser accuracy vs ground truth ({report['ground_truth_images']:,} images{split})",
              title_justify="left", header_style="bold")
    t.add_column("class")
    for n in names:
        t.add_column(n, justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for cls in NAMES:
        t.add_row(cls, *[fmt(report["sources"][n]["per_class_iou"][cls]) for n in names])
    t.add_section()
    for label, field in (("pixel accuracy", "pixel_accuracy"), ("mIoU", "miou"), ("mIoU w/o background", "miou_no_background")):
        t.add_row(f"[bold]{label}[/]", *[f"[bold]{fmt(report['sources'][n][field])}[/]" for n in names])
    t.add_row("images (missing)", *[f"{report['sources'][n]['images']:,} ({report['sources'][n]['missing']:,})" for n in names])
    return t

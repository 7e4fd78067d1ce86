"""`facecurate train-parser`: fine-tune a segmentation-models-pytorch parser on ingested ground truth.

Data: the index's ok rows with a `gt_mask` (CelebAMask-HQ merged by ingest); `train` rows train,
`val_split` rows validate. Images are resized bilinearly and masks with nearest neighbour to
`image_size`; a horizontal flip swaps the left/right classes (eyes, brows, ears) so labels stay true.

Class balance: rare classes (earrings, necklaces) cover a few hundred pixels of a 512x512 face, so plain
cross-entropy ignores them. Class weights come from pixel frequencies f_c on (up to 5,000) training
masks: `inverse` w_c = median(f) / f_c, `sqrt` its square root (default, the gentler one), clipped to
`max_weight` and scaled so the average pixel weight is 1; a multiclass Dice loss (every class counts
equally whatever its size) is added with weight `dice`.

Output folder: `model.safetensors` + `parser.json`, rewritten after every epoch (atomically), so a
killed run keeps the last finished epoch and `--resume` continues from it (weights, epoch count and
learning-rate schedule; AdamW's moment estimates start afresh). Use it as parser `smp:<folder>`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.devices import resolve_device
from pipeline.core.stage import StageContext
from pipeline.data.images import load_rgb
from pipeline.data.labels import NUM_CLASSES, class_pixel_counts
from pipeline.ops.eval_parse import read_label, scores
from pipeline.parsers.base import confusion
from pipeline.parsers.smp_parser import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PARSER_JSON,
    build_model,
    load_parser,
    save_parser,
)

# A mirrored face swaps these classes (CelebAMask-HQ ids).
FLIP_SWAP = np.arange(NUM_CLASSES, dtype=np.uint8)
for _a, _b in ((4, 5), (6, 7), (8, 9)):
    FLIP_SWAP[_a], FLIP_SWAP[_b] = _b, _a


@dataclass(frozen=True)
class TrainParserConfig:
    """Settings of `facecurate train-parser`.

    Args:
        out: an output folder where ingest merged CelebAMask-HQ ground truth (`gt_masks/`).
        save: folder for `model.safetensors` + `parser.json`.
        arch: smp architecture (`Unet`, `UnetPlusPlus`, `FPN`, `DeepLabV3Plus`, `Segformer`, ...).
        encoder: smp encoder (`resnet34`, `mit_b2`, `tu-<any timm model>`, ...).
        encoder_depth: encoder stages used (Unet: 3..5).
        decoder_channels: Unet decoder widths (one per encoder stage); empty keeps smp's default.
        encoder_weights: pretrained encoder weights (e.g. `imagenet`); needs network or smp's cache.
        image_size: training and inference size (a multiple of 2**encoder_depth).
        epochs: passes over the training images.
        batch_size: images per step.
        lr: AdamW peak learning rate (cosine decay after a 5% warmup).
        weight_decay: AdamW weight decay.
        balance: class weights: `sqrt` (default), `inverse` or `none`.
        max_weight: upper clip of a class weight.
        dice: weight of the multiclass Dice loss added to the weighted cross-entropy.
        val_split: split used for validation after each epoch.
        max_steps: stop after this many steps in total (for smoke tests).
        workers: data-loading worker processes.
        device: `auto`, `cpu`, `cuda`, ...
        seed: seeds Python, NumPy and torch.
        resume: continue from the model in `save` (its recorded epoch).
    """

    out: Path
    save: Path
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = ()
    encoder_weights: str | None = None
    image_size: int = 256
    epochs: int = 20
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    balance: Literal["sqrt", "inverse", "none"] = "sqrt"
    max_weight: float = 50.0
    dice: float = 0.5
    val_split: str = "val"
    max_steps: int | None = None
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        if self.image_size % (2 ** self.encoder_depth):
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2**encoder_depth = {2 ** self.encoder_depth}")
        if self.decoder_channels and len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(f"decoder_channels needs {self.encoder_depth} widths (one per encoder stage)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")

    def model_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"encoder_name": self.encoder, "encoder_depth": self.encoder_depth}
        if self.decoder_channels:
            kw["decoder_channels"] = list(self.decoder_channels)
        return kw


class FaceMasks:
    """(image, label) pairs at a fixed size: a map-style dataset for torch's DataLoader.

    Args:
        out: the run folder (image paths and gt masks are relative to it).
        rows: index rows with `path` and `gt_mask`.
        size: output side in pixels.
        flip: random horizontal flips with left/right class swapping.
    """

    def __init__(self, out: Path, rows: list[dict[str, Any]], size: int, flip: bool):
        self.out, self.rows, self.size, self.flip = out, rows, size, flip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        r = self.rows[i]
        path = Path(r["path"])
        img = load_rgb(path if path.is_absolute() else self.out / path)
        img = np.asarray(img.resize((self.size, self.size), Image.Resampling.BILINEAR), np.float32) / 255.0
        label = read_label(self.out / r["gt_mask"], (self.size, self.size))
        if self.flip and random.random() < 0.5:
            img, label = img[:, ::-1], FLIP_SWAP[label[:, ::-1]]
        img = (img - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(label.astype(np.int64))


def class_weights(out: Path, rows: list[dict[str, Any]], mode: str, max_weight: float,
                  limit: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(weights, pixel frequencies) from up to `limit` training masks; mean pixel weight is 1."""
    sample = rows if len(rows) <= limit else random.Random(0).sample(rows, limit)
    with ThreadPoolExecutor(4) as pool:
        counts = sum(pool.map(lambda r: class_pixel_counts(read_label(out / r["gt_mask"])), sample))
    freq = counts / max(1, counts.sum())
    w = np.ones(NUM_CLASSES)
    seen = freq > 0
    if mode != "none" and seen.any():
        w[seen] = np.median(freq[seen]) / freq[seen]
        w = np.sqrt(w) if mode == "sqrt" else w
        w = np.clip(w, 1.0 / max_weight, max_weight)
        w /= (w * freq).sum() / freq.sum()
    return w.astype(np.float32), freq


def split_rows(cfg: TrainParserConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    index = StageContext(cfg.out).index(["key", "path", "split", "gt_mask"])
    index = index.filter(pc.is_valid(index["gt_mask"])).to_pylist()
    train = [r for r in index if r["split"] == "train"]
    val = [r for r in index if r["split"] == cfg.val_split]
    if not train:
        raise ValueError(f"{cfg.out}: no training image with a ground-truth mask (ingest CelebAMask-HQ first)")
    return train, val


def validate(model, loader, device: str) -> dict[str, Any]:
    import torch

    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            pred = model(x.to(device)).argmax(1).cpu().numpy()
            for p, t in zip(pred, y.numpy(), strict=True):
                conf += confusion(p, t)
    model.train()
    s = scores(conf)
    return {"val_miou": s["miou"], "val_pixel_accuracy": s["pixel_accuracy"]}


def train_parser(cfg: TrainParserConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, validate and save after every epoch; returns the final parser.json document."""
    import segmentation_models_pytorch as smp
    import torch

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    train_rows, val_rows = split_rows(cfg)
    weights, freq = class_weights(cfg.out, train_rows, cfg.balance, cfg.max_weight)
    start, history, meta = 0, [], {}
    arch, kwargs, size = cfg.arch, cfg.model_kwargs(), cfg.image_size
    if cfg.resume and (cfg.save / PARSER_JSON).exists():
        model, meta = load_parser(cfg.save, device)  # the saved architecture wins over the options
        start, history = int(meta["epochs_done"]), list(meta["history"])
        arch, kwargs, size = meta["arch"], meta["kwargs"], int(meta["image_size"])
        log(f"resuming {arch}/{kwargs['encoder_name']} from epoch {start} in {cfg.save}")
    else:
        model = build_model(arch, kwargs, cfg.encoder_weights)
    model.to(device).train()
    loader_kw = {"batch_size": cfg.batch_size, "num_workers": cfg.workers, "persistent_workers": cfg.workers > 0}
    train_dl = torch.utils.data.DataLoader(FaceMasks(cfg.out, train_rows, size, True), shuffle=True,
                                           drop_last=len(train_rows) > cfg.batch_size, **loader_kw)
    val_dl = torch.utils.data.DataLoader(FaceMasks(cfg.out, val_rows, size, False), **loader_kw) if val_rows else None
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, device=device))
    dice = smp.losses.DiceLoss("multiclass", from_logits=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(train_dl)
    warmup = max(1, total // 20)
    offset = start * len(train_dl)  # a resumed run continues the schedule where it stopped

    def lr_factor(s: int) -> float:
        s += offset
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    step = start * len(train_dl)
    for epoch in range(start, cfg.epochs):
        t0, losses = time.monotonic(), []
        for x, y in train_dl:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = ce(logits, y) + cfg.dice * dice(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                  "seconds": round(time.monotonic() - t0, 2), **(validate(model, val_dl, device) if val_dl else {})}
        history.append(record)
        meta = {"arch": arch, "kwargs": kwargs, "image_size": size,
                "epochs_done": epoch + 1, "history": history, "class_weights": weights.tolist(),
                "train_pixel_frequency": freq.tolist(), "trained_on": str(cfg.out),
                "images": {"train": len(train_rows), "val": len(val_rows)},
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}}
        save_parser(model, cfg.save, meta)
        miou = record.get("val_miou")
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}"
            + (f", val mIoU {miou:.3f}" if miou is not None else "") + f" ({record['seconds']:.1f} s)")
        if cfg.max_steps and step >= cfg.max_steps:
            break
    return meta

"""Parsers trained with `facecurate train-parser`: a segmentation-models-pytorch model in a folder.

The folder holds `model.safetensors` (the state dict) and `parser.json` (architecture, constructor
arguments, input size, normalisation, label names and training facts). No pickles: the model is
rebuilt from the JSON with `smp.create_model(..., encoder_weights=None)` and the weights are loaded
from safetensors. Use it as parser `smp:<folder>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.devices import batch_independent, torch_dtype
from pipeline.core.ledger import atomic_write_bytes
from pipeline.data.labels import NAMES, NUM_CLASSES
from pipeline.parsers.base import Parsed, Parser, logits_to_label

PARSER_JSON = "parser.json"
WEIGHTS = "model.safetensors"
FORMAT = "facecurate-smp-parser/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(arch: str, kwargs: dict[str, Any], encoder_weights: str | None = None):
    """An smp model with 19 output classes; random weights unless `encoder_weights` names pretrained ones."""
    import segmentation_models_pytorch as smp

    return smp.create_model(arch, encoder_weights=encoder_weights, in_channels=3, classes=NUM_CLASSES, **kwargs)


def save_parser(model, folder: Path, meta: dict[str, Any]) -> None:
    """Write `model.safetensors` and `parser.json` atomically (weights first, JSON last, as the marker)."""
    from safetensors.torch import save as save_bytes

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS, save_bytes(state))
    doc = {"format": FORMAT, "labels": list(NAMES), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta}
    atomic_write_bytes(folder / PARSER_JSON, json.dumps(doc, indent=1).encode())


def load_parser(folder: Path, device: str = "cpu"):
    """(model in eval mode, its parser.json) from a train-parser folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / PARSER_JSON
    if not meta_path.is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} is not a train-parser folder (needs {PARSER_JSON} and {WEIGHTS})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("labels") != list(NAMES):
        raise ValueError(f"{meta_path}: labels are not the 19 CelebAMask-HQ classes in table order")
    model = build_model(meta["arch"], meta["kwargs"])
    model.load_state_dict(load_file(folder / WEIGHTS, device="cpu"), strict=True)
    return model.to(device).eval(), meta


def preprocess(images: list[np.ndarray], size: int, mean, std, device: str):
    """uint8 (H, W, 3) images -> (N, 3, size, size) normalised float, bilinear with antialiasing."""
    import torch
    import torch.nn.functional as F

    out = []
    for img in images:
        x = torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1)[None].to(device).float() / 255.0
        out.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    x = torch.cat(out)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s


class SmpParser(Parser):
    """Batched inference of a train-parser model.

    Args:
        folder: the train-parser output folder.
        device: torch device string.
        dtype: `float32`, `bfloat16` or `float16`.
    """

    name = "smp"

    def __init__(self, folder: Path, device: str, dtype: str = "float32"):
        super().__init__(device)
        import torch

        self._torch = torch
        model, self.meta = load_parser(folder, device)
        self.dtype = torch_dtype(dtype)
        self.net = model.to(self.dtype)

    def __call__(self, images: list[np.ndarray], aligned: list[bool]) -> list[Parsed]:
        if not images:
            return []
        m = self.meta
        x = preprocess(images, int(m["image_size"]), m["mean"], m["std"], self.device).to(self.dtype)
        with self._torch.inference_mode():
            logits = batch_independent(self.net, x, self.forward_batch)  # (N, 19, size, size)
            return [Parsed(logits_to_label(lg, img.shape[:2])) for lg, img in zip(logits, images, strict=True)]

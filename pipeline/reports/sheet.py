"""Contact sheets of shard samples (`facecurate inspect OUT --sheet sheet.png`).

One row per sample: the image, the mask in the CelebAMask-HQ colours, the sketch, the image latent
decoded by its VAE (the model named in the sample's json; when it cannot be loaded, e.g. a hub id
offline, the first three latent channels are shown instead and labelled so), and the key, flags and
captions. It reads the shards, so it shows exactly what training will read.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.config import ConfigError
from pipeline.core.files import atomic_write
from pipeline.data.labels import colorize
from pipeline.data.wds import decode_key, decode_sample, iter_tar, read_index

TEXT_WIDTH = 460
HEADER = 22


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def pick_samples(out: Path, n: int, keys: list[str] | None = None) -> list[dict[str, Any]]:
    """Decoded samples: the given keys (searched in every shard), else the first `n` in index order."""
    index = read_index(out / "shards")
    wanted = set(keys or [])
    found: dict[str, dict[str, Any]] = {}
    stream = ((decode_key(name), fields)
              for e in index["shards"] for name, fields in iter_tar(out / "shards" / e["name"]))
    for key, fields in stream:
        if wanted and key not in wanted:
            continue
        found[key] = decode_sample(fields)
        if len(found) >= (len(wanted) or n):
            break
    if wanted - set(found):
        raise ConfigError(f"not in the shards: {', '.join(sorted(wanted - set(found)))}")
    if not found:
        raise ConfigError(f"{out}/shards hold no samples")
    return [found[k] for k in (keys or list(found))]


class _Decoder:
    """Decodes latents with the VAE named in the samples' json, loaded once per VAE; None if unavailable."""

    def __init__(self) -> None:
        self.vaes: dict[str, Any] = {}

    def __call__(self, z: np.ndarray, meta: dict[str, Any]) -> np.ndarray | None:
        key = json.dumps(meta, sort_keys=True)
        if key not in self.vaes:
            try:
                import importlib.util

                from diffusers import AutoencoderKL

                self.vaes[key] = AutoencoderKL.from_pretrained(
                    meta["id"], subfolder=meta.get("subfolder"), revision=meta.get("revision"),
                    low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None).eval()
            except Exception:  # noqa: BLE001 - an unreachable hub id falls back to raw channels
                self.vaes[key] = None
        vae = self.vaes[key]
        if vae is None:
            return None
        import torch

        with torch.inference_mode():
            x = vae.decode(torch.from_numpy(z.astype(np.float32))[None]).sample[0]
        return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def _channels(z: np.ndarray) -> np.ndarray:
    """The first three latent channels, each min-max scaled, as an RGB picture."""
    c = z[:3].astype(np.float32)
    c = (c - c.min(axis=(1, 2), keepdims=True)) / (np.ptp(c, axis=(1, 2), keepdims=True) + 1e-6)
    if len(c) < 3:
        c = np.concatenate([c, np.repeat(c[-1:], 3 - len(c), 0)])
    return (c.transpose(1, 2, 0) * 255).astype(np.uint8)


def _tile(arr: np.ndarray | None, size: int, label: str | None = None) -> Image.Image:
    if arr is None:
        img = Image.new("RGB", (size, size), (235, 235, 235))
    else:
        img = Image.fromarray(arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2))
        small = arr.shape[0] < size // 2  # latents-sized pictures: keep their pixels visible
        img = img.resize((size, size), Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)
    if label:
        ImageDraw.Draw(img).text((6, size - 18), label, fill=(200, 0, 0), font=_font(12))
    return img


def contact_sheet(out: Path, dest: Path, n: int = 8, keys: list[str] | None = None, vae: str | None = None,
                  tile: int = 192) -> Path:
    """Render N samples (or `keys`) of the run in `out` into the PNG `dest`; returns `dest`."""
    samples = pick_samples(out, n, keys)
    decode = _Decoder()
    cols = ["image", "mask", "sketch", "decoded latent", "captions"]
    width, row_h = 4 * tile + TEXT_WIDTH, tile + 8
    sheet = Image.new("RGB", (width, HEADER + row_h * len(samples)), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(12)
    for i, c in enumerate(cols):
        draw.text((i * tile + 6, 3), c if c != "decoded latent" or not vae else f"decoded {vae} latent",
                  fill="black", font=font)
    for row, s in enumerate(samples):
        y = HEADER + row * row_h
        meta = s["json"]
        name = vae or ("flux" if "flux" in meta.get("vae", {}) else next(iter(meta.get("vae", {})), None))
        z = s.get(f"{name}.latent.npy") if name else None
        decoded, label = None, "no latents"
        if z is not None:
            decoded = decode(z, meta["vae"][name])
            label = None if decoded is not None else "VAE unavailable: ch 0-2"
            decoded = decoded if decoded is not None else _channels(z)
        mask = s.get("mask.png")
        tiles = [_tile(s["jpg"], tile),
                 _tile(None if mask is None else colorize(mask), tile, "no mask" if mask is None else None),
                 _tile(s.get("sketch.png"), tile, None if "sketch.png" in s else "no sketch"),
                 _tile(decoded, tile, label)]
        for i, t in enumerate(tiles):
            sheet.paste(t, (i * tile, y))
        lines = [meta["key"], *textwrap.wrap("flags: " + (", ".join(meta.get("flags") or []) or "-"), 64)[:2]]
        for c in (s.get("captions.json") or ["(no captions)"])[:4]:
            lines += textwrap.wrap(f"- {c}", 64)[:3]
        draw.multiline_text((4 * tile + 8, y + 4), "\n".join(lines[: tile // 15]), fill="black", font=small,
                            spacing=2)
    atomic_write(dest, lambda f: sheet.save(f, "PNG"))
    return dest

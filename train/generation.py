"""The conditions of a split and faces sampled for them: what ``facecurate evaluate`` scores.

``load_conditions`` reads the split's samples from the shards (real image, mask, sketch, first caption, the
condition latents on the checkpoint's scale) without unpickling anything. ``Generator`` samples MMFace-DiT for
a batch of conditions and decodes with the VAE, as ``facecurate sample`` does; ``generate`` runs the
protocol's condition types with fixed seeds (``noise_seed``); ``load_generator`` loads a checkpoint the way
``train.sample`` does (our checkpoints or a weights file, ours or the public code's).
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from train.config import ConfigError

if TYPE_CHECKING:
    from train.evaluate import EvalOptions


# ---- conditions: the split's samples, read from the shards ----------------------------------------------
@dataclass
class Condition:
    """One sample of the split: the real face, its mask / sketch (when present), first caption and latents."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    mask: np.ndarray | None = None  # (H, W) label ids
    sketch: np.ndarray | None = None  # (H, W) uint8
    latents: dict[str, np.ndarray] = field(default_factory=dict)  # mask / sketch -> (C, h, w) on the model scale
    class_pixels: np.ndarray | None = None


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def load_conditions(shards, vae: str, convention: str, limit: int | None = None) -> list[Condition]:
    """The split's samples in shard order (``limit``: the first ones), decoded without unpickling anything."""
    from PIL import Image

    from train.data import iter_samples, latent_to_model, load_npy

    wanted = frozenset({"jpg", "png", "mask.png", "sketch.png", "captions.json", "json",
                        f"{vae}.mask_latent.npy", f"{vae}.sketch_latent.npy"})
    out: list[Condition] = []
    for shard in shards:
        for _, key, f in iter_samples(shard.path, fields=wanted):
            if limit is not None and len(out) >= limit:
                return out
            meta = json.loads(f["json"])
            image = f.get("jpg", f.get("png"))
            if image is None:
                raise ConfigError(f"{shard.path}: sample {key} has no jpg/png image to compare with")
            captions = json.loads(f.get("captions.json", b"[]"))
            c = Condition(meta.get("key", key), np.asarray(Image.open(io.BytesIO(image)).convert("RGB")),  # json: the real key
                          captions[0] if captions else "")
            if "mask.png" in f:
                c.mask = _png(f["mask.png"])
                c.class_pixels = np.bincount(c.mask.ravel(), minlength=19)[:19]
            if "sketch.png" in f:
                c.sketch = np.asarray(Image.open(io.BytesIO(f["sketch.png"])).convert("L"))
            for kind in ("mask", "sketch"):
                name = f"{vae}.{kind}_latent.npy"
                if name in f:
                    z = load_npy(f[name], f"{key}: {name}")
                    c.latents[kind] = latent_to_model(z, meta["vae"][vae], convention)
            out.append(c)
    return out


# ---- the sampler -----------------------------------------------------------------------------------------
class Generator:
    """MMFace-DiT sampling for batches of conditions, then VAE decoding (what ``facecurate sample`` does).

    Args:
        model: the network (EMA or raw weights).
        objective: ``train.objectives`` rectified flow or DDPM (its ``sample``).
        autoencoder: diffusers ``AutoencoderKL``.
        encoder: ``train.data.TextEncoder``.
        vae_meta: the VAE's scaling and shift factors.
        convention: latent convention of the checkpoint.
        public: weights from the public code (its unconditional branch keeps the empty caption's pooled vector).
    """

    def __init__(self, model, objective, autoencoder, encoder, vae_meta: dict, convention: str, public: bool = False):
        self.model, self.objective, self.autoencoder, self.encoder = model, objective, autoencoder, encoder
        self.vae_meta, self.convention, self.public = vae_meta, convention, public
        self.device = next(model.parameters()).device

    @property
    def sampler(self) -> str:
        return "euler" if type(self.objective).__name__ == "RectifiedFlow" else "dpm-solver++"

    @torch.no_grad()
    def __call__(self, cond: torch.Tensor, modality: list[int], captions: list[str], seeds: list[int],
                 steps: int, cfg_scale: float) -> np.ndarray:
        from train.data import model_to_latent
        from train.objectives import uncond_like

        dev, n = self.device, len(seeds)
        text, pooled = self.encoder.encode(captions)
        empty_text, empty_pooled = self.encoder.encode([""])
        c = {"cond": cond.to(dev), "modality": torch.tensor(modality, device=dev), "text": text, "pooled": pooled,
             "drop_text": torch.zeros(n, dtype=torch.bool, device=dev)}
        uc = uncond_like(c, empty_text, empty_pooled)
        if self.public:
            uc = {**uc, "drop_text": torch.zeros(n, dtype=torch.bool, device=dev)}
        noise = torch.stack([torch.randn(cond.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            latents = self.objective.sample(self.model, noise.to(dev), c, uc, steps=steps, cfg_scale=cfg_scale)
        images = self.autoencoder.decode(model_to_latent(latents.float(), self.vae_meta, self.convention)).sample
        return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def noise_seed(seed: int, key: str, j: int) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode()), j]).generate_state(1, np.uint32)[0])


@dataclass
class Generated:
    """Faces of one condition type: images (K, H, W, 3), the condition each came from, its seed."""

    kind: str
    images: np.ndarray
    index: np.ndarray
    seeds: list[int]


def generate(gen: Generator, conditions: list[Condition], o: EvalOptions, log=print) -> dict[str, Generated]:
    """Every condition type of ``o.kinds`` that the conditions have, ``o.per_condition`` faces each."""
    lat_shape = next((z.shape for c in conditions for z in c.latents.values()), None)
    if lat_shape is None:
        raise ConfigError("the split's samples have no mask or sketch latents of the checkpoint's VAE")
    out = {}
    for kind in o.kinds:
        jobs = [(i, j) for i, c in enumerate(conditions) if kind == "text" or kind in c.latents
                for j in range(o.per_condition)]
        if not jobs:
            log(f"no {kind} conditions in the split: skipped")
            continue
        images, seeds = [], []
        for b in range(0, len(jobs), o.batch_size):
            part = jobs[b : b + o.batch_size]
            cond = torch.stack([torch.from_numpy(conditions[i].latents[kind]) if kind != "text" else torch.zeros(lat_shape)
                                for i, _ in part])
            s = [noise_seed(o.seed, conditions[i].key, j) for i, j in part]
            images.append(gen(cond, [int(kind == "sketch")] * len(part), [conditions[i].caption for i, _ in part], s,
                              o.steps, o.cfg_scale))
            seeds += s
        out[kind] = Generated(kind, np.concatenate(images), np.array([i for i, _ in jobs]), seeds)
        log(f"sampled {len(jobs)} {kind} faces")
    return out


def load_generator(checkpoint: str | Path, o: EvalOptions, device: torch.device, shard_vaes: dict) -> tuple[Generator, dict]:
    """The checkpoint's sampler and what it is (``train.sample``'s loading: our checkpoints or a weights file)."""
    import importlib.util

    from diffusers import AutoencoderKL

    from train.data import TextEncoder, from_pretrained_any
    from train.objectives import make_objective
    from train.sample import load_any

    model, state, origin, ckpt = load_any(checkpoint, o.weights, device, o.vae)
    step = state.get("step") if origin == "ours" else None
    channels = model.cfg.latent_channels
    name = (state.get("config", {}).get("data") or {}).get("vae")
    if name not in shard_vaes:  # a weights file: the shards' VAE with the model's channel count
        name = next((k for k, v in shard_vaes.items() if int(v.get("channels", -1)) == channels), None)
    if name is None or int(shard_vaes[name].get("channels", channels)) != channels:
        raise ConfigError(f"the shards have no latents for a {channels}-channel model (they have: {', '.join(shard_vaes)})")
    vae_meta = shard_vaes[name]
    ocfg = state["config"]["objective"]
    objective = make_objective(ocfg["kind"], **{k: v for k, v in ocfg.items() if k not in ("kind", "longtail", "class_counts")})
    low_mem = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    try:
        encoder = TextEncoder(o.text_encoder or state["text_encoder"], device)
        if o.vae:
            autoencoder = from_pretrained_any(AutoencoderKL, o.vae, "vae", **low_mem)
        else:
            autoencoder = AutoencoderKL.from_pretrained(vae_meta["id"], subfolder=vae_meta.get("subfolder"),
                                                        revision=vae_meta.get("revision"), **low_mem)
    except OSError as e:
        raise ConfigError(f"cannot load the text encoder or VAE (--text-encoder / --vae): {str(e).splitlines()[0]}") from None
    gen = Generator(model, objective, autoencoder.to(device).eval(), encoder, vae_meta, state["latent_convention"],
                    public=origin == "public")
    info = {"checkpoint": str(ckpt), "step": step, "weights": o.weights if origin == "ours" else origin,
            "objective": ocfg["kind"], "vae": name, "latent_convention": state["latent_convention"],
            "run": str(ckpt.parent.parent) if origin == "ours" else None}
    return gen, info

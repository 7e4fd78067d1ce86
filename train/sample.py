"""Sample faces from a checkpoint: a caption plus a mask or a sketch in, an image grid out (``facecurate sample``).

The condition goes through the same VAE, prepared as the pipeline's latents stage does: centre square crop,
a label-map mask resized with nearest neighbours and colour-coded with the CelebAMask-HQ palette, a sketch
resized with Lanczos and repeated to three channels, both mapped to [-1, 1]; its latent mean is put on the training scale with the checkpoint's latent convention.
The text goes through the checkpoint's CLIP text encoder; the unconditional branch of classifier-free
guidance is the empty caption with the null pooled vector, the condition latent staying in both branches.
Sampling is Euler (rectified flow) or DPM-Solver++ (DDPM), then the VAE decodes. The grid is one row:
the condition, then the samples, each labelled, with the prompt, seed, steps, CFG scale and checkpoint
written under them (`labelled_grid`; `grid_tiles` cuts it back into tiles).

A bare weights file works too, in our layout or the public MMFace-DiT code's (``train.convert``: recognised
by its keys, converted on load, the size read from the shapes, the public conventions); for weights from
the public code the unconditional branch takes the empty caption's pooled vector, as its sampler does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from pipeline.data.files import atomic_write
from train.config import ConfigError


def _center_square(img):
    w, h = img.size
    side = min(w, h)
    return img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))


def condition_image(path: Path, kind: str, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """(1, 3, R, R) in [-1, 1] for the VAE, and the RGB uint8 preview, from a mask or sketch file.

    As the pipeline's latents stage prepares them: centre square crop; a mask resized with nearest
    neighbours (a label map is then colour-coded), a sketch with Lanczos and repeated to three channels.
    """
    from PIL import Image

    img = _center_square(Image.open(path))
    if kind == "mask":
        img = img.resize((resolution, resolution), Image.Resampling.NEAREST)
        arr = np.asarray(img)
        if arr.ndim == 2 and arr.max(initial=0) <= 18:  # a label map (ids 0..18): colour-code it
            from pipeline.data.labels import colorize

            arr = colorize(arr)
        rgb = np.asarray(Image.fromarray(arr).convert("RGB"))
    elif kind == "sketch":
        gray = img.convert("L").resize((resolution, resolution), Image.Resampling.LANCZOS)
        rgb = np.repeat(np.asarray(gray)[..., None], 3, axis=-1)
    else:
        raise ValueError(f"condition kind must be mask or sketch, got {kind!r}")
    x = torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    return x, rgb


def load_model(ckpt: Path, state: dict, weights: str, device: torch.device):
    from safetensors.torch import load_file

    from train.convert import strict_load
    from train.model import MMFaceDiT, MMFaceDiTConfig

    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights must be ema or model, got {weights!r}")
    model = MMFaceDiT(MMFaceDiTConfig(**state["model_args"]))
    path = ckpt / f"{weights}.safetensors"
    strict_load(model, load_file(str(path)), str(path))
    return model.to(device).eval().requires_grad_(False)


def load_any(checkpoint: str | Path, weights: str, device: torch.device, vae: str | None,
             objective: str | None = None, resolution: int | None = None):
    """(model, state, origin, path): one of our checkpoint or run folders (`weights`: ema or model), or a
    bare weights file in our layout or the public code's (which records no VAE: `vae` is required)."""
    from train.train import load_checkpoint_state, resolve_checkpoint

    if Path(checkpoint).is_file():  # a bare weights file: ours or the public code's layout
        if not vae:
            raise ConfigError("a weights file records no VAE: pass --vae (the public checkpoints use the FLUX.1 VAE)")
        model, state, origin = load_weights_file(Path(checkpoint), objective, resolution, device)
        return model, state, origin, Path(checkpoint)
    try:
        ckpt = resolve_checkpoint(checkpoint)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    state = load_checkpoint_state(ckpt)
    return load_model(ckpt, state, weights, device), state, "ours", ckpt


def load_weights_file(path: Path, objective: str | None, resolution: int | None, device: torch.device):
    """(model, state-like dict, origin) for a bare weights file, ours or the public code's (``train.convert``).

    The file records no VAE, text encoder or objective: the text encoder defaults to the training config's,
    the objective to the sidecar's or rectified flow, the resolution to the sidecar's or 256 px (the public
    code's ``config_256``), and the latent convention to the sidecar's or the public ``mmface``.
    """
    from train.config import DataConfig
    from train.convert import load_model as load_any

    model, w = load_any(path)
    res = resolution or w.meta.get("resolution") or 256
    state = {"config": {"objective": {"kind": objective or w.meta.get("objective") or "rf"}},
             "data": {"vae": None, "latent_shape": [model.cfg.latent_channels, res // 8, res // 8], "resolution": res},
             "text_encoder": DataConfig().text_encoder, "latent_convention": w.latent_convention}
    return model.to(device).eval().requires_grad_(False), state, w.origin


HEADER = 22  # px of the label row above the tiles
MIN_TILE = 160  # px a tile is drawn at, at least (nearest-neighbour upscaling by a whole factor)


def labelled_grid(tiles: list[np.ndarray], labels: list[str], footer: list[str]) -> np.ndarray:
    """One row of equal tiles with a label above each and lines of text below: the condition, then the
    samples, the prompt and the settings under them. Tiles smaller than `MIN_TILE` are enlarged by a whole
    factor (nearest), so pixels stay exact and `grid_tiles` gives them back."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = tiles[0].shape[:2]
    k = max(1, -(-MIN_TILE // max(h, w)))
    font = ImageFont.load_default(size=12)
    width = len(tiles) * w * k
    wrapped: list[str] = []
    per_line = max(20, width // 7)
    for line in footer:
        words, cur = line.split(), ""
        for word in words:
            if cur and len(cur) + 1 + len(word) > per_line:
                wrapped.append(cur)
                cur = word
            else:
                cur = f"{cur} {word}".strip()
        wrapped.append(cur)
    canvas = Image.new("RGB", (width, HEADER + h * k + 8 + 16 * len(wrapped)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        big = np.repeat(np.repeat(tile, k, axis=0), k, axis=1)
        canvas.paste(Image.fromarray(big), (i * w * k, HEADER))
        draw.text((i * w * k + 4, 4), label, fill="black", font=font)
    for j, line in enumerate(wrapped):
        draw.text((4, HEADER + h * k + 4 + 16 * j), line, fill="black", font=font)
    return np.asarray(canvas)


def grid_tiles(grid: np.ndarray, n_tiles: int, tile: int) -> list[np.ndarray]:
    """The tiles of a `labelled_grid` at their own size (for checks and for reuse)."""
    k = grid.shape[1] // (n_tiles * tile)
    body = grid[HEADER:HEADER + tile * k]
    return [body[:, i * tile * k:(i + 1) * tile * k][::k, ::k] for i in range(n_tiles)]


def sample(checkpoint: str | Path, caption: str, mask: Path | None = None, sketch: Path | None = None,
           out: str | Path = "grid.png", steps: int = 50, cfg_scale: float = 7.5, n: int = 4, seed: int = 0,
           weights: str = "ema", vae: str | None = None, text_encoder: str | None = None,
           device: str = "auto", objective: str | None = None, resolution: int | None = None) -> Path:
    """Generate `n` images for one caption and one condition; write a grid PNG and return its path.

    `checkpoint` is one of our checkpoint / run folders, or a weights file in our layout or the public code's
    (then `objective` and `resolution` say what the file cannot, and `vae` is required).
    """
    from diffusers import AutoencoderKL
    from PIL import Image

    from train.data import TextEncoder, from_pretrained_any, model_to_latent
    from train.objectives import make_objective, uncond_like
    if (mask is None) == (sketch is None):
        raise ConfigError("give exactly one of --mask or --sketch")
    for given in (mask, sketch):  # before any model loads: a typo costs nothing
        if given is not None and not Path(given).is_file():
            import errno

            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(given))
    if objective not in (None, "rf", "ddpm"):
        raise ConfigError(f"--objective must be rf or ddpm, got {objective!r}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    model, state, origin, _ = load_any(checkpoint, weights, dev, vae, objective, resolution)
    ocfg = state["config"]["objective"]
    objective = make_objective(ocfg["kind"], **{k: v for k, v in ocfg.items() if k not in ("kind", "longtail", "class_counts")})
    vae_meta = state["data"]["vae"]
    low_mem = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}  # else diffusers warns
    try:
        encoder = TextEncoder(text_encoder or state["text_encoder"], dev)
        if vae:
            autoencoder = from_pretrained_any(AutoencoderKL, vae, "vae", **low_mem)
        else:  # the VAE the shards were encoded with, as recorded in their json
            autoencoder = AutoencoderKL.from_pretrained(vae_meta["id"], subfolder=vae_meta.get("subfolder"),
                                                        revision=vae_meta.get("revision"), **low_mem)
    except OSError as e:  # a folder that is not there, or a hub id while offline
        raise ConfigError(f"cannot load the text encoder or VAE (--text-encoder / --vae): {str(e).splitlines()[0]}") from None
    autoencoder = autoencoder.to(dev).eval()
    if vae_meta is None:  # a weights file: the factors of the VAE given
        vae_meta = {"scaling_factor": autoencoder.config.scaling_factor,
                    "shift_factor": getattr(autoencoder.config, "shift_factor", None)}
    lat_c, lat_h, lat_w = state["data"]["latent_shape"]
    resolution = state["data"].get("resolution") or lat_h * 8
    convention = state["latent_convention"]

    kind, path = ("mask", mask) if mask is not None else ("sketch", sketch)
    x, preview = condition_image(Path(path), kind, resolution)
    with torch.no_grad():
        z = autoencoder.encode(x.to(dev)).latent_dist.mean  # the shards store the mean, so encode the same way
        shift = float(vae_meta.get("shift_factor") or 0.0) if convention == "diffusers" else 0.0
        cond = ((z - shift) * float(vae_meta["scaling_factor"])).expand(n, -1, -1, -1)
        text, pooled = encoder.encode([caption])
        empty_text, empty_pooled = encoder.encode([""])
    c = {"cond": cond, "modality": torch.full((n,), int(kind == "sketch"), device=dev),
         "text": text.expand(n, -1, -1), "pooled": pooled.expand(n, -1),
         "drop_text": torch.zeros(n, dtype=torch.bool, device=dev)}
    uc = uncond_like(c, empty_text, empty_pooled)
    if origin == "public":  # the public sampler's unconditional branch: the empty caption's own pooled vector
        uc = {**uc, "drop_text": torch.zeros(n, dtype=torch.bool, device=dev)}
    noise = torch.randn((n, lat_c, *cond.shape[-2:]), generator=torch.Generator().manual_seed(seed)).to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        latents = objective.sample(model, noise, c, uc, steps=steps, cfg_scale=cfg_scale)
    with torch.no_grad():
        images = autoencoder.decode(model_to_latent(latents.float(), vae_meta, convention)).sample
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    preview = np.asarray(Image.fromarray(preview).resize(images.shape[1:3][::-1]))
    out = Path(out)
    labels = [f"{kind} (condition)", *(f"sample {i + 1}" for i in range(n))]
    footer = [f"prompt: {caption}", f"seed {seed} (one noise draw for the row) · {steps} steps · CFG {cfg_scale} · "
              f"{'Euler' if ocfg['kind'] == 'rf' else 'DPM-Solver++'} · {Path(str(checkpoint)).name}"]
    grid = Image.fromarray(labelled_grid([preview, *images], labels, footer))
    atomic_write(out, lambda f: grid.save(f, format="PNG"))  # PNG whatever the name says, as before
    return out

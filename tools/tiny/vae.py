"""Tiny VAEs: the real diffusers `AutoencoderKL` in the FLUX.1 and SD layouts, at toy width.

Both keep the real block structure that matters to the pipeline: four encoder/decoder blocks (three
downsamplings, so latents are 8x smaller than images), the mid-block attention, and the real latent
factors in `config.json`. Only the widths shrink (16/32 channels, one layer per block), so a 64 px
batch encodes in milliseconds on a CPU. Weights are random (seeded): latents are noise-like, but
every code path (`from_pretrained`, `encode().latent_dist.mean`, `decode`, the recorded factors) is
the one a real VAE takes.

- `vae-flux`: 16 latent channels, no quant convs (`use_quant_conv=False, use_post_quant_conv=False`),
  scaling 0.3611, shift 0.1159 (FLUX.1's VAE config).
- `vae-sd`: 4 latent channels, quant convs, scaling 0.18215, no shift (SD 1.x/2.x).
"""

from __future__ import annotations

from pathlib import Path

VERSION = "1"
WIDTHS = (16, 32, 32, 32)  # 4 blocks -> 3 downsamplings -> 8x, like the real (128, 256, 512, 512)


def _build(out: Path, latent_channels: int, scaling: float, shift: float | None, quant_convs: bool,
           seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=WIDTHS, layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=8, sample_size=64, scaling_factor=scaling, shift_factor=shift,
        use_quant_conv=quant_convs, use_post_quant_conv=quant_convs, force_upcast=True,
    )
    vae.save_pretrained(out, safe_serialization=True)


def build_flux(out: Path) -> None:
    """FLUX.1-layout AutoencoderKL: 16 latent channels, no quant convs, scaling 0.3611, shift 0.1159."""
    _build(out, 16, 0.3611, 0.1159, quant_convs=False, seed=1)


def build_sd(out: Path) -> None:
    """SD-layout AutoencoderKL: 4 latent channels, quant convs, scaling 0.18215, no shift."""
    _build(out, 4, 0.18215, None, quant_convs=True, seed=2)


MODELS = {"vae-flux": (VERSION, build_flux), "vae-sd": (VERSION, build_sd)}

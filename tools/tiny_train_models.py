"""Tiny random-weight copies of the trainer's frozen models, built offline: CLIP text encoder, FLUX and SD VAEs.

The real classes at toy widths, saved with ``save_pretrained`` so the trainer's ordinary loading code
(``from_pretrained(folder)``) reads them exactly as it reads the hub models:

- ``build_clip_text(out)``: ``CLIPTextModel`` (hidden 32, 2 layers, 77 positions, CLIP's 49,408 ids) plus
  the real CLIP BPE tokenizer (``CLIPTokenizer(vocab=dict, merges=list)`` from open_clip's vocabulary),
  padding with "!" (id 0) like SD2.1-base's tokenizer.
- ``build_vae(out, "flux")``: ``AutoencoderKL`` with 16 latent channels, no quant convs, scaling 0.3611,
  shift 0.1159; ``build_vae(out, "sd")``: 4 channels, quant convs, scaling 0.18215. Four blocks, so the
  downsampling is 8x like the real ones.

Weights are seeded, so a rebuild gives the same files. ``tools/make_tiny_models.py`` registers these as
``clip-text``, ``vae-flux`` and ``vae-sd``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VAE_FACTORS = {"flux": {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159, "quant": False},
               "sd": {"latent_channels": 4, "scaling_factor": 0.18215, "shift_factor": None, "quant": True}}


def build_clip_tokenizer():
    """The CLIP BPE tokenizer (ids match open_clip's), padding with "!" as SD2.1-base's does."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from transformers import CLIPTokenizer

    from pipeline.text.tokens import load_clip_bpe

    vocab, merges = load_clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token="!", model_max_length=77)


def build_clip_text(out_dir: Path) -> None:
    """Tiny CLIPTextModel (width 32) + the real CLIP tokenizer, in one folder."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    out_dir = Path(out_dir)
    CLIPTextModel(config).eval().save_pretrained(out_dir)
    build_clip_tokenizer().save_pretrained(out_dir)


def build_vae(out_dir: Path, kind: str) -> None:
    """Tiny diffusers AutoencoderKL with the FLUX (16 ch) or SD (4 ch) latent layout."""
    import torch
    from diffusers import AutoencoderKL

    if kind not in VAE_FACTORS:
        raise ValueError(f"kind must be one of {', '.join(VAE_FACTORS)}, got {kind!r}")
    f = VAE_FACTORS[kind]
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        latent_channels=f["latent_channels"], norm_num_groups=8, sample_size=64,
        scaling_factor=f["scaling_factor"], shift_factor=f["shift_factor"],
        use_quant_conv=f["quant"], use_post_quant_conv=f["quant"],
    )
    vae.eval().save_pretrained(Path(out_dir))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "tiny-models")
    args = ap.parse_args()
    build_clip_text(args.out / "clip-text")
    for k in VAE_FACTORS:
        build_vae(args.out / f"vae-{k}", k)
    print(f"built clip-text, vae-flux, vae-sd under {args.out}")

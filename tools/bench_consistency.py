"""What EC²Face's consistency loss costs: one MMFace-DiT training step with and without it, and the ratio.

A step is what the trainer runs: rectified-flow loss (+ the consistency term: VAE decode of x̂, CLIP image
tower, face parser, all frozen but differentiated through), backward, gradient clipping, AdamW. Rows: no
consistency (the baseline), CLIP only, parser only, both. Every sample is decoded (min_beta 0, no caption
or condition dropped): the worst case; in training, dropped captions and conditions skip their term.

Models have random weights. By default the tiny test models (``tools/make_tiny_models.py``: clip-tiny,
segformer-face-tiny, vae-flux; the tiny DiT at 64 px) for a CPU run in seconds. ``--real-size`` builds
random-weight copies at the real shapes instead (the FLUX.1 VAE's config, Segformer MiT-b5 at
512, CLIP ViT-H/14 at 224 with a 1024-wide text tower, as in SD2.1's OpenCLIP) with the XL DiT: a GPU job.

Usage:
    python tools/bench_consistency.py --threads 1                          # CPU, tiny models, ~1 min
    python tools/bench_consistency.py --real-size --device cuda --res 256 --batch 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench_train import machine  # noqa: E402
from train.config import ConsistencyConfig  # noqa: E402
from train.consistency import ConsistencyLoss  # noqa: E402
from train.model import MMFaceDiT, MMFaceDiTConfig  # noqa: E402
from train.objectives import RectifiedFlow  # noqa: E402

FLUX = {"id": "bench", "scaling_factor": 0.3611, "shift_factor": 0.1159}
CAPTION = "a photo of a smiling young woman with long wavy brown hair, earrings and blue eyes"


def build_real(root: Path) -> dict[str, str]:
    """Random-weight CLIP ViT-H/14 (text 1024), Segformer MiT-b5 (19 classes, 512) and FLUX VAE into `root`."""
    from diffusers import AutoencoderKL
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    from tools.tiny_train_models import build_clip_tokenizer

    text = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")
    vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  image_size=224, patch_size=14, hidden_act="gelu")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)).save_pretrained(root / "clip")
    build_clip_tokenizer().save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(root / "clip")
    seg = SegformerConfig(depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768,
                          num_attention_heads=[1, 2, 5, 8], num_labels=19)
    SegformerForSemanticSegmentation(seg).save_pretrained(root / "parser")
    SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(root / "parser")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                  use_quant_conv=False, use_post_quant_conv=False).save_pretrained(root / "vae")
    return {k: str(root / k) for k in ("clip", "parser", "vae")}


def build_tiny() -> dict[str, str]:
    from tools.make_tiny_models import build

    return {"clip": str(build("clip-tiny")), "parser": str(build("segformer-face-tiny")), "vae": str(build("vae-flux"))}


def time_steps(cfg: MMFaceDiTConfig, loss_fn: ConsistencyLoss | None, args, device: torch.device) -> float:
    """Milliseconds per training step (after warmup)."""
    torch.manual_seed(0)
    model = MMFaceDiT(cfg).to(device)
    model.grad_ckpt = args.grad_ckpt
    for p in model.parameters():  # adaLN-zero makes every block the identity at init: time real blocks
        torch.nn.init.normal_(p, std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    b, lat = args.batch, args.res // 8
    x1 = torch.randn(b, cfg.latent_channels, lat, lat, device=device)
    c = {"cond": torch.randn_like(x1), "modality": torch.zeros(b, dtype=torch.long, device=device),
         "text": torch.randn(b, 77, cfg.text_dim, device=device), "pooled": torch.randn(b, cfg.text_dim, device=device),
         "drop_text": torch.zeros(b, dtype=torch.bool, device=device)}
    label = torch.randint(0, 19, (b, args.res, args.res), device=device)
    yes = torch.ones(b, dtype=torch.bool, device=device)
    extra = None if loss_fn is None else (lambda x0, tau: loss_fn(x0, tau, [CAPTION] * b, label, yes, yes))
    objective, gen = RectifiedFlow(), torch.Generator(device=device).manual_seed(0)
    bf16 = args.dtype == "bf16"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = objective.loss(model, x1, c, None, gen, extra)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    return 1000 * (time.perf_counter() - t0) / args.steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-size", action="store_true", help="XL DiT + real-shape VAE, CLIP ViT-H, MiT-b5 (GPU)")
    ap.add_argument("--res", type=int, default=None, help="image resolution (default 64 tiny, 256 real)")
    ap.add_argument("--batch", type=int, default=None, help="samples per step (default 4 tiny, 8 real)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default bf16 on GPU, fp32 on CPU")
    ap.add_argument("--grad-ckpt", action="store_true", help="checkpoint the DiT blocks and the VAE decoder")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (a shared CPU: 1 avoids oversubscription, which costs 10-50x here)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    args.res = args.res or (256 if args.real_size else 64)
    args.batch = args.batch or (8 if args.real_size else 4)
    args.steps = args.steps or 5
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_real(Path(tmp)) if args.real_size else build_tiny()
        text_dim = 1024 if args.real_size else 32
        cfg = MMFaceDiTConfig.from_size("XL" if args.real_size else "tiny", latent_channels=16, text_dim=text_dim)
        print(f"machine: {machine(device)}")
        print(f"MMFace-DiT-{'XL' if args.real_size else 'tiny'} at {args.res} px, batch {args.batch}, {args.dtype}, "
              f"{args.steps} timed steps after {args.warmup}; {'real-shape' if args.real_size else 'tiny'} "
              "VAE / CLIP / parser, random weights, every sample decoded")
        variants = {"none": None, "clip": {"parser": None}, "parser": {"clip": None}, "clip+parser": {}}
        rows = []
        for name, drop in variants.items():
            loss_fn = None
            if drop is not None:
                loss_fn = ConsistencyLoss(ConsistencyConfig(**{**paths, **drop}), FLUX, "diffusers", device,
                                          grad_ckpt=args.grad_ckpt)
            rows.append({"consistency": name, "step_ms": time_steps(cfg, loss_fn, args, device)})
    base = rows[0]["step_ms"]
    print(f"{'consistency':<12} | {'step ms':>9} | {'samples/s':>9} | vs none")
    print("-" * 13 + "+" + "-" * 11 + "+" + "-" * 11 + "+" + "-" * 8)
    for r in rows:
        r["ratio"] = r["step_ms"] / base
        print(f"{r['consistency']:<12} | {r['step_ms']:9.1f} | {1000 * args.batch / r['step_ms']:9.1f} | {r['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "real_size": args.real_size, "res": args.res,
                                         "batch": args.batch, "dtype": args.dtype, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parse and sketch model throughput: Segformer and U2Net images/s, batch 1 against batched, fp32 against bf16.

What is timed is what the stages run on the device per batch:
  segformer   model forward at the processor's size + bilinear upsampling of the logits to that size +
              argmax (the label map), on pre-normalised input already on the device
  u2net       forward at the model's size + 1 - d0 + per-image min-max + uint8 (the drawing)
  processor   the Segformer image processor on the CPU (resize 512, rescale, normalise), for comparison:
              on a GPU it can be the ceiling of the parse stage
Each row: images/s, ms per batch, speed-up over the batch-1 fp32 baseline (side by side), and the share
of the first-principles ceiling (FLOPs at 790 TFLOP/s: MiT-b5 3.6k img/s, U2Net 2.6k img/s on an H100).

Models are random-weight copies built from configs: `--real-size` builds MiT-b5 (depths 3/6/40/3,
widths 64/128/320/512, decoder 768, 19 labels) and the full U2NET(3,1) (44M parameters) at 512x512;
without it, the tiny test configs (Segformer at 128, U2Net at 256) for a CPU smoke run.
Needs torch and transformers (plus pillow/numpy); `pipeline/models/u2net.py` is loaded by file path,
so the rest of the pipeline and its dependencies need not be installed.

Usage:
    python tools/bench_parse.py                                   # CPU, tiny models
    python tools/bench_parse.py --real-size --device cuda         # GPU: b1 vs b32, fp32 vs bf16
    python tools/bench_parse.py --real-size --device cuda --only u2net --batch-sizes 1,8,32 --json u2.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CEILING = {"segformer": 3600.0, "u2net": 2600.0}  # img/s on one H100: model FLOPs at 790 TFLOP/s
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def load_u2net_module():
    """pipeline/models/u2net.py by path: no `pipeline` package import, no pyarrow/typer/... needed."""
    spec = importlib.util.spec_from_file_location("facecurate_u2net", ROOT / "pipeline" / "models" / "u2net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def segformer(real: bool):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    if real:  # MiT-b5, as jonathandinu/face-parsing
        cfg = SegformerConfig(depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], num_attention_heads=[1, 2, 5, 8],
                              sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=768, num_labels=19)
        return SegformerForSemanticSegmentation(cfg).eval(), 512
    cfg = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 2],
                          sr_ratios=[8, 4, 2, 1], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32, num_labels=19)
    return SegformerForSemanticSegmentation(cfg).eval(), 128


def u2net(real: bool):
    import torch

    torch.manual_seed(0)
    mod = load_u2net_module()
    return mod.U2NET(3, 1, "u2net" if real else "tiny").eval(), 512 if real else 256


def step_fn(kind: str, model, size: int):
    import torch
    import torch.nn.functional as F

    if kind == "segformer":
        def step(x):
            logits = model(pixel_values=x).logits  # (N, 19, size/4, size/4)
            up = F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)
            return up.argmax(1).to(torch.uint8)
    else:
        def step(x):
            d0 = 1.0 - model(x)[0][:, 0].float()
            lo = d0.amin((1, 2), keepdim=True)
            hi = d0.amax((1, 2), keepdim=True)
            return ((d0 - lo) / (hi - lo).clamp_min(1e-8) * 255).to(torch.uint8)
    return step


def time_it(step, x, sync, min_iters: int, min_seconds: float, warmup: int) -> tuple[float, int]:
    """Seconds per call (median over timed calls) and the number of calls timed."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            step(x)
        sync()
        times = []
        t_end = time.perf_counter() + min_seconds
        while len(times) < min_iters or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            step(x)
            sync()
            times.append(time.perf_counter() - t0)
            if len(times) >= 200:
                break
    return float(np.median(times)), len(times)


def bench_model(kind: str, args, device) -> list[dict]:
    import torch

    model, size = segformer(args.real_size) if kind == "segformer" else u2net(args.real_size)
    params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        m = model.to(device=device, dtype=dtype)
        if kind == "u2net" and device.type == "cuda" and args.channels_last:
            m = m.to(memory_format=torch.channels_last)
        step = step_fn(kind, m, size)
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, size, size, device=device, dtype=dtype)
            if kind == "u2net" and device.type == "cuda" and args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                sec, n = time_it(step, x, sync, args.min_iters, args.min_seconds, args.warmup)
            except torch.OutOfMemoryError:
                rows.append({"model": kind, "dtype": DTYPES[dtype_name], "batch": bs, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            rows.append({"model": kind, "params_m": params / 1e6, "size": size, "dtype": DTYPES[dtype_name],
                         "batch": bs, "img_s": bs / sec, "ms_batch": sec * 1e3, "iters": n, "peak_gib": mem})
    base = next((r["img_s"] for r in rows if r.get("img_s") and r["batch"] == min(args.batch_sizes)
                 and r["dtype"] == DTYPES[args.dtypes[0]]), None)
    for r in rows:
        if r.get("img_s") and base:
            r["vs_base"] = r["img_s"] / base
            if args.real_size and device.type == "cuda":
                r["of_ceiling"] = r["img_s"] / CEILING[kind]
    return rows


def bench_processor(n: int = 64) -> dict:
    """jonathandinu/face-parsing's processor settings on 1024x1024 uint8 images, one CPU process."""
    import torch
    from transformers import SegformerImageProcessor

    torch.set_num_threads(1)
    proc = SegformerImageProcessor(size={"height": 512, "width": 512}, do_reduce_labels=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (1024, 1024, 3), np.uint8) for _ in range(8)]
    proc(images=images[:2], return_tensors="pt")
    t0 = time.perf_counter()
    for _ in range(0, n, 8):
        proc(images=images, return_tensors="pt")
    sec = time.perf_counter() - t0
    return {"model": "processor (1 CPU thread)", "batch": 8, "img_s": n / sec, "ms_batch": sec / (n / 8) * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--real-size", action="store_true", help="MiT-b5 and full U2Net at 512 (GPU)")
    ap.add_argument("--only", choices=["segformer", "u2net"], action="append", help="limit to these models")
    ap.add_argument("--batch-sizes", default=None, help="comma list (default 1,32 on CUDA, 1,8 on CPU)")
    ap.add_argument("--dtypes", default=None, help="comma list of float32,bfloat16,float16 (default fp32,bf16 on CUDA)")
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="U2Net on CUDA runs channels-last by default (faster convolutions)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    import torch

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,32" if cuda else "1,8")).split(",")]
    args.dtypes = (args.dtypes or ("float32,bfloat16" if cuda else "float32")).split(",")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows use TF32 tensor cores, as deployed
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {'real-size' if args.real_size else 'tiny'} models")
    rows = []
    for kind in args.only or ["segformer", "u2net"]:
        rows += bench_model(kind, args, device)
    if "segformer" in (args.only or ["segformer"]):
        rows.append(bench_processor())
    header = f"{'model':<26}{'dtype':>6}{'batch':>7}{'img/s':>10}{'ms/batch':>10}{'vs b1':>8}{'of ceiling':>12}{'peak GiB':>10}"
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<26}{r['dtype']:>6}{r['batch']:>7}  {r['error']}")
            continue
        vs = f"{r['vs_base']:.2f}x" if "vs_base" in r else "-"
        ceiling = f"{r['of_ceiling']:.1%}" if "of_ceiling" in r else "-"
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
        print(f"{r['model']:<26}{r.get('dtype', '-'):>6}{r['batch']:>7}{r['img_s']:>10.1f}{r['ms_batch']:>10.1f}"
              f"{vs:>8}{ceiling:>12}{peak:>10}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

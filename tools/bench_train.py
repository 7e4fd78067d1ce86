"""Benchmark MMFace-DiT training steps: samples/s, achieved TFLOP/s, MFU and peak memory, per attention backend
and gradient-checkpointing setting, on random weights and random inputs (no data, no hub, torch + einops only).

Usage:
    python tools/bench_train.py --size tiny                                  # CPU, well under a minute
    python tools/bench_train.py --size XL --res 256 --batch 32               # GPU: all backends, ckpt on/off
    python tools/bench_train.py --size XL --attn flash --grad-ckpt off --compile

A step is what the trainer runs: rectified-flow loss under bf16 autocast (fp32 on CPU), backward, gradient
clipping, AdamW (fused on CUDA). FLOPs per sample are counted analytically (``MMFaceDiTConfig.train_flops``):

    train = 3 x forward
    forward = 2 x (N x depth x 12 h^2            per-token stream weights: qkv 3h^2, out h^2, MLP 8h^2
                   + N_img x 3 C p^2 h           patch embedder (2C in) and final layer (C out)
                   + N_txt x 1024 h              CLIP states -> text tokens
                   + depth x 12 h^2 + ...)       adaLN and embedders, once per sample
              + depth x 4 N^2 h                  attention: QK^T and AV over N = N_img + N_txt tokens

i.e. "6 x params x tokens" with each token counting only the weights it passes, plus attention. XL at 256 px
(N = 256 + 77) is 0.94 TFLOP per sample; at 512 px 3.42 TFLOP (6 x params x tokens plus attention). Recomputation under gradient
checkpointing is not counted (that is MFU, not hardware utilisation), so checkpointing shows as lower MFU.
MFU is reported against the GPU's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s) and against the practical
790 TFLOP/s a well-tuned H100 kernel sustains; on CPU against a measured fp32 matmul rate (or --peak-tflops).
The baseline column is samples/s relative to math (unfused) attention at the same checkpointing setting.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train.model import MMFaceDiT, MMFaceDiT_models, MMFaceDiTConfig, count_params, peak_tflops  # noqa: E402

PRACTICAL_PEAK = 790.0  # TFLOP/s: what a well-tuned H100 matmul sustains (80% of dense bf16 peak)
BACKENDS = ("flash", "efficient", "math")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, {torch.get_num_threads()} CPU threads")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def sdpa_context(backend: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "math": SDPBackend.MATH}[backend])


def profile_steps(step, sync, device: torch.device, steps: int = 2, rows: int = 30) -> None:
    """Print the kernels that take the time in `steps` training steps (torch.profiler, self device time)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
        try:
            print(events.table(sort_by=key, row_limit=rows, max_name_column_width=70))
            return
        except (AttributeError, KeyError, ValueError):
            continue


def run_one(cfg: MMFaceDiTConfig, args, device: torch.device, backend: str, grad_ckpt: bool) -> dict:
    from train.objectives import RectifiedFlow

    torch.manual_seed(0)
    model = MMFaceDiT(cfg).to(device)
    model.grad_ckpt = grad_ckpt
    for p in model.parameters():  # adaLN-zero makes every block the identity at init: time real blocks
        torch.nn.init.normal_(p, std=0.02)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    objective = RectifiedFlow()
    lat = args.res // 8
    b, c = args.batch, cfg.latent_channels
    x1 = torch.randn(b, c, lat, lat, device=device)
    cond = {"cond": torch.randn(b, c, lat, lat, device=device), "modality": torch.randint(0, 2, (b,), device=device),
            "text": torch.randn(b, args.text_len, cfg.text_dim, device=device),
            "pooled": torch.randn(b, cfg.text_dim, device=device),
            "drop_text": torch.zeros(b, dtype=torch.bool, device=device)}
    bf16 = args.dtype == "bf16"
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        with sdpa_context(backend):  # backward too: checkpointed blocks recompute attention there
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = objective.loss(step_model, x1, cond, None, gen)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        gc.collect()  # the previous configuration's model and optimizer
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for _ in range(args.warmup):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        dt = time.perf_counter() - t0
        if getattr(args, "profile", False):
            profile_steps(step, sync, device)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:  # an unsupported backend or OOM is a row, not a crash
        text = str(e).splitlines()[0]
        msg = ("OOM" if isinstance(e, torch.cuda.OutOfMemoryError) else
               "n/a: no such SDPA kernel here" if "No viable backend" in text else f"error: {text[:40]}")
        return {"attn": backend, "grad_ckpt": grad_ckpt, "error": msg}
    mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    sps = args.steps * b / dt
    tflops = cfg.train_flops(lat, lat, args.text_len) * sps / 1e12
    return {"attn": backend, "grad_ckpt": grad_ckpt, "samples_per_s": sps, "tflops": tflops,
            "step_ms": 1000 * dt / args.steps, "peak_mem_gib": mem / 2**30}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(MMFaceDiT_models), default="tiny")
    ap.add_argument("--res", type=int, default=256, help="image resolution (latents are res/8)")
    ap.add_argument("--batch", type=int, default=None, help="per-step batch (default 32 on GPU, 4 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 5 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on GPU, 2 on CPU)")
    ap.add_argument("--attn", choices=[*BACKENDS, "all"], default="all")
    ap.add_argument("--grad-ckpt", choices=["on", "off", "both"], default="both")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default bf16 on GPU, fp32 on CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument("--profile", action="store_true", help="after timing, print the top kernels of 2 steps")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak for MFU (default: GPU table, H100/H200 bf16 dense 989; CPU: measured matmul)")
    ap.add_argument("--latent-channels", type=int, default=16, help="16 (FLUX VAE) or 4 (SD VAE)")
    ap.add_argument("--text-len", type=int, default=77)
    ap.add_argument("--text-dim", type=int, default=1024, help="CLIP width (SD2.1: 1024)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (32 if gpu else 4)
    args.steps = args.steps or (20 if gpu else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = MMFaceDiTConfig.from_size(args.size, latent_channels=args.latent_channels, text_dim=args.text_dim)
    peak, peak_from = peak_tflops(device, args.peak_tflops)
    with torch.device("meta"):
        n_params = count_params(MMFaceDiT(cfg))
    lat = args.res // 8
    flops = cfg.train_flops(lat, lat, args.text_len)
    print(f"machine: {machine(device)}")
    print(f"model: MMFace-DiT-{args.size} ({cfg.depth} x {cfg.hidden_size}, {cfg.num_heads} heads, {n_params:,} params), "
          f"{args.res} px -> {(lat // cfg.patch_size) ** 2} image + {args.text_len} text tokens, batch {args.batch}, "
          f"{args.dtype}{', compiled' if args.compile else ''}, {args.steps} timed steps after {args.warmup}")
    print(f"FLOPs per training sample: {flops / 1e9:,.2f} GFLOP; MFU peak: "
          + (f"{peak:.3g} TFLOP/s ({peak_from})" if peak else f"unknown ({peak_from}); pass --peak-tflops")
          + (f"; also against the practical {PRACTICAL_PEAK:.0f}" if gpu else ""))

    backends = BACKENDS if args.attn == "all" else (args.attn,)
    ckpts = {"on": (True,), "off": (False,), "both": (False, True)}[args.grad_ckpt]
    rows = [run_one(cfg, args, device, be, gc) for gc in ckpts for be in backends]
    base = {r["grad_ckpt"]: r["samples_per_s"] for r in rows if r["attn"] == "math" and "error" not in r}
    head = ["config", "samples/s", "step ms", "TFLOP/s", "MFU"] + (["MFU@790"] if gpu else []) + ["peak mem", "vs math"]
    table = []
    for r in rows:
        name = f"{args.size} {args.res}px attn={r['attn']} ckpt={'on' if r['grad_ckpt'] else 'off'}"
        if "error" in r:
            table.append([name, r["error"]] + [""] * (len(head) - 2))
            continue
        ratio = r["samples_per_s"] / base[r["grad_ckpt"]] if r["grad_ckpt"] in base else None
        table.append([name, f"{r['samples_per_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['tflops']:.3g}",
                      f"{100 * r['tflops'] / peak:.1f}%" if peak else "-"]
                     + ([f"{100 * r['tflops'] / PRACTICAL_PEAK:.1f}%"] if gpu else [])
                     + [f"{r['peak_mem_gib']:.2f} GiB{'' if gpu else ' RSS'}", f"{ratio:.2f}x" if ratio else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=True)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head))
    print("-+-".join("-" * w for w in widths))
    for row in table:
        print(fmt.format(*row))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "size": args.size, "res": args.res,
                                         "batch": args.batch, "dtype": args.dtype, "flops_per_sample": flops,
                                         "peak_tflops": peak, "peak_from": peak_from, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

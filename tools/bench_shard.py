"""Shard write and read throughput against plain tarfile, and VAE encode throughput.

Write (N synthetic samples shaped like real ones at --resolution: JPEG photo, PNG mask and sketch, ten
captions, FLUX and SD latents of image/mask/sketch, json):
  floor       tarfile.open("w") + addfile of the same members from memory, then fsync (one pass)
  stage       what the shard stage's workers do besides decoding: tar fragment + atomic write per sample
  assemble    what finalize does: plan + concatenate fragments into shards + sha256 + fsync + rename
  webdataset  webdataset.ShardWriter on the same members (when installed), for reference
Read (samples/s over the shards just written, warm page cache; each reader once to warm up, then
--read-repeats rounds (decoded: --decode-repeats) in rotating order; medians, and the median of the
per-round time ratios to webdataset's, so other work on the machine moves both sides of a ratio alike):
  bare tar    tarfile streaming over a buffered file, every member's bytes read
  ours        pipeline.data.wds.iter_tar (grouped by sample); + decode: every field decoded (PIL, json, npy)
  webdataset  WebDataset(urls) raw iteration (the baseline), and with the dataset card's decode recipe
VAE encode (images/s; image, mask and sketch all count as images):
  tiny        the tiny FLUX-layout VAE through LatentsStage.encode on the CPU (fp32)
  --real-size the FLUX.1 VAE architecture (block_out 128/256/512/512, 2 layers per block, 16 latent
              channels, no quant convs) and the SD VAE (4 channels, quant convs) with random weights,
              at 256 and 512 px on CUDA in bf16; needs torch and diffusers only. First-principles
              ceilings (encoder FLOPs at 790 TFLOP/s on one H100: ~2.9k img/s at 256, ~700 at 512) are printed alongside.

Usage:
  python tools/bench_shard.py                          # write, read, tiny VAE on this machine
  python tools/bench_shard.py --n 4000 --resolution 512
  python tools/bench_shard.py --real-size              # everything, on a CUDA machine
  python tools/bench_shard.py --only real              # only the real-size VAEs (torch + diffusers)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CEILING = {256: 2900.0, 512: 700.0}  # img/s, FLUX/SD VAE encoder FLOPs at 790 TFLOP/s on one H100


def make_samples(n: int, res: int) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(field, bytes)]) like real samples; photos are crops of skimage's astronaut plus noise."""
    from PIL import Image
    from skimage import data

    from pipeline.data.arrays import npy_bytes

    base = np.asarray(Image.fromarray(data.astronaut()).resize((res + 64, res + 64)))
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        y, x = rng.integers(0, 64, 2)
        photo = np.clip(base[y:y + res, x:x + res].astype(np.int16) + rng.integers(-6, 6, (res, res, 3)), 0, 255)
        label = np.zeros((res, res), np.uint8)
        label[res // 8: -res // 8, res // 5: -res // 5] = 1
        label[: res // 3, res // 4: -res // 4] = 13
        sketch = np.where(rng.random((res, res)) < 0.08, 0, 255).astype(np.uint8)
        fields = []
        for ext, arr, fmt in (("jpg", photo.astype(np.uint8), "JPEG"), ("mask.png", label, "PNG"), ("sketch.png", sketch, "PNG")):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
            fields.append((ext, buf.getvalue()))
        fields.append(("captions.json", json.dumps([f"a photo of face {i}, caption {j}" for j in range(10)]).encode()))
        for vae, ch in (("flux", 16), ("sd", 4)):
            for kind in ("latent", "mask_latent", "sketch_latent"):
                fields.append((f"{vae}.{kind}.npy", npy_bytes(rng.standard_normal((ch, res // 8, res // 8)).astype(np.float16))))
        fields.append(("json", json.dumps({"key": f"bench/{i:06d}", "resolution": res, "class_pixels": [0] * 19}).encode()))
        samples.append((f"bench/{i:06d}", fields))
    return samples


def bench_write(samples: list, work: Path, max_bytes: int) -> tuple[dict[str, float], Path]:
    from pipeline.core.ledger import atomic_write_bytes
    from pipeline.data.shard_assembly import assemble, plan_shards
    from pipeline.data.wds import encode_key, sample_fragment
    from pipeline.stages.shard import ShardConfig

    payload = sum(len(d) for _, fields in samples for _, d in fields)
    results: dict[str, float] = {"payload MB": payload / 1e6}

    t0 = time.perf_counter()
    floor = work / "floor.tar"
    with tarfile.open(floor, "w", format=tarfile.PAX_FORMAT) as tf:
        for key, fields in samples:
            for ext, data in fields:
                info = tarfile.TarInfo(f"{encode_key(key)}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with open(floor, "rb+") as f:
        os.fsync(f.fileno())
    results["floor"] = time.perf_counter() - t0

    out = work / "run"
    t0 = time.perf_counter()
    rows = []
    for key, fields in samples:
        data = sample_fragment(key, fields)
        rel = f"shards/.samples/{key}.0.tar"
        atomic_write_bytes(out / rel, data)
        rows.append({"key": key, "split": "train", "staged": rel, "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()})
    results["stage"] = time.perf_counter() - t0
    cfg = ShardConfig(max_bytes=max_bytes, max_samples=10**9)
    t0 = time.perf_counter()
    assemble(out, plan_shards(rows, cfg), restage=lambda keys: None)
    results["assemble"] = time.perf_counter() - t0
    try:
        import webdataset as wds

        t0 = time.perf_counter()
        (work / "wds").mkdir()
        with wds.ShardWriter(str(work / "wds" / "s-%06d.tar"), maxsize=max_bytes, maxcount=10**9, verbose=0) as w:
            for key, fields in samples:
                w.write({"__key__": encode_key(key), **dict(fields)})
        results["webdataset"] = time.perf_counter() - t0
    except ImportError:
        pass
    return results, out / "shards"


def bench_read(shards: Path, n: int, repeats: int = 5, decode_repeats: int = 3) -> dict[str, tuple[float, float | None]]:
    """{reader: (median seconds, median ratio of its time to webdataset's in the same round, or None)}."""
    from pipeline.data.wds import decode_sample, iter_tar

    urls = sorted(str(p) for p in shards.glob("train-*.tar"))

    def bare() -> int:  # the fastest plain tarfile read: streaming over a buffered file
        members = 0
        for u in urls:
            with open(u, "rb", buffering=1 << 20) as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
                for m in tf:
                    tf.extractfile(m).read()  # type: ignore[union-attr]
                    members += 1
        return members

    def ours_raw() -> int:
        return sum(1 for u in urls for _ in iter_tar(u))

    def ours_decoded() -> int:
        return sum(1 for u in urls for _, f in iter_tar(u) if decode_sample(f) is not None)

    raw = {"bare tar": bare, "ours raw": ours_raw}
    decoded = {"ours decoded": ours_decoded}
    try:
        import webdataset as wds
        from PIL import Image

        grey = lambda b: np.asarray(Image.open(io.BytesIO(b)))  # noqa: E731 - the dataset card's recipe
        raw["webdataset raw"] = lambda: sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
        decoded["webdataset decoded"] = lambda: sum(1 for _ in wds.WebDataset(urls, shardshuffle=False).decode(
            wds.handle_extension("mask.png sketch.png", grey), "rgb8"))
    except ImportError:
        pass
    times: dict[str, list[float]] = {}
    for group, rounds in ((raw, repeats), (decoded, decode_repeats)):
        names = list(group)
        for name in names:  # warm-up: page cache, imports, first-call costs
            got = group[name]()
            assert name == "bare tar" or got == n, (name, got, n)
        for r in range(max(1, rounds)):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                group[name]()
                times.setdefault(name, []).append(time.perf_counter() - t0)
    out: dict[str, tuple[float, float | None]] = {}
    for name, ts in times.items():
        base = times.get("webdataset decoded" if "decoded" in name else "webdataset raw")
        ratio = statistics.median(a / b for a, b in zip(ts, base, strict=True)) if base else None
        out[name] = (statistics.median(ts), ratio)
    return out


def bench_tiny_vae(res: int, n: int, batch: int) -> float:
    from pipeline.core.stage import StageContext
    from pipeline.stages.latents import LatentsConfig, LatentsStage, VaeSpec
    from tools import make_tiny_models

    folder = make_tiny_models.build("vae-flux")
    cfg = LatentsConfig(models={"flux": VaeSpec(str(folder))}, resolution=res, batch_size=batch)
    stage = LatentsStage(cfg, StageContext(Path(tempfile.gettempdir())))
    x = np.random.default_rng(0).uniform(-1, 1, (n, 3, res, res)).astype(np.float32)
    stage.encode("flux", x[:batch])  # warm-up
    t0 = time.perf_counter()
    stage.encode("flux", x)
    return n / (time.perf_counter() - t0)


def real_vae(kind: str):
    """Real-size FLUX.1 or SD VAE architecture with random weights (torch + diffusers only)."""
    from diffusers import AutoencoderKL

    flux = kind == "flux"
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=16 if flux else 4, norm_num_groups=32,
                         scaling_factor=0.3611 if flux else 0.18215, shift_factor=0.1159 if flux else None,
                         use_quant_conv=not flux, use_post_quant_conv=not flux)


def bench_real_vae(kind: str, res: int, batch: int, steps: int, channels_last: bool) -> tuple[float, float]:
    """(images/s, peak GiB) of `encode(x).latent_dist.mean` on CUDA in bf16."""
    import torch

    vae = real_vae(kind).to("cuda", torch.bfloat16).eval().requires_grad_(False)  # decoder too, as in the stage
    x = torch.randn(batch, 3, res, res, device="cuda", dtype=torch.bfloat16)
    if channels_last:
        vae = vae.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for _ in range(3):
            vae.encode(x).latent_dist.mean.float().cpu()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            vae.encode(x).latent_dist.mean.float().cpu()  # the copy to host is part of the stage's work
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0), torch.cuda.max_memory_allocated() / 2**30


def _print(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    w = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{w}}  {value:>14}  {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="samples for write/read")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--max-mb", type=float, default=100.0, help="shard size for the benchmark")
    ap.add_argument("--only", choices=["write", "vae", "real"],
                    help="write (shard write + read), vae (tiny VAE on CPU) or real (real-size VAEs on CUDA: "
                         "imports torch and diffusers only)")
    ap.add_argument("--real-size", action="store_true", help="also run the real-size FLUX/SD VAEs on CUDA (bf16)")
    ap.add_argument("--steps", type=int, default=20, help="timed batches per real-size VAE measurement")
    ap.add_argument("--read-repeats", type=int, default=5, help="timed rounds of the raw shard readers")
    ap.add_argument("--decode-repeats", type=int, default=3, help="timed rounds of the decoding shard readers")
    args = ap.parse_args(argv)
    print(f"bench_shard: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")

    if args.only in (None, "write"):
        work = Path(tempfile.mkdtemp(prefix="bench_shard-", dir=ROOT / ".cache" if (ROOT / ".cache").is_dir() else None))
        try:
            t0 = time.perf_counter()
            samples = make_samples(args.n, args.resolution)
            print(f"made {args.n} samples at {args.resolution} px in {time.perf_counter() - t0:.1f} s")
            w, shards = bench_write(samples, work, int(args.max_mb * 1e6))
            mb = w.pop("payload MB")
            rows = [(k, f"{mb / s:,.0f} MB/s", f"{args.n / s:,.0f} samples/s, {s / w['floor']:.2f}x the floor's time")
                    for k, s in w.items()]
            both = w["stage"] + w["assemble"]
            rows.append(("stage+assemble", f"{mb / both:,.0f} MB/s", f"{both / w['floor']:.2f}x the floor's time "
                                                                      "(our bytes go to disk twice)"))
            _print(f"write {mb:,.0f} MB of samples ({mb * 1e6 / args.n / 1e3:,.0f} kB each)", rows)
            r = bench_read(shards, args.n, args.read_repeats, args.decode_repeats)
            _print(f"read (warm cache; medians of {args.read_repeats} rounds, decoded {args.decode_repeats})",
                   [(k, f"{args.n / s:,.0f} samples/s",
                     f"{s / r['bare tar'][0]:.2f}x the bare tar's time"
                     + (f", {ratio:.2f}x webdataset's (median of paired rounds)" if ratio is not None else ""))
                    for k, (s, ratio) in r.items()])
        finally:
            shutil.rmtree(work, ignore_errors=True)

    if args.only in (None, "vae"):
        rows = []
        for res, batch in ((64, 32), (128, 16)):
            ips = bench_tiny_vae(res, 128, batch)
            rows.append((f"tiny flux {res}px cpu fp32", f"{ips:,.0f} img/s", f"batch {batch}"))
        _print("VAE encode, tiny (CPU)", rows)
    if args.real_size or args.only == "real":
        import torch

        if not torch.cuda.is_available():
            print("\n--real-size needs a CUDA device; skipped")
            return 0
        rows = []
        for kind in ("flux", "sd"):
            for res, batch in ((256, 64), (512, 16)):
                for cl in (False, True):
                    ips, gib = bench_real_vae(kind, res, batch, args.steps, cl)
                    rows.append((f"{kind} {res}px bf16{' channels_last' if cl else ''}", f"{ips:,.0f} img/s",
                                 f"batch {batch}, peak {gib:.1f} GiB, {100 * ips / CEILING[res]:.0f}% of the "
                                 f"{CEILING[res]:,.0f} img/s ceiling"))
        _print(f"VAE encode, real size, random weights ({torch.cuda.get_device_name()})", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

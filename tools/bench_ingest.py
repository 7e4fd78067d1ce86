"""Ingest throughput against the floor: the plain loop a user would write to do ingest's own work.

Generates N distinct 512px JPEGs (cached in .cache/bench/), then times, on warm page cache:
  floor        a plain loop doing what ingest does per file at its default `verify: fast` (1 core):
               walk the tree (os.scandir recursion + stat, image extensions only), read the bytes,
               sha256, PIL header (format, mode, size, EXIF orientation), the format's structure check
               (JPEG: end-of-image marker after the scan starts, the same `jpeg_complete` ingest calls;
               PNG: PIL verify; WebP/BMP: decode), results kept in a list (no files written)
  local        `ingest` stage, local runner, verify=fast (scan, checks, ledger parts, index, ignored.tsv)
  local/decode the same with verify=decode (full decode of every image)
  ray          `ingest` stage on Ray Data (actor pool sized from the cluster; ray.init timed apart)
The floor and local ingest are timed in pairs (--repeats, default 5; which goes first alternates), and
the medians are printed: images/s from the median times, the ratio as the median of the per-pair
ratios (wall, and CPU time, which other work on a shared machine moves less), so a busy machine still
gives a steady ratio. Also images/s per core used (target: local ingest within 1.3x the floor's time).

Usage: python tools/bench_ingest.py [--n 2000] [--repeats 5] [--no-ray]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, n: int) -> list[Path]:
    stamp = folder / f".done-{n}"
    files = sorted(folder.glob("*.jpg"))
    if stamp.exists() and len(files) == n:
        return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from skimage import data

    base = np.asarray(Image.fromarray(data.astronaut()).resize((640, 640)))
    rng = np.random.default_rng(0)
    for i in range(n):
        y, x = rng.integers(0, 128, 2)
        crop = base[y:y + 512, x:x + 512].astype(np.int16) + rng.integers(-8, 8, (512, 512, 3))
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", "JPEG", quality=90)
    stamp.write_text("ok")
    return sorted(folder.glob("*.jpg"))


def floor(root: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of the plain loop (module docstring): ingest's per-file work at verify=fast."""
    from pipeline.data.images import EXTENSIONS, exif_orientation
    from pipeline.stages.ingest import jpeg_complete

    t0, c0 = time.perf_counter(), time.process_time()
    rows, stack = [], [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir():
                    stack.append(e.path)
                    continue
                if e.name.startswith(".") or os.path.splitext(e.name)[1].lower() not in EXTENSIONS:
                    continue
                st = e.stat()
                with open(e.path, "rb") as f:
                    data = f.read()
                sha = hashlib.sha256(data).hexdigest()
                img = Image.open(io.BytesIO(data))
                fmt, (w, h), orientation = img.format, img.size, exif_orientation(img)
                if fmt == "JPEG":
                    ok = jpeg_complete(data)
                elif fmt == "PNG":
                    Image.open(io.BytesIO(data)).verify()
                    ok = True
                else:
                    img.load()
                    ok = True
                rows.append((e.path, st.st_size, st.st_mtime_ns, sha, fmt, img.mode, w, h, orientation, ok))
    seconds = time.perf_counter() - t0, time.process_time() - c0
    assert all(r[-1] for r in rows), "a bench image failed the check"
    return seconds


def ingest(folder: Path, runner: str, verify: str = "fast") -> tuple[float, float]:
    """(wall, cpu) seconds of the `ingest` stage over `folder` into a fresh output folder (this process's
    CPU time: with Ray, the workers' time is not in it)."""
    from pipeline.core.config import RunnerConfig
    from pipeline.core.manifest import build_manifest
    from pipeline.core.runner import run_stage
    from pipeline.core.stage import StageContext

    m = build_manifest({"stages": {"ingest": {"sources": [{"path": str(folder)}], "verify": verify,
                                              "batch_size": 256}}}, None)
    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), time.process_time()
        result = run_stage("ingest", m.stages["ingest"], StageContext(Path(out)), RunnerConfig(kind=runner))
        seconds = time.perf_counter() - t0, time.process_time() - c0
    assert result.ok == result.inputs, result
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5, help="alternating floor/ingest pairs; medians are shown")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args(argv)
    cache = Path(os.environ.get("FACECURATE_CACHE", ROOT / ".cache"))
    folder = cache / "bench" / "ingest-512"
    files = make_images(folder, args.n)
    floor(folder)  # warm the page cache
    ingest(folder, "local")  # and the imports: both methods are timed in steady state
    pairs = []
    for i in range(max(1, args.repeats)):  # (floor, ingest) (wall, cpu) seconds; which goes first alternates
        if i % 2:
            g = ingest(folder, "local")
            pairs.append((floor(folder), g))
        else:
            f = floor(folder)
            pairs.append((f, ingest(folder, "local")))
    ratio = statistics.median(g[0] / f[0] for f, g in pairs)
    cpu_ratio = statistics.median(g[1] / f[1] for f, g in pairs)
    base = statistics.median(f[0] for f, _ in pairs)
    rows = [("floor: walk+stat+read+sha256+header+EOI", base, 1, 1.0)]
    rows.append(("ingest, local runner", statistics.median(g[0] for _, g in pairs), 1, ratio))
    decode = ingest(folder, "local", "decode")[0]
    rows.append(("ingest, local, verify=decode", decode, 1, decode / base))
    if not args.no_ray:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        from pipeline.core.config import RunnerConfig
        from pipeline.core.runner import ray_init

        t0 = time.perf_counter()
        ray_init(RunnerConfig(kind="ray"))
        init = time.perf_counter() - t0
        cpus = int(ray.cluster_resources().get("CPU", 1))
        secs = ingest(folder, "ray")[0]
        rows.append((f"ingest, ray runner (ray.init {init:.1f} s apart)", secs, max(1, cpus - 1), secs / base))
        ray.shutdown()
    print(f"\ningest benchmark: {len(files):,} JPEGs 512x512 (~{files[0].stat().st_size // 1024} KB), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'method':46s} {'images/s':>10s} {'per core':>10s} {'time vs floor':>14s}")
    for name, secs, cores, vs in rows:
        rate = len(files) / secs
        print(f"{name:46s} {rate:10,.0f} {rate / cores:10,.0f} {vs:13.2f}x")
    print(f"local ingest / floor: {ratio:.2f}x the floor's wall time, {cpu_ratio:.2f}x its CPU time (medians of "
          f"{len(pairs)} paired runs; target 1.30x; wall ratios {', '.join(f'{g[0] / f[0]:.2f}' for f, g in pairs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ingest throughput against the floor: a plain PIL open + verify + sha256 loop over the same files.

Generates N distinct 512px JPEGs (cached in .cache/bench/), then times, on warm page cache:
  floor        read bytes, sha256, PIL open + verify (1 core)
  local        `ingest` stage, local runner, verify=fast (scan, checks, ledger parts, index)
  local/decode the same with verify=decode (full decode of every image)
  ray          `ingest` stage on Ray Data (actor pool sized from the cluster; ray.init timed apart)
and prints images/s, images/s per core used, and the ratio to the floor (target: local within 1.3x).

Usage: python tools/bench_ingest.py [--n 2000] [--no-ray]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
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


def floor(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for f in files:
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        Image.open(io.BytesIO(data)).verify()
    return time.perf_counter() - t0


def ingest(folder: Path, runner: str, verify: str = "fast") -> float:
    from pipeline.core.config import RunnerConfig
    from pipeline.core.manifest import build_manifest
    from pipeline.core.runner import run_stage
    from pipeline.core.stage import StageContext

    m = build_manifest({"stages": {"ingest": {"sources": [{"path": str(folder)}], "verify": verify,
                                              "batch_size": 256}}}, None)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run_stage("ingest", m.stages["ingest"], StageContext(Path(out)), RunnerConfig(kind=runner))
        seconds = time.perf_counter() - t0
    assert result.ok == result.inputs, result
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args(argv)
    cache = Path(os.environ.get("FACECURATE_CACHE", ROOT / ".cache"))
    folder = cache / "bench" / "ingest-512"
    files = make_images(folder, args.n)
    floor(files)  # warm the page cache
    ingest(folder, "local")  # and the imports: both methods are timed in steady state
    rows = [("floor: PIL open+verify+sha256", floor(files), 1)]
    rows.append(("ingest, local runner", ingest(folder, "local"), 1))
    rows.append(("ingest, local, verify=decode", ingest(folder, "local", "decode"), 1))
    if not args.no_ray:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        from pipeline.core.config import RunnerConfig
        from pipeline.core.runner import ray_init

        t0 = time.perf_counter()
        ray_init(RunnerConfig(kind="ray"))
        init = time.perf_counter() - t0
        cpus = int(ray.cluster_resources().get("CPU", 1))
        rows.append((f"ingest, ray runner (ray.init {init:.1f} s apart)", ingest(folder, "ray"), max(1, cpus - 1)))
        ray.shutdown()
    base = rows[0][1]
    print(f"\ningest benchmark: {len(files):,} JPEGs 512x512 (~{files[0].stat().st_size // 1024} KB), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'method':46s} {'images/s':>10s} {'per core':>10s} {'time vs floor':>14s}")
    for name, secs, cores in rows:
        rate = len(files) / secs
        print(f"{name:46s} {rate:10,.0f} {rate / cores:10,.0f} {secs / base:13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

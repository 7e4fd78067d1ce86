"""Benchmark `facecurate verify` against what a user would otherwise run: `sha256sum` over the files.

Builds a run of N keys (ingested JPEGs, then per key a 256x256 mask PNG, a sketch PNG and a FLUX-sized
latents npz with their ledger rows, as the parse, sketch and latents stages write them), then times:

  floor        `sha256sum` (coreutils, C) over every file verify must look at: a checksum of each
               file and nothing else (no structure, no decode, no ledger);
  verify fast  ledger parts in full, index, every image re-hashed, PNG chunk CRCs, latents sha256 +
               zip CRCs;
  verify full  the same, every mask/sketch decoded and range-checked, every array loaded.

Usage: python tools/bench_verify.py [--n 2000] [--out .cache/bench-verify]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core.ledger import Ledger, atomic_write_bytes  # noqa: E402
from pipeline.core.manifest import build_manifest  # noqa: E402
from pipeline.core.run import run_manifest  # noqa: E402
from pipeline.core.stage import StageContext  # noqa: E402
from pipeline.data.arrays import npy_bytes, pack_npz  # noqa: E402
from pipeline.ops.verify import verify_run  # noqa: E402

QUIET = Console(stderr=True, quiet=True)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, "PNG")
    return buf.getvalue()


def build(out: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    src = out.parent / f"{out.name}-photos"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    src.mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 255, (16, 16, 3), np.uint8).repeat(16, 0).repeat(16, 1)
        Image.fromarray(img).save(src / f"{i:06d}.jpg", quality=90)
    run_manifest(build_manifest({"stages": {"ingest": {"sources": [{"path": str(src), "name": "b"}]}}}, None),
                 out, console=QUIET)
    keys = StageContext(out).index(["key"])["key"].to_pylist()
    parse, sketches, latents = [], [], []
    base = np.zeros((256, 256), np.uint8)
    base[64:200, 64:200] = 1
    base[80:100, 90:110] = 4
    import hashlib

    for i, key in enumerate(keys):
        label = np.roll(base, i % 17, axis=1)
        atomic_write_bytes(out / "masks" / f"{key}.png", png(label))
        parse.append({"key": key, "status": "ok", "error": "", "_fp": "p", "mask": f"masks/{key}.png"})
        atomic_write_bytes(out / "sketches" / f"{key}.png", png(255 - label * 40))
        sketches.append({"key": key, "status": "ok", "error": "", "_fp": "s", "sketch": f"sketches/{key}.png"})
        arrays = {k: npy_bytes(rng.standard_normal((16, 32, 32)).astype(np.float16)) for k in ("image", "mask", "sketch")}
        data = pack_npz(arrays)
        rel = f"latents/flux/{key}.npz"
        atomic_write_bytes(out / rel, data)
        latents.append({"key": key, "status": "ok", "error": "", "_fp": "l", "vae": "flux", "file": rel,
                        "sha256": hashlib.sha256(data).hexdigest()})
    for name, rows in (("parse", parse), ("sketches", sketches), ("latents", latents)):
        Ledger(out, name).write(pa.Table.from_pylist(rows))
    return [*src.iterdir(), *(p for d in ("masks", "sketches", "latents") for p in (out / d).rglob("*") if p.is_file()),
            *out.rglob("part-*.parquet"), out / "index.parquet"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench-verify")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (warm page cache)")
    args = ap.parse_args(argv)
    files = build(args.out, args.n)
    size = sum(p.stat().st_size for p in files)
    print(f"{args.n:,} keys: {len(files):,} files, {size / 1e6:,.1f} MB")
    listing = "\0".join(str(p) for p in files).encode()

    def floor() -> None:
        subprocess.run(["xargs", "-0", "sha256sum"], input=listing, stdout=subprocess.DEVNULL, check=True)

    def verify(depth: str):
        def go() -> None:
            problems, _ = verify_run(args.out, QUIET, depth)
            assert not problems, problems[:3]
        return go

    best = {name: min(timed(fn) for _ in range(args.repeat))
            for name, fn in (("floor", floor), ("fast", verify("fast")), ("full", verify("full")))}
    print(f"{'check':<22}{'seconds':>9}{'files/s':>10}{'vs floor':>10}")
    for name, label in (("floor", "sha256sum (floor)"), ("fast", "verify --depth fast"), ("full", "verify --depth full")):
        t = best[name]
        print(f"{label:<22}{t:>9.2f}{len(files) / t:>10,.0f}{t / best['floor']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

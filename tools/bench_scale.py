"""How the driver's bookkeeping scales: per-key time and peak memory from 10k to 1M (or 10M) keys.

Synthetic run folders (built once per size under --work, reused): an `index.parquet` of N ok images
and, for two stage shapes, a ledger where every key is done with the current fingerprint:
  ingest-sized   1 row per key (key, status, error, _fp, a sha256-like and a path column)
  caption-sized  10 rows per key (as `captions/raw`: a prompt id and an 80-character caption per row)
plus the upstream ledgers the shard stage reads (`captions/final` with ten captions per key, `parse`,
`sketches`). Each operation runs in a fresh subprocess, so its peak RSS is its own:
  pending   `pending_inputs`: fingerprints of the inputs against the ledger (nothing is pending)
  noop      a whole `run_stage` with nothing to do (inputs, ledger check, pending, finalize stamp)
  status    `facecurate status`'s computation for the stage (`stage_status`)
  clean     the clean stage's input assembly (`CleanStage.inputs`: ten raw caption rows per key)
  refine    the refine stage's input assembly (`RefineStage.inputs`: ten cleaned captions and the parse
            rows per key; `captions/clean` is the raw ledger's parts, hard-linked)
  shard     the shard stage's input assembly (`ShardStage.inputs`: index, four upstream ledgers)
  compact   folding the ledger plus ten parts that rewrite 1% of the keys each (on a copy)
  faces     the index as every stage after `faces` reads it (`StageContext.index()`: one row per kept
            face; a sibling fixture `nN-faces` with the same index and a faces ledger, one face per photo)
Prints seconds, µs per key, peak RSS and its growth over the process's import baseline per key, and
the per-key time against the smallest size's (flat is the target: 1.0x).

Usage:
  python tools/bench_scale.py                        # 10k, 100k and 1M keys, every operation
  python tools/bench_scale.py --sizes 10000 100000 --ops pending noop
  python tools/bench_scale.py --ten-million          # adds 10M keys (several GB of fixtures, slow)
  python tools/bench_scale.py --sizes 10000000 --ops pending noop status compact --shapes ingest-sized
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.core.config import StageConfig  # noqa: E402
from pipeline.core.stage import Stage  # noqa: E402

SHAPES = {"ingest-sized": ("bench_scale_one", 1), "caption-sized": ("bench_scale_ten", 10)}
OPS = ["pending", "noop", "status", "clean", "refine", "shard", "compact", "faces"]
CHUNK = 200_000  # keys per generated part: fixtures are written in bounded pieces too


@dataclass(frozen=True)
class ScaleConfig(StageConfig):
    """No settings."""


class ScaleStage(Stage):
    """A stage that is always done in the fixtures; its inputs are the index's (default_inputs)."""

    schema: ClassVar[pa.Schema] = pa.schema([("prompt", pa.int32()), ("text", pa.string())])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        raise AssertionError("the fixtures leave nothing pending")


def register() -> None:
    from pipeline.core.registry import REGISTRY, StageSpec

    for name, _ in SHAPES.values():
        REGISTRY[name] = StageSpec(name, "tools.bench_scale", "ScaleStage", "ScaleConfig", requires=("ingest",),
                                   summary="benchmark: a stage whose every key is done")


def _keys(lo: int, hi: int) -> pa.Array:
    return pc.binary_join_element_wise("photos/", pc.utf8_lpad(pc.cast(pa.array(np.arange(lo, hi)), pa.string()),
                                                               9, "0"), "")


def _sha(keys: pa.Array) -> pa.Array:
    import hashlib

    return pa.array([hashlib.sha256(k.encode()).hexdigest() for k in keys.to_pylist()], pa.string())


def build(work: Path, n: int) -> Path:
    """The fixture folder for `n` keys (built once; `.complete` marks a finished one)."""
    from pipeline.core.ledger import Ledger
    from pipeline.core.stage import row_fingerprints

    register()
    out = work / f"n{n}"
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "ingest").mkdir(parents=True)
    t0 = time.perf_counter()
    index_writer = None
    ledgers = {name: Ledger(out, name) for name, _ in SHAPES.values()}
    up = {rel: Ledger(out, rel) for rel in ("captions/raw", "captions/final", "parse", "sketches")}
    fp_of = {name: ScaleStage.fingerprint(ScaleConfig()) for name, _ in SHAPES.values()}
    captions = [f"a smiling person with wavy hair, caption number {i}, seen in soft daylight" for i in range(10)]
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        keys, m = _keys(lo, hi), hi - lo
        sha = _sha(keys)
        index = pa.table({"key": keys, "status": pa.array(["ok"] * m), "error": pa.array([""] * m),
                          "sha256": sha, "path": pc.binary_join_element_wise("images/", keys, ".jpg", ""),
                          "split": pa.array(np.where(np.arange(lo, hi) % 10 == 0, "test", "train")),
                          "license": pa.array(["CC-BY-4.0"] * m), "source_url": pa.nulls(m, pa.string()),
                          "gt_mask": pa.nulls(m, pa.string())})
        if index_writer is None:
            index_writer = pq.ParquetWriter(out / "index.parquet", index.schema)
        index_writer.write_table(index)
        for name, rows in SHAPES.values():
            fps = pa.array(row_fingerprints(fp_of[name], sha.to_pylist()), pa.string())
            rep = np.repeat(np.arange(m), rows)
            ledgers[name].write(pa.table({
                "key": keys.take(rep), "status": pa.array(["ok"] * len(rep)), "error": pa.array([""] * len(rep)),
                "_fp": fps.take(rep), "prompt": pa.array(np.tile(np.arange(rows, dtype=np.int32), m)),
                "text": pa.array(np.tile(np.array(captions[:rows], dtype=object), m), pa.string())}))
        ok = {"status": pa.array(["ok"] * m), "error": pa.array([""] * m), "_fp": sha}
        rep = np.repeat(np.arange(m), 10)
        up["captions/raw"].write(pa.table({
            "key": keys.take(rep), "status": pa.array(["ok"] * len(rep)), "error": pa.array([""] * len(rep)),
            "_fp": sha.take(rep), "prompt_id": pa.array(np.tile([f"p{i}" for i in range(10)], m)),
            "prompt_kind": pa.array(["describe"] * len(rep)),
            "text": pa.array(np.tile(np.array(captions, dtype=object), m), pa.string()),
            "finish_reason": pa.array(["stop"] * len(rep))}))
        up["captions/final"].write(pa.table({"key": keys, **ok,
                                             "captions": pa.array([captions] * m, pa.list_(pa.string())),
                                             "flags": pa.array([[]] * m, pa.list_(pa.string()))}))
        up["parse"].write(pa.table({"key": keys, **ok, "parser": pa.array(["segformer"] * m),
                                    "primary": pa.array([True] * m),
                                    "mask": pc.binary_join_element_wise("masks/segformer/", keys, ".png", "")}))
        up["sketches"].write(pa.table({"key": keys, **ok,
                                       "sketch": pc.binary_join_element_wise("sketches/", keys, ".png", ""),
                                       "flags": pa.array([[]] * m, pa.list_(pa.string()))}))
    index_writer.close()
    for ledger in [*ledgers.values(), *up.values()]:
        ledger.compact()
    (out / ".complete").write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return out


def build_faces(out: Path) -> Path:
    """`out`'s index (hard-linked) with a faces ledger keeping one aligned face per photo (built once)."""
    from pipeline.core.ledger import Ledger

    faces = out.parent / f"{out.name}-faces"
    if (faces / ".complete").exists():
        return faces
    shutil.rmtree(faces, ignore_errors=True)
    faces.mkdir(parents=True)
    os.link(out / "index.parquet", faces / "index.parquet")
    ledger = Ledger(faces, "faces")
    for batch in pq.ParquetFile(out / "index.parquet").iter_batches(CHUNK, columns=["key", "sha256", "split"]):
        keys, m = batch.column("key"), batch.num_rows
        ledger.write(pa.table({
            "key": keys, "status": pa.array(["ok"] * m), "error": pa.array([""] * m), "_fp": batch.column("sha256"),
            "face_key": pc.binary_join_element_wise(keys, "#0", ""),
            "aligned": pc.binary_join_element_wise("faces/", keys, "_0.png", ""),
            "aligned_sha256": batch.column("sha256"), "size": pa.array(np.full(m, 512, np.int32)),
            "split": batch.column("split")}))
    ledger.compact()
    (faces / ".complete").write_text("faces\n")
    return faces


def _clean_ledger(out: Path) -> None:
    """`captions/clean` as hard links to `captions/raw`'s parts (the columns refine reads are there)."""
    clean, raw = out / "captions" / "clean", out / "captions" / "raw"
    if not clean.exists():
        tmp = clean.with_name(".clean.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for p in raw.glob("part-*.parquet"):
            os.link(p, tmp / p.name)
        tmp.rename(clean)


def _rss() -> int:
    """This process's peak RSS: VmHWM (ru_maxrss would start at the parent's peak: Linux keeps it across
    fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one(op: str, out: Path, stage: str, n: int) -> dict[str, Any]:
    """Run one operation once in this process (a fresh subprocess) and report."""
    from rich.console import Console

    from pipeline.core.config import RunnerConfig
    from pipeline.core.ledger import Ledger
    from pipeline.core.manifest import build_manifest
    from pipeline.core.registry import REGISTRY
    from pipeline.core.run import stage_status
    from pipeline.core.runner import pending_inputs, run_stage
    from pipeline.core.stage import StageContext
    from pipeline.stages.shard import ShardConfig, ShardStage

    register()
    ctx, cfg, spec = StageContext(out), ScaleConfig(), REGISTRY[stage]
    copy = None
    if op == "refine":
        _clean_ledger(out)
    if op == "compact":  # on a copy: the fixture stays as built
        copy = Path(tempfile.mkdtemp(dir=out.parent))
        shutil.copytree(out / stage, copy / stage)
        led = Ledger(copy, stage)
        keys = Ledger(out, stage).read(["key"])["key"].unique()
        rows = SHAPES[next(s for s, v in SHAPES.items() if v[0] == stage)][1]
        for i in range(10):
            some = keys.slice(i * (n // 100), n // 100)
            rep = np.repeat(np.arange(len(some)), rows)
            led.write(pa.table({"key": some.take(rep), "status": pa.array(["ok"] * len(rep)),
                                "error": pa.array([""] * len(rep)), "_fp": pa.array(["new"] * len(rep)),
                                "prompt": pa.array(np.zeros(len(rep), np.int32)), "text": pa.array(["x"] * len(rep))}))
    base = _rss()
    t0 = time.perf_counter()
    if op == "pending":
        _, todo = pending_inputs(ScaleStage, cfg, ctx, spec, ctx.ledger(stage), False)
        assert todo.num_rows == 0
    elif op == "noop":
        result = run_stage(stage, cfg, ctx, RunnerConfig(), Console(quiet=True))
        assert result.pending == 0
    elif op == "status":
        empty = out / "no-sources"  # ingest's own pending is a directory walk (tools/bench_ingest.py)
        empty.mkdir(exist_ok=True)
        manifest = build_manifest({"stages": {"ingest": {"sources": [{"path": str(empty), "name": "photos"}]},
                                              stage: {}}}, None)
        rows = stage_status(manifest, out)
        assert rows[-1]["pending"] == 0, rows
    elif op == "clean":
        from pipeline.stages.clean import CleanConfig, CleanStage

        assert CleanStage.inputs(CleanConfig(), ctx, ()).num_rows == n
    elif op == "refine":
        from pipeline.stages.refine import RefineConfig, RefineStage

        assert RefineStage.inputs(RefineConfig(model="none"), ctx, ()).num_rows == n
    elif op == "shard":
        table = ShardStage.inputs(ShardConfig(), ctx, REGISTRY["shard"].requires)
        assert table.num_rows == n
    elif op == "compact":
        led.compact()
    elif op == "faces":
        assert ctx.index().num_rows == n
    seconds = time.perf_counter() - t0
    if copy is not None:
        shutil.rmtree(copy, ignore_errors=True)
    return {"op": op, "stage": stage, "n": n, "seconds": seconds, "peak_rss": _rss(), "base_rss": base}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--ten-million", action="store_true", help="add 10,000,000 keys")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=OPS)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES),
                    help="ledger shapes to time (both are built)")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench_scale", help="fixture folder")
    ap.add_argument("--one", nargs=4, metavar=("OP", "OUT", "STAGE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], Path(args.one[1]), args.one[2], int(args.one[3]))))
        return 0
    sizes = sorted(set(args.sizes + ([10_000_000] if args.ten_million else [])))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print(f"{'operation':<10}{'shape':<15}{'keys':>12}{'seconds':>10}{'us/key':>9}{'peak RSS':>10}"
          f"{'B/key':>8}{'vs first':>10}", flush=True)
    first: dict[tuple[str, str], float] = {}
    for n in sizes:
        t0 = time.perf_counter()
        out = build(args.work, n)
        print(f"# fixtures for {n:,} keys: {out} ({(out / '.complete').read_text().strip()} to build; "
              f"{time.perf_counter() - t0:.1f} s now)", flush=True)
        for op in args.ops:
            for shape, (stage, _) in SHAPES.items():
                if shape not in args.shapes:
                    continue
                if op in ("shard", "clean", "refine", "faces") and shape != "ingest-sized":
                    continue  # these read the same upstream ledgers whatever the shape
                where = build_faces(out) if op == "faces" else out
                proc = subprocess.run([sys.executable, __file__, "--one", op, str(where), stage, str(n)],
                                      capture_output=True, text=True, env=env, timeout=6 * 3600)
                if proc.returncode:
                    print(f"{op} {shape} {n}: failed\n{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                per_key = r["seconds"] / n
                ref = first.setdefault((op, shape), per_key)
                name = op if op in ("shard", "clean", "refine", "faces") else shape
                print(f"{op:<10}{name:<15}{n:>12,}{r['seconds']:>10.2f}{1e6 * per_key:>9.2f}"
                      f"{r['peak_rss'] / 1e6:>8.0f}MB{(r['peak_rss'] - r['base_rss']) / n:>8,.0f}"
                      f"{per_key / ref:>9.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

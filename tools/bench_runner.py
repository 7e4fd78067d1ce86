"""Benchmark the runners: the same cheap stage over the same keys, local vs Ray (1 node, 3 nodes).

The stage (`bench_echo`, defined here) returns one ok row per key and does no work, so what is timed
is the runner itself: pending keys (fingerprints against the ledger), batching, `call_isolated`, the
Ray actor pool and its transfers, ledger parts, compaction. Each configuration runs in a fresh
subprocess, so its peak RSS is the driver's own (Ray's raylets and workers are other processes).

Prints per configuration and key count: seconds, microseconds per key, the driver's peak RSS and
bytes per key, and the time ratio against the local runner at the same key count.

Usage: python tools/bench_runner.py [--keys 1000 10000 100000] [--ray-keys 1000 10000] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from pipeline.core.config import StageConfig  # noqa: E402
from pipeline.core.stage import Stage, StageContext  # noqa: E402


@dataclass(frozen=True)
class EchoConfig(StageConfig):
    """No settings beyond batching."""


class EchoStage(Stage):
    """One ok row per key; inputs are N synthetic keys (no index needed)."""

    schema: ClassVar[pa.Schema] = pa.schema([("n", pa.int64())])
    N: ClassVar[int] = int(os.environ.get("BENCH_RUNNER_KEYS", "1000"))

    @classmethod
    def inputs(cls, cfg: Any, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        keys = [f"bench/{i:09d}" for i in range(cls.N)]
        return pa.table({"key": keys, "_src": keys})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        keys = [str(k) for k in batch["key"]]
        return {"key": keys, "status": ["ok"] * len(keys), "error": [""] * len(keys), "n": list(range(len(keys)))}


def register() -> None:
    from pipeline.core.registry import REGISTRY, StageSpec

    REGISTRY["bench_echo"] = StageSpec("bench_echo", "tools.bench_runner", "EchoStage", "EchoConfig",
                                       summary="benchmark: one ok row per key")


def one(kind: str, nodes: int, keys: int) -> dict[str, Any]:
    """Run the stage once in this process and report (called in a fresh subprocess)."""
    from rich.console import Console

    from pipeline.core.config import RunnerConfig
    from pipeline.core.runner import run_stage

    register()
    cluster = None
    runner = RunnerConfig(kind=kind)
    if kind == "ray":
        import ray

        if nodes > 1:
            from ray.cluster_utils import Cluster

            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            for _ in range(nodes - 1):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    cfg = EchoConfig(batch_size=256, num_cpus=0.5)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result = run_stage("bench_echo", cfg, StageContext(Path(d)), runner, Console(quiet=True))
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = run_stage("bench_echo", cfg, StageContext(Path(d)), runner, Console(quiet=True))
        noop = time.perf_counter() - t1
    assert result.ok == keys and again.pending == 0
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    return {"kind": kind, "nodes": nodes, "keys": keys, "seconds": seconds, "noop_seconds": noop,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--ray-keys", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "NODES", "KEYS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]))))
        return 0
    configs = [("local", 1, k) for k in args.keys]
    if not args.no_ray:
        configs += [("ray", n, k) for n in (1, 3) for k in args.ray_keys]
    results = []
    for kind, nodes, keys in configs:
        env = {**os.environ, "BENCH_RUNNER_KEYS": str(keys), "RAY_AUTH_MODE": "disabled",
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run([sys.executable, __file__, "--one", kind, str(nodes), str(keys)], capture_output=True,
                              text=True, env=env, timeout=3600)
        if proc.returncode:
            print(f"{kind} x{nodes} {keys}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    local = {r["keys"]: r["seconds"] for r in results if r["kind"] == "local"}
    print(f"{'runner':<14}{'keys':>9}{'seconds':>9}{'us/key':>9}{'no-op s':>9}{'peak RSS':>10}{'B/key':>8}{'vs local':>10}")
    for r in results:
        base = local.get(r["keys"])
        ratio = f"{r['seconds'] / base:.1f}x" if base else "-"
        name = "local" if r["kind"] == "local" else f"ray, {r['nodes']} node{'s' if r['nodes'] > 1 else ''}"
        print(f"{name:<14}{r['keys']:>9,}{r['seconds']:>9.2f}{1e6 * r['seconds'] / r['keys']:>9.0f}"
              f"{r['noop_seconds']:>9.2f}{r['peak_rss'] / 1e6:>8.0f}MB{r['peak_rss'] / r['keys']:>8,.0f}{ratio:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

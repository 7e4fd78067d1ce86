"""Ray on a real multi-node cluster on this machine: the demo manifest, a worker node killed mid-stage,
the same bytes as a local run; and the shared-storage check refusing a node that cannot see the output.

`ray.cluster_utils.Cluster` starts a head and two worker raylets (one CPU each) as separate processes;
the run is a `facecurate run --runner ray` subprocess connected to it, as a user's would be. Cost on
the 2-core CI machine: about 4 minutes (README, "Ray clusters").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def facecurate(*args: str, timeout: int = 900) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "COLUMNS": "200"}
    return subprocess.Popen([str(Path(sys.executable).parent / "facecurate"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def files(out: Path) -> dict[str, bytes]:
    """Every output file but the ones that name their folder (report titles) or hold mtimes."""
    skip = {".lock", "manifest.resolved.yaml", ".assembly.json", ".finalized.json", "report.html"}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in skip and not p.name.startswith("part-") and ".tmp" not in p.parts}


def rows(out: Path) -> dict[str, list]:
    from pipeline.core.ledger import Ledger
    from pipeline.core.registry import REGISTRY

    found = {}
    for name, spec in REGISTRY.items():
        if spec.module.startswith("pipeline.stages."):
            t = Ledger(out, spec.ledger or name).read()
            found[name] = sorted(str(r) for r in t.to_pylist())
    return found


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # the dashboard serves `ray job submit`
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,
                                                      "dashboard_host": "127.0.0.1"})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


@pytest.fixture(scope="module")
def local_run(demo_data, tiny_model, tmp_path_factory) -> Path:
    for name in ("internvl3", "qwen3", "segformer-face-tiny", "farl-celebm-tiny", "retinaface-tiny",
                 "u2net-portrait-tiny", "vae-flux", "vae-sd"):
        tiny_model(name)
    out = tmp_path_factory.mktemp("cluster") / "local"
    proc = facecurate("run", str(ROOT / "manifests" / "demo.yaml"), "--out", str(out))
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    return out


def test_the_demo_on_three_nodes_with_one_killed_mid_stage_gives_the_local_bytes(cluster, local_run, tmp_path):
    c, workers = cluster
    out = tmp_path / "cluster"
    proc = facecurate("run", str(ROOT / "manifests" / "demo.yaml"), "--out", str(out), "--runner", "ray",
                      "--set", f"runner.address={c.address}")
    deadline = time.monotonic() + 600
    while not (out / "sketches").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)                                    # the sketch stage has started writing
    victim = _worker_running_a_stage_actor(c, workers, proc)
    assert victim is not None and proc.poll() is None, "no stage actor on a worker node while the run went on"
    c.remove_node(victim, allow_graceful=False)           # a worker node lost mid-stage, with its actor
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert "per node" in err
    assert rows(out) == rows(local_run)                   # every row exactly once, the same values
    got, want = files(out), files(local_run)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []   # every mask, sketch, latent, shard byte-identical


def test_a_job_submitted_with_the_readme_runtime_env_gives_the_local_bytes(cluster, local_run, tmp_path):
    c, _ = cluster
    out = tmp_path / "job"
    dashboard = c.head_node.address_info["webui_url"]
    ray_bin = Path(sys.executable).parent / "ray"
    # what the README shows: the checkout as working_dir (its .gitignore keeps .venv and .cache out), the
    # run's paths absolute on the shared storage, runner.address=auto inside the job
    deadline = time.monotonic() + 180
    while True:  # the job server answers before a node's job agent has registered: retry that one reply
        job = subprocess.run([str(ray_bin), "job", "submit", "--address", f"http://{dashboard}", "--working-dir",
                              str(ROOT), "--", sys.executable, "-m", "pipeline", "run",
                              str(ROOT / "manifests" / "demo.yaml"), "--out", str(out), "--runner", "ray", "--set",
                              "runner.address=auto"],
                             capture_output=True, text=True, timeout=1200, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        if "No available agent" not in job.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert job.returncode == 0 and "succeeded" in job.stdout, (job.stdout + job.stderr)[-3000:]
    assert "per node" in job.stdout                       # the job's log: the driver's own lines
    assert rows(out) == rows(local_run)
    got, want = files(out), files(local_run)
    assert sorted(got) == sorted(want) and [k for k in want if got[k] != want[k]] == []


def _worker_running_a_stage_actor(c, workers, proc, timeout: float = 120):
    """The worker node that hosts a live stage actor of the run (polled from the GCS actor table)."""
    import ray
    from ray._private import state

    ray.init(address=c.address, ignore_reinit_error=True, logging_level="ERROR")
    try:
        by_id = {w.node_id: w for w in workers}
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            for a in state.actors(actor_state_name="ALIVE").values():
                node = a.get("Address", {}).get("NodeID")
                if "_RayStage" in a.get("ActorClassName", "") and node in by_id:
                    return by_id[node]
            time.sleep(0.1)
        return None
    finally:
        ray.shutdown()


def test_a_node_that_cannot_see_the_output_folder_is_refused_with_one_line(cluster, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a node with its own view of the filesystem")
    c, _ = cluster
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    ray_bin = Path(sys.executable).parent / "ray"
    # a raylet in its own mount namespace, with an empty tmpfs over the folder the run writes to
    node = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs tmpfs {hidden} && exec {ray_bin} start --address={c.address} "
                             "--num-cpus=1 --block"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        import ray

        deadline = time.monotonic() + 120
        ray.init(address=c.address, ignore_reinit_error=True, logging_level="ERROR")
        while sum(n["Alive"] for n in ray.nodes()) < len(c.list_all_nodes()) + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        joined = sum(n["Alive"] for n in ray.nodes()) == len(c.list_all_nodes()) + 1
        ray.shutdown()
        assert joined, "the namespaced raylet did not join the cluster"
        photos = hidden / "photos"
        photos.mkdir()
        shutil.copy(ROOT / ".cache" / "demo" / "photos" / "astronaut.png", photos)
        proc = facecurate("run", str(_manifest(tmp_path, photos)), "--out", str(hidden / "out"), "--runner", "ray",
                          "--set", f"runner.address={c.address}")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-2000:]
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert lines[-1].startswith("error: Ray node ") and "cannot see" in lines[-1] and str(hidden) in lines[-1]
        assert "Traceback" not in err
    finally:
        node.terminate()
        node.wait(timeout=60)


def _manifest(tmp_path: Path, photos: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(f"name: hidden\nstages:\n  ingest:\n    sources: [{{path: {photos}}}]\n")
    return path

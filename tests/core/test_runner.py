"""Runner: failures become rows, fingerprints drive re-processing, kills resume, Ray matches local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import RunnerConfig
from pipeline.core.crashes import INFLIGHT_DIR, WORKER_DIED, WORKER_DIED_WHY, StageFailed
from pipeline.core.ledger import Ledger
from pipeline.core.manifest import build_manifest
from pipeline.core.run import run_manifest
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from tests.stages_for_tests import register

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def echo_stage():
    register()


def manifest(photos: Path, **echo) -> object:
    return build_manifest({"stages": {"ingest": {"sources": [{"path": str(photos), "name": "photos"}]},
                                      "echo": echo}}, None)


def rows(out: Path, stage: str = "echo") -> list[tuple]:
    t = Ledger(out, stage).read().drop_columns(["_fp"])
    return sorted(tuple(r.values()) for r in t.to_pylist())


def test_a_failing_row_never_fails_its_batch(demo_data, tmp_path):
    m = manifest(demo_data / "photos", fail_keys=["photos/grace_hopper"], drop_keys=["photos/astronaut"])
    results = run_manifest(m, tmp_path)
    echo = {r[0]: r for r in rows(tmp_path)}
    assert echo["photos/grace_hopper"][1:3] == ("stage_error", "ValueError: cannot echo photos/grace_hopper")
    assert echo["photos/astronaut"][1:3] == ("stage_error", "stage returned no row for this key")
    ok = Ledger(tmp_path, "echo").ok_keys()
    index_ok = set(StageContext(tmp_path).index(["key"])["key"].to_pylist())
    assert ok == index_ok - {"photos/grace_hopper", "photos/astronaut"}
    assert results[-1].failed == {"stage_error": 2}


def test_fingerprints_decide_what_is_pending(demo_data, tmp_path):
    ctx = StageContext(tmp_path)
    m = manifest(demo_data / "photos", fail_keys=["photos/grace_hopper"])
    run_manifest(m, tmp_path)
    cfg = m.stages["echo"]
    n_ok = len(ctx.index(["key"]))
    assert run_stage("echo", cfg, ctx, RunnerConfig()).pending == 0          # all done, failures included
    retry = run_stage("echo", cfg, ctx, RunnerConfig(retry_failed=True))
    assert retry.pending == 1                                                  # only the failed key
    volatile = build_manifest({"stages": {"echo": {"batch_size": 1, "sleep": 0.0,
                                                   "fail_keys": ["photos/grace_hopper"]}}}, None).stages["echo"]
    assert run_stage("echo", volatile, ctx, RunnerConfig()).pending == 0       # batch size changes nothing
    changed = build_manifest({"stages": {"echo": {"salt": "t"}}}, None).stages["echo"]
    assert run_stage("echo", changed, ctx, RunnerConfig()).pending == n_ok    # output-changing setting
    assert all(len([r for r in rows(tmp_path) if r[0] == k]) == 2 for k in ctx.index(["key"])["key"].to_pylist())


def test_killed_run_resumes_to_the_same_rows(demo_data, tmp_path):
    script, photos = str(ROOT / "tests" / "run_killable.py"), str(demo_data / "photos")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, script, str(ref), photos, "0"], check=True, timeout=300)
    proc = subprocess.Popen([sys.executable, script, str(killed), photos, "0.25"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((killed / "echo").glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = sorted((killed / "echo").glob("part-*.parquet"))
    assert len(parts) >= 3, "the run ended before it could be killed"
    assert len(rows(killed)) < len(rows(ref)), "killed after the stage finished"
    for p in parts:  # every visible part is whole
        pq.read_table(p)
    subprocess.run([sys.executable, script, str(killed), photos, "0"], check=True, timeout=300)
    assert rows(killed) == rows(ref)
    assert rows(killed, "ingest") == rows(ref, "ingest")
    keys = [r[0] for r in rows(killed)]
    assert all(keys.count(k) == 3 for k in set(keys))  # no key twice, none missing a row
    assert [p.name for p in (killed / "echo").iterdir() if p.name.startswith(".")] == [".finalized.json"]
    assert pq.read_table(killed / "index.parquet").to_pylist() == pq.read_table(ref / "index.parquet").to_pylist()


def test_a_key_that_crashes_its_process_becomes_its_row_after_two_reruns(demo_data, tmp_path):
    script, photos = str(ROOT / "tests" / "run_killable.py"), str(demo_data / "photos")
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    subprocess.run([sys.executable, script, str(ref), photos, "0"], check=True, timeout=300)
    poison = "photos/grace_hopper"
    extra = json.dumps({"crash_keys": [poison], "batch_size": 4})
    rcs = [subprocess.run([sys.executable, script, str(crashed), photos, "0", extra], timeout=300,
                          capture_output=True).returncode for _ in range(3)]
    assert rcs[0] == rcs[1] == -signal.SIGSEGV and rcs[2] == 0  # whole batch, then the key alone, then done
    got = {r[0]: r for r in rows(crashed)}
    assert got[poison][1:3] == (WORKER_DIED, WORKER_DIED_WHY)
    assert [r for r in rows(crashed) if r[0] != poison] == [r for r in rows(ref) if r[0] != poison]
    assert not (crashed / "echo" / INFLIGHT_DIR).exists()
    retry = subprocess.run([sys.executable, script, str(crashed), photos, "0", extra], timeout=300)
    assert retry.returncode == 0  # a worker_died row is final until --retry-failed


class _Died(BaseException):
    """What the process sees of its own death: nothing after this point runs (no finally, no unlink)."""


def test_in_flight_markers_survive_a_batch_regrouping(tmp_path):
    from pipeline.core.crashes import InFlight

    def table(keys):
        return pa.table({"key": keys})

    def crash_on(bad):
        def call(b):
            if bad in b["key"].to_pylist():
                raise _Died
            return b.append_column("status", pa.array(["ok"] * b.num_rows))
        return call

    def died(b):
        return b.append_column("status", pa.array([WORKER_DIED] * b.num_rows))

    with pytest.raises(_Died):
        InFlight(tmp_path).run(crash_on("c"), table(["a", "b", "c", "d"]), died)
    # the next run batches differently (other keys finished meanwhile): the marker still finds "c"
    with pytest.raises(_Died):
        InFlight(tmp_path).run(crash_on("c"), table(["c", "d", "e"]), died)
    out = InFlight(tmp_path).run(crash_on("c"), table(["b", "c", "d", "e"]), died)
    assert out.to_pylist() == [{"key": "b", "status": "ok"}, {"key": "c", "status": WORKER_DIED},
                               {"key": "d", "status": "ok"}, {"key": "e", "status": "ok"}]
    clean = InFlight(tmp_path).run(crash_on("zz"), table(["x", "y"]), died)  # no marker: one call, no trace
    assert clean["status"].to_pylist() == ["ok", "ok"]
    assert [p.name for p in (tmp_path / INFLIGHT_DIR).iterdir()] != []  # the old ones wait for clear()
    InFlight(tmp_path).clear()
    assert not (tmp_path / INFLIGHT_DIR).exists()


def test_a_batch_that_raises_leaves_no_suspects(tmp_path):
    """An error or Ctrl-C is not a death: the next run must not redo those keys one by one (a full disk
    left its marker once, and the rerun then redid the batch key by key)."""
    from pipeline.core.crashes import InFlight

    calls = []

    def call(b):
        calls.append(b.num_rows)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return b.append_column("status", pa.array(["ok"] * b.num_rows))

    batch = pa.table({"key": ["a", "b", "c"]})
    with pytest.raises(OSError):
        InFlight(tmp_path).run(call, batch, lambda b: b)
    assert not list((tmp_path / INFLIGHT_DIR).glob("*.json"))
    assert InFlight(tmp_path).run(call, batch, lambda b: b).num_rows == 3 and calls == [3, 3]  # one call


@pytest.mark.ray
def test_ray_a_key_that_crashes_its_worker_becomes_its_row_and_a_worker_that_cannot_start_stops_the_stage(
        demo_data, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import dataclasses

    import ray

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # Ray workers import tests.stages_for_tests
    poison = "photos/grace_hopper"
    run_manifest(manifest(demo_data / "photos"), tmp_path / "local")
    m = manifest(demo_data / "photos", crash_keys=[poison])
    try:
        t0 = time.monotonic()
        run_manifest(dataclasses.replace(m, runner=RunnerConfig(kind="ray")), tmp_path / "ray")
        assert time.monotonic() - t0 < 300  # Ray alone would retry the batch for ever
        got = {r[0]: r for r in rows(tmp_path / "ray")}
        assert got[poison][1:3] == (WORKER_DIED, WORKER_DIED_WHY)
        assert ([r for r in rows(tmp_path / "ray") if r[0] != poison]
                == [r for r in rows(tmp_path / "local") if r[0] != poison])
        assert not (tmp_path / "ray" / "echo" / INFLIGHT_DIR).exists()
        m = manifest(demo_data / "photos", crash_start=True)
        with pytest.raises(StageFailed, match=r"^the stage's worker died 3 times while starting") as e:
            run_manifest(dataclasses.replace(m, runner=RunnerConfig(kind="ray")), tmp_path / "ray")
        assert "\n" not in str(e.value)
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_the_storage_check_skips_a_node_that_left_after_it_was_listed(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray

    from pipeline.core.runner import check_shared_storage

    try:
        check_shared_storage(tmp_path, [], RunnerConfig(kind="ray"))  # starts Ray here
        real = ray.nodes()
        ghost = {**real[0], "NodeID": os.urandom(len(real[0]["NodeID"]) // 2).hex(), "Alive": True}  # not there
        monkeypatch.setattr(ray, "nodes", lambda: [*real, ghost])
        assert check_shared_storage(tmp_path, [], RunnerConfig(kind="ray")) == len(real)
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_ray_runner_gives_the_same_rows_as_local(demo_data, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # Ray workers import tests.stages_for_tests
    local, remote = tmp_path / "local", tmp_path / "ray"
    m = manifest(demo_data / "photos", fail_keys=["photos/grace_hopper"])
    run_manifest(m, local)
    import dataclasses

    m_ray = dataclasses.replace(m, runner=RunnerConfig(kind="ray"))
    try:
        run_manifest(m_ray, remote)
    finally:
        ray.shutdown()
    assert rows(remote) == rows(local)
    assert rows(remote, "ingest") == rows(local, "ingest")
    a = pq.read_table(local / "index.parquet").drop_columns(["path"]).to_pylist()
    b = pq.read_table(remote / "index.parquet").drop_columns(["path"]).to_pylist()
    assert a == b

"""The demo's hostile set (tools/make_demo_data.py, `hostile/`) through every stage of the demo manifest.

Faces under file names with HTML, table pipes, a newline and emoji; a 64x8000 strip; a fifo named
.jpg; symlinks to /etc/passwd, /etc and out of the source; a tar with symlink, hardlink, device, fifo
and `../` members; a parquet with bad cells and hostile ids. What must hold: every item is a row or an
ignored.tsv line, nothing outside the tree is read, no stage fails on any of it, `verify --depth full`
passes, the card stays a card, and a second run changes no byte.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console

from pipeline.core.ledger import Ledger
from pipeline.core.manifest import build_manifest
from pipeline.core.registry import REGISTRY
from pipeline.core.run import load_resolved, run_manifest, stage_status
from pipeline.ops.findings import card_front_matter
from pipeline.ops.verify import verify_run

ROOT = Path(__file__).resolve().parent.parent
QUIET = Console(stderr=True, quiet=True)
LICENSE = "CC-BY-4.0 <script>alert(1)</script> | x"


def every_file(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def hostile_run(demo_data, tiny_model, tmp_path_factory):
    tiny_model("internvl3"), tiny_model("qwen3"), tiny_model("segformer-face-tiny")  # built before the manifest
    data = yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    hostile = demo_data / "hostile"
    data["stages"]["ingest"]["sources"] = [
        {"path": str(hostile / "files"), "name": "hostile", "license": LICENSE},
        {"path": str(hostile / "members.tar"), "name": "hostile-tar"},
        {"path": str(hostile / "cells.parquet"), "name": "hostile-parquet", "id_column": "name"}]
    out = tmp_path_factory.mktemp("hostile") / "run"
    results = run_manifest(build_manifest(data, ROOT / "manifests"), out, console=QUIET)
    return out, hostile, {r.name: r for r in results}


def test_every_item_is_a_row_or_an_ignored_line_and_nothing_outside_is_read(hostile_run):
    out, hostile, _ = hostile_run
    index = pq.read_table(out / "index.parquet").to_pylist()
    ignored = [line.split("\t")[0] for line in (out / "ingest" / "ignored.tsv").read_text().splitlines()]
    origins = {r["origin"] for r in index}
    files = sorted(p.name for p in (hostile / "files").iterdir())
    for name in files:
        path = str(hostile / "files" / name)
        assert path in origins or path.replace("\n", "\\n") in ignored, name
    with tarfile.open(hostile / "members.tar") as tf:
        for m in tf.getmembers():
            where = f"{hostile / 'members.tar'}#{m.name}"
            assert where in origins or where in ignored, m.name
    assert sum(r["source"] == "hostile-parquet" for r in index) == 5
    assert not any("passwd" in (r["error"] or "") or "root:" in (r["error"] or "") for r in index)
    assert {f"{hostile / 'files'}/{n}" for n in ("passwd.jpg", "etc", "escape.png", "pipe.jpg")} <= set(ignored)
    assert all(str(hostile) in r["origin"] or r["origin"].startswith("images/") for r in index)


def test_every_stage_ran_and_no_key_failed_for_a_code_reason(hostile_run):
    out, _, results = hostile_run
    stages = {n: s for n, s in REGISTRY.items() if s.module.startswith("pipeline.stages.")}  # not test stages
    assert set(results) == set(load_resolved(out).stages) == set(stages)
    for name, spec in stages.items():
        statuses = set(Ledger(out, spec.ledger or name).read(["status"])["status"].to_pylist())
        assert not statuses & {"stage_error", "parser_error", "engine_error"}, (name, statuses)
    assert results["shard"].ok >= 1, "no face made it to the shards: the set no longer tests the later stages"


def test_verify_full_passes_and_the_card_stays_a_card(hostile_run):
    out, _, _ = hostile_run
    assert verify_run(out, QUIET, "full")[0] == []
    card = (out / "shards" / "README.md").read_text()
    assert "<script>" not in card and "<img" not in card
    assert card_front_matter(card) is not None
    assert "| CC-BY-4.0 &lt;script&gt;alert(1)&lt;/script&gt; \\| x | 1 |" in card   # one cell, shown as written


def written(out: Path) -> dict[str, tuple[int, int]]:
    """Every file's inode and mtime: a file rewritten with the same bytes (a rename onto it) changes both."""
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_status_and_a_no_op_rerun_write_nothing(hostile_run):
    out, _, _ = hostile_run
    before, touched = every_file(out), written(out)
    rows = stage_status(load_resolved(out), out)
    assert all(r["pending"] == 0 and not r["notes"] for r in rows), rows
    assert written(out) == touched
    again = run_manifest(load_resolved(out), out, console=QUIET)
    assert sum(r.pending for r in again) == 0
    assert written(out) == touched  # not one file rewritten: no index, report, card or manifest
    assert every_file(out) == before
    (out / "index.parquet").unlink()  # a lost output of a finalize: the next no-op run makes it again
    run_manifest(load_resolved(out), out, console=QUIET)
    remade = {k for k, v in written(out).items() if touched.get(k) != v}
    assert remade == {"index.parquet", "ingest/.finalized.json"}  # its stamp records the new file's mtime
    assert every_file(out)["index.parquet"] == before["index.parquet"]


def test_shard_rows_of_photos_faces_no_longer_keeps_are_history_not_problems(hostile_run, tmp_path):
    import shutil

    import pyarrow as pa

    from pipeline.core.stage import StageContext

    out = tmp_path / "run"
    shutil.copytree(hostile_run[0], out, symlinks=True)
    kept = set(StageContext(out).index(["key"])["key"].to_pylist())
    photo = next(r["key"] for r in pq.read_table(out / "index.parquet").to_pylist()
                 if r["status"] == "ok" and r["key"] not in kept)           # an ok photo faces dropped
    Ledger(out, "shards").write(pa.table({"key": [photo], "status": ["ok"], "error": [""], "_fp": ["old"]}))
    assert verify_run(out, QUIET, "fast")[0] == []

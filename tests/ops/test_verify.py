"""verify proves every artifact a ledger names; repair redoes exactly what verify finds, to the same bytes.

One small real run (ingest, parse with the tiny Segformer, sketch with the tiny U2Net, FLUX-tiny
latents, shard) is made once; each test damages a copy the way the integrity issue found it damaged,
runs `verify` (it must name the problem), then `repair` (it must redo only what is broken), and then
`verify` must pass and every output file must equal the undamaged run's bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from pipeline.core.ledger import NEEDS_REPAIR, Ledger, LedgerCorrupt
from pipeline.core.manifest import build_manifest
from pipeline.core.run import load_resolved, run_manifest, stage_status
from pipeline.ops.verify import apply_repairs, verify_run

QUIET = Console(stderr=True, quiet=True)
SKIP_IN_COMPARE = {"manifest.resolved.yaml", ".lock", ".assembly.json", ".finalized.json"}  # bookkeeping: mtimes


def manifest_data(demo_data: Path, photos: Path, tiny_model) -> dict:
    return {"name": "verifytest", "stages": {
        "ingest": {"sources": [{"path": str(photos), "name": "photos"},
                               {"path": str(demo_data / "celebamask-hq"), "type": "celebamask-hq"}],
                   "val_fraction": 0.0},
        "parse": {"parsers": ["segformer"], "segformer_model": str(tiny_model("segformer-face-tiny"))},
        "sketch": {"model": str(tiny_model("u2net-portrait-tiny") / "u2net_portrait.pth"), "size": 64},
        "latents": {"models": {"flux": {"model": str(tiny_model("vae-flux"))}}, "resolution": 64},
        "shard": {"max_samples": 2},
    }}


@pytest.fixture(scope="module")
def made(demo_data, tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    photos = root / "photos"
    photos.mkdir()
    shutil.copy(demo_data / "photos" / "astronaut.png", photos / "astronaut.png")
    out = root / "run"
    run_manifest(build_manifest(manifest_data(demo_data, photos, tiny_model), None), out, console=QUIET)
    assert verify_run(out, QUIET, "full")[0] == []
    return out


def copy(made: Path, dest: Path) -> Path:
    shutil.copytree(made, dest, symlinks=True)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output file except ledger parts (their row order may differ) and quarantine."""
    found = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if (p.is_file() and rel.name not in SKIP_IN_COMPARE and not rel.name.startswith("part-")
                and "corrupt" not in rel.parts and rel.parts[0] != ".tmp"):
            found[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def repair(out: Path, depth: str = "fast") -> list:
    """What `facecurate repair` does: verify, apply, run the recorded manifest, verify again."""
    problems, _ = verify_run(out, QUIET, depth)
    apply_repairs(out, problems, QUIET)
    results = run_manifest(load_resolved(out), out, console=QUIET)
    assert verify_run(out, QUIET, depth)[0] == [], "verify still fails after repair"
    return results


def index_row(out: Path, key: str) -> dict:
    return next(r for r in pq.read_table(out / "index.parquet").to_pylist() if r["key"] == key)


def redone(results) -> dict[str, int]:
    return {r.name: r.pending for r in results if r.pending}


def first(out: Path, pattern: str) -> Path:
    return sorted(out.glob(pattern))[0]


def test_a_flipped_byte_in_a_ledger_part_is_found_moved_aside_and_recomputed(made, tmp_path):
    out = copy(made, tmp_path / "run")
    part = first(out, "sketches/part-*.parquet")
    keys = set(pq.read_table(part)["key"].to_pylist())
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0xFF
    part.write_bytes(bytes(data))
    problems, _ = verify_run(out, QUIET)
    assert [p.part for p in problems] == [part] and "corrupt" in problems[0]
    with pytest.raises(LedgerCorrupt, match=f"{part}.*facecurate repair"):
        Ledger(out, "sketches").read()
    status = {r["stage"]: r for r in stage_status(load_resolved(out), out)}
    assert any(str(part) in n for n in status["sketch"]["notes"])     # status says which part, and stays read-only
    assert part.exists()
    results = repair(out)
    assert list((out / "sketches" / "corrupt").iterdir())            # kept, never deleted
    assert redone(results) == {"sketch": len(keys)}                   # its keys redone; nothing downstream changed
    assert digests(out) == digests(made)


def test_a_run_moves_a_corrupt_part_aside_itself(made, tmp_path, capfd):
    out = copy(made, tmp_path / "run")
    part = first(out, "parse/part-*.parquet")
    keys = set(pq.read_table(part)["key"].to_pylist())
    part.write_bytes(part.read_bytes()[:-30])                         # cut short
    results = run_manifest(load_resolved(out), out, console=QUIET)
    assert f"ledger part {part} is corrupt" in capfd.readouterr().err
    assert redone(results) == {"parse": len(keys)} and verify_run(out, QUIET)[0] == []
    assert digests(out) == digests(made)


def test_deleted_and_truncated_masks_sketches_and_latents_are_found_and_redone(made, tmp_path):
    out = copy(made, tmp_path / "run")
    masks, sketches = sorted(out.glob("masks/**/*.png")), sorted(out.glob("sketches/**/*.png"))
    masks[0].unlink()
    masks[1].write_bytes(masks[1].read_bytes()[:100])
    sketches[0].write_bytes(sketches[0].read_bytes()[:-12])
    latent = first(out, "latents/flux/**/*.npz")
    latent.write_bytes(latent.read_bytes()[:-50])
    problems, _ = verify_run(out, QUIET)
    text = "\n".join(problems)
    assert "is missing" in text and text.count("mask ") == 2 and "sketch " in text and "latents:" in text
    assert {p.stage for p in problems} == {"parse", "sketch", "latents"}
    assert all(p.fix == f"facecurate repair {out}" for p in problems)
    results = repair(out)
    assert redone(results) == {"parse": 2, "sketch": 1, "latents": 1}
    assert digests(out) == digests(made)


def test_full_depth_decodes_what_fast_cannot_see(made, tmp_path):
    out = copy(made, tmp_path / "run")
    mask = first(out, "masks/**/*.png")
    from PIL import Image

    Image.new("L", (8, 8), 40).save(mask)                             # a whole PNG, but label 40
    assert verify_run(out, QUIET, "fast")[0] == []
    problems, _ = verify_run(out, QUIET, "full")
    assert len(problems) == 1 and "label 40 outside 0..18" in problems[0] and problems[0].stage == "parse"
    repair(out, "full")
    assert digests(out) == digests(made)


def test_an_image_edited_behind_the_same_size_and_mtime_is_found_and_rehashed(made, tmp_path):
    out = copy(made, tmp_path / "run")
    photo = Path(index_row(out, "photos/astronaut")["path"])
    backup = photo.read_bytes()
    st = photo.stat()
    try:
        edited = bytearray(backup)
        edited[len(edited) // 2] ^= 0x01                              # same size
        photo.write_bytes(bytes(edited))
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))          # same mtime: a normal run sees nothing
        assert redone(run_manifest(load_resolved(out), out, console=QUIET)) == {}
        problems, _ = verify_run(out, QUIET)
        assert len(problems) == 1 and "changed since ingest" in problems[0] and problems[0].stage == "ingest"
        results = run_manifest(load_resolved(out), out, console=QUIET, rehash=True)
        assert redone(results)["ingest"] == 1 and verify_run(out, QUIET)[0] == []
        assert index_row(out, "photos/astronaut")["sha256"] == hashlib.sha256(edited).hexdigest()
    finally:
        photo.write_bytes(backup)
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_damaged_shard_and_card_are_rebuilt(made, tmp_path):
    out = copy(made, tmp_path / "run")
    tar = first(out, "shards/*.tar")
    st = tar.stat()
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))                # behind the same size and mtime
    (out / "shards" / "README.md").write_text("no front matter")
    problems, _ = verify_run(out, QUIET)
    text = "\n".join(problems)
    assert "sha256 differs from index.json" in text and "front matter" in text
    repair(out)
    assert digests(out) == digests(made)


def test_invalidated_keys_show_as_needs_repair_until_redone(made, tmp_path):
    out = copy(made, tmp_path / "run")
    keys = sorted(Ledger(out, "sketches").ok_keys())
    Ledger(out, "sketches").invalidate(keys[:1], "verify: test")
    rows = {r["stage"]: r for r in stage_status(load_resolved(out), out)}
    assert rows["sketch"]["failed"] == {NEEDS_REPAIR: 1} and rows["sketch"]["pending"] == 1
    assert redone(run_manifest(load_resolved(out), out, console=QUIET)) == {"sketch": 1}
    assert digests(out) == digests(made)


def test_the_cli_says_what_to_run_and_repair_does_it(made, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = copy(made, tmp_path / "run")
    sketch = first(out, "sketches/**/*.png")
    sketch.unlink()
    cli = CliRunner()
    bad = cli.invoke(app, ["verify", str(out), "--depth", "full"], catch_exceptions=False)
    assert bad.exit_code == 1 and f"sketch {sketch} is missing" in bad.output
    assert f"to fix: facecurate repair {out}" in bad.output
    dry = cli.invoke(app, ["repair", str(out), "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 1 and "nothing changed" in dry.output and not sketch.exists()
    fixed = cli.invoke(app, ["repair", str(out)], catch_exceptions=False)
    assert fixed.exit_code == 0 and "1 key(s) to redo" in fixed.output and "repaired: verify passes" in fixed.output
    assert cli.invoke(app, ["repair", str(out)], catch_exceptions=False).output.count("nothing to repair") == 1
    assert digests(out) == digests(made)

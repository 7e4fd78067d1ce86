"""`facecurate verify`: check that a run's outputs are whole and still match their sources.

Checks: every ledger part reads; `index.parquet` has each key once; every ok image still exists and
hashes to its recorded sha256; every ledger key is in the index; every label map (`gt_masks/`,
`masks/`) is a single-channel uint8 PNG with ids 0..18; shards (when the shard stage ran) are re-hashed
against `index.json`, every field of every sample is decoded and checked, and their keys must be the
shard ledger's ok keys (`pipeline.ops.shard_check`). Later stages add their own checks here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.core.ledger import sha256_file
from pipeline.core.registry import REGISTRY
from pipeline.core.stage import INDEX
from pipeline.data.labels import NUM_CLASSES


def check_label_map(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            if img.mode != "L":
                return f"{path}: mode {img.mode}, expected a single-channel uint8 label map"
            arr = np.asarray(img)
    except Exception as e:  # noqa: BLE001
        return f"{path}: unreadable ({e})"
    if arr.size and int(arr.max()) >= NUM_CLASSES:
        return f"{path}: label {int(arr.max())} outside 0..{NUM_CLASSES - 1}"
    return None


def verify_run(out: Path, console: Console) -> tuple[list[str], int]:
    """(problems, number of checks made)."""
    problems: list[str] = []
    checks = 0
    index_path = out / INDEX
    if not index_path.exists():
        return [f"{index_path} is missing (run ingest)"], 1
    index = pq.read_table(index_path)
    keys = index["key"].to_pylist()
    checks += 1
    if len(set(keys)) != len(keys):
        dups = sorted({k for k in keys if keys.count(k) > 1})[:5]
        problems.append(f"index.parquet lists keys more than once: {dups}")
    known = set(keys)
    aligned: list[tuple[str, str, str]] = []  # (face key, crop path, sha256) of the faces stage's kept crops
    if (out / "faces").is_dir() and any((out / "faces").glob("part-*.parquet")):
        from pipeline.core.ledger import Ledger

        faces = Ledger(out, "faces").read(["key", "status", "face_key", "aligned", "aligned_sha256"]).to_pylist()
        known |= {f["face_key"] for f in faces if f["face_key"]}
        aligned = [(f["face_key"], f["aligned"], f["aligned_sha256"]) for f in faces
                   if f["status"] == "ok" and f["aligned_sha256"]]
    for face_key, rel, sha in aligned:
        checks += 1
        path = out / rel
        if not path.is_file():
            problems.append(f"{face_key}: aligned crop {path} is missing (re-run faces)")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            problems.append(f"{face_key}: aligned crop {path} changed since the faces stage wrote it (re-run faces)")
    for name, spec in REGISTRY.items():
        ledger_dir = out / (spec.ledger or name)
        for part in sorted(ledger_dir.glob("part-*.parquet")) if ledger_dir.is_dir() else []:
            checks += 1
            try:
                t = pq.read_table(part, columns=["key"])
            except Exception as e:  # noqa: BLE001
                problems.append(f"{part}: unreadable parquet ({e})")
                continue
            stray = set(t["key"].to_pylist()) - known
            if stray and name != "ingest":
                problems.append(f"{part}: {len(stray)} key(s) not in the index, e.g. {sorted(stray)[0]}")
    rows = [r for r in index.select(["key", "status", "path", "sha256", "gt_mask"]).to_pylist()
            if r["status"] in ("ok", "duplicate")]
    masks = sorted((out / "masks").rglob("*.png")) if (out / "masks").is_dir() else []
    with Progress(TextColumn("[bold]verify"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("verify", total=len(rows) + len(masks))
        for r in rows:
            path = Path(r["path"]) if Path(r["path"]).is_absolute() else out / r["path"]
            checks += 1
            if not path.exists():
                problems.append(f"{r['key']}: image {path} is missing")
            elif sha256_file(path) != r["sha256"]:
                problems.append(f"{r['key']}: {path} changed since ingest (sha256 differs); re-run to refresh")
            if r["gt_mask"]:
                checks += 1
                if (p := check_label_map(out / r["gt_mask"])) is not None:
                    problems.append(p)
            progress.advance(task)
        for m in masks:
            checks += 1
            if (p := check_label_map(m)) is not None:
                problems.append(p)
            progress.advance(task)
    from pipeline.ops.shard_check import check_shards  # shards: checksums, every field, keys vs the ledger

    shard_problems, shard_checks = check_shards(out, console)
    return problems + shard_problems, checks + shard_checks

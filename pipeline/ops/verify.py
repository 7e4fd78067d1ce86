"""`facecurate verify` and `facecurate repair`: prove a run's outputs are whole, and redo what is not.

`verify_run(out, console, depth)` checks every artifact a ledger says exists, not what a folder
happens to hold:
- every ledger part of every stage reads in full, every column (a flipped byte is found here);
- `index.parquet` reads and has each key once; every ok image (and each container member written to
  `images/`) still hashes to its recorded sha256; every ground-truth mask is a label map;
- per stage, the files its ok rows name: aligned crops (faces, sha256), masks (parse), sketches,
  latents files (sha256), shards against `index.json` (sha256, members, keys), the dataset card.

`depth="fast"` checks structure and checksums (PNG chunk CRCs up to IEND, zip CRCs of a latents
file, shard sha256 and member names); `"full"` decodes everything (every pixel of every mask and
sketch, every array, every field of every shard sample).

Each problem is a `Problem`: one line, what to run, and what `repair` does about it (move a corrupt
ledger part aside, make the keys whose files are broken pending again, delete a broken derived file
that the next run rebuilds). `repair` applies them and re-runs the recorded manifest, which redoes
exactly those keys (and whatever depends on a changed result); then `verify` passes.
"""

from __future__ import annotations

import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.core.ledger import OK, Ledger, read_checked, sha256_file
from pipeline.core.registry import REGISTRY
from pipeline.core.stage import INDEX, INDEX_SHA
from pipeline.data.arrays import load_npy
from pipeline.data.labels import NUM_CLASSES
from pipeline.ops.findings import Problem
from pipeline.ops.shard_check import check_card, check_shards

DEPTHS = ("fast", "full")


def check_png(path: Path, depth: str = "full", mode: str | None = "L", labels: bool = False) -> str | None:
    """None when `path` is a whole PNG (fast: chunk CRCs; full: decoded, of `mode`, ids < 19 for a
    label map), else the reason."""
    try:
        if not path.is_file():
            return "is missing"
        if depth == "fast":
            with Image.open(path) as img:
                fmt, img_mode = img.format, img.mode
                img.verify()
            if fmt != "PNG":
                return f"is {fmt}, not PNG"
            if mode and img_mode != mode:
                return f"is mode {img_mode}, expected {mode}"
            return None
        with Image.open(path) as img:
            img.load()
            if mode and img.mode != mode:
                return f"is mode {img.mode}, expected {'a single-channel uint8 label map' if labels else mode}"
            arr = np.asarray(img)
    except Exception as e:  # noqa: BLE001 - any failure to read is the finding
        return f"is unreadable ({type(e).__name__}: {e})"
    if labels and arr.size and int(arr.max()) >= NUM_CLASSES:
        return f"has label {int(arr.max())} outside 0..{NUM_CLASSES - 1}"
    return None


def check_npz(path: Path, sha256: str | None, depth: str) -> str | None:
    if not path.is_file():
        return "is missing"
    if sha256 and sha256_file(path) != sha256:
        return "changed since it was written (sha256 differs)"
    try:
        with zipfile.ZipFile(path) as z:
            if depth == "fast":
                bad = z.testzip()
                return None if bad is None else f"member {bad} fails its CRC"
            for name in z.namelist():
                a = load_npy(z.read(name))
                if not np.isfinite(a.astype(np.float32)).all():
                    return f"member {name} holds NaN or inf"
    except Exception as e:  # noqa: BLE001
        return f"is unreadable ({type(e).__name__}: {e})"
    return None


class _Checks:
    """Collects problems and counts checks for one verify."""

    def __init__(self, out: Path, depth: str):
        self.out, self.depth = out, depth
        self.problems: list[Problem] = []
        self.checks = 0
        self.repair = f"facecurate repair {out}"

    def add(self, line: str, stage: str | None = None, keys: tuple[str, ...] = (), fix: str | None = None,
            part: Path | None = None, remove: Path | None = None) -> None:
        self.problems.append(Problem(line, fix if fix is not None else self.repair, stage, keys, part, remove))


def _ledger_parts(c: _Checks) -> dict[str, pa.Table]:
    """Every part of every stage's ledger read in full (`Ledger.validate`); returns each stage's resolved
    rows from the parts that read."""
    resolved: dict[str, pa.Table] = {}
    for name, spec in REGISTRY.items():
        ledger = Ledger(c.out, spec.ledger or name, on_corrupt="skip")
        parts = ledger.parts()
        c.checks += len(parts)
        ledger.validate()
        for part, why in sorted(ledger.corrupt.items()):
            c.add(f"ledger part {part} is corrupt ({why}): repair moves it aside and redoes its keys",
                  stage=name, part=part)
        if parts:
            resolved[name] = ledger.read()
    return resolved


def verify_run(out: Path, console: Console, depth: str = "fast") -> tuple[list[Problem], int]:
    """(problems, number of checks made); see the module docstring."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {', '.join(DEPTHS)}, not {depth!r}")
    c = _Checks(out, depth)
    index_path = out / INDEX
    if not index_path.exists():
        c.add(f"{index_path} is missing", fix=f"facecurate ingest SRC --out {out}")
        return c.problems, 1
    c.checks += 1
    try:
        recorded = (out / INDEX_SHA).read_text().split()[0] if (out / INDEX_SHA).is_file() else None
        index = read_checked(index_path, recorded)
    except (OSError, pa.ArrowException, ValueError) as e:
        c.add(f"{index_path} does not read ({type(e).__name__}: {e}); the ingest stage writes it again",
              stage="ingest", remove=index_path)
        return c.problems, c.checks
    keys = index["key"].to_pylist()
    if len(set(keys)) != len(keys):
        dups = sorted(k for k, n in Counter(keys).items() if n > 1)[:5]
        c.add(f"index.parquet lists keys more than once: {dups}", stage="ingest", remove=index_path)
    ledgers = _ledger_parts(c)
    tasks = _artifact_tasks(c, index, ledgers)
    with Progress(TextColumn(f"[bold]verify ({depth})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        bar = progress.add_task("verify", total=len(tasks))
        for check in tasks:
            c.checks += 1
            check()
            progress.advance(bar)
    shard_problems, shard_checks = check_shards(out, console, depth)
    c.checks += shard_checks
    for p in shard_problems:
        c.problems.append(p if isinstance(p, Problem) else Problem(p, c.repair, "shard"))
    if "shard" in ledgers:
        card = check_card(out)
        c.checks += 1
        if card:
            c.add(card, stage="shard", remove=out / "shards" / "README.md")
    return c.problems, c.checks


def _ok_rows(table: pa.Table | None, columns: list[str]) -> list[dict[str, Any]]:
    if table is None:
        return []
    have = [col for col in columns if col in table.column_names]
    return table.filter(pc.equal(table["status"], OK)).select(have).to_pylist()


def _artifact_tasks(c: _Checks, index: pa.Table, ledgers: dict[str, pa.Table]) -> list:
    """One callable per file to check, in a stable order."""
    out, depth = c.out, c.depth
    tasks = []

    def source(r: dict) -> None:
        path = Path(r["path"]) if Path(r["path"]).is_absolute() else out / r["path"]
        if not path.exists():
            c.add(f"{r['key']}: image {path} is missing (restore it; repair records it as unreadable)",
                  stage="ingest", keys=(r["key"],))
        elif sha256_file(path) != r["sha256"]:
            c.add(f"{r['key']}: {path} changed since ingest (sha256 differs): repair re-ingests it and "
                  "redoes what depends on it", stage="ingest", keys=(r["key"],))

    def gt_mask(r: dict) -> None:
        why = check_png(out / r["gt_mask"], depth, "L", labels=True)
        if why:
            c.add(f"{r['key']}: ground-truth mask {out / r['gt_mask']} {why}", stage="ingest", keys=(r["key"],))

    cols = [col for col in ("key", "status", "path", "sha256", "gt_mask") if col in index.column_names]
    for r in index.filter(pc.is_in(index["status"], pa.array(["ok", "duplicate"]))).select(cols).to_pylist():
        tasks.append(lambda r=r: source(r))
        if r.get("gt_mask"):
            tasks.append(lambda r=r: gt_mask(r))

    def crop(r: dict) -> None:
        path = out / r["aligned"]
        if not path.is_file():
            c.add(f"{r['face_key']}: aligned crop {path} is missing", stage="faces", keys=(r["key"],))
        elif sha256_file(path) != r["aligned_sha256"]:
            c.add(f"{r['face_key']}: aligned crop {path} changed since the faces stage wrote it",
                  stage="faces", keys=(r["key"],))

    for r in _ok_rows(ledgers.get("faces"), ["key", "face_key", "aligned", "aligned_sha256"]):
        if r.get("aligned_sha256"):
            tasks.append(lambda r=r: crop(r))

    def png(stage: str, what: str, key: str, rel: str, labels: bool) -> None:
        why = check_png(out / rel, depth, "L", labels=labels)
        if why:
            c.add(f"{key}: {what} {out / rel} {why}", stage=stage, keys=(key,))

    for r in _ok_rows(ledgers.get("parse"), ["key", "mask"]):
        if r.get("mask"):
            tasks.append(lambda r=r: png("parse", "mask", r["key"], r["mask"], True))
    for r in _ok_rows(ledgers.get("sketch"), ["key", "sketch"]):
        if r.get("sketch"):
            tasks.append(lambda r=r: png("sketch", "sketch", r["key"], r["sketch"], False))

    def latent(r: dict) -> None:
        why = check_npz(out / r["file"], r.get("sha256"), depth)
        if why:
            c.add(f"latents: {r['key']} ({r['vae']}): {r['file']} {why}", stage="latents", keys=(r["key"],))

    for r in _ok_rows(ledgers.get("latents"), ["key", "vae", "file", "sha256"]):
        if r.get("file"):
            tasks.append(lambda r=r: latent(r))
    return tasks


def apply_repairs(out: Path, problems: list[Problem], console: Console) -> dict[str, int]:
    """Move corrupt parts aside, delete broken derived files, and make broken keys pending again.
    Returns counts per action. Never touches a source file."""
    done = {"ledger part(s) moved aside": 0, "broken file(s) removed": 0, "key(s) to redo": 0}
    by_stage: dict[str, set[str]] = defaultdict(set)
    why: dict[str, str] = {}
    for p in problems:
        if p.part is not None and p.part.exists() and p.stage is not None:
            spec = REGISTRY[p.stage]
            Ledger(out, spec.ledger or spec.name, on_corrupt="quarantine").quarantine(p.part, "found by verify")
            done["ledger part(s) moved aside"] += 1
        if p.remove is not None and p.remove.exists():
            p.remove.unlink()
            done["broken file(s) removed"] += 1
        if p.keys and p.stage is not None:
            by_stage[p.stage].update(p.keys)
            why.setdefault(p.stage, str(p))
    for stage, keys in sorted(by_stage.items()):
        spec = REGISTRY[stage]
        Ledger(out, spec.ledger or spec.name, on_corrupt="quarantine").invalidate(
            sorted(keys), f"verify: {why[stage]}")
        done["key(s) to redo"] += len(keys)
    return done

"""Shard assembly: a deterministic plan from the shard ledger, then shards written as fragment copies.

The plan depends only on the ok rows (key, split, staged fragment, its size and sha256) and the
settings: splits in order (train, val, test, then others), samples in a seeded hash order (or key
order), a new shard whenever the next sample would pass `max_samples` or `max_bytes`. Each shard is
its fragments back to back plus the two zero blocks that end a tar, written under a temporary name,
fsynced and renamed (`pipeline.core.files.atomic_write`: a failed write leaves no temporary).
`.assembly.json` records, per shard, the digest of its plan and the file's size and mtime, so a re-run
rewrites only the shards whose plan changed, and a run killed halfway redoes only the shards it had
not renamed yet. `index.json` is removed before the first rewrite and written by the stage after the
last one: a folder with an `index.json` is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.core.files import atomic_write, atomic_write_bytes, sweep_beside
from pipeline.core.ledger import OK
from pipeline.data.views import read_ledger
from pipeline.data.wds import END_OF_ARCHIVE

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
SHARD_RE = re.compile(r"^(.+)-(\d{6})\.tar$")
PROGRESS = ".assembly.json"


@dataclass
class ShardPlan:
    """One shard to write.

    Args:
        name: file name, `<split>-NNNNNN.tar`.
        split: the split all its samples belong to.
        rows: shard ledger rows of its samples, in order (each names its staged fragment).
    """

    name: str
    split: str
    rows: list[dict[str, Any]]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for r in self.rows:
            h.update(f"{r['key']}\t{r['staged']}\t{r['sha256']}\n".encode())
        return h.hexdigest()


def plan_shards(rows: list[dict[str, Any]], cfg: Any) -> list[ShardPlan]:
    """Deterministic: split order, then (hash of seed and key) or key order, rolled by count and bytes."""
    def order(r: dict[str, Any]) -> tuple:
        salted = f"{cfg.order_seed}:{r['key']}".encode()
        k = r["key"] if cfg.order == "key" else hashlib.sha1(salted).hexdigest()
        return SPLIT_ORDER.get(r["split"], 9), r["split"], k, r["key"]

    plans: list[ShardPlan] = []
    size = 0
    for r in sorted(rows, key=order):
        last = plans[-1] if plans else None
        if (last is None or last.split != r["split"] or len(last.rows) >= cfg.max_samples
                or size + r["bytes"] + len(END_OF_ARCHIVE) > cfg.max_bytes and last.rows):
            n = sum(p.split == r["split"] for p in plans)
            last = ShardPlan(f"{r['split']}-{n:06d}.tar", r["split"], [])
            plans.append(last)
            size = 0
        last.rows.append(r)
        size += r["bytes"]
    return plans


def assemble(out: Path, plans: list[ShardPlan], restage: Callable[[list[str]], None]) -> list[dict[str, Any]]:
    """Write the planned shards that changed (temp name, fsync, rename), delete the ones no plan names;
    `restage(keys)` makes the fragments a changed shard needs that are gone. Returns the index entries."""
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    sweep_beside(shards)  # what a killed run wrote outside a run folder's .tmp/
    progress_path = shards / PROGRESS
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {}
    todo = [p for p in plans if not _unchanged(shards / p.name, progress.get(p.name), p.digest)]
    if todo:
        (shards / "index.json").unlink(missing_ok=True)  # no completion marker while shards change
        lost = [r["key"] for p in todo for r in p.rows if not (out / r["staged"]).exists()]
        if lost:
            restage(lost)
    for plan in todo:
        sha256, size = _write_shard(out, shards / plan.name, plan.rows)
        progress[plan.name] = {"plan": plan.digest, "sha256": sha256, "bytes": size,
                               "mtime_ns": (shards / plan.name).stat().st_mtime_ns, "samples": len(plan.rows)}
        atomic_write_bytes(progress_path, json.dumps(progress, indent=1, sort_keys=True).encode())
    names = {p.name for p in plans}
    for p in shards.iterdir():
        if SHARD_RE.match(p.name) and p.name not in names:
            p.unlink()
    progress = {k: v for k, v in progress.items() if k in names}
    atomic_write_bytes(progress_path, json.dumps(progress, indent=1, sort_keys=True).encode())
    return [{"name": p.name, "split": p.split, "samples": len(p.rows), "bytes": progress[p.name]["bytes"],
             "sha256": progress[p.name]["sha256"], "_rows": p.rows} for p in plans]


def _write_shard(out: Path, path: Path, rows: list[dict[str, Any]]) -> tuple[str, int]:
    """The fragments back to back + the end-of-archive blocks, written atomically; (sha256, bytes)."""
    done: dict[str, Any] = {}

    def fill(f: IO[bytes]) -> None:  # may be called twice (atomic_write retries beside a cross-disk .tmp)
        h, n = hashlib.sha256(), 0
        for r in rows:
            data = (out / r["staged"]).read_bytes()
            f.write(data)
            h.update(data)
            n += len(data)
        f.write(END_OF_ARCHIVE)
        h.update(END_OF_ARCHIVE)
        f.flush()
        os.fsync(f.fileno())  # a renamed shard is on disk, not only in the page cache
        done.update(sha256=h.hexdigest(), bytes=n + len(END_OF_ARCHIVE))

    atomic_write(path, fill)
    return done["sha256"], done["bytes"]


def _unchanged(path: Path, entry: dict | None, digest: str) -> bool:
    if not entry or entry.get("plan") != digest or not path.exists():
        return False
    st = path.stat()
    return st.st_size == entry["bytes"] and st.st_mtime_ns == entry["mtime_ns"]


def build_index(written: list[dict[str, Any]], rows: list[dict[str, Any]], resolution: int | None,
                vae_info: dict[str, dict]) -> dict:
    """`index.json`: the shards (name, split, samples, bytes, sha256) plus totals; no timestamps, so an
    unchanged dataset gives an identical file."""
    splits: dict[str, dict[str, int]] = {}
    for s in written:
        d = splits.setdefault(s["split"], {"shards": 0, "samples": 0, "bytes": 0})
        d["shards"] += 1
        d["samples"] += s["samples"]
        d["bytes"] += s["bytes"]
    vaes: dict[str, Any] = {}
    for r in (r for s in written for r in s["_rows"]):
        for f in r["fields"]:
            if f.endswith(".latent.npy"):
                name = f.split(".")[0]
                vaes.setdefault(name, dict(vae_info.get(name, {}), samples=0))["samples"] += 1
    return {
        "format": "facecurate-webdataset/1",
        "resolution": resolution,
        "key_encoding": "percent-encoding of every character outside [A-Za-z0-9_-] and of a leading _; "
                        "urllib.parse.unquote(__key__) == json['key']",
        "samples": sum(s["samples"] for s in written),
        "splits": splits,
        "vaes": dict(sorted(vaes.items())),
        "left_out": dict(sorted(Counter(r["status"] for r in rows if r["status"] != OK).items())),
        "shards": [{k: s[k] for k in ("name", "split", "samples", "bytes", "sha256")} for s in written],
    }


def vae_info(out: Path) -> dict[str, dict]:
    """id, revision, factors and channels of each VAE, from its most recent ok latents row."""
    info: dict[str, dict] = {}
    cols = ["vae", "model", "subfolder", "revision", "channels", "scaling_factor", "shift_factor"]
    t = read_ledger(out, "latents", cols)
    for r in t.to_pylist() if t is not None else []:
        if r["status"] == OK:
            info[r["vae"]] = {"id": r["model"], "subfolder": r["subfolder"], "revision": r["revision"],
                              "channels": r["channels"], "scaling_factor": r["scaling_factor"],
                              "shift_factor": r["shift_factor"]}
    return info

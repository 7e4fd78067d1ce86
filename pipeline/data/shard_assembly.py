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

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.files import atomic_write, atomic_write_bytes, sweep_beside
from pipeline.core.ledger import OK
from pipeline.data.views import read_ledger
from pipeline.data.wds import END_OF_ARCHIVE

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
SHARD_RE = re.compile(r"^(.+)-(\d{6})\.tar$")
PROGRESS = ".assembly.json"


def as_table(rows: pa.Table | list[dict[str, Any]]) -> pa.Table:
    """Shard ledger rows as Arrow (a list of row dicts, from tests and tools, is converted)."""
    return rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)


@dataclass
class ShardPlan:
    """One shard to write.

    Args:
        name: file name, `<split>-NNNNNN.tar`.
        split: the split all its samples belong to.
        table: `key`, `staged`, `sha256` of its samples, in order (each names its staged fragment).
    """

    name: str
    split: str
    table: pa.Table

    @property
    def samples(self) -> int:
        return self.table.num_rows

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for key, staged, sha in zip(*(self.table[c].to_pylist() for c in ("key", "staged", "sha256")), strict=True):
            h.update(f"{key}\t{staged}\t{sha}\n".encode())
        return h.hexdigest()


def _order_column(keys: pa.ChunkedArray | pa.Array, cfg: Any) -> pa.Array | pa.ChunkedArray:
    """What samples sort by within a split: the key, or sha1(seed:key) (raw bytes sort as its hex does),
    made one chunk of keys at a time."""
    if cfg.order == "key":
        return keys
    chunks = []
    for lo in range(0, len(keys), 1 << 16):
        chunks.append(pa.array([hashlib.sha1(f"{cfg.order_seed}:{k}".encode()).digest()
                                for k in keys.slice(lo, 1 << 16).to_pylist()], pa.binary()))
    return pa.chunked_array(chunks, pa.binary())


def plan_shards(rows: pa.Table | list[dict[str, Any]], cfg: Any) -> list[ShardPlan]:
    """Deterministic: split order, then (hash of seed and key) or key order, rolled by count and bytes.
    Sorting is Arrow's (stable); the roll walks two integer columns, never a dict per sample."""
    t = as_table(rows)
    if not t.num_rows:
        return []
    t = t.select(["key", "split", "staged", "bytes", "sha256"])
    rank = pc.fill_null(pc.index_in(t["split"], value_set=pa.array(list(SPLIT_ORDER), pa.string())), 9)
    order = pa.table({"r": rank, "s": t["split"], "o": _order_column(t["key"], cfg), "k": t["key"]})
    t = t.take(pc.sort_indices(order, sort_keys=[(c, "ascending") for c in ("r", "s", "o", "k")]))
    split = pc.dictionary_encode(t["split"]).combine_chunks()
    names, codes = split.dictionary.to_pylist(), split.indices.to_numpy(zero_copy_only=False)
    sizes = t["bytes"].to_numpy()
    starts: list[int] = []  # the first row of each shard
    last_code, n_in, size, i = -1, 0, 0, 0
    for lo in range(0, len(codes), 1 << 16):
        for code, nbytes in zip(codes[lo:lo + (1 << 16)].tolist(), sizes[lo:lo + (1 << 16)].tolist(), strict=True):
            if (not starts or last_code != code or n_in >= cfg.max_samples
                    or size + nbytes + len(END_OF_ARCHIVE) > cfg.max_bytes and n_in):
                starts.append(i)
                last_code, n_in, size = code, 0, 0
            n_in += 1
            size += nbytes
            i += 1
    plans: list[ShardPlan] = []
    per_split: Counter = Counter()
    for first, end in zip(starts, [*starts[1:], t.num_rows], strict=True):
        sp = names[codes[first]]
        plans.append(ShardPlan(f"{sp}-{per_split[sp]:06d}.tar", sp, t.slice(first, end - first).select(
            ["key", "staged", "sha256"])))
        per_split[sp] += 1
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
        lost = [key for p in todo for key, staged in zip(p.table["key"].to_pylist(), p.table["staged"].to_pylist(),
                                                         strict=True) if not (out / staged).exists()]
        if lost:
            restage(lost)
    for plan in todo:
        sha256, size = _write_shard(out, shards / plan.name, plan.table["staged"].to_pylist())
        progress[plan.name] = {"plan": plan.digest, "sha256": sha256, "bytes": size,
                               "mtime_ns": (shards / plan.name).stat().st_mtime_ns, "samples": plan.samples}
        atomic_write_bytes(progress_path, json.dumps(progress, indent=1, sort_keys=True).encode())
    names = {p.name for p in plans}
    for p in shards.iterdir():
        if SHARD_RE.match(p.name) and p.name not in names:
            p.unlink()
    progress = {k: v for k, v in progress.items() if k in names}
    atomic_write_bytes(progress_path, json.dumps(progress, indent=1, sort_keys=True).encode())
    return [{"name": p.name, "split": p.split, "samples": p.samples, "bytes": progress[p.name]["bytes"],
             "sha256": progress[p.name]["sha256"]} for p in plans]


def _write_shard(out: Path, path: Path, staged: list[str]) -> tuple[str, int]:
    """The fragments back to back + the end-of-archive blocks, written atomically; (sha256, bytes)."""
    done: dict[str, Any] = {}

    def fill(f: IO[bytes]) -> None:  # may be called twice (atomic_write retries beside a cross-disk .tmp)
        h, n = hashlib.sha256(), 0
        for rel in staged:
            data = (out / rel).read_bytes()
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


def build_index(written: list[dict[str, Any]], rows: pa.Table | list[dict[str, Any]], resolution: int | None,
                vae_info: dict[str, dict]) -> dict:
    """`index.json`: the shards (name, split, samples, bytes, sha256) plus totals; no timestamps, so an
    unchanged dataset gives an identical file. Counts come from Arrow columns of the rows."""
    t = as_table(rows)
    splits: dict[str, dict[str, int]] = {}
    for s in written:
        d = splits.setdefault(s["split"], {"shards": 0, "samples": 0, "bytes": 0})
        d["shards"] += 1
        d["samples"] += s["samples"]
        d["bytes"] += s["bytes"]
    ok = pc.equal(t["status"], OK) if t.num_rows else pa.array([], pa.bool_())
    vaes: dict[str, Any] = {}
    if t.num_rows and "fields" in t.column_names:
        fields = pc.list_flatten(t.filter(ok)["fields"])
        latent = fields.filter(pc.ends_with(fields, ".latent.npy"))
        for name, n in value_counts(pc.list_element(pc.split_pattern(latent, ".", max_splits=1), 0)).items():
            vaes[name] = dict(vae_info.get(name, {}), samples=n)
    left = value_counts(t.filter(pc.invert(ok))["status"]) if t.num_rows else {}
    return {
        "format": "facecurate-webdataset/1",
        "resolution": resolution,
        "key_encoding": "percent-encoding of every character outside [A-Za-z0-9_-] and of a leading _; "
                        "urllib.parse.unquote(__key__) == json['key']",
        "samples": sum(s["samples"] for s in written),
        "splits": splits,
        "vaes": dict(sorted(vaes.items())),
        "left_out": dict(sorted(left.items())),
        "shards": [{k: s[k] for k in ("name", "split", "samples", "bytes", "sha256")} for s in written],
    }


def value_counts(values: pa.Array | pa.ChunkedArray) -> dict[Any, int]:
    """value -> how many times it occurs (nulls left out), from Arrow's hash count."""
    if not len(values):
        return {}
    vc = pc.value_counts(values)
    return {v: int(n) for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)
            if v is not None}


def vae_info(out: Path) -> dict[str, dict]:
    """id, revision, factors and channels of each VAE, from its most recent ok latents row."""
    info: dict[str, dict] = {}
    cols = ["vae", "model", "subfolder", "revision", "channels", "scaling_factor", "shift_factor"]
    t = read_ledger(out, "latents", cols)
    if t is None:
        return info
    t = t.filter(pc.equal(t["status"], OK))
    for v in pc.unique(t["vae"]).to_pylist():  # in order of first appearance; a few VAEs, not a row per sample
        if v is None:
            continue
        last = pc.indices_nonzero(pc.fill_null(pc.equal(t["vae"], v), False))[-1]
        r = t.take(pa.array([last.as_py()], pa.int64())).to_pylist()[0]
        info[v] = {"id": r["model"], "subfolder": r["subfolder"], "revision": r["revision"],
                   "channels": r["channels"], "scaling_factor": r["scaling_factor"], "shift_factor": r["shift_factor"]}
    return info

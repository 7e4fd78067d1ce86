"""Per-stage ledgers: parquet part files that record one or more rows per key, with status and error.

A part is written under a temporary name and renamed when complete, so a killed run leaves either a
whole part or none (stray temporaries are removed on the next run). Parts are numbered; when a key
appears in several parts, the rows of the latest part win: that is how a re-processed key (a changed
file, an edited prompt, `--retry-failed`) supersedes its old rows without rewriting history in place.
Every row carries `_fp`, the fingerprint of the input and settings it was made from; a key is done
when its fingerprint matches the current one (see `runner.py`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PART_RE = re.compile(r"^part-(\d{6})\.parquet$")
BASE_SCHEMA = pa.schema(
    [("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string())]
)
OK = "ok"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class Ledger:
    """The rows one stage has written under `out/<rel>/part-NNNNNN.parquet`.

    Args:
        out: the run's output folder.
        rel: the stage's ledger folder inside it (e.g. `ingest`, `captions/raw`).
    """

    def __init__(self, out: Path, rel: str):
        self.dir = Path(out) / rel

    def parts(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), self.dir / n) for n in os.listdir(self.dir) if (m := PART_RE.match(n))]
        return sorted(found)

    def remove_stale(self) -> int:
        """Delete temporaries a killed run left behind; returns how many."""
        if not self.dir.is_dir():
            return 0
        stale = [n for n in os.listdir(self.dir) if n.startswith(".part-") and ".tmp" in n]
        for n in stale:
            (self.dir / n).unlink(missing_ok=True)
        return len(stale)

    def write(self, table: pa.Table) -> Path:
        """Write one complete part (atomically) and return its path."""
        parts = self.parts()
        seq = parts[-1][0] + 1 if parts else 0
        path = self.dir / f"part-{seq:06d}.parquet"
        atomic_write_table(table, path)
        return path

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The resolved rows: for each key, only the rows of the latest part that holds it."""
        parts = self.parts()
        if not parts:
            return BASE_SCHEMA.empty_table() if columns is None else _empty(columns)
        wanted = None if columns is None else list(dict.fromkeys(["key", *columns]))  # resolution needs key
        tables = []
        for seq, path in parts:
            with pq.ParquetFile(path) as f:
                # a part written before a column was added lacks it: it comes back null, not as an error
                cols = None if wanted is None else [c for c in wanted if c in f.schema_arrow.names]
                t = f.read(columns=cols)
            tables.append(t.append_column("_part", pa.array(np.full(t.num_rows, seq, np.int32))))
        table = pa.concat_tables(tables, promote_options="permissive")
        if len(parts) > 1 and table.num_rows:
            enc = pc.dictionary_encode(table["key"]).combine_chunks()
            idx = enc.indices.to_numpy(zero_copy_only=False)
            seqs = table["_part"].to_numpy()
            latest = np.full(len(enc.dictionary), -1, np.int64)
            np.maximum.at(latest, idx, seqs)
            table = table.filter(pa.array(seqs == latest[idx]))
        table = table.drop_columns(["_part"])
        return table if columns is None or "key" in columns else table.drop_columns(["key"])

    def done(self) -> dict[str, tuple[str, int, int]]:
        """key -> (fingerprint, ok rows, all rows) for every key the stage has recorded."""
        t = self.read(["key", "status", "_fp"])
        out: dict[str, tuple[str, int, int]] = {}
        for k, s, f in zip(t["key"].to_pylist(), t["status"].to_pylist(), t["_fp"].to_pylist(), strict=True):
            _, n_ok, n = out.get(k, (f, 0, 0))
            out[k] = (f, n_ok + (s == OK), n + 1)
        return out

    def ok_keys(self) -> set[str]:
        """Keys with at least one ok row."""
        t = self.read(["key", "status"])
        return set(t.filter(pc.equal(t["status"], OK))["key"].to_pylist())

    def counts(self) -> Counter:
        """Rows per status (`ok` or a reason code)."""
        t = self.read(["status"])
        return Counter(t["status"].to_pylist())

    def compact(self) -> None:
        """Fold all parts into one (the resolved view); safe to kill at any point."""
        parts = self.parts()
        if len(parts) <= 1:
            return
        self.write(self.read())
        for _, path in parts:
            path.unlink(missing_ok=True)


def _empty(columns: list[str]) -> pa.Table:
    return pa.table({c: pa.array([], BASE_SCHEMA.field(c).type if c in BASE_SCHEMA.names else pa.string())
                     for c in columns})

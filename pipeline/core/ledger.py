"""Per-stage ledgers: parquet part files that record one or more rows per key, with status and error.

A part is written under a temporary name and renamed when complete, so a killed run leaves either a
whole part or none (stray temporaries are removed on the next run). Parts are numbered; when a key
appears in several parts, the rows of the latest part win: that is how a re-processed key (a changed
file, an edited prompt, `--retry-failed`) supersedes its old rows without rewriting history in place.
Every row carries `_fp`, the fingerprint of the input and settings it was made from; a key is done
when its fingerprint matches the current one (see `runner.py`).

A part that does not read in full (a flipped byte, a cut file) is never half-trusted. What happens
depends on who reads (`on_corrupt`): a run moves it aside to `<ledger>/corrupt/` with one line naming
it, and its keys become pending again (`quarantine`); `status` and reports skip it and say so
(`skip`, see `Ledger.corrupt`); anything else gets a `LedgerCorrupt` one-liner naming the part and
what to run (`raise`). `verify` reads every part with every column.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.config import ConfigError
from pipeline.core.files import atomic_write_bytes

__all__ = ["BASE_SCHEMA", "OK", "Ledger", "atomic_write_bytes", "atomic_write_table", "sha256_file"]

# part-NNNNNN.<first 16 hex of its sha256>.parquet (parts written before checksums: part-NNNNNN.parquet)
PART_RE = re.compile(r"^part-(\d{6})(?:\.([0-9a-f]{16}))?\.parquet$")
BASE_SCHEMA = pa.schema(
    [("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string())]
)
OK = "ok"
NEEDS_REPAIR = "needs_repair"  # the status of a row `repair` wrote to make its key pending again
CORRUPT_DIR = "corrupt"


class LedgerCorrupt(ConfigError):
    """A ledger part that does not read; the message names it and says what to run."""

    def __init__(self, path: Path, cause: Exception, out: Path):
        super().__init__(f"ledger part {path} is corrupt ({_first_line(cause)}); run `facecurate repair {out}` "
                         "to move it aside and recompute its keys")
        self.path = path


def _first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:200] if text else type(e).__name__


_HASHED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of parts whose sha256 matched their name


def check_part_sha(path: Path) -> None:
    """Raise ValueError when a part's bytes do not match the sha256 in its name (any changed byte,
    footer included). Each file is hashed once per process while its size and mtime stay the same."""
    want = part_sha(path)
    if want is None:
        return
    st = path.stat()
    ident = (str(path), st.st_size, st.st_mtime_ns)
    if ident in _HASHED:
        return
    if sha256_file(path)[:16] != want:
        raise ValueError("its bytes do not match the sha256 in its name (a changed byte)")
    _HASHED.add(ident)


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One part, checked against the sha256 in its name, every requested column decoded with its page
    CRCs checked (columns older parts lack are left out)."""
    check_part_sha(path)
    with pq.ParquetFile(path, page_checksum_verification=True) as f:
        return f.read(columns=None if columns is None else [c for c in columns if c in f.schema_arrow.names])


def read_checked(path: Path, sha256: str | None = None) -> pa.Table:
    """A whole parquet file, checked against `sha256` when given and its page CRCs."""
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("its bytes do not match the recorded sha256 (a changed byte)")
    with pq.ParquetFile(io.BytesIO(data), page_checksum_verification=True) as f:
        return f.read()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def table_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """A table as parquet bytes: zstd, and a CRC on every page, so a reader finds a flipped byte."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_page_checksum=True, row_group_size=row_group_size)
    return buf.getvalue()


def atomic_write_table(table: pa.Table, path: Path) -> str:
    """A parquet file written whole (through `files.atomic_write_bytes`); returns its sha256."""
    data = table_bytes(table)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def part_sha(path: Path) -> str | None:
    """The sha256 prefix a part's name records (`part-NNNNNN.<sha>.parquet`; None for older parts)."""
    m = PART_RE.match(path.name)
    return m.group(2) if m else None


class Ledger:
    """The rows one stage has written under `out/<rel>/part-NNNNNN.parquet`.

    Args:
        out: the run's output folder.
        rel: the stage's ledger folder inside it (e.g. `ingest`, `captions/raw`).
    """

    def __init__(self, out: Path, rel: str, on_corrupt: str = "raise"):
        self.dir = Path(out) / rel
        self.out = Path(out)
        self.on_corrupt = on_corrupt  # raise | quarantine | skip
        self.corrupt: dict[Path, str] = {}  # parts found unreadable (skipped or moved aside), with why

    def quarantine(self, path: Path, why: str) -> Path:
        """Move a corrupt part to `<ledger>/corrupt/` (named by its part and a hash of its bytes, so a
        second corrupt copy never overwrites the first); its keys are pending again."""
        dest_dir = self.dir / CORRUPT_DIR
        dest_dir.mkdir(exist_ok=True)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        except OSError:
            digest = "unread"
        dest = dest_dir / f"{path.name}.{digest}"
        os.replace(path, dest)
        self.corrupt[path] = why
        print(f"facecurate: ledger part {path} is corrupt ({why}); moved to {dest}, its keys will be "
              "recomputed", file=sys.stderr)
        return dest

    def _read_part(self, path: Path, columns: list[str] | None) -> pa.Table | None:
        try:
            return read_part(path, columns)
        except (OSError, pa.ArrowException, ValueError) as e:
            if self.on_corrupt == "raise":
                raise LedgerCorrupt(path, e, self.out) from None
            if self.on_corrupt == "quarantine":
                self.quarantine(path, _first_line(e))
            else:
                self.corrupt[path] = _first_line(e)
            return None

    def parts(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), self.dir / n) for n in os.listdir(self.dir) if (m := PART_RE.match(n))]
        found.sort()
        _NEXT[str(self.dir)] = (found[-1][0] + 1 if found else 0, _mtime(self.dir))
        return found

    def _next_seq(self) -> int:
        """The next part number without listing the folder: remembered from the last listing or write,
        trusted while the folder's mtime is the one recorded then (a run holds the only writer's lock;
        any other change to the folder changes its mtime and costs one listing)."""
        known = _NEXT.get(str(self.dir))
        if known is not None and known[1] == _mtime(self.dir):
            return known[0]
        parts = self.parts()
        return parts[-1][0] + 1 if parts else 0

    def remove_stale(self) -> int:
        """Delete temporaries a killed run left behind; returns how many."""
        if not self.dir.is_dir():
            return 0
        stale = [n for n in os.listdir(self.dir) if n.startswith(".part-") and ".tmp" in n]
        for n in stale:
            (self.dir / n).unlink(missing_ok=True)
        return len(stale)

    def write(self, table: pa.Table, row_group_size: int | None = None) -> Path:
        """Write one complete part (atomically) and return its path."""
        seq = self._next_seq()
        data = table_bytes(table, row_group_size)
        path = self.dir / f"part-{seq:06d}.{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        atomic_write_bytes(path, data)
        _NEXT[str(self.dir)] = (seq + 1, _mtime(self.dir))
        return path

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The resolved rows: for each key, only the rows of the latest part that holds it."""
        parts = self.parts()
        if not parts:
            return BASE_SCHEMA.empty_table() if columns is None else _empty(columns)
        wanted = None if columns is None else list(dict.fromkeys(["key", *columns]))  # resolution needs key
        tables = []
        for seq, path in parts:
            # a part written before a column was added lacks it: it comes back null, not as an error
            t = self._read_part(path, wanted)
            if t is not None:
                tables.append(t.append_column("_part", pa.array(np.full(t.num_rows, seq, np.int32))))
        if not tables:
            return BASE_SCHEMA.empty_table() if columns is None else _empty(columns)
        table = pa.concat_tables(tables, promote_options="permissive")
        if len(tables) > 1 and table.num_rows:
            enc = pc.dictionary_encode(table["key"]).combine_chunks()
            idx = enc.indices.to_numpy(zero_copy_only=False)
            seqs = table["_part"].to_numpy()
            latest = np.full(len(enc.dictionary), -1, np.int64)
            np.maximum.at(latest, idx, seqs)
            table = table.filter(pa.array(seqs == latest[idx]))
        table = table.drop_columns(["_part"])
        return table if columns is None or "key" in columns else table.drop_columns(["key"])

    def owners(self) -> pa.Table:
        """(key, _part): each key once, with the number of the latest part that holds it (whose rows are
        the key's resolved rows). Read from the parts' key columns alone: about 50 bytes a key."""
        seen = []
        for seq, path in self.parts():
            t = self._read_part(path, ["key"])
            if t is not None and t.num_rows:
                keys = pc.unique(t["key"])
                seen.append(pa.table({"key": keys, "_part": pa.array(np.full(len(keys), seq, np.int32))}))
        if not seen:
            return pa.table({"key": pa.array([], pa.string()), "_part": pa.array([], pa.int32())})
        if len(seen) == 1:
            return seen[0]
        t = pa.concat_tables(seen).group_by("key", use_threads=False).aggregate([("_part", "max")])
        return pa.table({"key": t["key"], "_part": t["_part_max"]})

    def iter_resolved(self, columns: list[str] | None = None, owners: pa.Table | None = None):
        """(part number, its resolved rows) one part at a time: the rows of the keys this part owns (see
        `owners`), in the part's order. What `read` returns, in pieces, so memory is one part."""
        owners = self.owners() if owners is None else owners
        wanted = None if columns is None else list(dict.fromkeys(["key", *columns]))
        for seq, path in self.parts():
            t = self._read_part(path, wanted)
            if t is None or not t.num_rows:
                continue
            mine = owners["key"].filter(pc.equal(owners["_part"], seq))
            if len(mine) != len(pc.unique(t["key"])):
                t = t.filter(pc.is_in(t["key"], value_set=mine))
            if t.num_rows:
                yield seq, t

    def done(self) -> pa.Table:
        """One row per key the stage has recorded: `key`, `_fp` (its rows' fingerprint), `n_ok` (ok rows),
        `n` (all rows). Built per part with Arrow group-bys, so memory is one part's key/status/_fp
        columns plus this table (about 70 bytes a key), never Python objects per row."""
        pieces = []
        for seq, path in self.parts():
            t = self._read_part(path, ["key", "status", "_fp"])
            if t is None or not t.num_rows:
                continue
            t = t.append_column("_ok", pc.cast(pc.equal(t["status"], OK), pa.int32()))
            g = t.group_by("key").aggregate([("_fp", "max"), ("_ok", "sum"), ("status", "count")])
            pieces.append(g.append_column("_part", pa.array(np.full(g.num_rows, seq, np.int32))))
        if not pieces:
            return DONE_SCHEMA.empty_table()
        t = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
        t = t.rename_columns({"_fp_max": "_fp", "_ok_sum": "n_ok", "status_count": "n"})
        if len(pieces) > 1:  # the latest part holding a key wins
            latest = t.group_by("key").aggregate([("_part", "max")])
            t = t.join(latest, keys=["key", "_part"], right_keys=["key", "_part_max"], join_type="inner")
        t = t.select(["key", "_fp", "n_ok", "n"])
        return t.cast(DONE_SCHEMA)

    def lookup(self, keys: pa.Array | pa.ChunkedArray) -> pa.Table:
        """`done()`'s columns for each of `keys`, in their order (nulls where the key has no rows)."""
        done = self.done()
        at = pc.index_in(keys, value_set=done["key"])
        return done.take(at)

    def ok_keys(self) -> set[str]:
        """Keys with at least one ok row."""
        t = self.read(["key", "status"])
        return set(t.filter(pc.equal(t["status"], OK))["key"].to_pylist())

    def counts(self) -> Counter:
        """Rows per status (`ok` or a reason code)."""
        return value_counts(self.read(["status"])["status"])

    def validate(self) -> int:
        """Read every part in full (every column); corrupt ones are handled per `on_corrupt`.
        Returns the number of parts found corrupt."""
        before = len(self.corrupt)
        for _, path in self.parts():
            self._read_part(path, None)
        return len(self.corrupt) - before

    def invalidate(self, keys: list[str], why: str) -> Path | None:
        """Make `keys` pending again without touching their files: a part whose rows (status
        `needs_repair`, an empty fingerprint) supersede every earlier row of those keys."""
        keys = sorted(set(keys))
        if not keys:
            return None
        n = len(keys)
        return self.write(pa.table({"key": pa.array(keys, pa.string()), "status": [NEEDS_REPAIR] * n,
                                    "error": [why[:500]] * n, "_fp": [""] * n}, schema=BASE_SCHEMA))

    def compact(self, rows_per_part: int = 1_000_000) -> None:
        """Fold all parts into the resolved view, written as parts of at most about `rows_per_part` rows
        (a key's rows stay in one part), reading one old part at a time: memory is bounded by the
        largest part plus a key -> latest-part map. Safe to kill at any point: the new parts hold the
        latest rows of their keys, so until the old parts are gone they resolve to the same rows."""
        parts = self.parts()
        if len(parts) <= 1:
            return
        owners = self.owners()  # each key once, with the latest part that holds it: about 50 bytes a key
        if self.corrupt and self.on_corrupt != "quarantine":
            return  # never fold a ledger whose parts could not all be read
        owners = owners.sort_by("_part")
        owner_part = owners["_part"].to_numpy()
        buffer: list[pa.Table] = []
        n, wrote, schema = 0, False, None
        for seq, path in parts:
            t = self._read_part(path, None)
            if t is None:
                continue
            schema = schema or t.schema
            lo, hi = np.searchsorted(owner_part, [seq, seq + 1])
            t = t.filter(pc.is_in(t["key"], value_set=owners["key"].slice(lo, hi - lo)))
            if t.num_rows:
                buffer.append(t)
                n += t.num_rows
            if n >= rows_per_part:
                self._write_sorted(buffer)
                buffer, n, wrote = [], 0, True
        if buffer or not wrote:
            self._write_sorted(buffer, schema)
        for _, path in parts:
            path.unlink(missing_ok=True)

    def _write_sorted(self, pieces: list[pa.Table], schema: pa.Schema | None = None) -> None:
        """One compacted part: its rows sorted by key (a stable sort: a key's rows keep their order) in
        row groups of `PART_ROW_GROUP` rows, so a batch reader (`BatchRows`) reads only the groups
        whose key range holds its keys."""
        t = pa.concat_tables(pieces, promote_options="permissive") if pieces else (schema or BASE_SCHEMA).empty_table()
        if t.num_rows:
            t = t.take(pc.sort_indices(t, sort_keys=[("key", "ascending")]))
        self.write(t, PART_ROW_GROUP)


PART_ROW_GROUP = 1 << 16  # rows per row group of a compacted part: what a batch reader reads at least


def rows_by_key(table: pa.Table, keys: pa.Array | pa.ChunkedArray, chunk: int = 1 << 16):
    """For each of `keys` (in their order) that has rows in `table`: (key, its rows as dicts, in the
    table's order), yielded in chunks of `chunk` keys, so only one chunk is ever Python objects (a
    stable sort by key, run boundaries, then one `take` per chunk)."""
    if not table.num_rows or not len(keys):
        return
    sorted_keys = table["key"].combine_chunks()
    if len(sorted_keys) > 1 and not pc.all(pc.greater_equal(sorted_keys[1:], sorted_keys[:-1])).as_py():
        table = table.take(pc.sort_indices(table, sort_keys=[("key", "ascending")]))  # stable: order kept
        sorted_keys = table["key"].combine_chunks()
    starts = np.concatenate([[0], np.flatnonzero(
        pc.not_equal(sorted_keys[1:], sorted_keys[:-1]).to_numpy(zero_copy_only=False)) + 1])
    ends = np.append(starts[1:], len(sorted_keys))
    pos = pc.index_in(keys, value_set=sorted_keys.take(pa.array(starts)))
    found = pc.is_valid(pos)
    keys, pos = pc.filter(keys, found), pc.filter(pos, found).to_numpy(zero_copy_only=False)
    for lo in range(0, len(pos), chunk):
        p = pos[lo:lo + chunk]
        lengths = ends[p] - starts[p]
        first = np.repeat(starts[p] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        rows = table.take(pa.array(first + np.arange(lengths.sum()))).to_pylist()
        at = 0
        for key, n in zip(keys[lo:lo + chunk].to_pylist(), lengths.tolist(), strict=True):
            yield key, rows[at:at + n]
            at += n


def string_table(records, names: tuple[str, ...], chunk: int = 1 << 16) -> pa.Table:
    """A table of string columns from an iterator of tuples, made Arrow every `chunk` records (so at
    most one chunk of them is ever Python objects)."""
    arrays: dict[str, list[pa.Array]] = {n: [] for n in names}
    buffer: list[tuple] = []

    def flush() -> None:
        for n, values in zip(names, zip(*buffer, strict=True) if buffer else [()] * len(names), strict=True):
            arrays[n].append(pa.array(values, pa.string()))
        buffer.clear()

    for record in records:
        buffer.append(record)
        if len(buffer) >= chunk:
            flush()
    flush()
    return pa.table({n: pa.chunked_array(arrays[n], pa.string()) for n in names})


class BatchRows:
    """One ledger's resolved rows for a batch of keys, read inside a stage from the parts its inputs
    name (`_part`, from `Ledger.owners`), so the driver never carries upstream rows for every key.

    Only the row groups whose key range can hold the batch's keys are decoded (compacted parts are
    key-sorted; a run's parts are one batch each), and the last groups read are kept, so batches in
    part order read each group about once. Parts are checked against their sha256 once per process.
    """

    def __init__(self, out: Path, rel: str, columns: list[str]):
        self.ledger = Ledger(out, rel)
        self.columns = list(dict.fromkeys(["key", *columns]))
        self._paths: dict[int, Path] = {}
        self._last: tuple[tuple[int, tuple[int, ...]], pa.Table] | None = None

    def _path(self, seq: int) -> Path:
        if seq not in self._paths:
            self._paths = dict(self.ledger.parts())
        if seq not in self._paths:
            raise ValueError(f"{self.ledger.dir}: part {seq} is gone (the ledger was compacted or repaired "
                             "since this run began); run the stage again")
        return self._paths[seq]

    def _groups(self, seq: int, lo: str, hi: str) -> pa.Table:
        path = self._path(seq)
        check_part_sha(path)
        with pq.ParquetFile(path, page_checksum_verification=True) as f:
            names = f.schema_arrow.names
            at = names.index("key")
            ids = []
            for i in range(f.metadata.num_row_groups):
                st = f.metadata.row_group(i).column(at).statistics
                if st is None or not st.has_min_max or (st.min <= hi and st.max >= lo):
                    ids.append(i)
            ident = (seq, tuple(ids))
            if self._last is not None and self._last[0] == ident:
                return self._last[1]
            t = f.read_row_groups(ids, columns=[c for c in self.columns if c in names])
        for c in self.columns:
            if c not in t.column_names:
                t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
        self._last = (ident, t)
        return t

    def rows(self, keys: list[str], parts: list[int]) -> dict[str, list[dict]]:
        """key -> its rows (dicts of `columns`, in the part's order) for each of `keys`, whose rows are
        in part `parts[i]`; raises ValueError naming the first key its part no longer holds."""
        got: dict[str, list[dict]] = {}
        for seq in sorted(set(parts)):
            want = [k for k, s in zip(keys, parts, strict=True) if s == seq]
            t = self._groups(seq, min(want), max(want))
            t = t.filter(pc.is_in(t["key"], value_set=pa.array(want, pa.string())))
            got.update(rows_by_key(t.select(self.columns), pa.array(want, pa.string())))
            missing = [k for k in want if k not in got]
            if missing:
                raise ValueError(f"{self.ledger.dir}: part {seq} no longer holds {missing[0]!r} (the ledger "
                                 "changed since this run began); run the stage again")
        return got


def _mtime(d: Path) -> int | None:
    try:
        return os.stat(d).st_mtime_ns
    except OSError:
        return None


_NEXT: dict[str, tuple[int, int | None]] = {}  # ledger folder -> (next part number, folder mtime then)
DONE_SCHEMA = pa.schema([("key", pa.string()), ("_fp", pa.string()), ("n_ok", pa.int64()), ("n", pa.int64())])


def _empty(columns: list[str]) -> pa.Table:
    return pa.table({c: pa.array([], BASE_SCHEMA.field(c).type if c in BASE_SCHEMA.names else pa.string())
                     for c in columns})


def value_counts(values: pa.Array | pa.ChunkedArray) -> Counter:
    """A Counter of a column's values, counted by Arrow (no Python object per row); nulls left out."""
    if not len(values):
        return Counter()
    vc = pc.value_counts(values)
    return Counter({v: n for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)
                    if v is not None})


def hash64(values) -> np.ndarray:
    """A 64-bit hash of each string (blake2b), as uint64; Python strings for 65,536 values at a time."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return np.concatenate([hash64(values.slice(lo, 1 << 16).to_pylist()) for lo in range(0, len(values), 1 << 16)]
                              or [np.zeros(0, np.uint64)])
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                        for v in values), np.uint64, len(values))


class DigestIndex:
    """A ledger's ok rows found by a digest column (`_fp`, a cache key), with no Python object per row:
    the digests' 64-bit hashes sorted, beside each row's position in `owners` (key, part): 12 bytes a
    row and the key column once. `get` reads the candidate rows per batch from their parts (`BatchRows`) and compares the whole
    digest, so a hash collision is never a hit. The stage caches (an identical input reuses its row)
    use it; it replaces dicts of every row, which at ten million keys did not fit in memory.
    """

    def __init__(self, out: Path, rel: str, column: str, columns: list[str]):
        self.column = column
        ledger = Ledger(out, rel)
        owners = ledger.owners()
        t = ledger.read(["key", "status", column]) if owners.num_rows else None
        if t is None or column not in t.column_names:
            t = pa.table({"key": pa.array([], pa.string()), "status": pa.array([], pa.string()),
                          column: pa.array([], pa.string())})
        t = t.filter(pc.and_(pc.equal(t["status"], OK), pc.is_valid(t[column])))
        h = hash64(t[column])
        order = np.argsort(h, kind="stable")
        self.hashes = h[order]
        self.owner = pc.index_in(t["key"], value_set=owners["key"]).to_numpy(zero_copy_only=False)[order]
        self.owner = self.owner.astype(np.int32 if len(owners) < 2**31 else np.int64)
        self.keys, self.parts = owners["key"], owners["_part"].to_numpy(zero_copy_only=False)
        self.reader = BatchRows(out, rel, list(dict.fromkeys(["status", column, *columns])))

    def __len__(self) -> int:
        return len(self.hashes)

    def get(self, digests: list[str]) -> list[dict | None]:
        """For each digest, an ok row with exactly that digest (a dict of the columns), or None."""
        if not len(self.hashes) or not digests:
            return [None] * len(digests)
        q = hash64(digests)
        lo, hi = np.searchsorted(self.hashes, q, "left"), np.searchsorted(self.hashes, q, "right")
        owners = sorted({int(o) for a, b in zip(lo, hi, strict=True) for o in self.owner[a:b]})
        if not owners:
            return [None] * len(digests)
        keys = self.keys.take(pa.array(owners)).to_pylist()
        try:
            rows = self.reader.rows(keys, [int(self.parts[o]) for o in owners])
        except ValueError:  # the ledger was compacted or repaired under us: a cache, so no hit
            return [None] * len(digests)
        found = {r[self.column]: r for key in keys for r in rows.get(key, []) if r["status"] == OK}
        return [found.get(d) for d in digests]

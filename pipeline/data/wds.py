"""WebDataset shards without surprises: reversible keys, deterministic tar bytes, a no-pickle reader.

A shard is a plain POSIX tar whose members are `<__key__>.<field>`; WebDataset groups consecutive
members by `__key__`. We build each sample's members once (`sample_fragment`: tar headers with fixed
mtime/owner plus data padded to 512 bytes) and a shard is those fragments back to back plus the
two zero blocks that end a tar. So a shard's bytes, and its sha256, depend only on its samples and
their order, and assembling one is a sequential copy.

Keys: a facecurate key (`photos/astronaut`, `celebahq/0`) may hold `/` and `.`, which WebDataset
would read as a folder and an extension. `encode_key` percent-encodes every character outside
`[A-Za-z0-9_-]` (and a leading `_`, since Hugging Face skips members whose name starts with `__`):
`photos/astronaut` -> `photos%2Fastronaut`; `urllib.parse.unquote` reverses it, and the original key
is also in each sample's `json`.

Reading (`iter_tar`) parses plain ustar headers itself, in one buffered pass, and hands every other
header (PAX and GNU extensions, sparse files, end of archive, anything malformed) to `tarfile`, so it
yields what `tarfile`'s stream reader yields, raises what it raises, at the same member, at several
times its speed.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
from PIL import Image

from pipeline.data.arrays import load_npy

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
_REGULAR = frozenset(b"07\0")  # REGTYPE, CONTTYPE, AREGTYPE: tarfile's regular files, but for sparse ones
_SPECIAL = frozenset(b"123456")  # hard/symlink, char/block device, directory, fifo: no data blocks read
_BIG = 1 << 24  # read members larger than this in pieces, so a header claiming a huge size allocates nothing
_SAFE = re.compile(r"[A-Za-z0-9_-]")


def encode_key(key: str) -> str:
    """The sample's `__key__`: reversible with `urllib.parse.unquote` (module docstring)."""
    out = []
    for i, ch in enumerate(key):
        if _SAFE.fullmatch(ch) and not (i == 0 and ch == "_"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out)


def decode_key(name: str) -> str:
    return unquote(name)


def tar_member(name: str, data: bytes) -> bytes:
    """One tar member: header (PAX only when a name needs it) + data padded to a block; fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + b"\0" * (-len(data) % BLOCK)


def sample_fragment(key: str, fields: list[tuple[str, bytes]]) -> bytes:
    """All members of one sample, in the given order, without the end-of-archive blocks."""
    name = encode_key(key)
    return b"".join(tar_member(f"{name}.{ext}", data) for ext, data in fields)


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key runs to the first dot of the basename; the rest is the field."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_tar(path: Path | str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(`__key__`, {field: bytes}) for each sample of a shard, streaming, in file order.

    Regular members only (links, devices, fifos and folders are skipped, never followed); a sample
    with a field twice is a ValueError; a cut-short or corrupt tar raises `tarfile.ReadError` where
    `tarfile.open(mode="r|")` would, after the samples before the damage."""
    with open(path, "rb", buffering=1 << 20) as fh:
        yield from group_samples(path, _regular_members(fh))


def group_samples(path: Path | str, members: Iterator[tuple[str, Callable[[], bytes]]]
                  ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) from (member name, read its bytes) pairs in archive order."""
    key, fields = None, {}
    for name, read in members:
        k, ext = split_name(name)
        if key is not None and k != key:
            yield key, fields
            fields = {}
        key = k
        if ext in fields:
            raise ValueError(f"{path}: sample {k} has field {ext} twice")
        fields[ext] = read()  # only now, after the sample before it is out (as tarfile's reader did)
    if key is not None:
        yield key, fields


def _number(field: bytes) -> int | None:
    """A header's octal number field, as tarfile's `nti` reads it, when it is plain digits (then NULs or
    anything after a NUL) or empty; None for anything else (spaces, base-256, bad digits): tarfile decides."""
    end = field.find(0)
    if end != -1:
        field = field[:end]
    if not field:
        return 0
    if field.isdigit():
        try:
            return int(field, 8)
        except ValueError:  # an 8 or a 9: tarfile calls the header invalid
            return None
    return None


def _plain_header(buf: bytes) -> tuple[str, int, bool] | None:
    """(name, size, regular) of a plain ustar/v7 header that tarfile would read the same way, or None
    (tarfile reads it: PAX/GNU extensions, sparse or unknown types, the end of the archive, anything
    malformed). `regular` False: a link, device, fifo or folder, whose data blocks tarfile does not skip."""
    if len(buf) != BLOCK:
        return None
    kind = buf[156]
    if kind not in _REGULAR and kind not in _SPECIAL:
        return None
    chksum = _number(buf[148:156])
    if chksum is None or chksum != 256 + sum(buf) - sum(buf[148:156]):  # tarfile also tries signed bytes
        return None
    size = _number(buf[124:136])
    if size is None:
        return None
    for lo, hi in ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345)):
        if _number(buf[lo:hi]) is None:  # mode, uid, gid, mtime, devmajor, devminor: tarfile parses them all
            return None
    name = buf[:100]
    end = name.find(0)
    name = (name if end == -1 else name[:end]).decode(tarfile.ENCODING, "surrogateescape")
    regular = kind in _REGULAR and not (kind == 0 and name.endswith("/"))  # v7: a folder ends with "/"
    prefix = buf[345:500]
    end = prefix.find(0)
    if end != 0:
        name = f"{(prefix if end == -1 else prefix[:end]).decode(tarfile.ENCODING, 'surrogateescape')}/{name}"
    return name, size, regular


def _cut_short() -> bytes:
    raise tarfile.ReadError("unexpected end of data")


def _read_exact(fh: io.BufferedReader, size: int) -> bytes:
    if size <= _BIG:
        data = fh.read(size)
    else:
        parts, left = [], size
        while left and (part := fh.read(min(left, _BIG))):
            parts.append(part)
            left -= len(part)
        data = b"".join(parts)
    if len(data) != size:
        raise tarfile.ReadError("unexpected end of data")
    return data


class _Stream:
    """What tarfile's stream reader (`mode="r|"`) does on read, seek and tell, over a seekable file:
    forward only, fetching RECORDSIZE blocks (which decides what a read of a negative size returns).
    Only the members tarfile reads for us go through it; a huge forward seek costs nothing here, where
    tarfile's own stream reads its way there block by block."""

    def __init__(self, fh: io.BufferedReader, end: int):
        self.fh, self.end, self.pos, self.raw = fh, end, 0, 0  # raw: how far tarfile would have fetched
        self.name = getattr(fh, "name", None)

    def reach(self, end: int) -> None:
        if end > self.raw:
            self.raw = min(self.end, -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE)

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int = 0) -> int:
        if pos < self.pos:
            raise tarfile.StreamError("seeking backwards is not allowed")
        self.reach(pos)
        self.pos = min(pos, self.end)
        return self.pos

    def read(self, size: int) -> bytes:
        if size >= 0:
            self.reach(self.pos + size)
            n = min(size, self.raw - self.pos)
        else:  # tarfile returns all it has fetched but the last -size bytes
            n = self.raw + size - self.pos
        if n <= 0:
            return b""
        self.fh.seek(self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        return data


def _regular_members(fh: io.BufferedReader) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, read its bytes) of each regular member, as `for m in tarfile.open(fileobj=fh, mode="r|")`
    and `tf.extractfile(m).read()` find them: plain headers parsed here, all others by tarfile itself,
    through `_Stream`, so the errors (a cut-short or corrupt tar) are tarfile's, at the same member."""
    st = os.fstat(fh.fileno())
    if not stat.S_ISREG(st.st_mode) or not fh.seekable():
        yield from _tarfile_members(fh)
        return
    end = st.st_size
    stream, tf = _Stream(fh, end), None
    offset = 0  # where the next header starts
    while True:
        pos = fh.tell()
        if offset != pos:  # tarfile's check that the previous member's blocks are all there
            if offset == 0:  # (tarfile's own rule, reached only through a negative size)
                return
            if offset < pos:  # a negative size (base-256): a stream cannot seek back
                raise tarfile.StreamError("seeking backwards is not allowed")
            if offset > end:
                raise tarfile.ReadError("unexpected end of data")
            fh.seek(offset)
        plain = None if tf is not None and tf.pax_headers else _plain_header(fh.read(BLOCK))
        if plain is not None:
            name, size, regular = plain
            offset += BLOCK
            if regular:
                yield name, partial(_read_exact, fh, size) if offset + size <= end else _cut_short
                offset += -(-size // BLOCK) * BLOCK
            continue
        # Anything else (PAX, GNU, sparse, the end, damage, global PAX records in force): tarfile reads it.
        stream.pos = offset
        stream.reach(offset)
        if tf is None:
            tf = tarfile.TarFile(fileobj=stream)  # type: ignore[arg-type]  # reads the member at `offset`
            m, tf.firstmember = tf.firstmember, None
        else:
            tf.offset = offset
            m = tf.next()
        tf.members = []
        if m is None:
            return
        offset = tf.offset
        fh.seek(stream.pos)
        if m.isfile():
            yield m.name, partial(_read_member, tf, m)


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    stream = tf.fileobj
    if m.sparse is not None:  # holes are zeros: tarfile knows how
        data = tf.extractfile(m).read()  # type: ignore[union-attr]
    else:  # what tarfile's extractfile(m).read() does for a plain member, in one read
        data = b""
        if m.size > 0:
            stream.seek(m.offset_data)  # type: ignore[union-attr]
            if m.offset_data + m.size > stream.end:  # type: ignore[union-attr]  # (without reading the rest)
                raise tarfile.ReadError("unexpected end of data")
            data = stream.read(m.size)  # type: ignore[union-attr]
    stream.fh.seek(stream.pos)  # type: ignore[union-attr]
    return data


def _tarfile_members(fh: io.BufferedReader) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """tarfile's stream reader itself, for a file that cannot seek (a pipe)."""
    with tarfile.open(fileobj=fh, mode="r|") as tf:
        for m in tf:
            if m.isfile():
                yield m.name, tf.extractfile(m).read  # type: ignore[union-attr]


def decode_field(ext: str, data: bytes) -> Any:
    """A field by its extension: images to uint8 arrays (masks and sketches stay single-channel),
    json to Python objects, npy to arrays (never unpickling)."""
    last = ext.rsplit(".", 1)[-1]
    if last in ("jpg", "jpeg", "png", "webp"):
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    if last == "json":
        return json.loads(data)
    if last == "npy":
        return load_npy(data)
    if last in ("txt", "cls"):
        return data.decode()
    return data


def decode_sample(fields: dict[str, bytes]) -> dict[str, Any]:
    return {ext: decode_field(ext, data) for ext, data in fields.items()}


def read_index(shards: Path) -> dict[str, Any]:
    path = shards / "index.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the shard stage first (facecurate shard OUT)")
    return json.loads(path.read_text())

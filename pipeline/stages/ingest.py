"""Ingest: every image of every source becomes exactly one row of `index.parquet`.

Each row has a stable key, sha256, size, mode, format, a deterministic split and a status: `ok`, or a
reason code with readable text (`empty_file`, `unreadable`, `decode_error`, `truncated`,
`unsupported_format`, `too_small`, `decompression_bomb`, `duplicate`). EXIF orientation is applied to
the recorded width and height. Images inside containers (tar, parquet) are written once to
`images/<key>.<ext>`, so later stages read every image the same way. CelebAMask-HQ's per-class mask
PNGs are merged into `gt_masks/<key>.png`.

Integrity check (`verify`): `fast` checks each format's structure without decoding pixels (JPEG: an
end-of-image marker after the scan starts; PNG: every chunk's CRC up to IEND; WebP/BMP: decoded),
which costs about what opening the header costs; `decode` decodes every image fully and also catches
corrupt entropy-coded data in the middle of a JPEG, at about 15x the cost. Later stages decode anyway
and record a `decode_error` row for anything that slipped through.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from pipeline.core.config import ConfigError, StageConfig, must_exist, volatile
from pipeline.core.files import update_bytes
from pipeline.core.ledger import OK, atomic_write_bytes, atomic_write_table, sha256_file
from pipeline.core.stage import INDEX, INDEX_SHA, Stage, StageContext
from pipeline.data.images import FORMAT_EXT, SWAPS_AXES, exif_orientation
from pipeline.data.labels import merge_binary_masks
from pipeline.data.sources import (
    DEFAULT_NAMES,
    SCAN_SCHEMA,
    Scan,
    detect_type,
    read_bytes,
    safe_part,
    scan_celebamask,
    scan_ffhq,
    scan_folder,
    scan_parquet,
    scan_webdataset,
)


@dataclass(frozen=True)
class SourceConfig:
    """One input source.

    Args:
        path: a folder, a .tar or a .parquet (relative to the manifest's folder).
        type: `auto` guesses from the layout; or folder, celebamask-hq, ffhq, webdataset, parquet.
        name: key prefix (`<name>/<id>`); defaults to celebahq, ffhq, wds, parquet or the folder's name.
        image_column: parquet column with image bytes (default: the first binary or `{bytes}` column).
        id_column: parquet column to build keys from (default: row number).
        license: license recorded for every image of this source (FFHQ's per-image license wins).
        follow_external_symlinks: read symlinks that lead outside `path`; by default they are listed in
            `ingest/ignored.tsv` and not read, so a stray link (to /etc, a home folder) leaks nothing.
    """

    path: Path = must_exist()
    type: Literal["auto", "folder", "celebamask-hq", "ffhq", "webdataset", "parquet"] = "auto"
    name: str | None = None
    image_column: str | None = None
    id_column: str | None = None
    license: str | None = None
    follow_external_symlinks: bool = False

    def resolved_type(self) -> str:
        return detect_type(self.path) if self.type == "auto" else self.type

    def resolved_name(self) -> str:
        if self.name:
            return safe_part(self.name)
        t = self.resolved_type()
        return DEFAULT_NAMES.get(t) or safe_part(self.path.resolve().name or "images")


@dataclass(frozen=True)
class IngestConfig(StageConfig):
    """Settings of the ingest stage.

    Args:
        sources: one or more `SourceConfig` mappings.
        min_size: images whose shorter side is below this are `too_small`.
        max_pixels: images claiming more pixels are `decompression_bomb` (never decoded).
        verify: `fast` (structure checks) or `decode` (full decode); see the module docstring.
        val_fraction: share of keys in `val` where the source has no official split.
        test_fraction: share of keys in `test`, likewise.
        split_seed: salt of the hash split; change it to draw a different split.
    """

    sources: tuple[SourceConfig, ...] = ()
    min_size: int = 64
    max_pixels: int = 89_478_485  # PIL's own default limit
    verify: Literal["fast", "decode"] = "fast"
    val_fraction: float = 0.05
    test_fraction: float = 0.0
    split_seed: str = "facecurate-v1"
    batch_size: int = volatile(64)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: list at least one source, e.g. sources: [{path: photos/}]")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
        names = [s.resolved_name() for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: names must differ (got {names}); set `name:` on each source")


class IngestError(Exception):
    """A reason code and a readable message for one image."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def scan(cfg: IngestConfig) -> Scan:
    tables, ignored = [], []
    for i, src in enumerate(cfg.sources):
        try:
            s = _scan_one(src)
        except ValueError as e:  # a source that cannot be read as configured: say which and why
            raise ConfigError(f"stages.ingest.sources[{i}] ({src.path}): {e}") from None
        tables.append(s.table)
        ignored += s.ignored
    return Scan(pa.concat_tables(tables) if tables else SCAN_SCHEMA.empty_table(), ignored)


def _scan_one(src: SourceConfig) -> Scan:
    kind, name = src.resolved_type(), src.resolved_name()
    follow = {"follow_external_symlinks": src.follow_external_symlinks}
    if kind == "folder":
        s = scan_folder(src.path, name, **follow)
    elif kind == "celebamask-hq":
        s = scan_celebamask(src.path, name, **follow)
    elif kind == "ffhq":
        s = scan_ffhq(src.path, name, **follow)
    elif kind == "webdataset":
        s = scan_webdataset(src.path, name, **follow)
    else:
        s = scan_parquet(src.path, name, src.image_column, src.id_column, **follow)
    if src.license:
        lic = s.table["license"]
        given = pc.fill_null(pc.not_equal(lic, ""), False)
        s.table = s.table.set_column(s.table.schema.get_field_index("license"), "license",
                                     pc.if_else(given, lic, pa.scalar(src.license, pa.string())))
    return s


def _tsv(text: str) -> str:
    """A tab or newline in a file name would break the line into wrong fields: escape them."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def jpeg_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the start of the first scan (EXIF thumbnails carry
    their own EOI before it, so searching the whole file would miss truncation)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:  # search backwards: EOI is normally the last two bytes, trailing data is rare
            return data.rfind(b"\xff\xd9", pos) != -1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


def _describe(data: bytes) -> str:
    """What unidentified bytes look like, without quoting them: the index must not carry file content."""
    head = data[:32]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "content is text, not an image"
    return f"content is not a known image format (magic bytes {head[:4].hex(' ')})"


# PIL warns between MAX_IMAGE_PIXELS and twice that; inspect_image checks the size itself, right after
# reading the header and before any decode, so the warning is noise here.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def inspect_image(data: bytes, verify: str, max_pixels: int) -> dict[str, Any]:
    """Format, mode, displayed size and orientation of encoded image bytes, or an IngestError."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # over twice PIL's limit: PIL refuses even the header
        raise IngestError("decompression_bomb", str(e)) from None
    except UnidentifiedImageError:
        raise IngestError("decode_error", _describe(data)) from None
    except Exception as e:  # noqa: BLE001 - a malformed header is a decode error, whatever PIL raises
        raise IngestError("decode_error", f"cannot read the image header: {e}") from None
    fmt = img.format or "?"
    if fmt not in FORMAT_EXT:
        raise IngestError("unsupported_format", f"{fmt} images are not ingested (JPEG, PNG, WebP, BMP are)")
    w, h = img.size
    if w * h > max_pixels:
        raise IngestError("decompression_bomb",
                          f"image claims {w}x{h} = {w * h / 1e6:.1f} MP, over max_pixels {max_pixels / 1e6:.1f} MP")
    orientation = exif_orientation(img)
    mode = img.mode
    try:
        if verify == "decode" or fmt in ("WEBP", "BMP"):
            img.load()
        elif fmt == "JPEG":
            if not jpeg_complete(data):
                raise IngestError("truncated", "JPEG ends before its end-of-image marker (file cut short)")
        elif fmt == "PNG":
            Image.open(io.BytesIO(data)).verify()  # verify() must come straight after open()
    except IngestError:
        raise
    except Exception as e:  # noqa: BLE001
        text = str(e)
        if "truncated" in text.lower() or isinstance(e, EOFError):
            raise IngestError("truncated", f"{fmt} data is cut short ({text})") from None
        raise IngestError("decode_error", f"{fmt} data is corrupt ({type(e).__name__}: {text})") from None
    if orientation in SWAPS_AXES:
        w, h = h, w
    return {"format": fmt, "mode": mode, "width": w, "height": h, "orientation": orientation}


def hash_split(key: str, seed: str, val: float, test: float) -> str:
    u = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


class IngestStage(Stage):
    """Reads, hashes, checks and measures each scanned image (see the module docstring)."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("source", pa.string()), ("path", pa.string()), ("origin", pa.string()), ("sha256", pa.string()),
        ("bytes", pa.int64()), ("format", pa.string()), ("mode", pa.string()), ("width", pa.int32()),
        ("height", pa.int32()), ("orientation", pa.int8()), ("split", pa.string()),
        ("license", pa.string()), ("source_url", pa.string()), ("gt_mask", pa.string()),
        ("flags", pa.list_(pa.string())),
    ])

    def __init__(self, cfg: IngestConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        self._parquet_cache: dict[str, Any] = {}
        # PIL warns above this and refuses above twice this; inspect_image turns the warning into a row.
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [dict(zip(batch, vals, strict=True)) for vals in zip(*batch.values(), strict=True)]
        out = [self.process(r) for r in rows]
        return {name: [o.get(name) for o in out] for name in ["key", "status", "error", *self.schema.names]}

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        origin = row["path"] + (f"#{row['member']}" if row["kind"] != "file" else "")
        out: dict[str, Any] = {
            "key": row["key"], "status": OK, "error": "", "source": row["source"], "path": row["path"],
            "origin": origin, "license": row["license"], "source_url": row["source_url"], "flags": [],
            "split": row["split_hint"] or hash_split(row["key"], cfg.split_seed, cfg.val_fraction,
                                                     cfg.test_fraction),
        }
        try:
            if row["preset_error"]:
                code, msg = row["preset_error"].split(":", 1)
                raise IngestError(code, msg)
            try:
                data = read_bytes(row, self._parquet_cache)
            except FileNotFoundError:
                raise IngestError("unreadable", "file not found (a broken symlink, or deleted during the run)") from None
            except (OSError, EOFError, ValueError, IndexError) as e:
                raise IngestError("unreadable", f"cannot read: {e}") from None
            out["bytes"] = len(data)
            if not data:
                raise IngestError("empty_file", "file is empty (0 bytes)")
            out["sha256"] = hashlib.sha256(data).hexdigest()
            info = inspect_image(data, cfg.verify, cfg.max_pixels)
            out.update(info)
            if min(info["width"], info["height"]) < cfg.min_size:
                raise IngestError("too_small", f"{info['width']}x{info['height']} is below min_size {cfg.min_size}")
            if info["orientation"] not in (0, 1):
                out["flags"].append(f"exif_orientation:{info['orientation']}")
            if row["kind"] == "file":
                ext = os.path.splitext(row["path"])[1].lower()
                if FORMAT_EXT[info["format"]] != ext and not (ext == ".jpeg" and info["format"] == "JPEG"):
                    out["flags"].append(f"extension_mismatch:{ext}_is_{info['format']}")
            else:  # materialise container members once so every later stage reads a plain file
                rel = f"images/{row['key']}{FORMAT_EXT[info['format']]}"
                dest = self.ctx.out / rel
                # rewrite unless the file holds exactly these bytes (a damaged copy of the same size too)
                if not (dest.exists() and dest.stat().st_size == len(data) and sha256_file(dest) == out["sha256"]):
                    atomic_write_bytes(dest, data)
                out["path"] = rel
            if row["gt_masks"]:
                out["gt_mask"] = self._gt_mask(row["key"], json.loads(row["gt_masks"]), out["flags"])
        except IngestError as e:
            out["status"], out["error"] = e.code, str(e)
        return out

    def _gt_mask(self, key: str, files: list[list[str]], flags: list[str]) -> str | None:
        try:
            masks = {}
            for name, path in files:
                with Image.open(path) as m:
                    masks[name] = np.asarray(m.convert("L") if m.mode not in ("L", "1", "RGB") else m)
            shape = next(iter(masks.values())).shape[:2]
            label = merge_binary_masks(masks, shape)
            buf = io.BytesIO()
            Image.fromarray(label, "L").save(buf, "PNG")
            rel = f"gt_masks/{key}.png"
            atomic_write_bytes(self.ctx.out / rel, buf.getvalue())
            return rel
        except Exception as e:  # noqa: BLE001 - a broken annotation must not lose the image
            flags.append(f"gt_mask_error:{type(e).__name__}: {e}"[:200])
            return None

    @classmethod
    def inputs(cls, cfg: IngestConfig, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        found = scan(cfg)
        if not ctx.read_only:
            lines = [f"{_tsv(path)}\t{_tsv(why)}" for path, why in found.ignored]
            text = "\n".join(lines) + "\n" if lines else ""
            # surrogateescape writes a non-UTF-8 file name back as its original bytes instead of failing
            update_bytes(ctx.out / "ingest" / "ignored.tsv", text.encode(errors="surrogateescape"))
        return found.table

    @classmethod
    def finalize(cls, cfg: IngestConfig, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        """Write `index.parquet`: the current scan's rows, sorted by key, exact duplicates marked."""
        table = ctx.ledger("ingest").read()
        if inputs is not None:
            table = table.filter(pc.is_in(table["key"], value_set=inputs["key"]))
        table = table.sort_by("key")
        # The twin that stays is the smallest key among the ok rows sharing a sha256 (sorted above).
        ok = pc.equal(table["status"], OK)
        first = table.filter(ok).group_by("sha256", use_threads=False).aggregate([("key", "first")])
        pairs = table.select(["key", "sha256"])  # one row per key, so the sorted join lines up with table
        twin = pairs.join(first, "sha256", join_type="left outer", use_threads=False).sort_by("key")["key_first"]
        dup = pc.fill_null(pc.and_kleene(ok, pc.not_equal(twin, table["key"])), False)
        status = pc.if_else(dup, "duplicate", table["status"])
        error = pc.if_else(dup, pc.binary_join_element_wise("exact duplicate of ", twin, ""), table["error"])
        table = table.set_column(table.schema.get_field_index("status"), "status", status)
        table = table.set_column(table.schema.get_field_index("error"), "error", error)
        table = table.append_column("duplicate_of", pc.if_else(dup, twin, pa.scalar(None, pa.string())))
        sha = atomic_write_table(table.drop_columns(["_fp"]), ctx.out / INDEX)
        # `sha256sum -c ingest/index.sha256` (run in OUT) and `verify` check the index against it
        update_bytes(ctx.out / INDEX_SHA, f"{sha}  {INDEX}\n".encode())
        if (n_dup := pc.sum(pc.cast(dup, pa.int64())).as_py() or 0):
            import sys

            print(f"ingest: {n_dup:,} exact duplicate(s) marked after the scan (status `duplicate`): the summary's "
                  "failures include them, the progress line's did not", file=sys.stderr)

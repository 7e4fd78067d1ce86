"""The aligned views of one sample at the shard resolution: image, label map and sketch.

The `latents` and `shard` stages both need exactly the same pixels (the latents must encode what the
shard stores), so both build them here: centre square crop, then resize to `resolution` (Lanczos for
the photo and the sketch, nearest for the label map so ids stay ids). The mask is the ground truth from
ingest where a source has one (`gt_mask`), else the parse stage's primary mask (`mask_source`).

`digest` names the inputs of the views (image sha256, mask and sketch file sha256, resolution); the
latents stage records it and the shard stage recomputes it, so latents made from an older mask or
sketch are caught instead of being paired with a newer one.

`upstream` reads the other stages' ledgers once on the driver (contract names: `parse`, `sketches`,
`captions/final`, `latents`) and hands each stage per-key columns, so workers never read ledgers.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.ledger import OK, BatchRows, Ledger
from pipeline.data.images import load_rgb
from pipeline.data.labels import NUM_CLASSES

VIEWS_VERSION = "1"
# Ledger folders of the stages we read (the cross-stage contracts), by stage name.
LEDGERS = {"refine": "captions/final", "parse": "parse", "sketch": "sketches", "latents": "latents"}


class ViewError(Exception):
    """A sample whose image cannot be used: a reason code and readable text."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Views:
    """One sample at the shard resolution (R x R).

    Args:
        image: (R, R, 3) uint8 RGB.
        mask: (R, R) uint8 CelebAMask-HQ ids, or None.
        sketch: (R, R) uint8, black lines on white, or None.
        mask_source: `gt` or the parser's name (None without a mask).
        digest: what the views were made from (module docstring).
        flags: problems met on the way (`mask_unreadable`, `mask_size_mismatch:WxH`, ...).
    """

    image: np.ndarray
    mask: np.ndarray | None
    sketch: np.ndarray | None
    mask_source: str | None
    digest: str
    flags: list[str] = field(default_factory=list)


def center_square(img: Image.Image) -> Image.Image:
    """The largest centred square (faces from FFHQ/CelebA-HQ are square already: a no-op there)."""
    w, h = img.size
    if w == h:
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def _resolve(out: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else out / p


def _read_map(out: Path, rel: str | None, what: str, flags: list[str]) -> tuple[Image.Image | None, str]:
    """A single-channel PNG (label map or sketch) and its file sha256; problems become flags, not errors."""
    if not rel:
        return None, "-"
    try:
        data = _resolve(out, rel).read_bytes()
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - a broken mask or sketch must not lose the photo
        flags.append(f"{what}_unreadable")
        flags.append(f"{what}_error:{type(e).__name__}"[:80])
        return None, "-"
    if img.mode != "L":
        arr = np.asarray(img)
        if what == "mask" and arr.ndim == 3 and not (arr[..., :3] == arr[..., :1]).all():
            flags.append(f"mask_not_label_map:{img.mode}")  # colours are not ids: never guess a palette
            return None, "-"
        if what == "mask":  # palette indices, 16-bit or grey-as-RGB ids: the ids themselves
            img = Image.fromarray((arr[..., 0] if arr.ndim == 3 else arr).astype(np.uint8), "L")
        else:
            img = img.convert("L")
    return img, hashlib.sha256(data).hexdigest()


def load_views(out: Path, row: dict[str, Any], resolution: int) -> Views:
    """Build the views of an input row (index columns plus `_mask`, `_mask_source`, `_sketch`)."""
    flags: list[str] = []
    try:
        photo = load_rgb(_resolve(out, row["path"]))
    except FileNotFoundError:
        raise ViewError("missing_image", f"image {row['path']} no longer exists (re-run ingest)") from None
    except Exception as e:  # noqa: BLE001
        raise ViewError("decode_error", f"cannot decode {row['path']}: {type(e).__name__}: {e}") from None
    aspect = photo.size[0] / photo.size[1]
    image = np.asarray(center_square(photo).resize((resolution, resolution), Image.Resampling.LANCZOS))

    mask_img, mask_sha = _read_map(out, row.get("_mask"), "mask", flags)
    mask = None
    if mask_img is not None:
        if abs(mask_img.size[0] / mask_img.size[1] - aspect) > 0.01:  # cannot be aligned with the photo
            flags.append(f"mask_size_mismatch:{mask_img.size[0]}x{mask_img.size[1]}")
            mask_sha = "-"
        else:
            mask = np.asarray(center_square(mask_img).resize((resolution,) * 2, Image.Resampling.NEAREST))
            if int(mask.max(initial=0)) >= NUM_CLASSES:
                flags.append("mask_bad_labels")
                mask, mask_sha = None, "-"

    sketch_img, sketch_sha = _read_map(out, row.get("_sketch"), "sketch", flags)
    sketch = None
    if sketch_img is not None:
        sketch = np.asarray(center_square(sketch_img).resize((resolution,) * 2, Image.Resampling.LANCZOS))
    digest = hashlib.sha1(
        f"{VIEWS_VERSION}|{resolution}|{row['sha256']}|{mask_sha}|{sketch_sha}".encode()).hexdigest()[:16]
    return Views(image, mask, sketch, row.get("_mask_source") if mask is not None else None, digest, flags)


def to_unit(view: np.ndarray) -> np.ndarray:
    """A uint8 view, (R, R, 3) RGB or (R, R) grey, as float32 (3, R, R) in [-1, 1], the VAEs' input range.
    Grey is repeated to three channels, as MMFace-DiT feeds sketches."""
    x = view.astype(np.float32) / 127.5 - 1.0
    return np.repeat(x[None], 3, axis=0) if x.ndim == 2 else x.transpose(2, 0, 1)


# ----------------------------------------------------------------------------------------------------
# Upstream ledgers, read once on the driver.


def _ok(t: pa.Table) -> pa.Table:
    return t.filter(pc.equal(t["status"], OK)) if t.num_rows else t


def read_ledger(out: Path, rel: str, columns: list[str]) -> pa.Table | None:
    """The resolved rows of a ledger, or None when it has none; a contract column a ledger written by an
    older stage version lacks reads as nulls (the key, status and the paths we need must be there)."""
    ledger = Ledger(out, rel)
    if not ledger.parts():
        return None
    t = ledger.read(["key", "status", *columns])  # only these columns are read from the parts
    for c in columns:
        if c not in t.column_names:
            t = t.append_column(c, pa.nulls(t.num_rows))
    return t.select(["key", "status", *columns])


def _last_per_key(t: pa.Table, first: bool = False, by: pa.Array | pa.ChunkedArray | None = None) -> pa.Table:
    """The last (or first) row of each key (or of each value of `by`), kept in the table's order: what
    a dict filled row by row holds, without Python objects per row."""
    if not t.num_rows:
        return t
    at = pa.table({"g": t["key"] if by is None else by, "_i": pa.array(np.arange(t.num_rows))})
    idx = at.group_by("g", use_threads=False).aggregate([("_i", "min" if first else "max")]).column(1)
    return t.take(idx.take(pc.sort_indices(idx)))


def by_key(table: pa.Table | None, keys: pa.Array | pa.ChunkedArray, column: str) -> pa.Array | pa.ChunkedArray:
    """`table[column]` for each of `keys` (an Arrow hash lookup; null where a key has no row)."""
    if table is None or not table.num_rows:
        field_type = table.schema.field(column).type if table is not None else pa.string()
        return pa.nulls(len(keys), field_type)
    return table[column].take(pc.index_in(keys, value_set=table["key"]))


def truthy(a: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return pc.fill_null(pc.and_(pc.is_valid(a), pc.not_equal(pc.fill_null(a, ""), "")), False)


@dataclass
class Upstream:
    """Per-key outputs of the optional upstream stages as Arrow tables with one row per key (hash
    lookups by `by_key`, never Python objects per key); None where a stage has not run on this folder.

    Args:
        fps: stage -> (key, _fp): each key's row fingerprint (what `_src` is built from).
        masks: (key, mask, parser) of the primary parse mask.
        sketches: (key, sketch, flags).
        captions: (key, _part) for each key with an ok row in `captions/final`: the ledger part holding
            it, which the shard stage reads per batch (`CaptionRows`), so no caption text is held here.
        latents: (key, latents): each key's latents ledger rows (one per VAE), and `latent_rows`, the
            same rows flat.
    """

    fps: dict[str, pa.Table]
    masks: pa.Table | None
    sketches: pa.Table | None
    captions: pa.Table | None
    latents: pa.Table | None
    latent_rows: pa.Table | None = None

    def src(self, keys: pa.Array | pa.ChunkedArray, stages: tuple[str, ...],
            chunk: int = 1 << 20) -> pa.Array | pa.ChunkedArray:
        """`stage:fp|stage:fp|...` for each key (`-` where a stage has no row for it), one chunk of keys per
        output chunk: ten million keys make over 2 GB of these strings, more than one Arrow string array holds."""
        if not stages:
            return pa.array([""] * len(keys), pa.string())
        found = {}  # stage -> (its fingerprints, each key's row in them): one hash lookup per stage
        for s in stages:
            t = self.fps.get(s)
            found[s] = (None, None) if t is None or not t.num_rows else (t["_fp"], pc.index_in(keys, value_set=t["key"]))
        out = []
        for lo in range(0, len(keys), chunk):
            n = min(chunk, len(keys) - lo)
            parts = []
            for s in stages:
                fp, pos = found[s]
                got = pa.nulls(n, pa.string()) if fp is None else fp.take(pos.slice(lo, n))
                parts.append(pc.binary_join_element_wise(pa.scalar(f"{s}:"), pc.fill_null(got, "-"), ""))
            joined = pc.binary_join_element_wise(*parts, "|")
            out.extend(joined.chunks if isinstance(joined, pa.ChunkedArray) else [joined])
        return pa.chunked_array(out, pa.string()) if out else pa.chunked_array([], pa.string())


def upstream(out: Path, stages: tuple[str, ...]) -> Upstream:
    """Read the ledgers of `stages` (names from LEDGERS) that exist in `out`, as per-key Arrow tables."""
    fps = {s: Ledger(out, LEDGERS[s]).done().select(["key", "_fp"]) for s in stages}
    masks = sketches = captions = latents = rows = None
    if "parse" in stages and (t := read_ledger(out, "parse", ["parser", "primary", "mask"])) is not None:
        t = _ok(t)
        t = t.filter(truthy(t["mask"]))
        primary = pc.fill_null(t["primary"], False)
        chosen = _last_per_key(t.filter(primary))  # the last primary row, else the first other one
        others = _last_per_key(t.filter(pc.invert(primary)), first=True)
        others = others.filter(pc.invert(pc.is_in(others["key"], value_set=chosen["key"])))
        t = pa.concat_tables([chosen, others])
        masks = pa.table({"key": t["key"], "mask": t["mask"],
                          "parser": pc.if_else(truthy(t["parser"]), t["parser"], "parse")})
    if "sketch" in stages and (t := read_ledger(out, "sketches", ["sketch", "flags"])) is not None:
        t = _ok(t)
        sketches = _last_per_key(t.filter(truthy(t["sketch"]))).select(["key", "sketch", "flags"])
    if "refine" in stages and (final := Ledger(out, CAPTIONS_LEDGER)).parts():
        ok = _ok(final.read(["key", "status"]))["key"]
        owners = final.owners()
        captions = owners.filter(pc.is_in(owners["key"], value_set=ok))
    if "latents" in stages and (t := read_ledger(out, "latents", LATENT_COLUMNS)) is not None:
        t = _ok(t)
        rows = _last_per_key(t, by=pc.binary_join_element_wise(t["key"], pc.fill_null(t["vae"], ""), "\0"))
        if rows.num_rows:  # the last row per (key, VAE), gathered per key into a list (a stable sort)
            by = rows.take(pc.sort_indices(rows, sort_keys=[("key", "ascending")]))
            keys = by["key"].combine_chunks()
            starts = np.concatenate([[0], np.flatnonzero(
                pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)) + 1]).astype(np.int32)
            nested = pa.StructArray.from_arrays([by[c].combine_chunks() for c in LATENT_COLUMNS], LATENT_COLUMNS)
            lists = pa.ListArray.from_arrays(pa.array(np.append(starts, len(keys)).astype(np.int32)), nested)
            latents = pa.table({"key": keys.take(pa.array(starts)), "latents": lists})
    return Upstream(fps, masks, sketches, captions, latents, rows)


CAPTIONS_LEDGER = "captions/final"


class CaptionRows:
    """Each batch's final captions and their flags, read from the `captions/final` parts its inputs
    name (`_captions_part`, from `Upstream.captions`; -1 for a key without any)."""

    def __init__(self, out: Path):
        self.rows = BatchRows(out, CAPTIONS_LEDGER, ["status", "captions", "flags"])

    def fill(self, rows: list[dict[str, Any]]) -> None:
        """Set `_captions` and `_caption_flags` of each row (from the key's last ok row; None when it has
        none)."""
        want = [r for r in rows if int(r.get("_captions_part", -1)) >= 0]
        got = self.rows.rows([r["key"] for r in want], [int(r["_captions_part"]) for r in want]) if want else {}
        for r in rows:
            ok = [c for c in got.get(r["key"], []) if c["status"] == OK]
            r["_captions"] = ok[-1]["captions"] if ok else None
            r["_caption_flags"] = ok[-1]["flags"] if ok else None


LATENT_COLUMNS = ["vae", "model", "subfolder", "revision", "resolution", "channels", "scaling_factor",
                  "shift_factor", "kinds", "file", "sha256", "inputs"]


def view_columns(index: pa.Table, up: Upstream, mask_source: str) -> dict[str, pa.Array]:
    """`_mask`, `_mask_source`, `_sketch` for each index row (the paths `load_views` reads)."""
    keys, n = index["key"], index.num_rows
    gt = index["gt_mask"] if "gt_mask" in index.column_names else pa.nulls(n, pa.string())
    use_gt = pc.and_(truthy(gt), pa.scalar(mask_source in ("auto", "gt")))
    parsed = by_key(up.masks, keys, "mask")
    use_parse = pc.and_(pc.and_(pc.invert(use_gt), pc.is_valid(parsed)), pa.scalar(mask_source in ("auto", "parse")))
    none = pa.nulls(n, pa.string())
    mask = pc.if_else(use_gt, pc.cast(gt, pa.string()), pc.if_else(use_parse, parsed, none))
    source = pc.if_else(use_gt, pa.scalar("gt"), pc.if_else(use_parse, by_key(up.masks, keys, "parser"), none))
    return {"_mask": mask, "_mask_source": source, "_sketch": by_key(up.sketches, keys, "sketch")}


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy column batch as a list of row dicts (lists stay lists, JSON strings stay strings)."""
    cols = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for k, v in batch.items()}
    n = len(cols["key"])
    return [{k: _plain(v[i]) for k, v in cols.items()} for i in range(n)]


def _plain(v: Any) -> Any:
    """List cells arrive as numpy arrays (of arrays, for nested lists; struct cells as dicts): plain
    Python lists and dicts."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    """Compact, key-sorted JSON: deterministic bytes for the same content."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

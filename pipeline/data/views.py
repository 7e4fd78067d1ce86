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

from pipeline.core.ledger import OK, Ledger
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
    t = ledger.read()
    for c in columns:
        if c not in t.column_names:
            t = t.append_column(c, pa.nulls(t.num_rows))
    return t.select(["key", "status", *columns])


@dataclass
class Upstream:
    """Per-key outputs of the optional upstream stages; None where a stage has not run on this folder.

    Args:
        fps: stage -> key -> row fingerprint (what `_src` is built from).
        masks: key -> (path, parser) of the primary parse mask.
        sketches: key -> (path, flags).
        captions: key -> (captions, flags) from `captions/final`.
        latents: key -> VAE name -> its latents ledger row.
    """

    fps: dict[str, dict[str, str]]
    masks: dict[str, tuple[str, str]] | None
    sketches: dict[str, tuple[str, list[str]]] | None
    captions: dict[str, tuple[list[str], list[str]]] | None
    latents: dict[str, dict[str, dict]] | None

    def src(self, key: str, stages: tuple[str, ...]) -> str:
        return "|".join(f"{s}:{self.fps.get(s, {}).get(key, '-')}" for s in stages)


def upstream(out: Path, stages: tuple[str, ...]) -> Upstream:
    """Read the ledgers of `stages` (names from LEDGERS) that exist in `out`."""
    fps = {s: {k: v[0] for k, v in Ledger(out, LEDGERS[s]).done().items()} for s in stages}
    masks = sketches = captions = latents = None
    if "parse" in stages and (t := read_ledger(out, "parse", ["parser", "primary", "mask"])) is not None:
        masks = {}
        for r in _ok(t).to_pylist():
            if r["mask"] and (r["primary"] or r["key"] not in masks):
                masks[r["key"]] = (r["mask"], r["parser"] or "parse")
    if "sketch" in stages and (t := read_ledger(out, "sketches", ["sketch", "flags"])) is not None:
        sketches = {r["key"]: (r["sketch"], list(r["flags"] or []))
                    for r in _ok(t).to_pylist() if r["sketch"]}
    if "refine" in stages and (t := read_ledger(out, "captions/final", ["captions", "flags"])) is not None:
        captions = {r["key"]: ([str(c) for c in r["captions"] or []], list(r["flags"] or []))
                    for r in _ok(t).to_pylist()}
    if "latents" in stages and (t := read_ledger(out, "latents", LATENT_COLUMNS)) is not None:
        latents = {}
        for r in _ok(t).to_pylist():
            latents.setdefault(r.pop("key"), {})[r["vae"]] = r
    return Upstream(fps, masks, sketches, captions, latents)


LATENT_COLUMNS = ["vae", "model", "subfolder", "revision", "resolution", "channels", "scaling_factor",
                  "shift_factor", "kinds", "file", "sha256", "inputs"]


def view_columns(index: pa.Table, up: Upstream, mask_source: str) -> dict[str, list]:
    """`_mask`, `_mask_source`, `_sketch` for each index row (the paths `load_views` reads)."""
    masks, sources, sketches = [], [], []
    gts = index["gt_mask"].to_pylist() if "gt_mask" in index.column_names else [None] * index.num_rows
    for key, gt in zip(index["key"].to_pylist(), gts, strict=True):
        parsed = (up.masks or {}).get(key)
        if gt and mask_source in ("auto", "gt"):
            masks.append(gt)
            sources.append("gt")
        elif parsed and mask_source in ("auto", "parse"):
            masks.append(parsed[0])
            sources.append(parsed[1])
        else:
            masks.append(None)
            sources.append(None)
        sk = (up.sketches or {}).get(key)
        sketches.append(sk[0] if sk else None)
    return {"_mask": masks, "_mask_source": sources, "_sketch": sketches}


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy column batch as a list of row dicts (lists stay lists, JSON strings stay strings)."""
    cols = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for k, v in batch.items()}
    n = len(cols["key"])
    return [{k: _plain(v[i]) for k, v in cols.items()} for i in range(n)]


def _plain(v: Any) -> Any:
    """List cells arrive as numpy arrays (of arrays, for nested lists): plain Python lists."""
    return [_plain(x) for x in v.tolist()] if isinstance(v, np.ndarray) else v


def dumps(obj: Any) -> str:
    """Compact, key-sorted JSON: deterministic bytes for the same content."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

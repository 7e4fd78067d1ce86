"""Runs for the latents/shard/export tests: ingest on demo data plus upstream outputs we write ourselves,
and the readers those tests check with (every shard sample; a reference view written apart from the code).

Upstream stages are coded against their data contracts: `masks/<key>.png` and `sketches/<key>.png`
files in each image's frame, and ledger parts for `parse`, `sketches` and `captions/final` with the
contract columns. Some keys deliberately lack an output, so every test sees the missing-field paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from pipeline.core.ledger import Ledger, atomic_write_bytes
from pipeline.core.manifest import build_manifest
from pipeline.core.run import run_manifest
from pipeline.core.stage import StageContext
from pipeline.data.images import load_rgb
from pipeline.data.labels import class_pixel_counts
from pipeline.data.wds import decode_key, iter_tar

NO_SKETCH = "photos/grace_hopper"          # sketch stage has no row for it
NO_CAPTIONS = "ffhq/00000"                 # captions/final has no row for it
FAILED_PARSE = "photos/astronaut"          # parse row failed: no mask (the index has no gt either)
RESOLUTION = 64


def label_map(w: int, h: int, seed: int) -> np.ndarray:
    """A face-like label map (background, skin, hair, eyes, lips, cloth) at the image's size."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    d.rectangle((0, int(h * 0.8), w, h), fill=18)                       # cloth
    d.ellipse((w * 0.2, h * 0.05, w * 0.8, h * 0.6), fill=13)           # hair
    d.ellipse((w * 0.28, h * 0.18, w * 0.72, h * 0.78), fill=1)         # skin
    off = (seed % 5) * w * 0.01
    d.rectangle((w * 0.36 + off, h * 0.38, w * 0.44 + off, h * 0.42), fill=4)
    d.rectangle((w * 0.56 + off, h * 0.38, w * 0.64 + off, h * 0.42), fill=5)
    d.rectangle((w * 0.42, h * 0.62, w * 0.58, h * 0.65), fill=11)
    d.rectangle((w * 0.42, h * 0.65, w * 0.58, h * 0.68), fill=12)
    return np.asarray(img)


def sketch_of(img: Image.Image) -> np.ndarray:
    edges = img.convert("L").filter(ImageFilter.FIND_EDGES)
    return np.asarray(ImageOps.invert(edges))


def _png(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, "PNG")
    return buf.getvalue()


def captions_for(key: str) -> list[str]:
    return [f"caption {i} of {key}: a face, smiling; \u00e9t\u00e9 \u2014 \"quoted\"" for i in range(10)]


def write_upstream(out: Path) -> None:
    """masks/, sketches/ and the parse, sketches and captions/final ledgers for every ok key."""
    index = StageContext(out).index(["key", "path"]).to_pylist()
    parse, sketches, captions = [], [], []
    for i, r in enumerate(index):
        key = r["key"]
        img = load_rgb(out / r["path"] if not Path(r["path"]).is_absolute() else Path(r["path"]))
        if key == FAILED_PARSE:
            parse.append({"key": key, "status": "parse_error", "error": "RuntimeError: synthetic", "_fp": "p0",
                          "parser": "segformer", "primary": True, "class_pixels": None, "agreement": None, "mask": None})
        else:
            label = label_map(*img.size, seed=i)
            atomic_write_bytes(out / "masks" / f"{key}.png", _png(label))
            parse.append({"key": key, "status": "ok", "error": "", "_fp": f"p{i}", "parser": "segformer",
                          "primary": True, "class_pixels": class_pixel_counts(label).tolist(), "agreement": None,
                          "mask": f"masks/{key}.png"})
        if key != NO_SKETCH:
            atomic_write_bytes(out / "sketches" / f"{key}.png", _png(sketch_of(img)))
            sketches.append({"key": key, "status": "ok", "error": "", "_fp": f"s{i}", "sketch": f"sketches/{key}.png",
                             "face_box": [1, 2, 3, 4], "flags": ["no_face"] if i % 4 == 0 else []})
        if key != NO_CAPTIONS:
            captions.append({"key": key, "status": "ok", "error": "", "_fp": f"c{i}", "captions": captions_for(key),
                             "provenance": [f"refined:p{j}" for j in range(10)], "clip_tokens": [12] * 10,
                             "flags": []})
    Ledger(out, "parse").write(pa.Table.from_pylist(parse, schema=pa.schema([
        ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string()),
        ("parser", pa.string()), ("primary", pa.bool_()), ("class_pixels", pa.list_(pa.int64())),
        ("agreement", pa.float64()), ("mask", pa.string())])))
    Ledger(out, "sketches").write(pa.Table.from_pylist(sketches, schema=pa.schema([
        ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string()),
        ("sketch", pa.string()), ("face_box", pa.list_(pa.int32())), ("flags", pa.list_(pa.string()))])))
    Ledger(out, "captions/final").write(pa.Table.from_pylist(captions, schema=pa.schema([
        ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string()),
        ("captions", pa.list_(pa.string())), ("provenance", pa.list_(pa.string())),
        ("clip_tokens", pa.list_(pa.int32())), ("flags", pa.list_(pa.string()))])))


def stage_settings(tiny_model: Any, **shard: Any) -> dict[str, Any]:
    return {
        "latents": {"models": {"flux": {"model": str(tiny_model("vae-flux"))}, "sd": {"model": str(tiny_model("vae-sd"))}},
                    "resolution": RESOLUTION, "batch_size": 8},
        "shard": {"max_samples": 4, **shard},
    }


def ingest(demo_data: Path, out: Path) -> None:
    m = build_manifest({"name": "shardtest", "stages": {"ingest": {"sources": [
        {"path": str(demo_data / "photos"), "name": "photos"},
        {"path": str(demo_data / "celebamask-hq"), "type": "celebamask-hq"},
        {"path": str(demo_data / "ffhq"), "type": "ffhq"}], "val_fraction": 0.3}}}, None)
    run_manifest(m, out)


def run(out: Path, stages: dict[str, Any]) -> list:
    """Run stages (e.g. latents, shard) in order on an ingested folder, as `facecurate <stage> OUT` does."""
    from rich.console import Console

    from pipeline.core.run import run_stage_command

    quiet = Console(stderr=True, quiet=True)
    return [run_stage_command(out, name, settings, console=quiet) for name, settings in stages.items()]


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def all_samples(out: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """key -> (shard name, fields), failing on a key seen twice."""
    index = json.loads((out / "shards" / "index.json").read_text())
    found: dict[str, tuple[str, dict[str, bytes]]] = {}
    for e in index["shards"]:
        for name, fields in iter_tar(out / "shards" / e["name"]):
            key = decode_key(name)
            assert key not in found, f"{key} twice"
            found[key] = (e["name"], fields)
    return found


def reference_view(path: Path, size: int, resample: Image.Resampling, mode: str = "RGB") -> np.ndarray:
    """Centre square crop + resize, written independently of pipeline.data.views (photos decode with the
    foundation's `load_rgb`: EXIF, 16-bit, alpha and CMYK handling are ingest's business)."""
    img = load_rgb(path) if mode == "RGB" else Image.open(path).convert(mode)
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(img.resize((size, size), resample))

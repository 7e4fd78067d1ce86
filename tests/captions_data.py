"""Helpers for the clean/refine tests: an ingested folder and upstream ledgers in their contract schemas."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa

from pipeline.core.config import RunnerConfig
from pipeline.core.ledger import Ledger
from pipeline.core.manifest import build_manifest
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext

IMAGES = ["astronaut.png", "grace_hopper.jpg", "variants/astronaut_mirror.jpg"]
RAW_SCHEMA = pa.schema([
    ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string()),
    ("prompt_id", pa.string()), ("prompt_kind", pa.string()), ("prompt_hash", pa.string()), ("model", pa.string()),
    ("revision", pa.string()), ("text", pa.string()), ("prompt_tokens", pa.int32()), ("output_tokens", pa.int32()),
    ("finish_reason", pa.string()), ("cache_key", pa.string()),
])
PARSE_SCHEMA = pa.schema([
    ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string()),
    ("parser", pa.string()), ("primary", pa.bool_()), ("class_pixels", pa.list_(pa.int64())),
    ("agreement", pa.float64()), ("mask", pa.string()),
])


def ingested(demo_data: Path, tmp_path: Path, names: list[str] = IMAGES) -> Path:
    """An output folder with `names` (demo photos) ingested; keys are `photos/<stem path>`."""
    src = tmp_path / "src"
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_data / "photos" / name, src / name)
    out = tmp_path / "out"
    manifest = build_manifest({"stages": {"ingest": {"sources": [{"path": str(src), "name": "photos"}]}}}, None)
    run_stage("ingest", manifest.stages["ingest"], StageContext(out), RunnerConfig())
    return out


def keys(out: Path) -> list[str]:
    return sorted(StageContext(out).index(["key"])["key"].to_pylist())


def write_raw(out: Path, rows: list[dict]) -> None:
    """One `captions/raw` part; each row needs key, prompt_id, text (kind, status, finish_reason optional)."""
    full = [{"status": "ok", "error": "", "_fp": "test", "prompt_kind": "few_shot", "prompt_hash": "h",
             "model": "m", "revision": "r", "prompt_tokens": 10, "output_tokens": 20, "finish_reason": "stop",
             "cache_key": f"{r['key']}:{r['prompt_id']}", **r} for r in rows]
    Ledger(out, "captions/raw").write(pa.Table.from_pylist(full, schema=RAW_SCHEMA))


def write_parse(out: Path, pixels: dict[str, list[int]], second: dict[str, list[int]] | None = None) -> None:
    """One `parse` part: a primary segformer row per key with these 19 class pixel counts, and a FaRL
    row per key of `second` (two parsers that agree make the refine stage's mask evidence confident)."""
    rows = [{"key": k, "status": "ok", "error": "", "_fp": "test", "parser": "segformer", "primary": True,
             "class_pixels": p, "agreement": None, "mask": f"masks/{k}.png"} for k, p in pixels.items()]
    rows += [{"key": k, "status": "ok", "error": "", "_fp": "test", "parser": "farl", "primary": False,
              "class_pixels": p, "agreement": 0.9, "mask": None} for k, p in (second or {}).items()]
    Ledger(out, "parse").write(pa.Table.from_pylist(rows, schema=PARSE_SCHEMA))


def face_pixels(total: int = 512 * 512, **items: int) -> list[int]:
    """19 class counts of a plain face; `eye_g=`, `hat=`, `ear_r=`, `neck_l=` set those classes' pixels."""
    ids = {"eye_g": 3, "hat": 14, "ear_r": 15, "neck_l": 16}
    px = [0] * 19
    for name, n in items.items():
        px[ids[name]] = n
    px[1] = total // 4  # skin
    px[13] = total // 5  # hair
    px[0] = total - sum(px)  # background takes the rest
    return px

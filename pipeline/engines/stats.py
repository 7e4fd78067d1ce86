"""Engine counters across a stage's workers: each process records its engine's summary, finalize merges.

An engine with a `summary()` (vLLM: prefix-cache and multimodal-cache counters, images encoded)
writes it after every batch to `<folder>/.engine/<pid>.json`, replacing its last one (the counters are
cumulative). The stage's finalize merges all of them into `<folder>/engine_stats.json`, removes the
per-process files and returns the merged numbers for the run summary, whether the stage ran in this
process or in Ray actors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.ledger import atomic_write_bytes

SUMMED = ("calls", "requests", "output_tokens", "seconds", "restarts", "images_submitted", "images_encoded",
          "prefix_cache_queries", "prefix_cache_hits", "mm_cache_queries", "mm_cache_hits")


def record(engine: Any, folder: Path) -> None:
    summary = getattr(engine, "summary", None)
    if summary is None:
        return
    atomic_write_bytes(Path(folder) / ".engine" / f"{os.getpid()}.json", json.dumps(summary()).encode())


def merge(folder: Path) -> dict[str, Any] | None:
    """The summed counters of every process that recorded, with rates; None when none did."""
    parts = sorted((Path(folder) / ".engine").glob("*.json"))
    if not parts:
        return None
    total: dict[str, Any] = {k: 0 for k in SUMMED}
    multimodal = False
    for p in parts:
        try:
            s = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        multimodal |= s.get("images_encoded_per_image") is not None
        for k in SUMMED:
            total[k] += s.get(k) or 0
    q, h = total["prefix_cache_queries"], total["prefix_cache_hits"]
    total["prefix_cache_hit_rate"] = round(h / q, 4) if q else None
    total["images_encoded_per_image"] = (round(total["images_encoded"] / total["images_submitted"], 3)
                                         if multimodal and total["images_submitted"] else None)
    total["workers"] = len(parts)
    atomic_write_bytes(Path(folder) / "engine_stats.json", json.dumps(total, indent=2, sort_keys=True).encode())
    for p in parts:
        p.unlink(missing_ok=True)
    return total


def headline(s: dict[str, Any]) -> str:
    parts = [f"{s['requests']:,} requests in {s['seconds']:.1f} s"]
    if s.get("prefix_cache_hit_rate") is not None:
        parts.append(f"prefix-cache hit rate {100 * s['prefix_cache_hit_rate']:.1f}% "
                     f"({s['prefix_cache_hits']:,} of {s['prefix_cache_queries']:,} prompt tokens)")
    if s.get("images_encoded_per_image") is not None:
        parts.append(f"{s['images_encoded']:,} images encoded for {s['images_submitted']:,} images "
                     f"({s['images_encoded_per_image']:.2f} per image)")
    if s.get("restarts"):
        parts.append(f"{s['restarts']} engine restart(s)")
    return "vllm: " + ", ".join(parts)

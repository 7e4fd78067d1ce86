"""Helpers for the parse / sketch / stats / eval tests: small ingested runs and stage calls."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipeline.core.config import RunnerConfig
from pipeline.core.manifest import build_manifest
from pipeline.core.runner import StageResult, run_stage
from pipeline.core.stage import StageContext


def ingest_faces(out: Path, demo_data: Path, photos: tuple[str, ...] = ("astronaut.png", "grace_hopper.jpg")) -> Path:
    """Ingest the demo's CelebAMask-HQ (3 images with ground truth), FFHQ (2) and a few photos into `out`."""
    folder = out.parent / f"{out.name}-photos"
    folder.mkdir(parents=True, exist_ok=True)
    for name in photos:
        shutil.copy(demo_data / "photos" / name, folder / name)
    run("ingest", out, {"sources": [{"path": str(folder), "name": "photos"},
                                    {"path": str(demo_data / "celebamask-hq")}, {"path": str(demo_data / "ffhq")}]})
    return out


def run(stage: str, out: Path, settings: dict[str, Any]) -> StageResult:
    """Run one stage on `out` with manifest-style settings (validated like a manifest section)."""
    m = build_manifest({"stages": {stage: settings}}, None)
    return run_stage(stage, m.stages[stage], StageContext(out), RunnerConfig())

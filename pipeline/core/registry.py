"""The stage registry: names, their classes (imported lazily) and the dependency graph.

A new stage is one file in `pipeline/stages/` plus one `StageSpec` here; the CLI, `run` and `status`
pick it up. Stage modules are imported only when a stage is configured or run, so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pipeline.core.config import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """Where a stage lives and what it needs.

    Args:
        name: the manifest key under `stages:`.
        module: module holding the stage class and its config class.
        stage: class name of the stage (the contract in core/stage.py: `__init__(cfg, ctx)`, `__call__(batch)`).
        config: class name of its frozen config dataclass.
        requires: stages whose ok keys it consumes (run first).
        optional: stages it uses when the manifest has them (run first if present).
        summary: one line for `facecurate stages` and the help text.
        ledger: its ledger folder inside the output (default: its name).
    """

    name: str
    module: str
    stage: str
    config: str
    requires: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    summary: str = ""
    ledger: str = ""

    def config_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def stage_cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.stage)


REGISTRY: dict[str, StageSpec] = {
    s.name: s
    for s in [
        StageSpec(
            "ingest", "pipeline.stages.ingest", "IngestStage", "IngestConfig",
            summary="scan sources, decode, hash, measure and split every image; write index.parquet",
        ),
        StageSpec(
            "faces", "pipeline.stages.faces", "FacesStage", "FacesConfig", requires=("ingest",),
            summary="detect faces (dlib), 68 landmarks, FFHQ alignment, quality filters, identities, near-duplicates",
        ),
        StageSpec(
            "caption", "pipeline.stages.caption", "CaptionStage", "CaptionConfig", requires=("ingest",),
            optional=("faces",),
            summary="caption every image with each prompt of a prompt set (InternVL3; cached by content)",
            ledger="captions/raw",
        ),
        StageSpec(
            "clean", "pipeline.stages.clean", "CleanStage", "CleanConfig", requires=("caption",),
            summary="rule-based caption cleaning (each rule recorded), exact CLIP token counts, trim to 77",
            ledger="captions/clean",
        ),
        StageSpec(
            "refine", "pipeline.stages.refine", "RefineStage", "RefineConfig", requires=("clean",), optional=("parse",),
            summary="Qwen3 rewrites each image's captions into ten unique ones; invented facts and mask "
                    "contradictions rejected",
            ledger="captions/final",
        ),
        StageSpec(
            "parse", "pipeline.stages.parse", "ParseStage", "ParseConfig", requires=("ingest",), optional=("faces",),
            summary="19-class face masks (Segformer, FaRL, trained smp) with per-image parser agreement",
        ),
        StageSpec(
            "sketch", "pipeline.stages.sketch", "SketchStage", "SketchConfig", requires=("ingest",), optional=("faces",),
            summary="U2Net portrait sketches (Haar face crop), black lines on white, in the image's frame",
            ledger="sketches",
        ),
        StageSpec(
            "stats", "pipeline.stages.stats", "StatsStage", "StatsConfig", requires=("parse",), optional=("sketch",),
            summary="class pixel shares and occurrence per split, EC2Face weights and groups, HTML report",
            ledger="stats/keys",
        ),
        StageSpec(
            "latents", "pipeline.stages.latents", "LatentsStage", "LatentsConfig", requires=("ingest",),
            optional=("faces", "parse", "sketch"), ledger="latents",
            summary="VAE latent means (FLUX, SD) of image, coloured mask and sketch, float16, factors recorded",
        ),
        StageSpec(
            "shard", "pipeline.stages.shard", "ShardStage", "ShardConfig", requires=("ingest",),
            optional=("faces", "refine", "parse", "sketch", "latents", "stats"), ledger="shards",
            summary="WebDataset shards per split with index.json (sha256), features.json and a dataset card",
        ),
    ]
}


def order(names: list[str]) -> list[str]:
    """Dependency order for the stages a manifest names (requirements must be present)."""
    chosen = set(names)
    for n in names:
        missing = [r for r in REGISTRY[n].requires if r not in chosen]
        if missing:
            raise ConfigError(f"stages.{n}: needs stage(s) {', '.join(missing)} in the manifest")
    done: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in done:
            return
        if n in visiting:
            raise ConfigError(f"stages.{n}: dependency cycle")
        visiting.add(n)
        spec = REGISTRY[n]
        for dep in spec.requires + tuple(o for o in spec.optional if o in chosen):
            visit(dep)
        visiting.discard(n)
        done.append(n)

    for n in sorted(chosen, key=list(REGISTRY).index):
        visit(n)
    return done

"""The pipeline's stages, one file each: ingest, caption, clean, refine, parse, sketch, stats, latents, shard.

Each file holds one stage class and its config dataclass (the contract in `pipeline.core.stage`),
registered by name in `pipeline.core.registry`. A stage imports the spine (`pipeline.core`), the data
contracts (`pipeline.data`) and its own helpers (`text`, `engines`, `parsers`, `models`, `reports`),
never another stage or a command; the runner alone decides where and when it runs.
"""

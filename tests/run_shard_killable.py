"""Subprocess for the shard SIGKILL test: the shard stage on a prepared run, slowed in one phase.

Usage: run_shard_killable.py OUT PHASE SETTINGS_JSON, PHASE one of `prepare` (sleep after each sample is
staged), `assemble` (sleep after each shard is renamed into place) or `none`. Ledger parts are flushed
after every row so a kill leaves many complete parts behind.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline.data.shard_assembly as assembly  # noqa: E402
import pipeline.stages.shard as shard  # noqa: E402
from pipeline.core.config import RunnerConfig  # noqa: E402
from pipeline.core.manifest import build_manifest
from pipeline.core.runner import run_stage  # noqa: E402
from pipeline.core.stage import StageContext  # noqa: E402

out, phase, settings = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
if phase == "prepare":
    prepare = shard.ShardStage.prepare

    def slow_prepare(self, row):
        time.sleep(0.2)
        return prepare(self, row)

    shard.ShardStage.prepare = slow_prepare
elif phase == "assemble":
    replace = os.replace

    def slow_replace(src, dst):
        replace(src, dst)
        if assembly.SHARD_RE.match(Path(dst).name) and Path(dst).parent.name == "shards":
            time.sleep(0.4)

    assembly.os.replace = slow_replace  # type: ignore[attr-defined]  # (the os module: patched everywhere)

cfg = build_manifest({"stages": {"shard": {**settings, "batch_size": 1}}}, None).stages["shard"]
run_stage("shard", cfg, StageContext(out), RunnerConfig(flush_rows=1, flush_seconds=0))

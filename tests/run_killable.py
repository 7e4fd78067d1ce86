"""Subprocess for the SIGKILL and crash tests: ingest + a slow echo stage, small parts.

Args: OUT PHOTOS SLEEP [ECHO_JSON] (extra echo settings, e.g. crash_keys).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.core.manifest import build_manifest  # noqa: E402
from pipeline.core.run import run_manifest  # noqa: E402
from tests.stages_for_tests import register  # noqa: E402

register()
out, photos, sleep = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
manifest = build_manifest({
    "runner": {"flush_rows": 1, "flush_seconds": 0},
    "stages": {"ingest": {"sources": [{"path": photos, "name": "photos"}], "batch_size": 2},
               "echo": {"sleep": sleep, "batch_size": 1, "rows_per_key": 3, **extra}},
}, None)
run_manifest(manifest, out)

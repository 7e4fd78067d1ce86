"""A small real stage for runner tests: deterministic rows, optional failures and delays."""

from __future__ import annotations

import ctypes
import hashlib
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.core.config import StageConfig, volatile
from pipeline.core.registry import REGISTRY, StageSpec
from pipeline.core.stage import Stage


@dataclass(frozen=True)
class EchoConfig(StageConfig):
    """Args: salt (changes outputs), rows_per_key, fail_keys (raise when batched with them),
    drop_keys (return no row), sleep (seconds per batch), crash_keys (the process segfaults when batched
    with them), crash_start (it dies while starting)."""

    salt: str = "s"
    rows_per_key: int = 2
    fail_keys: tuple[str, ...] = ()
    drop_keys: tuple[str, ...] = ()
    crash_keys: tuple[str, ...] = ()
    crash_start: bool = False
    sleep: float = volatile(0.0)
    batch_size: int = volatile(4)


class EchoStage(Stage):
    schema: ClassVar[pa.Schema] = pa.schema([("part", pa.int32()), ("value", pa.string())])

    def __init__(self, cfg: EchoConfig, ctx: object):
        super().__init__(cfg, ctx)
        if cfg.crash_start:
            ctypes.string_at(0)  # a real segfault, in this thread, as a native decoder's would be

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        keys = [str(k) for k in batch["key"]]
        if set(keys) & set(self.cfg.crash_keys):
            ctypes.string_at(0)
        bad = [k for k in keys if k in self.cfg.fail_keys]
        if bad:
            raise ValueError(f"cannot echo {bad[0]}")
        time.sleep(self.cfg.sleep)
        out: dict[str, list] = {"key": [], "status": [], "error": [], "part": [], "value": []}
        for k in keys:
            if k in self.cfg.drop_keys:
                continue
            for i in range(self.cfg.rows_per_key):
                out["key"].append(k)
                out["status"].append("ok")
                out["error"].append("")
                out["part"].append(i)
                out["value"].append(hashlib.sha1(f"{self.cfg.salt}:{k}:{i}".encode()).hexdigest()[:12])
        return out


def register() -> None:
    REGISTRY["echo"] = StageSpec("echo", "tests.stages_for_tests", "EchoStage", "EchoConfig",
                                 requires=("ingest",), summary="test stage", ledger="echo")

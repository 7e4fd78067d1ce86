"""A key that kills the process running it becomes that key's row, not a run that never ends.

`call_isolated` turns a Python exception into a row, but a crash in native code (a segfault in a
decoder, the kernel's out-of-memory killer, `os._exit`) takes the whole worker with it, and a retried
batch would kill its worker again, for ever (Ray Data restarts actors and retries their tasks without
limit by default). So every batch leaves a small marker in `<ledger>/.inflight/` while it runs:

1. A batch starts: its marker names its keys. It ends: the marker goes.
2. A batch starts and finds a marker naming one of its keys: a worker died in it before. This batch
   now runs one key at a time, the marker naming the key being run.
3. A key named as running in a marker (it was alone in its worker when the worker died, after the
   whole batch had died once) gets a `worker_died` row instead of a third attempt.

So a poisonous key costs two worker deaths, then its row is written and the run goes on; every other
key of its batch gets its normal row (batch independence makes those bytes the same). Ray retries the
batch on a restarted actor, so a Ray run needs nothing from the user; in the local runner a crash ends
the process, and running the same command again walks the same steps (two reruns at most per key).
A batch that died because its node was lost takes step 2 once and ends with its normal rows.

The markers live on the shared output folder (the Ray storage contract), one file per batch, so no two
workers write the same file. Writing one costs a small file write per batch, without fsync: a marker
only has to outlive its process, not the machine. `clear` removes them all when a stage finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

INFLIGHT_DIR = ".inflight"
WORKER_DIED = "worker_died"
WORKER_DIED_WHY = ("the worker process died twice while this key was being processed (a crash in native "
                   "code, out of memory, or killed); run with --retry-failed to try it again")
MAX_STARTS = 3  # worker starts that may die (e.g. out of memory loading a model) before the stage stops


class StageFailed(RuntimeError):
    """The stage cannot go on for a reason no row can hold (its workers die while starting); one line."""


def find_cause(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`e` or what it wraps (Ray wraps a worker's exception in its own, often twice) of type `kind`."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def _read(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone (another worker finished it) or cut short: no evidence of a death
    return state if isinstance(state, dict) and isinstance(state.get("keys"), list) else None


def _write(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


# What a batch raises while its process lives on (an error, Ctrl-C, a SIGTERM handler's exit): unlike a
# death, it clears the batch's marker. A segfault or an OOM kill raises nothing, so its marker stays.
RAISED = (Exception, KeyboardInterrupt, SystemExit)


class InFlight:
    """The markers of one stage's ledger folder; `run` wraps one batch's call."""

    def __init__(self, ledger_dir: Path):
        self.dir = Path(ledger_dir) / INFLIGHT_DIR
        self.seen: dict[str, Path] = {}  # key -> a marker left by a death before this worker started
        if self.dir.is_dir():
            for p in sorted(self.dir.glob("*.json")):
                state = _read(p)
                for k in state["keys"] if state else ():
                    self.seen[str(k)] = p

    def run(self, call: Callable[[pa.Table], pa.Table], batch: pa.Table,
            died: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """`call(batch)` under a marker; `died(rows)` makes the rows of keys that killed their worker."""
        keys = [str(k) for k in batch["key"].to_pylist()]
        path = self.dir / f"{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:20]}.json"
        priors = {p for k in keys if (p := self.seen.get(k))}
        if path.exists():
            priors.add(path)
        states = [s for p in sorted(priors) if (s := _read(p))]
        if not states:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write(path, {"keys": keys, "running": None, "dead": []})
            try:
                out = call(batch)
            except RAISED:  # raised, not died (a full disk, Ctrl-C): the keys are not suspects
                path.unlink(missing_ok=True)
                raise
            path.unlink(missing_ok=True)
            return out
        mine = set(keys)
        dead = {str(k) for s in states for k in s.get("dead", ()) if k in mine}
        dead |= {str(s["running"]) for s in states if s.get("running") in mine}
        tables = []
        for i, key in enumerate(keys):
            one = batch.slice(i, 1)
            if key in dead:
                tables.append(died(one))
                continue
            _write(path, {"keys": keys, "running": key, "dead": sorted(dead)})
            try:
                tables.append(call(one))
            except RAISED:  # raised, not died: only the keys that killed a worker stay suspects
                _write(path, {"keys": keys, "running": None, "dead": sorted(dead)})
                raise
        path.unlink(missing_ok=True)
        return pa.concat_tables(tables)

    def starting(self, worker: str) -> Path:
        """Count a worker start (a Ray actor keeps its id across restarts); the start that follows
        MAX_STARTS deaths raises instead of loading again. `started(path)` clears the count."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"start-{hashlib.sha256(worker.encode()).hexdigest()[:16]}.count"
        try:
            n = int(path.read_text() or 0)
        except (OSError, ValueError):
            n = 0
        if n >= MAX_STARTS:
            path.unlink(missing_ok=True)
            raise StageFailed(f"the stage's worker died {n} times while starting (loading its model?): out "
                               "of memory, or a crash in native code; give it more memory (num_cpus / "
                               "num_gpus per worker, a smaller batch_size) and run again")
        path.write_text(str(n + 1))
        return path

    @staticmethod
    def started(path: Path) -> None:
        path.unlink(missing_ok=True)

    def clear(self) -> None:
        """The stage finished: no marker means anything any more."""
        shutil.rmtree(self.dir, ignore_errors=True)

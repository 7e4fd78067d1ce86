"""Runs stage classes over their pending keys: in-process with a progress bar, or on Ray Data.

One runner owns scheduling; stages know nothing of it. Both paths share the same pieces:
`pending_inputs` decides what is left (fingerprints, see ledger.py), `call_isolated` calls the stage
and turns any exception into rows (a failing sample never fails its batch: the batch is bisected until
the failing rows are alone), `FailureStreak` stops a stage whose keys all fail for one reason that is the
stage's (a wrong model) without recording them, and `PartWriter` flushes complete parts by row count or time. The Ray
path only changes where `call_isolated` runs (an actor pool via `map_batches`); the driver still
writes every part, so the ledger has one writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
)
from rich.text import Text

from pipeline.core.config import ConfigError, RunnerConfig
from pipeline.core.crashes import WORKER_DIED, WORKER_DIED_WHY, InFlight, StageFailed, find_cause
from pipeline.core.files import atomic_write_bytes, is_disk_full, recording
from pipeline.core.ledger import BASE_SCHEMA, OK, Ledger, value_counts
from pipeline.core.registry import REGISTRY, StageSpec
from pipeline.core.stage import Stage, StageContext, row_fingerprints


@dataclass
class StageResult:
    """What one stage did in one run (for the summary table)."""

    name: str
    inputs: int = 0
    pending: int = 0
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)
    new_failures: int = 0
    per_node: dict[str, list[int]] = field(default_factory=dict)  # Ray: node -> [keys, keys with a failure]

    @property
    def ok(self) -> int:
        return self.counts.get(OK, 0)

    @property
    def failed(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.counts.items()) if k != OK}


def full_schema(cls: type[Stage]) -> pa.Schema:
    return pa.schema(list(BASE_SCHEMA) + [f for f in cls.schema if f.name not in BASE_SCHEMA.names])


def pending_inputs(cls: type[Stage], cfg: Any, ctx: StageContext, spec: StageSpec,
                   ledger: Ledger, retry_failed: bool) -> tuple[pa.Table, pa.Table]:
    """(all inputs with `_fp`, the rows still to do)."""
    inputs = cls.inputs(cfg, ctx, spec.requires)
    stage_fp, src, step = cls.fingerprint(cfg), inputs["_src"], 1 << 16  # Python strings for one chunk
    fps = pa.chunked_array([pa.array(row_fingerprints(stage_fp, src.slice(i, step).to_pylist()), pa.string())
                            for i in range(0, len(src), step)], pa.string())
    # `_src` (the input's identity, ~350 bytes a key for shard) has become `_fp` (20): it leaves the table
    inputs = inputs.drop_columns(["_src"]).append_column("_fp", fps)
    done = ledger.lookup(inputs["key"])  # Arrow hash lookup, in the inputs' order
    same = pc.fill_null(pc.equal(done["_fp"], inputs["_fp"]), False)
    if retry_failed:
        same = pc.and_(same, pc.fill_null(pc.equal(done["n_ok"], done["n"]), False))
    return inputs, inputs.filter(pc.invert(same))


def to_numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}


def to_table(out: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """A stage's column batch as a table of the stage's schema (missing optional columns are null)."""
    extra = set(out) - set(schema.names)
    if extra:
        raise ValueError(f"stage returned columns not in its schema: {sorted(extra)}")
    n = len(out["key"])
    cols = {}
    for f in schema:
        v = out.get(f.name)
        if v is None:
            cols[f.name] = pa.nulls(n, f.type)
        else:
            cols[f.name] = pa.array(list(v) if isinstance(v, np.ndarray) and v.dtype == object else v, f.type)
    return pa.table(cols, schema=schema)


def failure_rows(batch: pa.Table, schema: pa.Schema, status: str, error: str) -> pa.Table:
    """One failed row per key of `batch` (with its fingerprint), in the stage's full schema."""
    keys = batch["key"].to_pylist()
    table = to_table({"key": keys, "status": [status] * len(keys), "error": [error] * len(keys)},
                     schema.remove(schema.get_field_index("_fp")))
    return table.add_column(schema.get_field_index("_fp"), schema.field("_fp"), batch["_fp"])


def call_isolated(stage: Stage, batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Call the stage; exceptions become `stage_error` rows for exactly the rows that raise."""
    keys = batch["key"].to_pylist()
    fp_of = dict(zip(keys, batch["_fp"].to_pylist(), strict=True))
    try:
        table = to_table(stage(to_numpy_batch(batch)), schema.remove(schema.get_field_index("_fp")))
    except Exception as e:  # noqa: BLE001 - any stage failure becomes data
        if is_disk_full(e):  # not the sample's fault: stop the run (finished parts are kept)
            raise
        if batch.num_rows > 1:
            half = batch.num_rows // 2
            return pa.concat_tables([call_isolated(stage, batch.slice(0, half), schema),
                                     call_isolated(stage, batch.slice(half), schema)])
        return failure_rows(batch, schema, "stage_error", f"{type(e).__name__}: {e}".strip().splitlines()[0][:500])
    got = set(table["key"].to_pylist())
    unknown = got - set(fp_of)
    if unknown:
        raise RuntimeError(f"stage returned keys it was not given: {sorted(unknown)[:3]}")
    lost = pa.array([k not in got for k in keys])
    if lost.true_count:
        table = pa.concat_tables([table, failure_rows(batch.filter(lost), schema, "stage_error",
                                                      "stage returned no row for this key").drop_columns(["_fp"])])
    fps = pa.array([fp_of[k] for k in table["key"].to_pylist()], pa.string())
    return table.add_column(schema.get_field_index("_fp"), schema.field("_fp"), fps)


def guarded_call(guard: InFlight, stage: Stage, batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """`call_isolated` under the batch's in-flight marker (see crashes.py)."""
    return guard.run(lambda b: call_isolated(stage, b, schema), batch,
                     lambda b: failure_rows(b, schema, WORKER_DIED, WORKER_DIED_WHY))


class PartWriter:
    """Buffers output tables and writes a ledger part every `flush_rows` rows or `flush_seconds`."""

    def __init__(self, ledger: Ledger, flush_rows: int, flush_seconds: float):
        self.ledger, self.flush_rows, self.flush_seconds = ledger, flush_rows, flush_seconds
        self.buffer: list[pa.Table] = []
        self.rows = 0
        self.last = time.monotonic()

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.rows += table.num_rows
        if self.rows >= self.flush_rows or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.ledger.write(pa.concat_tables(self.buffer))
        self.buffer, self.rows, self.last = [], 0, time.monotonic()


def _rate(task: Any) -> float | None:
    """Items per second: rich's recent-window speed, else the average since the first item arrived (rich
    leaves its speed empty until two updates fall in one 30 s window, which on a slow stage is minutes)."""
    if task.finished_speed or task.speed:
        return task.finished_speed or task.speed
    started = task.fields.get("first_at")
    if started is None or not task.completed:
        return None
    return task.completed / max(time.monotonic() - started, 1e-9)


class RateColumn(ProgressColumn):
    """Items per second, from the first items on."""

    def render(self, task: Any) -> Text:
        speed = _rate(task)
        return Text(f"{speed:,.1f}/s" if speed else "  -/s", style="cyan")


class EtaColumn(ProgressColumn):
    """Time left at the current rate (`RateColumn`'s), from the first items on."""

    def render(self, task: Any) -> Text:
        speed = _rate(task)
        if task.finished:
            return Text("done", style="green")
        if not speed or task.total is None:
            return Text("eta -:--:--", style="cyan")
        left = int((task.total - task.completed) / speed)
        return Text(f"eta {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style="cyan")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        EtaColumn(), TextColumn("[red]{task.fields[failed]} failed"),
        console=console, transient=False, disable=not console.is_terminal,
    )


class _LogLines:
    """Without a terminal (nohup, CI, cluster logs) the bar is off: print a progress line every 30 s."""

    def __init__(self, console: Console, name: str, total: int, every: float = 30.0):
        self.console, self.name, self.total, self.every = console, name, total, every
        self.on = not console.is_terminal
        self.done, self.t0 = 0, time.monotonic()
        self.last = self.t0

    def advance(self, n: int, failed: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.on and (now - self.last >= self.every or self.done == self.total):
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            self.console.print(f"{self.name}: {self.done:,}/{self.total:,} ({rate:,.1f}/s, eta {eta:,.0f} s, "
                               f"{failed:,} failed)", highlight=False)
            self.last = now


def _batches(table: pa.Table, size: int) -> Iterator[pa.Table]:
    for i in range(0, table.num_rows, max(1, size)):
        yield table.slice(i, size)


def _count_failed(table: pa.Table) -> tuple[int, int]:
    """(keys in the table, keys with a failed row)."""
    keys = table["key"].to_pylist()
    bad = {k for k, s in zip(keys, table["status"].to_pylist(), strict=True) if s != OK}
    return len(set(keys)), len(bad)


class FailureStreak:
    """Holds back batches in which every key failed with one and the same reason that is the stage's,
    not the key's: `stage_error` (the stage raised), or a status the stage class names in
    `stage_wide_failures` (caption: `engine_error`, `out_of_memory`). A wrong model, a broken engine or a
    bug fails every key alike; recording those rows would make a rerun skip every key as done.

    Once `limit` keys in a row (a batch, at most the keys pending, at least 2) failed alike, `add` raises
    StageFailed with the reason and what to do (the class's `stage_wide_fix`); the held rows are never
    written, so the next run tries those keys again. A streak that ends (an ok row, another reason, the
    end of a run that wrote other rows) is written as it is: per-key failures stay recorded as before.
    """

    def __init__(self, name: str, cls: type[Stage], pending_keys: int, batch_size: int):
        self.name = name
        self.statuses = {"stage_error", *getattr(cls, "stage_wide_failures", ())}
        self.fix = getattr(cls, "stage_wide_fix", "") or f"fix the cause (stages.{name}'s settings, its model, " \
                                                         "the machine) and run again"
        self.limit = max(2, min(batch_size, pending_keys))
        self.held: list[pa.Table] = []
        self.keys = 0
        self.reason: tuple[str, str] | None = None
        self.released = False  # some rows of this run were written

    def _reason(self, table: pa.Table) -> tuple[tuple[str, str] | None, int]:
        """(the one stage-wide (status, error) of a table without ok rows, or None; keys that have it)."""
        statuses, errors = table["status"].to_pylist(), table["error"].to_pylist()
        if OK in statuses:
            return None, 0
        found = {(s, e or "") for s, e in zip(statuses, errors, strict=True) if s in self.statuses}
        if len(found) != 1:
            return None, 0
        keys = {k for k, s in zip(table["key"].to_pylist(), statuses, strict=True) if s in self.statuses}
        return found.pop(), len(keys)

    def add(self, table: pa.Table) -> list[pa.Table]:
        """The tables to write now (none while a streak is held); raises StageFailed at `limit` keys."""
        reason, keys = self._reason(table)
        if reason is not None and reason == (self.reason or reason):
            self.held.append(table)
            self.reason, self.keys = reason, self.keys + keys
            if self.keys >= self.limit:
                raise self.failed()
            return []
        out, self.held, self.keys, self.reason = self.held, [], 0, None
        if reason is not None:  # another stage-wide reason: a new streak starts here
            return out + self.add(table)
        self.released = True
        return [*out, table]

    def finish(self) -> list[pa.Table]:
        """At the end of the stage: the held rows, unless nothing else ran (every key failed alike)."""
        if self.held and not self.released and self.keys >= 2:
            raise self.failed()
        out, self.held = self.held, []
        return out

    def failed(self) -> StageFailed:
        status, error = self.reason or ("", "")
        return StageFailed(f"{self.name}: {self.keys:,} keys in a row failed the same way ({status}: {error}); "
                           f"none of them was recorded, so the next run tries them again: {self.fix}")


def run_stage(name: str, cfg: Any, ctx: StageContext, runner: RunnerConfig,
              console: Console | None = None) -> StageResult:
    """Run one stage over its pending keys and finalize it; returns counts for the summary."""
    console = console or Console(stderr=True)
    spec = REGISTRY[name]
    cls = spec.stage_cls()
    ledger = ctx.ledger(name)
    ledger.remove_stale()
    ledger.validate()  # a corrupt part is moved aside here, with one line, and its keys become pending
    t0 = time.monotonic()
    inputs, pending = pending_inputs(cls, cfg, ctx, spec, ledger, runner.retry_failed)
    result = StageResult(name, inputs=inputs.num_rows, pending=pending.num_rows)
    if pending.num_rows:
        writer = PartWriter(ledger, runner.flush_rows, runner.flush_seconds)
        schema = full_schema(cls)
        log = _LogLines(console, name, pending.num_rows)
        streak = FailureStreak(name, cls, pc.count_distinct(pending["key"]).as_py(), cfg.batch_size)
        with _progress(console) as progress:
            starting = "starting workers" if runner.kind == "ray" else "loading"
            task = progress.add_task(f"{name} ({starting})", total=pending.num_rows, failed=0, first_at=None)
            if not console.is_terminal:
                console.print(f"{name}: {pending.num_rows:,} pending; {starting} (models load before the first "
                              "batch)", highlight=False)
            outputs = (_execute_ray(cls, cfg, ctx, pending, schema, runner, ledger.dir) if runner.kind == "ray"
                       else _execute_local(cls, cfg, ctx, pending, schema, ledger.dir))
            try:
                for table in outputs:
                    if progress.tasks[0].fields.get("first_at") is None:
                        progress.update(task, description=name, first_at=time.monotonic())
                    node = None
                    if NODE in table.column_names:
                        node = table[NODE][0].as_py() if table.num_rows else "?"
                        table = table.drop_columns([NODE])
                    for done in streak.add(table):
                        writer.add(done)
                    n, bad = _count_failed(table)
                    if node is not None:
                        got = result.per_node.setdefault(node, [0, 0])
                        got[0], got[1] = got[0] + n, got[1] + bad
                    result.new_failures += bad
                    progress.update(task, advance=n, failed=result.new_failures)
                    log.advance(n, result.new_failures)
                for done in streak.finish():
                    writer.add(done)
            except StageFailed:
                outputs.close()
                writer.flush()  # what finished before is kept; the held rows are not written
                InFlight(ledger.dir).clear()
                raise
        writer.flush()
        InFlight(ledger.dir).clear()  # every batch delivered: what markers said is in the ledger now
        ledger.compact()
        if result.per_node:
            console.print(f"{name} per node: " + "; ".join(f"{node} {k:,} keys, {b:,} failed"
                                                          for node, (k, b) in sorted(result.per_node.items())),
                          highlight=False, soft_wrap=True)
    stamp = FinalizeStamp(ledger.dir / ".finalized.json", ctx.out)
    if result.pending or not stamp.holds(finalize_digest(cls, cfg, ctx, spec, inputs)):
        with recording() as written:
            cls.finalize(cfg, ctx, inputs)
        stamp.save(finalize_digest(cls, cfg, ctx, spec, inputs), written)  # as finalize left things
    result.counts = ledger.counts() if name != "ingest" else _index_counts(ctx)
    result.seconds = time.monotonic() - t0
    return result


@dataclass
class FinalizeStamp:
    """What a stage's `finalize` was made from (a digest) and the files it wrote (size, mtime), in
    `<ledger>/.finalized.json`. A run with nothing pending whose stamp still holds skips `finalize`,
    so a no-op run rewrites nothing; a deleted or edited output, or any changed input, makes it run."""

    path: Path
    out: Path

    def holds(self, digest: str) -> bool:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(saved, dict) or saved.get("digest") != digest:
            return False
        files = saved.get("files")
        return isinstance(files, dict) and all(_file_sig(self.out / rel) == sig for rel, sig in files.items())

    def save(self, digest: str, written: list[Path]) -> None:
        files = {}
        root = self.out.resolve()
        for p in dict.fromkeys(written):
            try:
                rel = str(Path(p).resolve().relative_to(root))
            except ValueError:
                continue
            files[rel] = _file_sig(self.out / rel)
        atomic_write_bytes(self.path, json.dumps({"digest": digest, "files": files}, sort_keys=True).encode())


def _file_sig(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def finalize_digest(cls: type[Stage], cfg: Any, ctx: StageContext, spec: StageSpec, inputs: pa.Table) -> str:
    """A digest of everything `finalize` reads: facecurate's version, the stage's code version and every
    setting (volatile ones too), its ledger's parts and those of the stages upstream of it, the index's
    checksum, and the inputs' keys and fingerprints (serialised in batches, so memory stays bounded)."""
    from pipeline import __version__  # a new release may render reports, cards or indexes differently

    h = hashlib.sha256(f"{__version__}:{cls.__module__}.{cls.__qualname__}:{getattr(cls, 'version', '')}:"
                       f"{cfg!r}".encode())
    for name in (spec.name, *spec.requires, *spec.optional):
        if name in REGISTRY:
            h.update(("\0" + name + ":" + ",".join(p.name for _, p in ctx.ledger(name).parts())).encode())
    index_sha = ctx.out / "ingest" / "index.sha256"
    h.update(index_sha.read_bytes() if index_sha.exists() else b"-")
    cols = [c for c in ("key", "_fp") if c in inputs.column_names]
    for batch in inputs.select(cols).to_batches(max_chunksize=1 << 16):
        h.update(batch.serialize())
    return h.hexdigest()


def _index_counts(ctx: StageContext) -> Counter:
    return value_counts(ctx.index(["status"], ok_only=False, faces=False)["status"])


def stage_threads(cfg: Any) -> int | None:
    """torch threads of one stage worker: the whole CPUs it is given (`num_cpus`, at least one), the same
    in both runners. Float results depend on the thread count (measured: U2Net sketches and VAE latents
    differ between 1 and 2 threads on this CPU), so this is what makes local and Ray runs byte-identical.
    None (left alone) for a vLLM engine, which binds its own OpenMP threads."""
    if getattr(cfg, "engine", None) == "vllm":
        return None
    return max(1, int(getattr(cfg, "num_cpus", 1.0)))


def pin_threads(n: int | None) -> int | None:
    """Set torch's intra-op threads when the stage uses torch (already imported); returns the old count."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or n is None:
        return None
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return old


def _execute_local(cls: type[Stage], cfg: Any, ctx: StageContext, pending: pa.Table,
                   schema: pa.Schema, ledger_dir: Path) -> Iterator[pa.Table]:
    stage, guard = cls(cfg, ctx), InFlight(ledger_dir)
    old = pin_threads(stage_threads(cfg))
    try:
        for batch in _batches(pending, cfg.batch_size):
            yield guarded_call(guard, stage, batch, schema)
    finally:
        if old is not None:
            pin_threads(old)


NODE = "_node"  # the column a Ray actor adds to say where a batch ran (dropped before the ledger)


class _RayStage:
    """The actor a Ray pool runs: builds the stage once, maps pyarrow batches through `call_isolated`."""

    def __init__(self, cls: type[Stage], cfg: Any, ctx: StageContext, schema: pa.Schema, ledger_dir: Path):
        import ray

        self.guard, self.schema = InFlight(ledger_dir), schema
        self.error: ConfigError | None = None
        start = self.guard.starting(ray.get_runtime_context().get_actor_id() or str(os.getpid()))
        try:
            self.stage = cls(cfg, ctx)
        except ConfigError as e:  # a setting's fault (a wrong model), not a death: raised by the first batch,
            self.error = e        # so Ray reports a task error (one line from the driver), not a dead actor
        self.guard.started(start)
        pin_threads(stage_threads(cfg))

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        if self.error is not None:
            raise self.error
        table = guarded_call(self.guard, self.stage, batch, self.schema)
        node = f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"
        return table.append_column(NODE, pa.array([node] * table.num_rows, pa.string()))


def local_paths(obj: Any) -> list[str]:
    """Absolute paths a config names that exist here (sources, model folders, weight files), deduplicated."""
    import dataclasses
    from pathlib import Path

    found: list[str] = []

    def walk(v: Any) -> None:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, (str, Path)) and str(v).startswith("/") and Path(v).exists():
            found.append(str(Path(v)))

    walk(obj)
    return sorted(set(found))


def _node_sees(paths: list[str], marker: str, token: str) -> tuple[str, list[str]]:
    """On one node: (its address, the paths it cannot see); the marker must hold the driver's token."""
    import ray

    missing = [p for p in paths if not os.path.exists(p)]
    try:
        with open(marker) as f:
            if f.read() != token:
                missing.append(f"{os.path.dirname(os.path.dirname(marker))} (a different folder of that name)")
    except OSError:
        missing.append(os.path.dirname(os.path.dirname(marker)))
    return ray.util.get_node_ip_address(), missing


def check_shared_storage(out: Any, configs: list[Any], runner: RunnerConfig) -> int:
    """Before any work on a cluster: every alive node must see the output folder (a marker file the
    driver writes there, read back with its content) and every local path the stages name, at the same
    path. Stops with one line naming the node and the path if not. Returns the number of nodes checked."""
    import uuid
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.core.files import TMP_DIR, atomic_write_bytes

    ray_init(runner)
    token = uuid.uuid4().hex
    marker = Path(out) / TMP_DIR / f"node-check-{token}"
    atomic_write_bytes(marker, token.encode())
    paths = sorted({p for c in configs for p in local_paths(c)})
    probe = ray.remote(num_cpus=0)(_node_sees)
    listed = [n for n in ray.nodes() if n.get("Alive")]
    gone = tuple(getattr(ray.exceptions, n) for n in ("TaskUnschedulableError", "NodeDiedError")
                 if hasattr(ray.exceptions, n))
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(paths, str(marker), token) for n in listed]
    nodes, answers, deadline = [], [], time.monotonic() + 120
    try:
        for node, ref in zip(listed, refs, strict=True):
            try:
                answers.append(ray.get(ref, timeout=max(1.0, deadline - time.monotonic())))
            except gone:  # it left the cluster after it was listed (GCS still said alive): it runs nothing
                continue
            nodes.append(node)
    finally:
        marker.unlink(missing_ok=True)
    for node, (ip, missing) in zip(nodes, answers, strict=True):
        if missing:
            raise ConfigError(
                f"Ray node {ip} ({node['NodeID'][:8]}) cannot see {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + ": the output folder and every source and model path must be on storage that every node mounts "
                  "at the same path (NFS, a shared disk); mount it there, or run with --runner local")
    return len(nodes)


def ray_init(runner: RunnerConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if runner.address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=runner.address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR", configure_logging=False)


def _execute_ray(cls: type[Stage], cfg: Any, ctx: StageContext, pending: pa.Table, schema: pa.Schema,
                 runner: RunnerConfig, ledger_dir: Path) -> Iterator[pa.Table]:
    import ray

    ray_init(runner)
    import logging
    import warnings

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our progress line speaks for the stage
    for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # a failed run: the driver says it in one line
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 1.0), res.get("GPU", 0.0)
    if cfg.num_gpus > 0:
        if gpus < cfg.num_gpus:
            raise RuntimeError(f"stage asks for num_gpus={cfg.num_gpus} but the Ray cluster has {gpus:g} GPUs")
        num_cpus = min(cfg.num_cpus, cpus / max(1, gpus))
        size = cfg.concurrency or max(1, int(gpus // cfg.num_gpus))
    else:
        # Leave CPU for Ray's own tasks: whole-CPU actors filling a 2-core machine deadlock the pipeline.
        num_cpus = min(cfg.num_cpus, max(cpus / 4, 0.25))
        size = cfg.concurrency or max(1, int((cpus - 1) // num_cpus))
    blocks = list(_batches(pending, cfg.batch_size))
    ds = ray.data.from_arrow(blocks).map_batches(
        _RayStage, fn_constructor_kwargs={"cls": cls, "cfg": cfg, "ctx": ctx, "schema": schema,
                                          "ledger_dir": ledger_dir},
        batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=num_cpus, num_gpus=cfg.num_gpus,
        compute=ray.data.ActorPoolStrategy(size=size),
    )
    try:
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)
    except Exception as e:
        from pipeline.core.files import DiskFull, is_disk_full

        # The run stops on a raised error; Ray then kills the actors still in a batch, which leaves their
        # markers as if those keys had killed them: clear them, so the rerun batches as before (a real
        # death among them costs one more death on the rerun, then its marker is back).
        InFlight(ledger_dir).clear()
        if is_disk_full(e) or "DiskFull: " in str(e):  # a worker's full disk: its one line, naming the file
            full = re.findall(r"DiskFull: (disk full while writing [^\n]+)", str(e))
            raise (DiskFull.reported(full[-1]) if full else DiskFull(ledger_dir, e)) from None
        why = find_cause(e, StageFailed)  # a dead actor carries its creation error only as text
        found = re.findall(r"StageFailed: (.+)", str(why or e))
        if why is None and not found:
            bad = find_cause(e, ConfigError)  # a stage that cannot load its model, in the actor
            setting = re.findall(r"ConfigError: (.+)", str(bad or e))
            if bad is None and not setting:
                raise
            raise ConfigError(setting[-1] if setting else str(bad)) from None
        raise StageFailed(found[-1] if found else str(why)) from None

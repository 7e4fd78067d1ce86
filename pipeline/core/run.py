"""Running a manifest: lock the output folder, record the resolved manifest, run stages in order.

Only one run may write an output folder at a time (an advisory lock that the OS releases when a
run dies, even by SIGKILL). `manifest.resolved.yaml` records exactly what ran (package version,
every setting, model ids) and is deterministic, so re-running an unchanged manifest rewrites the same
file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import platform
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from rich.console import Console
from rich.table import Table

from pipeline import __version__
from pipeline.core.config import ConfigError, to_plain
from pipeline.core.files import sweep_temps, update_bytes
from pipeline.core.ledger import OK
from pipeline.core.manifest import Manifest
from pipeline.core.registry import REGISTRY, order
from pipeline.core.runner import StageResult, check_shared_storage, pending_inputs, run_stage
from pipeline.core.stage import StageContext

RESOLVED = "manifest.resolved.yaml"


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold `out/.lock` for the duration of a run; a second run on the same folder fails at once."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"{out} is in use by another facecurate run (pid {holder}); wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        sweep_temps(out)  # what a killed run left half-written; no other run can be writing now
        yield
    finally:
        os.close(fd)


def busy(out: Path) -> int | str | None:
    """The pid of the run holding `out`'s lock, or None when no run is writing it."""
    path = out / ".lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else (text or "?")
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def models_of(manifest: Manifest) -> dict[str, Any]:
    """Model ids named by stage configs (any field called `model` or ending in `_model`)."""
    found: dict[str, Any] = {}
    for name, cfg in manifest.stages.items():
        for f in dataclasses.fields(cfg):
            if f.name == "model" or f.name.endswith("_model") or f.name == "models":
                found[f"{name}.{f.name}"] = to_plain(getattr(cfg, f.name))
    return found


def write_resolved(manifest: Manifest, out: Path) -> None:
    doc = {
        "facecurate": __version__,
        "python": platform.python_version(),
        "models": models_of(manifest),
        "manifest": to_plain(dataclasses.replace(manifest, out=out)),
    }
    update_bytes(out / RESOLVED, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode())


def resolve_out(manifest: Manifest, out: Path | None) -> Path:
    chosen = out or manifest.out
    if chosen is None:
        raise ConfigError("no output folder: set `out:` in the manifest or pass --out DIR")
    return Path(chosen).resolve()


def rehash_sources(out: Path, console: Console) -> list[str]:
    """Re-hash every ok image of the index; the keys whose bytes changed (even behind an unchanged size
    and mtime, which is all a normal run looks at) are made pending in the ingest ledger."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.core.ledger import Ledger, sha256_file

    index = pq.read_table(out / "index.parquet", columns=["key", "status", "path", "sha256"])
    rows = index.filter(pc.is_in(index["status"], pa.array(["ok", "duplicate"]))).to_pylist()
    changed = []
    with Progress(TextColumn("[bold]rehash"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        bar = progress.add_task("rehash", total=len(rows))
        for r in rows:
            path = Path(r["path"]) if Path(r["path"]).is_absolute() else out / r["path"]
            if path.exists() and sha256_file(path) != r["sha256"]:
                changed.append(r["key"])
            progress.advance(bar)
    Ledger(out, REGISTRY["ingest"].ledger or "ingest", "quarantine").invalidate(
        changed, "rehash: the image's bytes changed since ingest")
    return changed


def run_manifest(manifest: Manifest, out: Path, only: list[str] | None = None,
                 console: Console | None = None, rehash: bool = False) -> list[StageResult]:
    """Run the manifest's stages (or `only` these) in dependency order; resumes whatever is done.
    `rehash`: first re-hash every ingested image and make the changed ones pending (see verify.py)."""
    console = console or Console(stderr=True)
    if not manifest.stages:
        raise ConfigError("stages: the manifest names no stage; add e.g. stages: {ingest: {sources: [...]}}")
    names = order(list(manifest.stages))
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--only: {', '.join(unknown)} not in this manifest; it has {', '.join(names)}")
        names = [n for n in names if n in only]
    ctx = StageContext(out)
    results = []
    with locked(out):
        write_resolved(manifest, out)
        if manifest.runner.kind == "ray":
            check_shared_storage(out, [manifest.stages[n] for n in names], manifest.runner)
        if rehash and (out / "index.parquet").exists():
            changed = rehash_sources(out, console)
            console.print(f"rehash: {len(changed):,} image(s) changed since ingest"
                          + (f", e.g. {changed[0]}; they are re-ingested and redone" if changed else ""),
                          highlight=False)
        for name in names:
            results.append(run_stage(name, manifest.stages[name], ctx, manifest.runner, console))
    return results


def stage_status(manifest: Manifest | None, out: Path) -> list[dict[str, Any]]:
    """Per stage: ok rows, failed rows by reason, pending inputs (None when it cannot be computed) and
    `notes` (why pending is unknown, ledger parts that do not read). Reads only: a corrupt part is
    skipped and named, never moved."""
    ctx = StageContext(out, on_corrupt="skip", read_only=True)
    names = order(list(manifest.stages)) if manifest else [n for n in REGISTRY if ctx.ledger(n).parts()]
    rows = []
    for name in names:
        spec = REGISTRY[name]
        ledger = ctx.ledger(name)
        notes: list[str] = []
        if name == "ingest" and (out / "index.parquet").exists():
            from pipeline.core.ledger import value_counts

            try:
                counts = value_counts(ctx.index(["status"], ok_only=False, faces=False)["status"])
            except (OSError, pa.ArrowException) as e:
                counts = Counter()
                notes.append(f"index.parquet does not read ({type(e).__name__}: {e}); run `facecurate repair {out}`")
        else:
            counts = ledger.counts()
        pending: int | None = None
        if manifest is not None:
            try:
                _, todo = pending_inputs(spec.stage_cls(), manifest.stages[name], ctx, spec, ledger,
                                         manifest.runner.retry_failed)
                pending = todo.num_rows
            except (FileNotFoundError, ValueError, OSError, pa.ArrowException) as e:
                pending = None
                notes.append(f"pending unknown: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
        notes += [f"ledger part {p} is corrupt ({why}); run `facecurate repair {out}`"
                  for p, why in sorted(ledger.corrupt.items())]
        rows.append({"stage": name, "ok": counts.get(OK, 0),
                     "failed": {k: v for k, v in sorted(counts.items()) if k != OK}, "pending": pending,
                     "notes": notes, "ran": bool(ledger.parts()) or (name == "ingest" and (out / "index.parquet").exists())})
    _mark_blocked(rows)
    return rows


def _mark_blocked(rows: list[dict[str, Any]]) -> None:
    """Set each row's `blocked`: why its pending count is not final yet (an upstream stage it reads has
    not run, or still has keys to do), else None. A blocked stage with 0 pending is not done."""
    by_name = {r["stage"]: r for r in rows}
    for r in rows:
        spec = REGISTRY[r["stage"]]
        why = []
        for up in (*spec.requires, *spec.optional):
            u = by_name.get(up)
            if u is None:
                continue  # not part of this run
            if not u["ran"]:
                why.append(f"{up} has not run")
            elif u["pending"]:
                why.append(f"{up} has {u['pending']:,} pending")
            elif u.get("blocked"):
                why.append(f"{up} is waiting")
        r["blocked"] = "; ".join(why) or None


def next_step(rows: list[dict[str, Any]], out: Path) -> str:
    """The command to run next: the first stage with work that nothing blocks, or what to do when done."""
    for r in rows:
        if (r["pending"] or not r["ran"]) and not r.get("blocked"):
            return (f"facecurate run {out}/{RESOLVED} (all pending stages, in order), or "
                    f"facecurate {r['stage']} {out} for {r['stage']} alone")
    if any(r["pending"] is None for r in rows):
        return "pending is unknown for a stage (see the notes above); fix that, then facecurate status again"
    if (out / "shards" / "index.json").exists():
        return f"everything is done: facecurate verify {out}, then facecurate publish {out} DIR or facecurate train"
    return f"everything in the manifest is done; open {out}/index.html for the reports"


def summary_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for col, just in [("stage", "left"), ("ok", "right"), ("failed", "right"), ("by reason", "left"),
                      ("pending", "right")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        failed = sum(r["failed"].values())
        reasons = ", ".join(f"{k} {v}" for k, v in r["failed"].items()) or "-"
        pending = "?" if r["pending"] is None else f"{r['pending']:,}"
        if r.get("blocked"):
            pending = f"[yellow]{pending} blocked[/]: {r['blocked']}"
        elif r.get("ran") is False and not r["pending"]:
            pending = "[yellow]not run[/]"
        table.add_row(r["stage"], f"{r['ok']:,}", f"[red]{failed:,}[/]" if failed else "0", reasons, pending)
    return table


def results_rows(results: list[StageResult]) -> list[dict[str, Any]]:
    return [{"stage": r.name, "ok": r.ok, "failed": r.failed, "pending": 0} for r in results]


def load_resolved(out: Path) -> Manifest | None:
    """The manifest a previous run recorded in `out`, or None if there is none or it no longer loads."""
    from pipeline.core.manifest import build_manifest

    path = out / RESOLVED
    if not path.exists():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    data = dict(doc.get("manifest") or {})
    try:
        return build_manifest(data, out)
    except ConfigError:
        return None


def run_stage_command(out: Path, stage: str, settings: dict[str, Any], runner: str | None = None,
                      console: Console | None = None, retry_failed: bool = False) -> StageResult:
    """Run one stage on an existing output folder (`facecurate caption OUT ...` and the like).

    The stage's settings are validated like a manifest section and merged into the run's recorded
    manifest, so `status` and a later `run` know about it. Required upstream stages must be done.
    `retry_failed` re-processes this stage's failed keys this time (it is not recorded).
    """
    from pipeline.core.config import RunnerConfig
    from pipeline.core.manifest import build_manifest

    out = out.resolve()
    if not (out / "index.parquet").exists():
        raise ConfigError(f"{out} has no index.parquet: run `facecurate ingest SRC --out {out}` first")
    previous = load_resolved(out)
    data: dict[str, Any] = {"name": previous.name if previous else out.name, "stages": {}}
    if previous is not None:
        data["runner"] = to_plain(previous.runner)
        data["stages"] = {k: to_plain(v) for k, v in previous.stages.items()}
    data["stages"][stage] = settings
    if runner:
        data.setdefault("runner", {})["kind"] = runner
    manifest = build_manifest(data, Path.cwd())
    missing = [r for r in REGISTRY[stage].requires if r != "ingest" and not StageContext(out).ledger(r).parts()]
    if missing:
        raise ConfigError(f"{stage} needs {', '.join(missing)} to have run on {out} first")
    console = console or Console(stderr=True)
    runner_cfg = manifest.runner or RunnerConfig()
    with locked(out):
        ledger = StageContext(out).ledger(stage)
        recorded, parts = _read_or_none(out / RESOLVED), ledger.parts()
        write_resolved(manifest, out)
        try:
            if runner_cfg.kind == "ray":
                check_shared_storage(out, [manifest.stages[stage]], runner_cfg)
            if retry_failed:
                runner_cfg = dataclasses.replace(runner_cfg, retry_failed=True)
            return run_stage(stage, manifest.stages[stage], StageContext(out), runner_cfg, console)
        except BaseException:
            # Nothing ran with these settings (a model that does not load, every key failing alike): the
            # record keeps what the folder last ran with, so a bare `facecurate STAGE OUT` does not repeat it.
            if ledger.parts() == parts:
                _restore(out / RESOLVED, recorded)
            raise


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _restore(path: Path, data: bytes | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
    else:
        update_bytes(path, data)


def previous_settings(out: Path, stage: str) -> dict[str, Any]:
    """The settings `stage` last ran with in `out` (from manifest.resolved.yaml), or {} when none."""
    m = load_resolved(out.resolve()) if out.is_dir() else None
    return to_plain(m.stages[stage]) if m is not None and stage in m.stages else {}


def print_summary(results: list[StageResult], title: str, out_console: Console, console: Console,
                  seconds: float | None = None) -> None:
    """The summary table every command ends with, then the next step; with `seconds`, also what this run
    did. Titles are `<what> -> OUT` (the folder the next step names)."""
    out_console.print(summary_table(results_rows(results), title))
    folder = title.rsplit(" -> ", 1)[-1] if " -> " in title else None
    if folder:
        failed = Counter()
        for r in results:
            failed.update(r.failed)
        if failed:
            reason = failed.most_common(1)[0][0]
            console.print(f"Next: facecurate inspect {folder} --status {reason} (why they failed; --retry-failed "
                          f"runs them again), then facecurate status {folder}", highlight=False, soft_wrap=True)
        else:
            console.print(f"Next: facecurate status {folder} (what is left, and what waits on what)",
                          highlight=False, soft_wrap=True)
    if seconds is None:
        return
    new = sum(r.pending for r in results)
    before = sum(max(r.inputs - r.pending, 0) for r in results)
    if not new:
        console.print("[dim]everything was already done.[/dim]")
    else:
        rest = f"; {before:,} were already done" if before else ""
        console.print(f"[dim]{new:,} item(s) processed in this run, {seconds:.1f} s{rest}.[/dim]")

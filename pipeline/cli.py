"""The `facecurate` command line (typer + rich)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.core.config import ConfigError
from pipeline.core.crashes import StageFailed
from pipeline.core.manifest import build_manifest, load_manifest

console = Console(stderr=True)
out_console = Console()
app = typer.Typer(
    name="facecurate",
    help="""Turn raw face photos into a training-ready multimodal face dataset: captions, 19-class masks,
sketches, VAE latents and WebDataset shards; then train MMFace-DiT on it.

Every command resumes: run it again after a crash or an edit and only what is missing is done.

**Examples**

```
# index a folder of photos (a row with a reason for every broken file)
facecurate ingest ~/photos --out runs/faces
# the whole pipeline on the bundled demo data, offline
facecurate run manifests/demo.yaml
# what is done, what failed and why, what is pending
facecurate status demo_out
```
""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder of the run (created if missing).")]
RunnerOpt = Annotated[str | None, typer.Option("--runner", help="local (default) or ray.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a manifest value: KEY=VALUE (dotted key, YAML value). Repeatable.")]


def _print_results(results: list, title: str, seconds: float) -> None:
    from pipeline.core.run import print_summary

    print_summary(results, title, out_console, console, seconds)


@app.command()
def ingest(
    sources: Annotated[list[Path], typer.Argument(help="Folders, .tar or .parquet files to ingest.", show_default=False)],
    out: Out,
    source: Annotated[str, typer.Option("--source", help="auto, folder, celebamask-hq, ffhq, webdataset or parquet.")] = "auto",
    min_size: Annotated[int, typer.Option(help="Images with a shorter side below this are `too_small`.")] = 64,
    verify: Annotated[str, typer.Option(help="`fast` structure checks or full `decode`.")] = "fast",
    runner: RunnerOpt = None,
) -> None:
    """Index images: key, sha256, size, mode, split and a status for every file.

    Nothing is dropped: a broken file becomes a row with a reason (decode_error, truncated, empty_file,
    unsupported_format, too_small, decompression_bomb, duplicate, unreadable). Writes OUT/index.parquet.

    **Examples**

    ```
    # FFHQ layout detected; per-image licenses come along
    facecurate ingest ~/ffhq --out runs/ffhq
    # CelebAMask-HQ: per-class masks merged into gt_masks/, official split used
    facecurate ingest CelebAMask-HQ/ --out runs/celeba
    # several sources, one index
    facecurate ingest shards/ data.parquet --out runs/mixed
    ```
    """
    from pipeline.core.run import run_manifest

    stage = {"sources": [{"path": str(p.resolve()), "type": source} for p in sources],
             "min_size": min_size, "verify": verify}
    data = {"name": "ingest", "runner": {"kind": runner or "local"}, "stages": {"ingest": stage}}
    manifest = build_manifest(data, Path.cwd())
    t0 = time.monotonic()
    results = run_manifest(manifest, out.resolve(), console=console)
    _print_results(results, f"ingest -> {out}", time.monotonic() - t0)


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="A YAML run manifest (see manifests/).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder; wins over the manifest's `out:`.")] = None,
    runner: RunnerOpt = None,
    overrides: SetOpt = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only these stages (repeatable).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-process keys whose last attempt failed.")] = False,
    rehash: Annotated[bool, typer.Option("--rehash", help="Re-hash every ingested image first and redo the ones whose bytes changed behind an unchanged size and mtime.")] = False,
) -> None:
    """Run a manifest's stages in dependency order, resuming whatever is already done.

    Kill it at any moment and run it again: finished parts are kept, nothing is done twice, and the
    final output is the same as an uninterrupted run's.

    **Examples**

    ```
    facecurate run manifests/demo.yaml
    # on Ray Data (a local Ray, or set runner.address in the manifest)
    facecurate run my.yaml --out runs/v2 --runner ray
    # change one setting, run one stage
    facecurate run my.yaml --set stages.ingest.min_size=256 --only ingest
    # images were edited in place (same size and mtime): re-hash them all and redo the changed ones
    facecurate run my.yaml --rehash
    ```
    """
    from pipeline.core.run import resolve_out, run_manifest

    sets = list(overrides or [])
    if runner:
        sets.append(f"runner.kind={runner}")
    if retry_failed:
        sets.append("runner.retry_failed=true")
    m = load_manifest(manifest, sets)
    target = resolve_out(m, out.resolve() if out else None)
    t0 = time.monotonic()
    results = run_manifest(m, target, only=only, console=console, rehash=rehash)
    _print_results(results, f"{m.name} -> {target}", time.monotonic() - t0)


@app.command()
def status(out: Annotated[Path, typer.Argument(help="An output folder of a run.", show_default=False)]) -> None:
    """Show each stage's ok rows, failures by reason, and pending keys.

    **Example**

    ```
    facecurate status runs/faces
    ```
    """
    from pipeline.core.run import load_resolved, stage_status, summary_table

    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    manifest = load_resolved(out)
    rows = stage_status(manifest, out.resolve())
    if not rows:
        raise ConfigError(f"{out} holds no facecurate run (no ledger found)")
    out_console.print(summary_table(rows, f"status of {out}"))
    for r in rows:
        for note in r.get("notes", []):
            console.print(f"[yellow]![/yellow] {r['stage']}: {note}", highlight=False, soft_wrap=True)


DepthOpt = Annotated[str, typer.Option("--depth", help="`fast`: structure and checksums; `full`: decode every file.")]


def _print_problems(problems: list, fixes: bool = True) -> None:
    for p in problems:
        out_console.print(f"[red]x[/red] {p}", highlight=False, soft_wrap=True)
    fixes = sorted({p.fix for p in problems if getattr(p, "fix", "")}) if fixes else []
    for f in fixes:
        console.print(f"  to fix: [bold]{f}[/bold]", highlight=False, soft_wrap=True)


@app.command()
def verify(
    out: Annotated[Path, typer.Argument(help="An output folder of a run.", show_default=False)],
    depth: DepthOpt = "fast",
) -> None:
    """Check every artifact a run's ledgers say exist: ledger parts read in full, every ok image
    re-hashed, every mask, ground-truth mask, sketch, aligned crop, latents file, shard and its samples,
    the dataset card.

    Writes nothing. Exits 1 and lists each problem with what to run when anything does not match
    (usually `facecurate repair OUT`).

    **Examples**

    ```
    facecurate verify runs/faces
    # decode every mask, sketch, array and shard sample too
    facecurate verify runs/faces --depth full
    ```
    """
    from pipeline.core.run import busy
    from pipeline.ops.verify import verify_run

    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    if (pid := busy(out)) is not None:
        raise ConfigError(f"{out} is being written by a facecurate run (pid {pid}); verify it when that run ends")
    problems, checked = verify_run(out.resolve(), console, depth)
    if problems:
        _print_problems(problems)
        console.print(f"[red]{len(problems)} problem(s)[/red] in {checked:,} checks ({depth})")
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: {checked:,} checks passed ({depth})")


@app.command()
def repair(
    out: Annotated[Path, typer.Argument(help="An output folder of a run.", show_default=False)],
    depth: DepthOpt = "fast",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be redone; change nothing.")] = False,
) -> None:
    """Redo exactly what `verify` finds broken, then verify again.

    Corrupt ledger parts are moved to `<ledger>/corrupt/` (kept, never deleted) and their keys
    recomputed; keys whose files are missing or damaged, and images whose bytes changed since ingest
    (even behind an unchanged size and mtime), are made pending and the run's recorded manifest runs
    again: only those keys, and what depends on a changed result, are redone. Source files are never
    touched.

    **Examples**

    ```
    facecurate repair runs/faces
    facecurate repair runs/faces --depth full --dry-run
    ```
    """
    from pipeline.core.run import load_resolved, locked, run_manifest
    from pipeline.ops.verify import apply_repairs, verify_run

    out = out.resolve()
    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    manifest = load_resolved(out)
    if manifest is None:
        raise ConfigError(f"{out} has no manifest.resolved.yaml that loads: run the manifest again with "
                          f"`facecurate run MANIFEST --out {out}`")
    with locked(out):
        problems, checked = verify_run(out, console, depth)
        if not problems:
            console.print(f"[green]nothing to repair[/green]: {checked:,} checks passed ({depth})")
            return
        _print_problems(problems, fixes=False)
        if dry_run:
            console.print(f"{len(problems)} problem(s); --dry-run: nothing changed")
            raise typer.Exit(1)
        actions = apply_repairs(out, problems, console)
    console.print("repair: " + ", ".join(f"{v:,} {k}" for k, v in actions.items() if v), highlight=False,
                  soft_wrap=True)
    t0 = time.monotonic()
    results = run_manifest(manifest, out, console=console)
    _print_results(results, f"repair -> {out}", time.monotonic() - t0)
    after, checked = verify_run(out, console, depth)
    if after:
        _print_problems(after)
        console.print(f"[red]{len(after)} problem(s) remain[/red] after repair ({checked:,} checks); "
                      "the lines above say what each needs")
        raise typer.Exit(1)
    console.print(f"[green]repaired[/green]: verify passes ({checked:,} checks, {depth})")


@app.command()
def inspect(
    out: Annotated[Path, typer.Argument(help="An output folder of a run.", show_default=False)],
    keys: Annotated[list[str] | None, typer.Argument(help="Keys to show in full (default: a table of the first rows).")] = None,
    limit: Annotated[int, typer.Option(help="Rows in the overview table.")] = 20,
    status_filter: Annotated[str | None, typer.Option("--status", help="Only rows with this status (e.g. decode_error).")] = None,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Render a contact-sheet PNG of shard samples (image, coloured mask, sketch, decoded latent, captions).")] = None,
    n: Annotated[int, typer.Option("--n", help="Samples on the contact sheet (when no keys are given).")] = 8,
    vae: Annotated[str | None, typer.Option("--vae", help="VAE whose latent the sheet decodes (default: flux, else the first).")] = None,
) -> None:
    """Show samples: the index row and every stage's rows for a key, or a contact sheet of the shards.

    **Examples**

    ```
    # overview of the index
    facecurate inspect runs/faces
    # only the truncated files
    facecurate inspect runs/faces --status truncated
    # everything about one key
    facecurate inspect runs/faces photos/astronaut
    # a contact sheet of the first 8 shard samples, latents decoded by their VAE
    facecurate inspect runs/faces --sheet sheet.png --n 8
    ```
    """
    from pipeline.ops.inspect import show_key, show_overview

    if sheet is not None:
        from pipeline.reports.sheet import contact_sheet

        path = contact_sheet(out.resolve(), sheet, n, keys, vae)
        console.print(f"contact sheet of {len(keys) if keys else n} sample(s): [bold]{path}[/bold]")
    elif keys:
        for k in keys:
            show_key(out.resolve(), k, out_console)
    else:
        show_overview(out.resolve(), out_console, limit, status_filter)


@app.command("stages")
def list_stages() -> None:
    """List the pipeline's stages, what each needs, and what it does."""
    from pipeline.core.registry import REGISTRY

    table = Table(header_style="bold")
    for c in ("stage", "needs", "does"):
        table.add_column(c)
    for s in REGISTRY.values():
        table.add_row(s.name, ", ".join(s.requires + tuple(f"({o})" for o in s.optional)) or "-", s.summary)
    out_console.print(table)


def _register_plugins() -> None:
    """Commands from `pipeline/commands/*.py` and the trainer's `train/cli.py`."""
    import importlib
    import pkgutil

    import pipeline.commands

    modules = [f"pipeline.commands.{m.name}" for m in pkgutil.iter_modules(pipeline.commands.__path__)]
    for name in [*sorted(modules), "train.cli"]:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # the module itself is absent; a missing dependency inside it is a bug
                continue
            raise
        module.register(app)


_register_plugins()


def main() -> None:
    """Console entry point: one-line errors for bad input, exit code 2."""
    # Our own progress bars and summaries speak for each stage; library download/loading bars are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except ConfigError as e:
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except StageFailed as e:
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as e:
        from pipeline.core.files import DiskFull, is_disk_full

        if not is_disk_full(e):
            raise
        if not isinstance(e, DiskFull):
            e = DiskFull(Path(e.filename or "."), e)
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished parts are kept; run the same command again to resume")
        sys.exit(130)

"""The `facecurate` command line (typer + rich).

Every error is handled in one place, `run_cli`: wrong input (a ConfigError, a path the user gave that does
not exist, a model that does not load, a usage error, for the trainer's commands too) is one line with exit
code 2; a run that cannot finish (StageFailed, a full disk) one line with exit code 1; a bug its traceback.
"""

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


def _version(value: bool) -> None:
    if value:
        from pipeline import __version__

        typer.echo(f"facecurate {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print facecurate's version and exit.")] = False,
) -> None:
    pass


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
    from pipeline.core.run import next_step

    console.print(f"Next: {next_step(rows, out)}", highlight=False, soft_wrap=True)


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
        if status_filter:
            check_status(out.resolve(), status_filter)
        show_overview(out.resolve(), out_console, limit, status_filter)


# The statuses an index row can have (ingest's reasons); stage ledgers add their own (`facecurate status`).
INDEX_STATUSES = ("ok", "decode_error", "truncated", "empty_file", "unsupported_format", "too_small",
                  "decompression_bomb", "duplicate", "unreadable")


def check_status(out: Path, status: str) -> None:
    """`inspect --status` lists index rows: an unknown status is a typo (did-you-mean, exit 2); a status
    only some stage's rows have gets a line saying where they are instead of a bare empty table."""
    import difflib

    import pyarrow.parquet as pq

    from pipeline.core.registry import REGISTRY
    from pipeline.core.stage import INDEX, StageContext

    if not (out / INDEX).exists():
        return  # show_overview says what is missing
    in_index = set(pq.read_table(out / INDEX, columns=["status"])["status"].to_pylist())
    if status in in_index or status in INDEX_STATUSES:
        return
    ctx = StageContext(out, on_corrupt="skip", read_only=True)
    in_stages = {name: n for name in REGISTRY if name != "ingest" and (n := ctx.ledger(name).counts().get(status))}
    if in_stages:
        where = ", ".join(f"{name} has {n:,} such row(s)" for name, n in in_stages.items())
        console.print(f"[yellow]![/yellow] no index row has status {status}; {where} (see `facecurate status {out}`, "
                      f"and `facecurate inspect {out} KEY` for one key)", highlight=False, soft_wrap=True)
        return
    seen = sorted(in_index | {s for name in REGISTRY if name != "ingest" for s in ctx.ledger(name).counts()})
    choices = list(dict.fromkeys([*seen, *INDEX_STATUSES]))
    hint = difflib.get_close_matches(status, choices, n=1)
    raise ConfigError(f"--status: {status!r} is not a status{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                      f"{out} has {', '.join(seen) or 'none'}; an index row can also be "
                      f"{', '.join(s for s in INDEX_STATUSES if s not in seen)}")


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


# Exit codes: 0 done (failed rows are data: see `status`), 1 the run could not finish (a stage failed for
# one reason for every key, its workers died, the disk is full, `verify` found problems), 2 the input is
# wrong (a command-line option, a manifest value, a path, a model of the wrong kind). A bug keeps its
# traceback (exit 1).
PATH_ERRORS: dict[type[OSError], tuple[str, str]] = {
    FileNotFoundError: ("does not exist", "check the path"),
    IsADirectoryError: ("is a folder where a file is expected", "give the file inside it"),
    NotADirectoryError: ("is not a folder", "give a folder"),
    PermissionError: ("cannot be accessed (permission denied)", "fix its permissions or choose another path"),
}


def _value_options(args: list[str]) -> set[str]:
    """The options of the command in `args` that take a value (`--mask`, not `--save-all`)."""
    group = typer.main.get_command(app)
    cmd = getattr(group, "commands", {}).get(next((a for a in args if not a.startswith("-")), ""))
    return {o for p in (cmd or group).params if p.param_type_name == "option" and not getattr(p, "is_flag", False)
            for o in (*p.opts, *p.secondary_opts)}


def path_error(e: OSError, args: list[str]) -> str | None:
    """One line for a missing or unreadable path the user typed (or a message our code raised for one);
    None for any other path, which points at a bug."""
    kind = next((k for k in PATH_ERRORS if isinstance(e, k)), None)
    if kind is None:
        return None
    if e.filename is None:  # raised by our code with a message written for the user
        return str(e) or None
    what, fix = PATH_ERRORS[kind]
    target = Path(os.fsdecode(e.filename)).expanduser().resolve()
    for i, arg in enumerate(args):
        option, _, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        try:
            given = Path(value).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):  # a caption, not a path
            continue
        if target == given or (kind is PermissionError and given in target.parents):
            option = option or (args[i - 1] if i and args[i - 1] in _value_options(args) else "")
            why = e.strerror or type(e).__name__
            return f"{option + ' ' if option else ''}{os.fsdecode(e.filename)} {what} ({why}); {fix}"
    return None


def explain(e: BaseException, args: list[str]) -> tuple[str, int] | None:
    """(one line, exit code) for an error that is the input's or the machine's; None for a bug."""
    train_config = sys.modules.get("train.config")
    if isinstance(e, (ConfigError, *((train_config.ConfigError,) if train_config else ()))):
        return str(e), 2
    if isinstance(e, StageFailed):
        return str(e), 1
    if isinstance(e, OSError):
        from pipeline.core.files import DiskFull, is_disk_full

        if is_disk_full(e):
            return str(e if isinstance(e, DiskFull) else DiskFull(Path(e.filename or "."), e)), 1
        line = path_error(e, args)
        return (line, 2) if line else None
    return None


def usage_line(e: BaseException) -> str:
    """click's usage error as one line, like every other error (no boxed panel, train and sample too)."""
    if isinstance(e, typer.BadParameter) and e.param is None and e.param_hint is None:
        return e.message  # a ConfigError the trainer's commands re-raise as a usage error
    ctx = getattr(e, "ctx", None)
    message = e.format_message().rstrip(".")
    return f"{message}{'' if message.endswith('?') else ';'} see `{ctx.command_path} -h`" if ctx else message


def _error(line: str) -> None:
    from rich.text import Text

    console.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: `run_cli` on the command line, its result as the exit code (0, 1 or 2, see above)."""
    sys.exit(run_cli(sys.argv[1:] if argv is None else list(argv)))


def run_cli(args: list[str]) -> int:
    """Run the command line on `args`; returns the exit code (every error handled here, in one place)."""
    try:  # typer 0.26 and later carry their own copy of click
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    # Our own progress bars and summaries speak for each stage; library download/loading bars are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported before (a caller in-process): it read the variable then
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        code = typer.main.get_command(app).main(args=args, prog_name="facecurate", standalone_mode=False)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # the help was shown
            return e.exit_code
        _error(usage_line(e))
        return e.exit_code
    except click.ClickException as e:
        _error(e.format_message())
        return e.exit_code
    except typer.Abort:
        console.print("aborted")
        return 1
    except KeyboardInterrupt:  # outside a command (inside one, click makes it exit code 130)
        code = 130
    except Exception as e:  # noqa: BLE001 - explained or re-raised with its traceback
        known = explain(e, args)
        if known is None:
            raise
        _error(known[0])
        return known[1]
    if code == 130:
        console.print("[yellow]interrupted[/yellow]: finished parts are kept; run the same command again to resume")
    return code if isinstance(code, int) else 0

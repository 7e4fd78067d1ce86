"""`facecurate latents OUT`, `facecurate shard OUT` and `facecurate export OUT --format mmface-dit`.

The stage commands start from the settings the run already recorded for the stage (a manifest run or
an earlier command), so `facecurate shard OUT --max-samples 1000` changes one setting, not all of them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.core.config import ConfigError
from pipeline.core.manifest import apply_overrides

console = Console(stderr=True)
out_console = Console()

RunnerOpt = Annotated[str | None, typer.Option("--runner", help="local (default) or ray.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Any other setting of the stage: KEY=VALUE (YAML value). Repeatable.")]
SIZE_RE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`1GB`, `500MB`, `2GiB`, `123456` -> bytes."""
    m = SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"--max-size {text!r}: expected a size like 1GB, 500MB or 2GiB")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " kmgt".index(m.group(2).lower() or " "))


def parse_vae(text: str) -> tuple[str, dict[str, str]]:
    """`flux=black-forest-labs/FLUX.1-schnell:vae@main` -> ("flux", {model, subfolder, revision})."""
    name, eq, rest = text.partition("=")
    if not eq or not name or not rest:
        raise ConfigError(f"--vae {text!r}: expected NAME=MODEL[:SUBFOLDER][@REVISION], e.g. flux=black-forest-labs/FLUX.1-schnell:vae")
    rest, _, revision = rest.partition("@")
    model, _, subfolder = rest.partition(":")
    spec = {"model": model}
    if subfolder:
        spec["subfolder"] = subfolder
    if revision:
        spec["revision"] = revision
    return name.strip(), spec


def _run(out: Path, stage: str, settings: dict[str, Any], runner: str | None) -> Any:
    from pipeline.core.run import print_summary, run_stage_command

    t0 = time.monotonic()
    result = run_stage_command(out, stage, settings, runner, console)
    print_summary([result], f"{stage} -> {out}", out_console, console, time.monotonic() - t0)
    return result


def _latents_table(out: Path) -> Table:
    from collections import Counter

    from pipeline.core.stage import StageContext

    t = StageContext(out).ledger("latents").read(
        ["vae", "status", "model", "dtype", "shape", "kinds", "scaling_factor", "shift_factor"]).to_pylist()
    table = Table(title="latents by VAE", title_justify="left", header_style="bold")
    for c in ("vae", "model", "ok", "kinds encoded", "shape", "dtype", "scale", "shift"):
        table.add_column(c)
    for vae in sorted({r["vae"] for r in t if r["vae"]}):
        rows = [r for r in t if r["vae"] == vae and r["status"] == "ok"]
        kinds = Counter(k for r in rows for k in r["kinds"] or [])
        last = rows[-1] if rows else {}
        table.add_row(vae, str(last.get("model", "-")), f"{len(rows):,}",
                      ", ".join(f"{k} {kinds[k]:,}" for k in ("image", "mask", "sketch") if kinds[k]) or "-",
                      "x".join(map(str, last.get("shape") or [])) or "-",
                      "float16" if rows else "-",  # as stored; the ledger's dtype is what the VAE computed in
                      str(last.get("scaling_factor", "-")), str(last.get("shift_factor", "-")))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def latents(
        out: Annotated[Path, typer.Argument(help="An ingested output folder.", show_default=False)],
        vae: Annotated[list[str] | None, typer.Option("--vae", help="NAME=MODEL[:SUBFOLDER][@REVISION]; repeatable. Default: flux (FLUX.1-schnell) and sd (sd-vae-ft-mse).")] = None,
        resolution: Annotated[int | None, typer.Option(help="Side of the encoded square views (default 256).", show_default=False)] = None,
        mask_source: Annotated[str | None, typer.Option(help="auto (ground truth, else parse), gt or parse.", show_default=False)] = None,
        dtype: Annotated[str | None, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32.", show_default=False)] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1.", show_default=False)] = None,
        batch_size: Annotated[int | None, typer.Option(help="Samples per batch (default 16).", show_default=False)] = None,
        runner: RunnerOpt = None,
        overrides: SetOpt = None,
    ) -> None:
        """Encode image, coloured mask and sketch of every ok image with one or more VAEs.

        Stores each latent distribution's mean as float16 (C x R/8 x R/8), unscaled and unshifted, in
        `OUT/latents/<vae>/`, and records the VAE's scaling and shift factors in OUT/latents (one row per
        image and VAE). Runs on what parse and sketch produced so far; missing masks or sketches are
        simply not encoded.

        **Examples**

        ```
        # both default VAEs at 256 px (bf16 on a GPU)
        facecurate latents runs/faces
        # only FLUX's VAE, at 512 px, pinned to a revision
        facecurate latents runs/faces --vae flux=black-forest-labs/FLUX.1-schnell:vae@main --resolution 512
        # the demo's tiny offline VAEs
        facecurate latents demo_out --vae flux=.cache/tiny-models/vae-flux --vae sd=.cache/tiny-models/vae-sd --resolution 64
        ```
        """
        from pipeline.core.run import previous_settings

        settings = previous_settings(out, "latents")
        if vae:
            settings["models"] = dict(parse_vae(v) for v in vae)
        for k, v in {"resolution": resolution, "mask_source": mask_source, "dtype": dtype, "device": device,
                     "batch_size": batch_size}.items():
            if v is not None:
                settings[k] = v
        _run(out, "latents", apply_overrides(settings, list(overrides or [])), runner)
        out_console.print(_latents_table(out.resolve()))

    @app.command()
    def shard(
        out: Annotated[Path, typer.Argument(help="An ingested output folder.", show_default=False)],
        resolution: Annotated[int | None, typer.Option(help="Image side in the shards (default: the latents', else 256).", show_default=False)] = None,
        require: Annotated[list[str] | None, typer.Option("--require", help="mask, sketch, captions or latents: leave samples without it out (repeatable). Default: keep them, field absent and flagged.")] = None,
        max_samples: Annotated[int | None, typer.Option(help="Samples per shard at most (default 5000).", show_default=False)] = None,
        max_size: Annotated[str | None, typer.Option(help="Bytes per shard at most, e.g. 1GB, 500MB (default 1GB).", show_default=False)] = None,
        order: Annotated[str | None, typer.Option(help="hash (seeded mix, default) or key.", show_default=False)] = None,
        runner: RunnerOpt = None,
        overrides: SetOpt = None,
    ) -> None:
        """Write WebDataset shards per split, index.json (sha256 per shard), features.json and README.md.

        Every sample carries jpg, mask.png, sketch.png, captions.json, each VAE's latents and json
        metadata; what a sample lacks is absent and flagged (or the sample is left out, with
        --require). A killed run resumes: samples are prepared once, shards are assembled
        deterministically and renamed into place, and index.json is written last.

        **Examples**

        ```
        facecurate shard runs/faces
        # only complete samples, 2000 per shard
        facecurate shard runs/faces --require mask --require sketch --require captions --max-samples 2000
        # then check every byte and field
        facecurate verify runs/faces
        ```
        """
        from pipeline.core.run import previous_settings

        settings = previous_settings(out, "shard")
        if require is not None:
            settings["require"] = require
        if max_size is not None:
            settings["max_bytes"] = parse_size(max_size)
        for k, v in {"resolution": resolution, "max_samples": max_samples, "order": order}.items():
            if v is not None:
                settings[k] = v
        _run(out, "shard", apply_overrides(settings, list(overrides or [])), runner)
        _print_index(out.resolve())

    @app.command()
    def export(
        out: Annotated[Path, typer.Argument(help="An output folder with shards.", show_default=False)],
        fmt: Annotated[str, typer.Option("--format", help="mmface-dit: the public MMFace-DiT trainer's latents folder.")] = "mmface-dit",
        to: Annotated[Path | None, typer.Option("--to", help="latents_root to write into (default OUT/export/mmface-dit).", show_default=False)] = None,
        vae: Annotated[str | None, typer.Option(help="VAE short name (default: flux, else the first).", show_default=False)] = None,
        split: Annotated[list[str] | None, typer.Option("--split", help="Splits to export (repeatable; default train).")] = None,
        dataset: Annotated[str | None, typer.Option(help="Dataset folder name under --to (default: the run's name).", show_default=False)] = None,
        dtype: Annotated[str, typer.Option(help="float32 (what the trainer computes in) or float16 (half the disk).")] = "float32",
        missing: Annotated[str, typer.Option(help="skip samples without mask or sketch, or write zeros (a dropped condition).")] = "skip",
    ) -> None:
        """Export the shards to another trainer's layout.

        `mmface-dit` writes `<to>/<dataset>/{image,mask,sketch}_latents/<id>.pt` (plain tensors, already
        multiplied by the VAE scaling factor, no shift, as that loader expects; `torch.load(...,
        weights_only=True)` reads them) and `<to>/<dataset>/text/<id>.txt` (captions, one per line).

        **Examples**

        ```
        facecurate export runs/faces --format mmface-dit --to latents_root
        # then, in the MMFace-DiT repository: point its config's latents root at latents_root
        facecurate export runs/faces --split val --to latents_val --dtype float16
        ```
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from pipeline.core.run import locked
        from pipeline.data.wds import read_index
        from pipeline.ops.export import export_mmface

        if fmt != "mmface-dit":
            raise ConfigError(f"--format {fmt!r}: the only format is mmface-dit")
        if dtype not in ("float32", "float16") or missing not in ("skip", "zeros"):
            raise ConfigError("--dtype is float32 or float16; --missing is skip or zeros")
        out = out.resolve()
        try:
            index = read_index(out / "shards")
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
        splits = tuple(split or ["train"])
        total = sum(e["samples"] for e in index["shards"] if e["split"] in splits)
        t0 = time.monotonic()
        with locked(out), Progress(TextColumn("[bold]export"), BarColumn(), MofNCompleteColumn(), console=console,
                                   disable=not console.is_terminal) as progress:
            task = progress.add_task("export", total=total)
            result = export_mmface(out, (to or out / "export" / "mmface-dit").resolve(), vae, splits, dataset,
                                   dtype, missing, lambda n: progress.advance(task, n))  # type: ignore[arg-type]
        table = Table(title=f"export mmface-dit ({result.vae}) -> {result.root}", title_justify="left", header_style="bold")
        for c in ("written", "skipped", "by reason", "zero-filled"):
            table.add_column(c)
        table.add_row(f"{result.written:,}", f"{sum(result.skipped.values()):,}",
                      ", ".join(f"{k} {v:,}" for k, v in sorted(result.skipped.items())) or "-",
                      ", ".join(f"{k} {v:,}" for k, v in sorted(result.zero_filled.items())) or "-")
        out_console.print(table)
        console.print(f"[dim]{total:,} sample(s) read in {time.monotonic() - t0:.1f} s.[/dim]")


def splits_table(index: dict, title: str) -> Table:
    """Shards, samples and bytes per split of an `index.json`."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for c, j in (("split", "left"), ("shards", "right"), ("samples", "right"), ("bytes", "right")):
        table.add_column(c, justify=j)  # type: ignore[arg-type]
    for sp, d in index["splits"].items():
        table.add_row(sp, str(d["shards"]), f"{d['samples']:,}", f"{d['bytes']:,}")
    return table


def _print_index(out: Path) -> None:
    import json

    path = out / "shards" / "index.json"
    if not path.exists():
        return
    index = json.loads(path.read_text())
    out_console.print(splits_table(index, f"shards in {out / 'shards'}"))
    left = ", ".join(f"{k} {v:,}" for k, v in index["left_out"].items())
    console.print(f"[dim]left out: {left or 'none'}; dataset card: {out / 'shards' / 'README.md'}[/dim]")
    from pipeline.stages.shard import next_step

    console.print(next_step(out), highlight=False, soft_wrap=True)

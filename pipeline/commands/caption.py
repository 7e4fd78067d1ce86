"""`facecurate caption OUT` (run the caption stage on an ingested folder) and `facecurate prompts`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.core.config import ConfigError
from pipeline.core.manifest import apply_overrides

console = Console(stderr=True)
out_console = Console()


def _snapshot(out: Path) -> set[str]:
    """Cache keys of the ok caption rows in `out` (to tell generated captions from reused ones)."""
    from pipeline.core.stage import StageContext

    t = StageContext(out).ledger("caption").read(["status", "cache_key"])
    if "cache_key" not in t.column_names:
        return set()
    return {k for k, s in zip(t["cache_key"].to_pylist(), t["status"].to_pylist(), strict=True) if s == "ok"}


def prompt_table(out: Path, before: set[str]) -> tuple[Table, int, int]:
    """Per prompt: ok rows, failures, mean output tokens, share cut at max_tokens, a sample caption."""
    from pipeline.core.stage import StageContext

    t = StageContext(out).ledger("caption").read(
        ["status", "prompt_id", "text", "output_tokens", "finish_reason", "cache_key"]).to_pylist()
    stats: dict[str, dict[str, Any]] = {}
    generated = tokens = 0
    for r in t:
        s = stats.setdefault(r["prompt_id"], {"ok": 0, "bad": 0, "tok": 0, "cut": 0, "sample": ""})
        if r["status"] != "ok":
            s["bad"] += 1
            continue
        s["ok"] += 1
        s["tok"] += r["output_tokens"] or 0
        s["cut"] += r["finish_reason"] == "length"
        s["sample"] = s["sample"] or " ".join((r["text"] or "").split())[:60]
        if r["cache_key"] not in before:
            generated += 1
            tokens += r["output_tokens"] or 0
    rows = []
    for pid, s in stats.items():
        n = max(s["ok"], 1)
        rows.append((pid, f"{s['ok']:,}", f"[red]{s['bad']:,}[/]" if s["bad"] else "0", f"{s['tok'] / n:.1f}",
                     f"{100 * s['cut'] / n:.0f}%", s["sample"]))
    columns = [("prompt", "left"), ("ok", "right"), ("failed", "right"), ("mean tokens", "right"),
               ("cut at max", "right"), ("sample", "left")]
    return fitted_table("captions by prompt", columns, rows), generated, tokens


def fitted_table(title: str, columns: list[tuple[str, str]], rows: list[tuple[str, ...]]) -> Table:
    """Every column at its full width; the last one is cut (with an ellipsis) to what the terminal has left."""
    widths = [max([len(c)] + [len(Text.from_markup(r[i]).plain) for r in rows]) for i, (c, _) in enumerate(columns)]
    room = max(12, out_console.width - sum(widths[:-1]) - 3 * len(columns) - 1)
    table = Table(title=title, title_justify="left", header_style="bold")
    for col, just in columns:
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        last = r[-1] if len(r[-1]) <= room else r[-1][: room - 1] + "…"
        table.add_row(*r[:-1], Text(last))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def caption(
        out: Annotated[Path, typer.Argument(help="An ingested output folder.", show_default=False)],
        model: Annotated[str, typer.Option(help="Hub id or local model folder.")] = "OpenGVLab/InternVL3-1B-hf",
        engine: Annotated[str, typer.Option(help="transformers (any machine) or vllm (GPU).")] = "transformers",
        prompts: Annotated[Path | None, typer.Option(help="Prompt-set YAML (default: manifests/prompts/face-v1.yaml).")] = None,
        revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit) to pin.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Images per stage batch (x prompts = requests); default 16, 128 with vllm.", show_default=False)] = None,
        max_tiles: Annotated[int, typer.Option(help="448px tiles per image; 1 sees a face whole.")] = 1,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 (transformers engine).")] = "auto",
        runner: Annotated[str | None, typer.Option("--runner", help="local (default) or ray.")] = None,
        overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="Any other caption setting: KEY=VALUE (e.g. temperature=0.7, engine_batch=32, num_gpus=1).")] = None,
        retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Caption again the images whose rows failed.")] = False,
    ) -> None:
        """Caption every ok image of OUT with each prompt of a prompt set (ten by default).

        Rows go to OUT/captions/raw (one per image and prompt, with token counts and finish reason). Results
        are cached by image content, prompt, model revision and decoding settings: a second run generates
        nothing, and after editing one prompt only that prompt's captions are generated again.

        **Examples**

        ```
        # on a GPU machine with vLLM (its own environment; see the README)
        facecurate caption runs/faces --model OpenGVLab/InternVL3-1B-hf --engine vllm
        # anywhere: the transformers engine (CPU or GPU)
        facecurate caption runs/faces --model OpenGVLab/InternVL3-2B-hf --engine transformers
        # your own prompts, sampled
        facecurate caption runs/faces --prompts my-prompts.yaml --set temperature=0.7 --set seed=1
        # the offline tiny model the demo uses
        facecurate caption demo_out --model .cache/tiny-models/internvl3
        ```
        """
        from pipeline.core.run import print_summary, run_stage_command

        # vLLM schedules what it is given: big submissions keep its batch full between stage batches.
        batch_size = batch_size or (128 if engine == "vllm" else 16)
        settings: dict[str, Any] = {"model": model, "engine": engine, "batch_size": batch_size,
                                    "max_tiles": max_tiles, "device": device}
        if prompts is not None:
            settings["prompts"] = str(prompts)
        if revision:
            settings["revision"] = revision
        settings = apply_overrides(settings, list(overrides or []))
        if engine == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                from pipeline.engines.vllm_engine import INSTALL_HINT

                raise ConfigError(INSTALL_HINT)
        before = _snapshot(out.resolve()) if out.is_dir() else set()
        t0 = time.monotonic()
        result = run_stage_command(out, "caption", settings, runner, console, retry_failed=retry_failed)
        seconds = time.monotonic() - t0
        print_summary([result], f"caption -> {out}", out_console, console)
        table, generated, tokens = prompt_table(out.resolve(), before)
        out_console.print(table)
        failed = sum(result.failed.values())
        if generated:
            console.print(f"[dim]{generated:,} caption(s) generated ({tokens:,} tokens) for {result.pending:,} "
                          f"image(s) in {seconds:.1f} s; the rest came from the cache.[/dim]")
        elif not failed:
            console.print("[dim]nothing generated: every caption was already in the cache.[/dim]")
        else:  # failed rows are never answered from the cache: they count as done until retried
            console.print(f"[dim]nothing generated{'; the ok captions came from the cache' if result.ok else ''}; "
                          f"{failed:,} row(s) failed ({', '.join(result.failed)}): `facecurate inspect {out} KEY` "
                          "says why, `--retry-failed` tries them again.[/dim]", highlight=False, soft_wrap=True)

    @app.command("prompts")
    def show_prompts(
        file: Annotated[Path | None, typer.Argument(help="A prompt-set YAML (default: face-v1).")] = None,
    ) -> None:
        """Check a prompt set and show each prompt's id, kind, max tokens and content hash.

        A prompt's hash is part of every caption's cache key: edit one prompt and only its captions are
        generated again.

        **Examples**

        ```
        facecurate prompts
        facecurate prompts my-prompts.yaml
        ```
        """
        from pipeline.text.prompts import load_prompt_set

        ps = load_prompt_set(file)
        rows = [(p.id, p.kind, str(p.max_tokens), p.hash, " ".join(p.text.split())) for p in ps.prompts]
        columns = [("id", "left"), ("kind", "left"), ("max tokens", "right"), ("hash", "left"), ("text", "left")]
        out_console.print(fitted_table(f"prompt set {ps.version} (hash {ps.hash}, {len(ps.prompts)} prompts)",
                                       columns, rows))

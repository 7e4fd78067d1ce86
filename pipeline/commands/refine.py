"""`facecurate clean OUT` and `facecurate refine OUT`: the two caption post-processing stages on their own."""

from __future__ import annotations

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
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Any other setting: KEY=VALUE (YAML value). Repeatable.")]
RunnerOpt = Annotated[str | None, typer.Option("--runner", help="local (default) or ray.")]


def _counts_table(title: str, items: dict[str, Any], total: int | None = None) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    for k, v in items.items():
        share = f" ({100 * v / total:.0f}%)" if total else ""
        table.add_row(str(k), f"{v:,}{share}")
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def clean(
        out: Annotated[Path, typer.Argument(help="An output folder with captions (run `facecurate caption` first).", show_default=False)],
        budget: Annotated[int, typer.Option(help="CLIP tokens per caption, start/end included (max 77).")] = 77,
        disable: Annotated[list[str] | None, typer.Option("--disable", help="Skip a cleaning rule by name (repeatable).")] = None,
        runner: RunnerOpt = None,
        overrides: SetOpt = None,
    ) -> None:
        """Clean raw VLM captions with named rules, count CLIP tokens exactly, trim to the 77-token budget.

        One row per raw caption in OUT/captions/clean, with the rules that changed it (`rules_applied`).
        Nothing is dropped: unusable captions get a status (`empty`, `meaningless`, `refusal`,
        `caption_failed`) and keep their text.

        **Examples**

        ```
        facecurate clean runs/faces
        # keep "The image shows ..." lead-ins, trim to 75 tokens
        facecurate clean runs/faces --disable image_lead --budget 75
        # what happened to one image's captions
        facecurate inspect runs/faces photos/astronaut
        ```
        """
        from pipeline.core.run import print_summary, run_stage_command
        from pipeline.reports.caption_report import clean_counts

        settings = apply_overrides({"budget": budget, "disable": list(disable or [])}, list(overrides or []))
        t0 = time.monotonic()
        result = run_stage_command(out, "clean", settings, runner, console)
        print_summary([result], f"clean -> {out}", out_console, console)
        c = clean_counts(out.resolve())
        out_console.print(_counts_table("rules applied (rows)", c.get("rules", {}), c.get("rows")))
        console.print(f"[dim]{c.get('trimmed', 0):,} of {c.get('ok', 0):,} ok captions trimmed to fit; "
                      f"{time.monotonic() - t0:.1f} s[/dim]")

    @app.command()
    def refine(
        out: Annotated[Path, typer.Argument(help="An output folder with cleaned captions.", show_default=False)],
        model: Annotated[str, typer.Option(help="Hub id or local model folder (a Qwen3 chat model).")] = "Qwen/Qwen3-1.7B",
        engine: Annotated[str, typer.Option(help="transformers (any machine) or vllm (GPU; guided JSON).")] = "transformers",
        max_new_tokens: Annotated[int, typer.Option(help="Generation limit per answer (ten captions: ~500-700).")] = 768,
        max_retries: Annotated[int, typer.Option(help="Extra attempts per image for bad or missing captions.")] = 2,
        batch_size: Annotated[int | None, typer.Option(help="Images per stage batch; default 32, 256 with vllm.", show_default=False)] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 (transformers engine).")] = "auto",
        runner: RunnerOpt = None,
        overrides: SetOpt = None,
    ) -> None:
        """Rewrite each image's cleaned captions into ten unique, consistent ones with a Qwen3 model.

        Thinking is off; the answer is JSON (schema-guided on vLLM). A caption that adds a face attribute
        no input caption states, contradicts the image's mask (when the parse stage has run), or repeats
        another is rejected and asked for again; what is still missing comes from the cleaned captions,
        with a flag. Writes OUT/captions/final and the caption report (OUT/captions/report.html).

        **Examples**

        ```
        # on a GPU machine with vLLM
        facecurate refine runs/faces --model Qwen/Qwen3-1.7B --engine vllm
        # anywhere, with transformers
        facecurate refine runs/faces --model Qwen/Qwen3-4B --engine transformers
        # stricter mask evidence for earrings
        facecurate refine runs/faces --set mask_present_share.earrings=0.0005
        # the offline tiny model the demo uses (random weights: every image falls back, flagged)
        facecurate refine demo_out --model .cache/tiny-models/qwen3 --max-new-tokens 48
        ```
        """
        from pipeline.core.run import print_summary, run_stage_command
        from pipeline.reports.caption_report import build_report

        batch_size = batch_size or (256 if engine == "vllm" else 32)
        settings: dict[str, Any] = {"model": model, "engine": engine, "max_new_tokens": max_new_tokens,
                                    "max_retries": max_retries, "batch_size": batch_size, "device": device}
        settings = apply_overrides(settings, list(overrides or []))
        if engine == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                from pipeline.engines.vllm_engine import INSTALL_HINT

                raise ConfigError(INSTALL_HINT)
        result = run_stage_command(out, "refine", settings, runner, console)
        print_summary([result], f"refine -> {out}", out_console, console)
        r = build_report(out.resolve())
        out_console.print(_counts_table("caption provenance", r["provenance"], r["captions"]))
        out_console.print(_counts_table("rejections by reason", r["rejections"]))
        out_console.print(_counts_table("flags (images)", r["flags"], r["ok"]))

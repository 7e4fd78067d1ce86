"""`facecurate faces OUT`: detect, align the FFHQ way, filter and group the faces of an ingested run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.core.manifest import apply_overrides

console = Console(stderr=True)
out_console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def faces(
        out: Annotated[Path, typer.Argument(help="An ingested output folder.", show_default=False)],
        size: Annotated[int, typer.Option(help="Side of the aligned crop (FFHQ: 1024).")] = 1024,
        multi_face: Annotated[str, typer.Option(help="largest, all (each face its own key) or reject.")] = "largest",
        split_by: Annotated[str, typer.Option(help="source (ingest's splits) or identity (a person in one split).")] = "source",
        runner: Annotated[str | None, typer.Option("--runner", help="local (default) or ray.")] = None,
        overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="Any other setting: KEY=VALUE.")] = None,
    ) -> None:
        """Find every face with dlib, align it like FFHQ, drop unusable ones with a reason, group by person.

        Writes OUT/aligned/<key>.png and the faces ledger (bbox, 68 landmarks, score, sharpness, yaw,
        identity, near_duplicate_of); later stages read the aligned crops. Report: OUT/faces/report.html.

        **Examples**

        ```
        facecurate faces runs/wild
        # group photos: every face its own sample; each person in one split
        facecurate faces runs/wild --multi-face all --split-by identity
        # small faces too, and a stricter blur filter
        facecurate faces runs/wild --set min_face=40 --set min_sharpness=20
        ```
        """
        from pipeline.core.run import print_summary, run_stage_command

        settings = apply_overrides({"size": size, "multi_face": multi_face, "split_by": split_by},
                                   list(overrides or []))
        result = run_stage_command(out, "faces", settings, runner, console)
        print_summary([result], f"faces -> {out}", out_console, console)
        report = out / "faces" / "report.json"
        if report.exists():
            r = json.loads(report.read_text())
            out_console.print(f"{r['photos']:,} photos: {r['faces_kept']:,} faces kept, {r['identities']:,} identities; "
                              + ", ".join(f"{k} {v:,}" for k, v in r["by_status"].items() if k != "ok"))
            out_console.print(f"see {out}/faces/report.html; next: facecurate caption {out} (it reads the aligned crops)")

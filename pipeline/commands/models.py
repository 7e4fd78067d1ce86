"""`facecurate models [MANIFEST]`: the models a run needs, where each comes from, and which are here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out_console = Console()


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(
        manifest: Annotated[Path | None, typer.Argument(
            help="A manifest; without one, every stage's default models.", show_default=False)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    ) -> None:
        """List every model a manifest needs: its setting, source and licence, whether it is present
        locally (a path that exists, or a hub id in the Hugging Face cache), and the command that fetches
        it. Nothing is downloaded: run the commands on a machine with internet, then copy
        `~/.cache/huggingface` (or the files) here, or point the settings at local folders.

        **Examples**

        ```
        facecurate models manifests/demo.yaml
        facecurate models              # the default models of every stage
        facecurate models my.yaml --json
        ```
        """
        from pipeline.core.manifest import load_manifest
        from pipeline.ops.models import needed_models

        stages = load_manifest(manifest).stages if manifest is not None else None
        rows = needed_models(stages)
        if as_json:
            out_console.print_json(json.dumps([r.__dict__ for r in rows]))
            return
        table = Table(title="Models " + (f"of {manifest}" if manifest else "every stage uses by default"))
        for col in ("setting", "model", "what", "licence", "here", "get it"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r.setting, r.model, r.what, r.licence, "[green]yes[/green]" if r.present else "[red]no[/red]",
                          "" if r.present else r.how)
        out_console.print(table)
        missing = [r for r in rows if not r.present]
        if missing:
            console.print(f"{len(rows) - len(missing)} of {len(rows)} models are here. Fetch the others with the "
                          "commands above on a machine with internet (the Hugging Face cache, "
                          "~/.cache/huggingface, can be copied over as is), or set each setting to a local path.")
        else:
            console.print(f"All {len(rows)} models are here. Next: facecurate run {manifest or 'MANIFEST'}")

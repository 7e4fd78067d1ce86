"""`facecurate publish OUT DIR`: the shards, card, features and index of a run, ready to upload to the Hub."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)
out_console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def publish(
        out: Annotated[Path, typer.Argument(help="An output folder whose shard stage finished.", show_default=False)],
        dest: Annotated[Path, typer.Argument(metavar="DIR", help="The folder to write: absent, empty, or an "
                                                                 "earlier publish of this run.", show_default=False)],
    ) -> None:
        """Write DIR with exactly what a Hugging Face dataset repository needs, then print how to upload it.

        DIR gets the shard tars (hard links when DIR is on the run's filesystem, else copies, each checked
        against its sha256 in index.json), README.md (the dataset card: Hub metadata, splits, schema,
        licenses, personal data), features.json and index.json; not the shard ledger, `.assembly.json`,
        `.finalized.json` or the staged samples that OUT/shards also holds. Run it again after the
        shard stage changed the shards: it rewrites only what changed. A DIR holding anything else is
        refused.

        **Examples**

        ```
        facecurate publish runs/faces runs/faces-hub
        hf upload me/faces runs/faces-hub --repo-type dataset
        # after adding images and running `facecurate shard runs/faces` again
        facecurate publish runs/faces runs/faces-hub    # only new or changed shards move
        ```
        """
        from pipeline.commands.shard import splits_table
        from pipeline.ops.publish import publish as publish_run

        t0 = time.monotonic()
        result = publish_run(out.resolve(), dest)
        index = result.index
        out_console.print(splits_table(index, f"published {result.pretty_name} -> {dest}"))
        moved = (f"{result.linked:,} hard-linked and {result.copied:,} copied (each checked against its sha256 "
                 f"in index.json), {result.unchanged:,} unchanged"
                 + (f", {len(result.removed):,} no longer in the index removed" if result.removed else ""))
        out_console.print(f"shards: {moved}; rewrote {', '.join(result.rewritten) or 'nothing else'}",
                          highlight=False)
        console.print(f"[dim]{time.monotonic() - t0:.1f} s[/dim]")
        out_console.print("next: upload it to a dataset repository (after `hf auth login`):")
        where = shlex.quote(str(dest))
        out_console.print(f"  hf upload <user>/{result.repo_name} {where} --repo-type dataset", highlight=False,
                          soft_wrap=True)
        out_console.print(f"  (huggingface_hub < 1.0: huggingface-cli upload <user>/{result.repo_name} {where} "
                          "--repo-type dataset)", highlight=False, soft_wrap=True)

"""`facecurate audit-captions SOURCE`: re-judge a run's final captions or a caption set a user brings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.core.config import ConfigError

console = Console(stderr=True)
out_console = Console()


def register(app: typer.Typer) -> None:
    @app.command("audit-captions")
    def audit_captions(
        source: Annotated[Path, typer.Argument(help="A run folder (with captions/final) or a folder of <id>.txt "
                                                    "caption files.", show_default=False)],
        masks: Annotated[Path | None, typer.Option(help="Folder of <id>.png label maps (CelebAMask-HQ ids), "
                                                        "taken as ground truth; caption folders only.")] = None,
        images: Annotated[Path | None, typer.Option(help="Folder of <id>.jpg/.png for thumbnails; caption "
                                                         "folders only.")] = None,
        dest: Annotated[Path | None, typer.Option("--out", help="Where to write the audit (default: "
                                                                "RUN/captions/audit, or ./caption-audit).")] = None,
        thumbs: Annotated[int, typer.Option(help="Images to draw thumbnails for.")] = 300,
    ) -> None:
        """Judge every caption again and write per-caption verdicts and an HTML report.

        A run folder: each final caption against the image's cleaned captions and mask evidence, as the
        refine stage judges candidates (use it after the judge changed). A caption folder (`<id>.txt`,
        one caption per line, as MM-CelebA-HQ ships them): each caption against the image's other
        captions; with `--masks`, against the masks too. Writes `verdicts.parquet` (one row per caption:
        id, index, caption, verdict, detail), `summary.json` and `report.html`.

        **Examples**

        ```
        facecurate audit-captions demo_out
        # MM-CelebA-HQ's captions with CelebAMask-HQ's merged masks
        facecurate audit-captions celeba-caption --masks CelebAMask-HQ-mask --images CelebA-HQ-img --out audit
        ```
        """
        from pipeline.core.ledger import Ledger
        from pipeline.ops.audit_captions import audit_folder, audit_run, write_audit

        source = source.expanduser()
        if not source.is_dir():
            raise ConfigError(f"{source}: not a folder; give a run folder or a folder of <id>.txt caption files")
        is_run = bool(Ledger(source, "captions/final").parts())
        if is_run:
            if masks or images:
                raise ConfigError("--masks and --images are for caption folders; a run uses its own masks and images")
            audit = audit_run(source, thumbs)
            dest = dest or source / "captions" / "audit"
        else:
            if not any(source.rglob("*.txt")):
                raise ConfigError(f"{source}: no captions/final ledger and no .txt files: run `facecurate refine "
                                  f"{source}` first, or point at a folder of <id>.txt files")
            for name, folder in (("--masks", masks), ("--images", images)):
                if folder is not None and not folder.is_dir():
                    raise ConfigError(f"{name} {folder}: not a folder")
            with console.status("judging captions ..."):
                audit = audit_folder(source, masks, images, thumbs)
            dest = dest or Path("caption-audit")
        summary = write_audit(audit, dest, f"Caption audit: {source.name}")
        table = Table(title=f"caption audit: {source}", title_justify="left", header_style="bold")
        table.add_column("verdict")
        table.add_column("captions", justify="right")
        for k, v in summary["verdicts"].items():
            table.add_row(k, f"{v:,} ({100 * v / max(summary['captions'], 1):.1f}%)")
        out_console.print(table)
        out_console.print(f"{summary['images']:,} images, {summary['images_with_problems']:,} with problems, "
                          f"{summary['contradicting_pairs']:,} contradicting caption pairs"
                          + (f", {summary['files_with_errors']:,} files not readable" if summary['files_with_errors']
                             else ""))
        out_console.print(f"wrote {dest}/verdicts.parquet, summary.json, report.html")
        out_console.print(f"next: open {dest}/report.html" + (f"; re-run `facecurate refine {source}` to refine "
                                                               "again with the current judge" if is_run else ""))

"""`facecurate inspect`: look at samples, from the index row through every stage's rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from pipeline.core.config import ConfigError
from pipeline.core.ledger import Ledger
from pipeline.core.registry import REGISTRY
from pipeline.core.stage import INDEX


def _index(out: Path):
    path = out / INDEX
    if not path.exists():
        raise ConfigError(f"{path} is missing: is {out} the output folder of a run?")
    return pq.read_table(path)


def _short(v: object, width: int = 90) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= width else s[: width - 1] + "…"


def show_overview(out: Path, console: Console, limit: int, status: str | None) -> None:
    index = _index(out)
    if status:
        index = index.filter(pc.equal(index["status"], status))
    table = Table(title=f"{out / INDEX}: {index.num_rows:,} row(s)" + (f" with status {status}" if status else ""),
                  title_justify="left", header_style="bold")
    table.add_column("key", no_wrap=True)  # keys are what users copy: never cut them
    for c in ("status", "size", "mode", "split"):
        table.add_column(c, no_wrap=True)
    table.add_column("error", overflow="fold")
    for r in index.slice(0, limit).to_pylist():
        size = f"{r['width']}x{r['height']}" if r.get("width") else "-"
        style = "" if r["status"] == "ok" else "red"
        table.add_row(r["key"], f"[{style}]{r['status']}[/]" if style else r["status"], size,
                      r.get("mode") or "-", r.get("split") or "-", _short(r.get("error"), 60))
    console.print(table)
    if index.num_rows > limit:
        console.print(f"[dim]... {index.num_rows - limit:,} more; use --limit or --status[/dim]")


def show_key(out: Path, key: str, console: Console) -> None:
    index = _index(out)
    rows = index.filter(pc.equal(index["key"], key)).to_pylist()
    if not rows:
        raise ConfigError(f"key {key!r} is not in {out / INDEX}")
    table = Table(title=f"{key}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows[0].items():
        table.add_row(f"index.{k}", _short(v))
    for name, spec in REGISTRY.items():
        if name == "ingest":
            continue
        t = Ledger(out, spec.ledger or name).read()
        if not t.num_rows:
            continue
        for i, r in enumerate(t.filter(pc.equal(t["key"], key)).to_pylist()):
            for k, v in r.items():
                if k not in ("key", "_fp"):
                    table.add_row(f"{name}[{i}].{k}", _short(v))
    console.print(table)

"""Stats: class pixel shares and occurrence per split, EC²Face rare-class weights and groups, a report.

Per key (ledger `stats/`): the primary mask resized (nearest) to `resolution`², so every image counts
the same whatever its size, and its 19 class pixel counts; the key's split, parser agreement and sketch
facts come along. `finalize` streams the ledger part by part into mergeable `Counts` (sums only, so
partial results from any number of parts or workers add up), then writes `stats/attributes.json`,
log-scale plots and a self-contained `stats/report.html` (`pipeline.reports.stats_report`).

The counts, EC²Face Eq. 10 weights, HFA/NFA/RFA groups and the document itself are
`pipeline.data.attributes` (the report renders the same document); this stage decides what is counted
and with which thresholds. The document does not depend on the order the ledger rows come in (parts
land in the order workers finish): splits and parsers are sorted, and sketch ink is summed exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core.config import StageConfig, volatile
from pipeline.core.ledger import OK, Ledger, atomic_write_bytes
from pipeline.core.stage import Stage, StageContext, default_inputs
from pipeline.data.attributes import Counts, attributes
from pipeline.data.labels import class_pixel_counts


@dataclass(frozen=True)
class StatsConfig(StageConfig):
    """Settings of the stats stage.

    Args:
        resolution: masks are resized (nearest) to this square before counting, so images of any size
            weigh the same.
        min_share: a class occurs in an image when it covers at least this share of it (ignores specks).
        reference_split: split whose counts define EC²Face weights and groups (all data if it is empty).
        hfa_share: HFA needs a mean pixel share at least this...
        hfa_occurrence: ...and an occurrence at least this.
        rfa_share: RFA needs a mean pixel share below this...
        rfa_occurrence: ...and an occurrence below this.
        low_agreement: keys whose parser agreement (mIoU) is below this are counted and listed.
        samples: image / mask / sketch triplets shown in the report.
    """

    resolution: int = 512
    min_share: float = 1e-4
    reference_split: str = volatile("train")
    hfa_share: float = volatile(0.03)
    hfa_occurrence: float = volatile(0.9)
    rfa_share: float = volatile(0.001)
    rfa_occurrence: float = volatile(0.3)
    low_agreement: float = volatile(0.5)
    samples: int = volatile(12)
    batch_size: int = volatile(64)

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16, got {self.resolution}")
        for name in ("min_share", "hfa_share", "hfa_occurrence", "rfa_share", "rfa_occurrence", "low_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def rule(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("hfa_share", "hfa_occurrence", "rfa_share", "rfa_occurrence")}


class StatsStage(Stage):
    """Counts classes in each key's primary mask; `finalize` merges, writes attributes.json and the report."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("split", pa.string()), ("parser", pa.string()), ("class_pixels", pa.list_(pa.int64())),
        ("agreement", pa.float64()), ("sketch_ink", pa.float64()), ("flags", pa.list_(pa.string())),
    ])
    version: ClassVar[str] = "1"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        res = self.cfg.resolution
        rows = []
        for i, key in enumerate(batch["key"]):
            row: dict[str, Any] = {"key": str(key), "status": OK, "error": "", "split": str(batch["split"][i]),
                                   "parser": batch["parser"][i], "agreement": _num(batch["agreement"][i]),
                                   "flags": _strings(batch["sketch_flags"][i])}
            rows.append(row)
            mask = self.ctx.out / str(batch["mask"][i])
            try:
                with Image.open(mask) as m:
                    label = np.asarray(m.convert("L").resize((res, res), Image.Resampling.NEAREST))
                row["class_pixels"] = class_pixel_counts(label).tolist()
            except FileNotFoundError:
                row.update(status="mask_missing", error=f"{mask} is missing (re-run parse)")
                continue
            except Exception as e:  # noqa: BLE001 - a broken mask is a row, not a crash
                row.update(status="decode_error", error=f"{mask}: {type(e).__name__}: {e}")
                continue
            sketch = batch["sketch"][i]
            if sketch and (self.ctx.out / str(sketch)).exists():
                with Image.open(self.ctx.out / str(sketch)) as s:
                    row["sketch_ink"] = float((np.asarray(s.convert("L")) < 128).mean())
        return {c: [r.get(c) for r in rows] for c in ["key", "status", "error", *self.schema.names]}

    @classmethod
    def inputs(cls, cfg: StatsConfig, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        """Index rows with an ok parse, joined with the primary parse row and the sketch row (if any)."""
        table = default_inputs(ctx, requires).select(["key", "split", "_src"])
        parse = ctx.ledger("parse").read(["key", "status", "parser", "primary", "agreement", "mask"])
        primary = pc.cast(parse["primary"], pa.bool_()) if parse.num_rows else pa.array([], pa.bool_())
        parse = parse.filter(pc.and_(pc.equal(parse["status"], OK), primary))
        table = _attach(table, parse, {"parser": "parser", "agreement": "agreement", "mask": "mask"})
        table = table.filter(pc.is_valid(table["mask"]))
        sketches = ctx.ledger("sketch")
        s = sketches.read(["key", "status", "sketch", "flags", "_fp"]) if sketches.parts() else None
        if s is not None:
            s = s.filter(pc.equal(s["status"], OK))
        table = _attach(table, s, {"sketch": "sketch", "flags": "sketch_flags", "_fp": "_sfp"},
                        {"sketch": pa.string(), "flags": pa.list_(pa.string()), "_fp": pa.string()})
        # A new or re-made sketch changes the key's input, so its stats row is redone.
        src = pc.binary_join_element_wise(table["_src"], pc.fill_null(table["_sfp"], "-"), "|")
        table = table.set_column(table.schema.get_field_index("_src"), "_src", src).drop_columns(["_sfp"])
        return table.sort_by("key")

    @classmethod
    def finalize(cls, cfg: StatsConfig, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        from pipeline.reports.stats_report import write_report

        keep = None if inputs is None else inputs["key"]
        per_split: dict[str, Counts] = {}
        low: list[tuple[float, str]] = []
        for part in iter_resolved(ctx.ledger("stats"), ["key", "status", "split", "parser", "class_pixels",
                                                         "agreement", "sketch_ink", "flags"], keep):
            split_counts, part_low = aggregate(part, cfg)
            for split, c in split_counts.items():
                per_split[split] = per_split.get(split, Counts()).merge(c)
            low = sorted(low + part_low)[:1000]
        doc = attributes(dict(sorted(per_split.items())), low, resolution=cfg.resolution,
                         min_share=cfg.min_share, reference_split=cfg.reference_split, rule=cfg.rule(),
                         low_threshold=cfg.low_agreement)
        doc["parsers"] = dict(sorted(doc["parsers"].items()))
        atomic_write_bytes(ctx.out / "stats" / "attributes.json", json.dumps(doc, indent=1).encode())
        write_report(ctx, doc, cfg.samples)


def aggregate(table: pa.Table, cfg: StatsConfig) -> tuple[dict[str, Counts], list[tuple[float, str]]]:
    """Partial sums of one part (one `Counts` per split) and its low-agreement keys."""
    out: dict[str, Counts] = {}
    low = []
    for r in table.filter(pc.equal(table["status"], OK)).to_pylist():
        c = out.setdefault(r["split"], Counts())
        c.add(np.asarray(r["class_pixels"], np.int64), cfg.min_share, r["parser"], r["agreement"],
              _exact(r["sketch_ink"]), r["flags"] or [])
        if r["agreement"] is not None and r["agreement"] < cfg.low_agreement:
            low.append((r["agreement"], r["key"]))
    return out, low


def iter_resolved(ledger: Ledger, columns: list[str], keep: pa.ChunkedArray | None,
                  rows: int = 65536) -> Iterator[pa.Table]:
    """The ledger's resolved rows in chunks: streamed from the part when it is compacted to one."""
    parts = ledger.parts()
    if len(parts) == 1:
        batches = (pa.Table.from_batches([b]) for b in pq.ParquetFile(parts[0][1]).iter_batches(rows, columns=columns))
    else:
        table = ledger.read(columns)
        batches = (table.slice(i, rows) for i in range(0, table.num_rows, rows))
    for t in batches:
        yield t if keep is None else t.filter(pc.is_in(t["key"], value_set=keep))


def _attach(table: pa.Table, other: pa.Table | None, columns: dict[str, str],
            types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Left-join `other`'s columns onto `table` by key (one row per key in `other`; list columns allowed)."""
    if other is None:
        for src, dst in columns.items():
            table = table.append_column(dst, pa.nulls(table.num_rows, (types or {})[src]))
        return table
    idx = pc.index_in(table["key"], value_set=other["key"])
    for src, dst in columns.items():
        table = table.append_column(dst, other[src].take(idx))
    return table


def _exact(ink: float | None) -> float | None:
    """Ink on a 2^-20 grid: float sums of such values are exact (up to 2^33 of them), so the mean does not
    change with the order the rows are added in."""
    return None if ink is None else round(ink * 2**20) / 2**20


def _strings(v: Any) -> list[str]:
    return [] if v is None else [str(x) for x in v]


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)



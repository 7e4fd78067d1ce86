"""Shard: WebDataset shards per split, with an index of checksums and a dataset card.

Two phases, so that a run killed at any moment resumes without a duplicate or a missing sample:

1. `__call__` (parallel, on the runner's workers) prepares each sample: the aligned views at the shard
   resolution (`pipeline.data.views`: the same pixels the latents encoded), `jpg`, `mask.png`, `sketch.png`,
   `captions.json`, each VAE's latents copied byte for byte from the latents files, and `json`
   metadata (`sample_json`: the same keys and types in every sample, so `datasets` can type them).
   It writes the sample's tar members as one fragment file, `shards/.samples/<key>.<fp>.tar`,
   atomically, and returns a ledger row (size, sha256, fields, flags). A sample whose mask, sketch,
   captions or latents are missing is written without that field and flagged `no_<field>`, or left
   out with status `missing_<field>` when the field is in `require`. No absolute path enters a sample
   (the shards are published as they are): a local VAE is named by its folder (`public_id`), a crop by
   its run-relative path or its file name.
2. `finalize` (driver) plans the shards deterministically from the ledger alone (per split, samples in
   a seeded hash order, rolled by `max_samples` and `max_bytes`), then writes each shard as its
   fragments back to back under a temporary name, fsyncs and renames it. A shard whose plan digest
   and file are unchanged since the last run is skipped (`.assembly.json` records both), shards no
   plan names are deleted, and `index.json` (every shard's samples, bytes and sha256) is written last:
   it is the completion marker, removed while shards are being rewritten.

The order is a hash of (seed, key) rather than the key itself, so every shard mixes sources; the same
inputs and settings give byte-identical shards. Fragments are kept (`keep_staged`) so adding images
re-prepares only the new ones; without them a changed plan re-prepares missing fragments on the driver.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.config import ConfigError, StageConfig, volatile
from pipeline.core.ledger import OK, atomic_write_bytes, sha256_file
from pipeline.core.stage import Stage, StageContext, default_inputs
from pipeline.data.arrays import read_npz_members
from pipeline.data.labels import class_pixel_counts
from pipeline.data.shard_assembly import assemble, build_index, plan_shards, vae_info
from pipeline.data.views import (
    CaptionRows,
    ViewError,
    by_key,
    dumps,
    load_views,
    rows_of,
    truthy,
    upstream,
    view_columns,
)
from pipeline.data.wds import sample_fragment
from pipeline.reports.card_meta import is_local, public_id

UPSTREAM = ("refine", "parse", "sketch", "latents")
LATENT_FIELD = {"image": "latent", "mask": "mask_latent", "sketch": "sketch_latent"}


@dataclass(frozen=True)
class ShardConfig(StageConfig):
    """Settings of the shard stage.

    Args:
        resolution: image side in the shards; empty takes the latents' resolution (else 256).
        mask_source: `auto` (ground truth where ingest has one, else the parse mask), `gt` or `parse`.
        require: fields a sample must have (mask, sketch, captions, latents); samples without one are
            left out with status `missing_<field>`. Fields not listed are optional: absent and flagged.
        vaes: VAE short names to include (empty: every VAE the latents stage ran).
        jpeg_quality: quality of the `jpg` field (4:4:4 chroma, so colour edges stay sharp).
        max_samples: a shard holds at most this many samples...
        max_bytes: ...and at most this many bytes (a single larger sample gets a shard of its own).
        order: `hash` (seeded shuffle, every shard mixes sources) or `key` (sorted keys).
        order_seed: the salt of the hash order.
        keep_staged: keep the per-sample fragments after assembly (disk: about the size of the shards),
            so a later run with new images only prepares those.
        io_threads: threads preparing samples (image decoding and encoding release the GIL).
        allow_images_only: shard even when none of refine, parse, sketch and latents has run (samples then
            hold the image and its json alone); otherwise that stops with the commands that make them.
    """

    resolution: int | None = None
    mask_source: Literal["auto", "gt", "parse"] = "auto"
    require: tuple[Literal["mask", "sketch", "captions", "latents"], ...] = ()
    vaes: tuple[str, ...] = ()
    jpeg_quality: int = 95
    # Assembly settings never change a prepared sample: volatile, so changing them only re-plans shards.
    max_samples: int = volatile(5000)
    max_bytes: int = volatile(1_000_000_000)
    order: Literal["hash", "key"] = volatile("hash")
    order_seed: str = volatile("facecurate-v1")
    keep_staged: bool = volatile(True)
    io_threads: int = volatile(4)
    batch_size: int = volatile(32)
    allow_images_only: bool = volatile(False)

    def __post_init__(self) -> None:
        if self.resolution is not None and (self.resolution < 16 or self.resolution % 8):
            raise ValueError(f"resolution: {self.resolution} must be a multiple of 8 and at least 16")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality: {self.jpeg_quality} must be in 1..100")
        if self.max_samples < 1 or self.max_bytes < 1 or self.io_threads < 1:
            raise ValueError("max_samples, max_bytes and io_threads must be positive")


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _crop(path: Any) -> str:
    """The aligned crop as the sample records it: run-relative (`aligned/<key>.png`) as the faces stage
    writes it, or the file name of an already aligned source image (never a path of this machine)."""
    text = _text(path)
    absolute = text.startswith("~") or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()
    return text.replace("\\", "/").rsplit("/", 1)[-1] if absolute else text


def public_vae(info: dict[str, Any]) -> dict[str, Any]:
    """A VAE's record for `index.json`: a local folder as its name, with `local` saying so."""
    return {"id": public_id(info.get("id")), "local": is_local(info.get("id")),
            **{k: v for k, v in info.items() if k != "id"}}


def sample_json(r: dict[str, Any], vae_meta: dict[str, Any], pixels: np.ndarray, flags: list[str],
                mask_source: str | None) -> dict[str, Any]:
    """The sample's `json`: the same keys with the same types in every sample, "" for a string nobody
    recorded, never null. `datasets` types each key from the first samples it reads and then fails on a
    sample whose value has another type ("Couldn't cast array of type string to null")."""
    aligned = bool(r.get("photo_key"))  # the faces stage ran: the image is an FFHQ-aligned crop of this photo
    return {"key": r["key"], "vae": vae_meta, "resolution": int(r["_resolution"]),
            "class_pixels": [int(x) for x in pixels], "flags": list(flags), "license": _text(r["license"]),
            "source_url": _text(r.get("source_url")), "split": _text(r["split"]),
            "source": _text(r["source"]), "mask_source": _text(mask_source),
            "aligned": {"photo_key": _text(r.get("photo_key")), "procedure": "ffhq" if aligned else "",
                        "crop": _crop(r.get("path")) if aligned else ""}}


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


class ShardStage(Stage):
    """Prepares one staged fragment per sample; `finalize` assembles the shards (module docstring)."""

    version: ClassVar[str] = "3"  # 2: the sample json has no nulls and always `aligned`; 3: no absolute paths
    schema: ClassVar[pa.Schema] = pa.schema([
        ("split", pa.string()), ("source", pa.string()), ("license", pa.string()), ("staged", pa.string()),
        ("bytes", pa.int64()), ("sha256", pa.string()), ("fields", pa.list_(pa.string())),
        ("flags", pa.list_(pa.string())), ("class_pixels", pa.list_(pa.int64())), ("captions", pa.int32()),
    ])

    def __init__(self, cfg: ShardConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        self.pool = ThreadPoolExecutor(cfg.io_threads)  # decode, resize, JPEG/PNG encode release the GIL
        self.captions = CaptionRows(ctx.out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = rows_of(batch)
        self.captions.fill(rows)  # this batch's captions, from the ledger parts its inputs name
        out = list(self.pool.map(self.prepare, rows))
        return {n: [o.get(n) for o in out] for n in ["key", "status", "error", *self.schema.names]}

    def prepare(self, r: dict[str, Any]) -> dict[str, Any]:
        row = {"key": r["key"], "status": OK, "error": "", "split": r["split"], "source": r["source"],
               "license": r["license"]}
        up = {"captions": r.get("_captions"), "caption_flags": r.get("_caption_flags") or [],
              "sketch_flags": r.get("_sketch_flags") or [], "expect": json.loads(r["_expect"]),
              "latents": {lr["vae"]: lr for lr in r.get("_latents") or []}}
        try:
            v = load_views(self.ctx.out, r, int(r["_resolution"]))
        except ViewError as e:
            return {**row, "status": e.code, "error": str(e)}
        flags = [f"ingest:{f}" for f in r.get("flags") or []] + v.flags
        flags += [f"sketch:{f}" for f in up["sketch_flags"]] + [f"captions:{f}" for f in up["caption_flags"]]
        buf = io.BytesIO()
        Image.fromarray(v.image, "RGB").save(buf, "JPEG", quality=self.cfg.jpeg_quality, subsampling=0)
        fields: list[tuple[str, bytes]] = [("jpg", buf.getvalue())]
        missing = []
        if v.mask is not None:
            fields.append(("mask.png", _png(v.mask)))
        else:
            missing.append("mask")
        if v.sketch is not None:
            fields.append(("sketch.png", _png(v.sketch)))
        else:
            missing.append("sketch")
        captions = up["captions"]
        if captions:
            fields.append(("captions.json", dumps([str(c) for c in captions]).encode()))
        else:
            missing.append("captions")
        vae_meta, latent_fields = self._latents(up["latents"], v, flags)
        fields += latent_fields
        if not vae_meta:
            missing.append("latents")
        required = [m for m in missing if m in self.cfg.require]
        if required:
            return {**row, "status": f"missing_{required[0]}",
                    "error": f"no {', '.join(required)} for this sample, and require lists "
                             f"{'it' if len(required) == 1 else 'them'}"}
        flags += [f"no_{m}" for m in missing if up["expect"].get(m)]
        pixels = class_pixel_counts(v.mask) if v.mask is not None else np.zeros(19, np.int64)
        fields.append(("json", dumps(sample_json(r, vae_meta, pixels, flags, v.mask_source)).encode()))
        data = sample_fragment(r["key"], fields)
        rel = f"shards/.samples/{r['key']}.{r['_fp'][:12]}.tar"
        atomic_write_bytes(self.ctx.out / rel, data)
        return {**row, "staged": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "fields": [f for f, _ in fields], "flags": flags, "class_pixels": [int(x) for x in pixels],
                "captions": len(captions or [])}

    def _latents(self, rows: dict[str, dict], views: Any, flags: list[str]) -> tuple[dict, list]:
        """Per VAE: metadata and the exact `.npy` members, after checking they match these views."""
        meta, fields = {}, []
        for vae, lr in sorted(rows.items()):
            if self.cfg.vaes and vae not in self.cfg.vaes:
                continue
            if lr["inputs"] != views.digest:  # encoded from another image, mask or sketch, or resolution
                flags.append(f"stale_latents:{vae}")
                continue
            try:
                path = self.ctx.out / lr["file"]
                if hashlib.sha256(path.read_bytes()).hexdigest() != lr["sha256"]:
                    raise ValueError("sha256 differs from the latents ledger")
                members = read_npz_members(path)
            except Exception as e:  # noqa: BLE001 - a lost latents file costs the field, not the sample
                flags.append(f"latents_unreadable:{vae}:{type(e).__name__}"[:80])
                continue
            fields += [(f"{vae}.{LATENT_FIELD[k]}.npy", members[k]) for k in LATENT_FIELD if k in members]
            meta[vae] = {"id": public_id(lr["model"]), "subfolder": lr["subfolder"], "revision": lr["revision"],
                         "scaling_factor": lr["scaling_factor"],
                         "shift_factor": lr["shift_factor"], "channels": lr["channels"]}
        return meta, fields

    @classmethod
    def inputs(cls, cfg: ShardConfig, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        """Index rows with the upstream outputs each sample needs joined on as Arrow columns (captions,
        flags, latents rows); `prepare` reads them per batch. No Python object per key is built here."""
        table = default_inputs(ctx, requires)
        up = upstream(ctx.out, UPSTREAM)
        resolution = _resolution(cfg, up)
        for name, values in view_columns(table, up, cfg.mask_source).items():
            table = table.append_column(name, values)
        if not ctx.read_only:  # `status` computes inputs too: it neither stops nor prints
            _guide(cfg, ctx, up, table)
        keys, n = table["key"], table.num_rows
        # A missing field is flagged only where its stage ran: no `no_sketch` on every sample of a run
        # that never made sketches (the dataset card says which fields exist at all).
        expect = {"mask": up.masks is not None or bool(pc.any(truthy(table["_mask"])).as_py()),
                  "sketch": up.sketches is not None, "captions": up.captions is not None,
                  "latents": up.latents is not None}
        empty = pa.list_(pa.string())
        table = table.append_column("_captions_part", pc.fill_null(  # -1: no captions (a batch has no nulls)
            by_key(up.captions, keys, "_part") if up.captions else pa.nulls(n, pa.int32()), -1))
        table = table.append_column("_sketch_flags", by_key(up.sketches, keys, "flags") if up.sketches
                                    else pa.nulls(n, empty))
        if up.latents is not None:
            table = table.append_column("_latents", by_key(up.latents, keys, "latents"))
        table = table.append_column("_expect", pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([dumps(expect)])))
        table = table.append_column("_resolution", pa.array(np.full(n, resolution, np.int32)))
        text = [pc.fill_null(pc.cast(table[c], pa.string()), "None")
                for c in ("split", "license", "source_url", "_mask")]
        src = pc.binary_join_element_wise(table["_src"], up.src(keys, UPSTREAM), pa.scalar(str(resolution)),
                                          *text, "|")
        return table.set_column(table.schema.get_field_index("_src"), "_src", src)

    @classmethod
    def finalize(cls, cfg: ShardConfig, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        """Assemble the shards from the current ok rows, then index.json (last: the completion marker)."""
        from pipeline.reports.card import write_card
        from pipeline.reports.index_page import write_index

        assert inputs is not None, "the runner always passes the inputs"
        # the rows of the current inputs (key and fingerprint), as Arrow columns: no dict per sample
        rows = ctx.ledger("shard").read()
        rows = rows.filter(pc.fill_null(pc.equal(rows["_fp"], by_key(inputs, rows["key"], "_fp")), False))
        ok = rows.filter(pc.equal(rows["status"], OK))
        written = assemble(ctx.out, plan_shards(ok, cfg), lambda lost: _restage(cls(cfg, ctx), inputs, lost))
        resolution = int(inputs["_resolution"][0].as_py()) if inputs.num_rows else cfg.resolution
        vaes = {v: public_vae(m) for v, m in vae_info(ctx.out).items()}  # no local path in index.json
        index = build_index(written, rows, resolution, vaes)
        write_card(ctx.out, index, rows)
        # the card and the features are checked like the shards (verify re-hashes them)
        index["files"] = {n: sha256_file(ctx.out / "shards" / n) for n in ("README.md", "features.json")}
        atomic_write_bytes(ctx.out / "shards" / "index.json", (json.dumps(index, indent=1) + "\n").encode())
        write_index(ctx.out)  # the run's front page, with the shards' line from index.json
        if not cfg.keep_staged:
            for lo in range(0, ok.num_rows, 1 << 16):
                for rel in ok["staged"].slice(lo, 1 << 16).to_pylist():
                    (ctx.out / rel).unlink(missing_ok=True)


# The stages that make each field a sample pairs with its image, in the order they run.
MADE_BY = {"captions": ("caption", "clean", "refine"), "masks": ("parse",), "sketches": ("sketch",),
           "latents": ("latents",)}


def _missing(ctx: StageContext, ran: set[str], table: pa.Table) -> dict[str, str]:
    """Field -> the commands that make it, for each field no stage made in this run folder (masks count as
    made where ingest has ground truth for every sample)."""
    missing = {}
    for field, stages in MADE_BY.items():
        if stages[-1] in ran:
            continue
        if field == "masks" and (gt := int(pc.sum(pc.cast(truthy(table["_mask"]), pa.int64())).as_py() or 0)):
            if gt == table.num_rows:
                continue
            field = f"masks (ground truth for only {gt:,} of {table.num_rows:,})"
        todo = [s for s in stages if s == stages[-1] or not ctx.ledger(s).parts()]  # caption may have run
        missing[field] = " && ".join(f"facecurate {s} {ctx.out}" for s in todo)
    return missing


def _guide(cfg: ShardConfig, ctx: StageContext, up: Any, table: pa.Table) -> None:
    """Stop when nothing upstream ran (shards of bare images are rarely what was meant), unless
    `allow_images_only`; when only some of it ran, say in one line what the shards lack and how to make it."""
    ran = {s for s in UPSTREAM if up.fps[s].num_rows}
    missing = _missing(ctx, ran, table)
    if not missing:
        return
    out, fields = ctx.out, [f.split(" (")[0] for f in missing]
    if not ran and not cfg.allow_images_only:
        raise ConfigError(
            f"shard: refine, parse, sketch and latents have not run on {out}, so the shards would hold no "
            f"{', '.join(fields[:-1])}{' or ' if len(fields) > 1 else ''}{fields[-1]}: run them with "
            "`facecurate run MANIFEST` (manifests/demo.yaml names every stage) or one by one: "
            f"`{' && '.join(missing.values())}`, then "
            f"`facecurate shard {out}` again; or shard the images alone: `facecurate shard {out} --set "
            "allow_images_only=true` (stages.shard.allow_images_only)")
    from rich.console import Console

    Console(stderr=True).print(
        "note: shard: " + "; ".join(f"no {f}: run `{cmd}`" for f, cmd in missing.items())
        + f"; then `facecurate shard {out}` again", highlight=False, soft_wrap=True)


def next_step(out: Path) -> str:
    """The line a shard summary ends with: what to run now that `out/shards` is written."""
    index = json.loads((out / "shards" / "index.json").read_text())
    if not index.get("samples"):
        return (f"next: no sample made it into the shards (see `left out` above and "
                f"{out / 'shards'}/README.md); `facecurate status {out}` says what failed")
    train = (f"`facecurate train manifests/train/tiny.yaml --set data.shards={out / 'shards'}`"
             if index.get("vaes") else
             f"to train, first `facecurate latents {out}`, then `facecurate shard {out}` again")
    return f"next: `facecurate verify {out}`, then `facecurate publish {out} DIR` to share it, or {train}"


def _restage(stage: ShardStage, inputs: pa.Table, keys: list[str]) -> None:
    """Prepare again the fragments assembly needs but cannot find (`keep_staged: false`, or deleted)."""
    table = inputs.filter(pc.is_in(inputs["key"], value_set=pa.array(sorted(keys), pa.string())))
    for i in range(0, table.num_rows, stage.cfg.batch_size):
        part = table.slice(i, stage.cfg.batch_size)
        for status in stage({n: part[n].to_numpy(zero_copy_only=False) for n in part.column_names})["status"]:
            if status != OK:  # only when an input was edited in place, behind the ledgers' backs
                raise ConfigError(f"a deleted staged sample could not be made again ({status}): its inputs "
                                  f"changed since; delete {stage.ctx.out / 'shards'}/part-*.parquet to "
                                  "prepare every sample again")


def _resolution(cfg: ShardConfig, up: Any) -> int:
    rows = up.latent_rows
    found = Counter(rows["resolution"].to_pylist()) if rows is not None and rows.num_rows else Counter()
    if cfg.resolution is None:
        return found.most_common(1)[0][0] if found else 256
    if found and cfg.resolution not in found:
        raise ConfigError(f"stages.shard.resolution: {cfg.resolution}, but the latents were encoded at "
                          f"{sorted(found)}; set both to the same value (or leave shard's empty)")
    return cfg.resolution

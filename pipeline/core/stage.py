"""The stage contract every pipeline stage follows.

A stage is a callable class: `__init__(cfg, ctx)` loads models once, `__call__(batch)` takes a column
batch (`dict[str, np.ndarray]`, Ray Data's numpy batch format) and returns a column batch
(`dict[str, list | np.ndarray]`) whose rows each carry `key`, `status` (`ok` or a reason code) and
`error` (readable text, empty when ok). Several output rows per key are allowed (one per prompt, say);
every input key must come back. The runner adds `_fp` and writes the rows through the stage's
ledger; a stage never imports ray and never writes ledger rows itself (it may write files such as
`masks/<key>.png`, atomically).

Class-level hooks, all optional:
- `schema`: the stage's own output columns (besides key/status/error), so every part has one schema.
- `version`: bump when a code change alters the output; part of the fingerprint.
- `inputs(cfg, ctx)`: the rows to process, with a `_src` column that identifies each row's input.
  The default (`default_inputs`) is the ok rows of `index.parquet` that every required stage has
  marked ok, with `_src` built from the image hash and the upstream fingerprints.
- `finalize(cfg, ctx, inputs)`: runs on the driver after every input row is done (write an index,
  merge statistics); `inputs` is the current input table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.config import fingerprint as config_fingerprint
from pipeline.core.ledger import OK, Ledger
from pipeline.core.registry import REGISTRY

INDEX = "index.parquet"
INDEX_SHA = "ingest/index.sha256"  # its sha256, sha256sum format


@dataclass(frozen=True)
class StageContext:
    """What a stage knows of its run.

    Args:
        out: the run's output folder.
        on_corrupt: what reading a corrupt ledger part does (`quarantine` in a run, `skip` in the
            read-only `status`; see ledger.py).
        read_only: set by `status`: computing inputs must write nothing (ingest's scan then keeps
            `ingest/ignored.tsv` as the last run wrote it).
    """

    out: Path
    on_corrupt: str = "quarantine"
    read_only: bool = False

    def ledger(self, stage: str) -> Ledger:
        spec = REGISTRY[stage]
        return Ledger(self.out, spec.ledger or spec.name, self.on_corrupt)

    def index(self, columns: list[str] | None = None, ok_only: bool = True, faces: bool = True) -> pa.Table:
        """index.parquet's rows (ok ones by default), as the stages after `faces` see them once it ran:
        one row per kept face, its aligned crop as `path` and its sha256 (`faces=False`: the photos)."""
        path = self.out / INDEX
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the ingest stage first")
        face_rows = Ledger(self.out, "faces", self.on_corrupt)
        if faces and face_rows.parts():
            t = pq.read_table(path)
            t = t.filter(pc.equal(t["status"], OK)) if ok_only else t
            t = effective_index(t, face_rows.read(["key", "status", "face_key", "aligned", "aligned_sha256", "size",
                                                   "split"]))
            return t if columns is None else t.select(columns)
        t = pq.read_table(path, columns=columns if columns is None or "status" in columns
                          else [*columns, "status"])
        if ok_only:
            t = t.filter(pc.equal(t["status"], OK))
        return t if columns is None or "status" in columns else t.drop_columns(["status"])


class Stage:
    """Base class for stages; subclasses set `schema` and implement `__call__`.

    Args:
        cfg: the stage's frozen config dataclass.
        ctx: the run context (output folder).
    """

    schema: ClassVar[pa.Schema] = pa.schema([])
    version: ClassVar[str] = "1"

    def __init__(self, cfg: Any, ctx: StageContext):
        self.cfg = cfg
        self.ctx = ctx

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def fingerprint(cls, cfg: Any) -> str:
        return f"{cls.__name__}:{cls.version}:{config_fingerprint(cfg)}"

    @classmethod
    def inputs(cls, cfg: Any, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        return default_inputs(ctx, requires)

    @classmethod
    def finalize(cls, cfg: Any, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        return None


def default_inputs(ctx: StageContext, requires: tuple[str, ...]) -> pa.Table:
    """Ok index rows whose key has at least one ok row in every required stage (other than ingest).

    `_src` joins the image's sha256 with each upstream stage's fingerprint for the key, so a
    changed image or a re-made upstream output makes this stage's row pending again.
    """
    index = ctx.index()
    src = pc.fill_null(pc.cast(index["sha256"], pa.string()), "None")
    keep = pa.array(np.ones(index.num_rows, bool))
    for name in requires:
        if name == "ingest":
            continue
        done = ctx.ledger(name).lookup(index["key"])
        keep = pc.and_(keep, pc.fill_null(pc.greater(done["n_ok"], 0), False))  # one ok row lets a key on
        src = pc.binary_join_element_wise(src, pc.fill_null(done["_fp"], ""), "|")
    index = index.append_column("_src", src)
    return index.filter(keep)


def row_fingerprints(stage_fp: str, src: list[str]) -> list[str]:
    prefix = stage_fp.encode()
    return [hashlib.sha1(prefix + b"|" + s.encode()).hexdigest()[:20] for s in src]


def error_row(key: str, status: str, error: str) -> dict[str, str]:
    return {"key": key, "status": status, "error": error}


def effective_index(index: pa.Table, faces: pa.Table) -> pa.Table:
    """The index once `faces` ran: one row per kept face (status ok), its aligned crop as `path` (with
    that file's sha256 and size), the split faces chose, `photo_key` naming the photo it came from.
    Photos faces dropped (no face, too small, near-duplicate, ...) are not in it. Arrow lookups and
    takes only (every stage's inputs and `status` read it): no Python object per photo or face."""
    def given(a):  # a non-empty string (or a non-null value)
        return pc.fill_null(pc.not_equal(a, "") if pa.types.is_string(a.type) else pc.is_valid(a), False)

    faces = faces.filter(pc.equal(faces["status"], OK))
    pos = pc.index_in(faces["key"], value_set=index["key"])
    faces = faces.filter(pc.and_(pc.is_valid(pos), given(faces["aligned"])))
    out = index.take(pc.index_in(faces["key"], value_set=index["key"]))

    def put(name: str, values, where=None) -> None:
        nonlocal out
        if name not in out.column_names:
            return
        col = out[name]
        values = pc.cast(values, col.type)
        out = out.set_column(out.schema.get_field_index(name), out.schema.field(name),
                             values if where is None else pc.if_else(where, values, col))

    put("key", faces["face_key"])
    put("path", faces["aligned"])
    crop = given(faces["aligned_sha256"])
    put("sha256", faces["aligned_sha256"], crop)
    put("width", faces["size"], crop)
    put("height", faces["size"], crop)
    put("split", faces["split"], given(faces["split"]))
    out = out.append_column(pa.field("photo_key", pa.string()), pc.cast(faces["key"], pa.string()))
    return out.take(pc.sort_indices(out["key"]))

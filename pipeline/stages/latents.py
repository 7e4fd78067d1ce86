"""Latents: VAE latent means of the image, the colourised mask and the sketch, for one or more VAEs.

Each VAE (diffusers `AutoencoderKL`, a hub id or a local folder) has a short name (`flux`, `sd`) that
becomes the shard field prefix (`flux.latent.npy`). The three inputs are the aligned views of
`pipeline.data.views` at the shard resolution: the photo, the label map colourised with the CelebAMask-HQ
palette, and the sketch as grey repeated to three channels, all mapped to [-1, 1]. We store the latent
distribution's MEAN as float16 (C x R/8 x R/8), unscaled and unshifted, and record the VAE's
`scaling_factor` and `shift_factor`, so a reader can apply either convention (diffusers' `(z - shift) *
scale`, MMFace-DiT's `z * scale`). bf16 on a GPU, fp32 on a CPU (`dtype: auto`); the dtype used is in
every row.

Where the arrays live until the shard stage packs them: one uncompressed `.npz` per (VAE, key),
`latents/<vae>/<key>.<fp>.npz`, with members `image.npy`, `mask.npy`, `sketch.npy`, written atomically.
Why not parquet binary columns in the ledger: the runner compacts a ledger by reading it whole, which
for latents would mean every array of the dataset in memory at once (about 12 GB for 100K faces at
256 px with both VAEs). Why the row fingerprint is in the file name: a file is never overwritten, so a
ledger row always points at exactly the arrays it describes, even after a killed re-run; `finalize`
deletes files no current row points at. Members are the exact `.npy` bytes the shard stores, so the
shard copies them (bit-exact by construction) after checking the recorded sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import ConfigError, StageConfig, model_ref, models_hint, volatile
from pipeline.core.devices import batch_independent
from pipeline.core.ledger import OK, atomic_write_bytes
from pipeline.core.stage import Stage, StageContext, default_inputs
from pipeline.data.arrays import npy_bytes, pack_npz
from pipeline.data.labels import colorize
from pipeline.data.views import ViewError, Views, load_views, rows_of, to_unit, upstream, view_columns

KINDS = ("image", "mask", "sketch")
UPSTREAM = ("parse", "sketch")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class VaeSpec:
    """One VAE.

    Args:
        model: a hub id (`black-forest-labs/FLUX.1-schnell`) or a local folder with config.json + weights.
        subfolder: folder inside it (`vae` for a full pipeline repo).
        revision: hub branch, tag or commit to pin (recorded in every row and the dataset card).
    """

    model: str = model_ref()
    subfolder: str | None = None
    revision: str | None = None


def default_vaes() -> dict[str, VaeSpec]:
    # FLUX.1-schnell is Apache-2.0 and ships the same VAE as FLUX.1-dev; sd-vae-ft-mse has the SD encoder.
    return {"flux": VaeSpec("black-forest-labs/FLUX.1-schnell", "vae"),
            "sd": VaeSpec("stabilityai/sd-vae-ft-mse")}


@dataclass(frozen=True)
class LatentsConfig(StageConfig):
    """Settings of the latents stage.

    Args:
        models: short name -> `VaeSpec`; the name prefixes the shard fields (`flux.latent.npy`).
        resolution: side of the square views encoded (the shard resolution; a multiple of 8).
        mask_source: `auto` (ground truth where ingest has one, else the parse mask), `gt` or `parse`.
        dtype: compute dtype; `auto` is bfloat16 on CUDA and float32 on CPU.
        device: `auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`, ...
        batch_size: samples per call; the VAE sees at most this many images per forward pass.
        io_threads: threads that decode and resize the views (PIL releases the GIL), so a GPU is not
            left waiting on one CPU core.
    """

    models: dict[str, VaeSpec] = field(default_factory=default_vaes)
    resolution: int = 256
    mask_source: Literal["auto", "gt", "parse"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = volatile("auto")
    batch_size: int = volatile(16)
    io_threads: int = volatile(8)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: name at least one VAE, e.g. "
                             "models: {flux: {model: black-forest-labs/FLUX.1-schnell, subfolder: vae}}")
        bad = [n for n in self.models if not NAME_RE.match(n)]
        if bad:
            raise ValueError(f"models: VAE names must be lower-case letters, digits and _ (no dots): {bad}")
        if self.resolution < 16 or self.resolution % 8:
            raise ValueError(f"resolution: {self.resolution} must be a multiple of 8 and at least 16")
        if self.io_threads < 1:
            raise ValueError("io_threads: at least 1")


_WEIGHTS_DIGEST: dict[tuple[str, int, int], str] = {}


def weights_digest(spec: VaeSpec) -> str | None:
    """sha256 of a local VAE's config and weights (None for a hub id): a rebuilt model re-encodes."""
    folder = Path(spec.model) / (spec.subfolder or "")
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.suffix not in (".json", ".safetensors", ".bin"):
            continue
        st = f.stat()
        memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _WEIGHTS_DIGEST:
            _WEIGHTS_DIGEST[memo] = hashlib.sha256(f.read_bytes()).hexdigest()
        h.update(f"{f.name}:{_WEIGHTS_DIGEST[memo]}".encode())
    return h.hexdigest()[:16]


class LatentsStage(Stage):
    """Encodes the aligned views of each sample with every configured VAE (module docstring)."""

    version: ClassVar[str] = "1"
    schema: ClassVar[pa.Schema] = pa.schema([
        ("vae", pa.string()), ("model", pa.string()), ("subfolder", pa.string()), ("revision", pa.string()),
        ("weights", pa.string()), ("dtype", pa.string()), ("resolution", pa.int32()),
        ("channels", pa.int32()),
        ("scaling_factor", pa.float64()), ("shift_factor", pa.float64()), ("shape", pa.list_(pa.int32())),
        ("kinds", pa.list_(pa.string())), ("file", pa.string()), ("sha256", pa.string()),
        ("inputs", pa.string()), ("mask_source", pa.string()), ("flags", pa.list_(pa.string())),
    ])

    def __init__(self, cfg: LatentsConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        import torch
        from diffusers import AutoencoderKL

        self.torch = torch
        self.device = torch.device(cfg.device if cfg.device != "auto" else
                                   "cuda" if torch.cuda.is_available() else "cpu")
        name = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, name)
        low_mem = importlib.util.find_spec("accelerate") is not None  # else diffusers warns on every load
        self.pool = ThreadPoolExecutor(cfg.io_threads)
        self.vaes: dict[str, Any] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        for short, spec in cfg.models.items():
            try:
                vae = AutoencoderKL.from_pretrained(spec.model, subfolder=spec.subfolder, revision=spec.revision,
                                                    torch_dtype=self.dtype, low_cpu_mem_usage=low_mem)
            except (OSError, ValueError) as e:  # not found, offline, not a VAE: say which and why, in one line
                msg = " ".join(str(e).split())[:300]
                raise ConfigError(f"stages.latents.models.{short}: cannot load {spec.model!r}: {msg}"
                                  f"{models_hint(spec.model)}") from None
            self.vaes[short] = vae.to(self.device).eval().requires_grad_(False)
            c = vae.config
            self.meta[short] = {
                "vae": short, "model": spec.model, "subfolder": spec.subfolder, "revision": spec.revision,
                "weights": weights_digest(spec), "dtype": name, "resolution": cfg.resolution,
                "channels": int(c.latent_channels), "scaling_factor": float(c.scaling_factor),
                "shift_factor": None if c.shift_factor is None else float(c.shift_factor)}

    def encode(self, short: str, x: np.ndarray) -> np.ndarray:
        """(N, 3, R, R) float32 in [-1, 1] -> latent means (N, C, R/8, R/8) float16, `batch_size` per pass."""
        out, step = [], max(1, self.cfg.batch_size)
        with self.torch.inference_mode():
            for i in range(0, len(x), step):
                t = self.torch.from_numpy(x[i:i + step]).to(self.device, self.dtype)
                mean = batch_independent(lambda b: self.vaes[short].encode(b).latent_dist.mean, t,
                                         self.cfg.batch_size)
                out.append(mean.float().cpu().numpy().astype(np.float16))
        return np.concatenate(out)

    def _views(self, row: dict[str, Any]) -> Views | ViewError:
        try:
            return load_views(self.ctx.out, row, self.cfg.resolution)
        except ViewError as e:
            return e

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = rows_of(batch)
        cols: dict[str, list] = {n: [] for n in ["key", "status", "error", *self.schema.names]}

        def emit(key: str, status: str, error: str, **values: Any) -> None:
            row = {"key": key, "status": status, "error": error, **values}
            for n, col in cols.items():
                col.append(row.get(n))

        good: list[tuple[dict, Views]] = []
        inputs, where = [], []  # inputs[i] is image `where[i] = (sample, kind)`, as float32 (3, R, R)
        for r, v in zip(rows, self.pool.map(self._views, rows), strict=True):
            if isinstance(v, ViewError):
                for short in self.vaes:
                    emit(r["key"], v.code, str(v), vae=short)
                continue
            good.append((r, v))
            mask = None if v.mask is None else colorize(v.mask)
            for kind, arr in (("image", v.image), ("mask", mask), ("sketch", v.sketch)):
                if arr is not None:
                    where.append((len(good) - 1, kind))
                    inputs.append(to_unit(arr))
        x = np.stack(inputs) if inputs else np.zeros((0, 3, 8, 8), np.float32)
        for short in self.vaes:
            per: list[dict[str, np.ndarray]] = [{} for _ in good]
            for (i, kind), m in zip(where, self.encode(short, x) if len(x) else [], strict=True):
                per[i][kind] = m
            for (r, v), arrays in zip(good, per, strict=True):
                status, error, values = self._store(short, r, v, arrays)
                emit(r["key"], status, error, **values)
        return cols

    def _store(self, short: str, row: dict, views: Views, arrays: dict[str, np.ndarray]) -> tuple:
        meta = self.meta[short]
        if not all(np.isfinite(a.astype(np.float32)).all() for a in arrays.values()):
            return "latent_nonfinite", f"{short}: the VAE produced NaN/inf (try dtype: float32)", dict(meta)
        data = pack_npz({k: npy_bytes(arrays[k]) for k in KINDS if k in arrays})
        rel = f"latents/{short}/{row['key']}.{row['_fp'][:12]}.npz"
        atomic_write_bytes(self.ctx.out / rel, data)
        return OK, "", dict(meta, shape=list(arrays["image"].shape), kinds=[k for k in KINDS if k in arrays],
                            file=rel, sha256=hashlib.sha256(data).hexdigest(), inputs=views.digest,
                            mask_source=views.mask_source, flags=views.flags)

    @classmethod
    def fingerprint(cls, cfg: LatentsConfig) -> str:
        weights = ",".join(f"{n}={weights_digest(s) or s.revision or '-'}"
                           for n, s in sorted(cfg.models.items()))
        return f"{super().fingerprint(cfg)}:{weights}"

    @classmethod
    def inputs(cls, cfg: LatentsConfig, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        """Ok index rows with the mask and sketch paths to encode; `_src` adds the upstream fingerprints."""
        table = default_inputs(ctx, requires)
        up = upstream(ctx.out, UPSTREAM)
        for name, values in view_columns(table, up, cfg.mask_source).items():
            table = table.append_column(name, values)
        src = pc.binary_join_element_wise(table["_src"], up.src(table["key"], UPSTREAM),
                                          pc.fill_null(table["_mask"], "None"), "|")
        return table.set_column(table.schema.get_field_index("_src"), "_src", src)

    @classmethod
    def finalize(cls, cfg: LatentsConfig, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        """Delete latents files that no current ledger row points at (superseded or killed re-runs)."""
        root = ctx.out / "latents"
        if not root.is_dir():
            return
        t = ctx.ledger("latents").read(["file"])
        keep = {str(root.parent / f) for f in t["file"].to_pylist() if f}
        for sub in (p for p in root.iterdir() if p.is_dir()):
            for f in sub.rglob("*"):
                if f.is_file() and (f.suffix == ".npz" or ".tmp-" in f.name) and str(f) not in keep:
                    f.unlink(missing_ok=True)

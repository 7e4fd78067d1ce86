"""Parse: 19-class CelebAMask-HQ label maps from one or more face parsers, with their agreement.

Ledger `parse/`: one row per (key, parser) with `parser`, `primary`, `class_pixels` (19 int64 counts at
the image's size), `agreement` (mIoU against the other parser; null with one parser), `mask` and
`fallback_for`. The primary parser's map is written to `masks/<key>.png` (PIL mode "L", ids 0..18, the
image's size). When the configured primary fails on a key (FaRL finds no face in an unaligned photo, or
raises) the next parser that succeeded takes its place for that key: `primary` always marks the row whose
map is in `masks/`, and that row's `fallback_for` names the configured primary it stands in for.

Each parser runs in isolation: one that raises on a batch is retried image by image, and an image it
still raises on becomes that parser's `parser_error` row, so the other parsers' maps for the key are kept
(the runner would otherwise replace every row of the key with one `stage_error`).

Agreement: each row's mIoU (over classes present in either map) against the primary's map; the primary
row's against the next parser's. Filter on the `agreement` column to drop or review keys where the
parsers disagree; `stats` counts and lists them (its `low_agreement` threshold). With `save_all`, the
other parsers' maps go to `parser_masks/<parser>/<key>.png` (outside `parse/`, which holds only parquet
parts so the folder reads as one dataset).

Reason codes: `decode_error` (the image no longer decodes), `no_face` (FaRL's detector found none),
`no_detector` (an unaligned photo and no RetinaFace weights), `parser_error` (that parser raised on the
image; the error names it), `stage_error` (anything else, e.g. a mask that cannot be written).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.core.config import StageConfig, loading_model, model_ref, must_exist, volatile
from pipeline.core.devices import resolve_device
from pipeline.core.files import is_disk_full
from pipeline.core.identity import file_identity
from pipeline.core.ledger import OK, atomic_write_bytes
from pipeline.core.stage import Stage, StageContext
from pipeline.data.images import load_rgb
from pipeline.data.labels import class_pixel_counts
from pipeline.parsers import PARSER_NAMES, Parsed, load_parser, mean_iou

log = logging.getLogger(__name__)
PARSER_ERROR = "parser_error"


@dataclass(frozen=True)
class ParseConfig(StageConfig):
    """Settings of the parse stage.

    Args:
        parsers: which parsers run, in order of preference: `segformer`, `farl`, `smp` (or `smp:<folder>`).
        primary: the parser whose map goes to `masks/<key>.png` (default: the first in `parsers`).
        segformer_model: a 19-class Segformer face parser: hub id, or a local folder (a value starting
            with `.`, `/` or `~` resolves against the manifest's folder).
        segformer_revision: hub revision of `segformer_model` (pin it for reproducible runs).
        farl_model: FaRL celebm TorchScript file; empty uses facer's cache in `$TORCH_HOME/hub/checkpoints`.
        farl_detector: RetinaFace MobileNet-0.25 weights for unaligned photos; empty uses facer's cache.
        detector_threshold: RetinaFace score threshold.
        detector_size: photos larger than this (longer side) are downscaled for face detection only.
        smp_model: a `facecurate train-parser` folder for the `smp` parser.
        aligned_sources: index `source` names holding aligned face crops (FaRL skips the detector there).
        dtype: model precision; float32 is the reference, bfloat16 is faster on GPUs.
        save_all: also save every non-primary parser's map to `parser_masks/<parser>/<key>.png` (for
            `facecurate eval-parse` comparisons).
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...
    """

    parsers: tuple[str, ...] = ("segformer",)
    primary: str | None = None
    segformer_model: str = model_ref("jonathandinu/face-parsing")
    segformer_revision: str | None = None
    farl_model: Path | None = must_exist(None)
    farl_detector: Path | None = must_exist(None)
    detector_threshold: float = 0.8
    detector_size: int = 640
    smp_model: Path | None = must_exist(None)
    aligned_sources: tuple[str, ...] = ("celebahq", "ffhq")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    save_all: bool = False
    device: str = volatile("auto")
    batch_size: int = volatile(8)

    def __post_init__(self) -> None:
        names = []
        for p in self.parsers:
            if p.startswith("smp:"):  # `smp:<folder>` is shorthand for parser smp + smp_model
                path = Path(p[4:]).expanduser().resolve()
                if not path.exists():
                    raise ValueError(f"parsers: {p}: {path} does not exist")
                object.__setattr__(self, "smp_model", path)
                p = "smp"
            if p not in PARSER_NAMES:
                raise ValueError(f"parsers: unknown parser {p!r}; choose from {', '.join(PARSER_NAMES)} or smp:<folder>")
            names.append(p)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"parsers: list one or more distinct parsers, got {list(self.parsers)}")
        object.__setattr__(self, "parsers", tuple(names))
        if self.primary is None:
            object.__setattr__(self, "primary", names[0])
        elif self.primary not in names:
            raise ValueError(f"primary: {self.primary!r} is not among parsers {names}")
        if "smp" in names and self.smp_model is None:
            raise ValueError("parsers: smp needs smp_model (a train-parser folder) or smp:<folder>")
        if not 0.0 < self.detector_threshold < 1.0:
            raise ValueError(f"detector_threshold must be in (0, 1), got {self.detector_threshold}")


# The setting that names each parser's model, and what it must be (for the one-line load error).
MODEL_SETTING = {"segformer": "segformer_model", "farl": "farl_model", "smp": "smp_model"}
MODEL_FIX = {
    "segformer": "it must be a 19-class face-parsing Segformer (a hub id such as jonathandinu/face-parsing, or a "
                 "folder with its config.json, weights and preprocessor_config.json)",
    "farl": "it must be FaRL's celebm TorchScript file (face_parsing.farl.celebm.main_ema_181500_jit.pt)",
    "smp": "it must be a `facecurate train-parser` output folder (parser.json and model.safetensors)",
}


def encode_png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(label, np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


class ParseStage(Stage):
    """Loads the configured parsers once; per batch decodes images, parses, writes masks, scores agreement."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("parser", pa.string()), ("primary", pa.bool_()), ("class_pixels", pa.list_(pa.int64())),
        ("agreement", pa.float64()), ("mask", pa.string()), ("fallback_for", pa.string()),
    ])
    version: ClassVar[str] = "1"

    def __init__(self, cfg: ParseConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        device = resolve_device(cfg.device)
        self.parsers = {}
        for name in cfg.parsers:
            setting = MODEL_SETTING[name]
            with loading_model(f"stages.parse.{setting}", getattr(cfg, setting) or f"facer's default {name} weights",
                               MODEL_FIX[name]):
                self.parsers[name] = load_parser(name, cfg, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        cfg = self.cfg
        keys = [str(k) for k in batch["key"]]
        rows: list[dict[str, Any]] = []
        images, aligned, ok_keys = [], [], []
        # after the faces stage every image is an FFHQ-aligned crop (it has a photo_key)
        from_faces = batch.get("photo_key", [None] * len(keys))
        for key, path, source, photo in zip(keys, batch["path"], batch["source"], from_faces, strict=True):
            try:
                src = Path(str(path))
                images.append(np.array(load_rgb(src if src.is_absolute() else self.ctx.out / src)))
                aligned.append(str(source) in cfg.aligned_sources or photo is not None)
                ok_keys.append(key)
            except Exception as e:  # noqa: BLE001 - a file that stopped decoding is a row, not a crash
                rows += [self._row(key, p, "decode_error", f"{type(e).__name__}: {e}") for p in cfg.parsers]
        results = {name: self._parse(name, images, aligned) for name in cfg.parsers}
        for i, key in enumerate(ok_keys):
            rows += self._key_rows(key, {name: results[name][i] for name in cfg.parsers})
        return {c: [r.get(c) for r in rows] for c in ["key", "status", "error", *self.schema.names]}

    def _parse(self, name: str, images: list[np.ndarray], aligned: list[bool]) -> list[Parsed]:
        """One parser over the batch; if it raises, image by image, so only the images it fails on lose
        this parser's map (a full disk still stops the run: it is no image's fault)."""
        try:
            return self.parsers[name](images, aligned)
        except Exception as e:  # noqa: BLE001 - a parser failure is this parser's row, not the key's
            if is_disk_full(e):
                raise
            if len(images) <= 1:
                msg = f"{name}: {type(e).__name__}: {e}".strip().splitlines()[0][:500]
                return [Parsed(None, PARSER_ERROR, msg)] * len(images)
            log.warning("parser %s failed on a batch of %d (%s); parsing its images one by one",
                        name, len(images), type(e).__name__)
        return [self._parse(name, [img], [a])[0] for img, a in zip(images, aligned, strict=True)]

    def _key_rows(self, key: str, parsed: dict[str, Parsed]) -> list[dict[str, Any]]:
        ok = [n for n in self.cfg.parsers if parsed[n].status == OK]
        primary = self.cfg.primary if self.cfg.primary in ok else (ok[0] if ok else None)
        fallback_for = self.cfg.primary if primary not in (None, self.cfg.primary) else None
        if primary is None:  # no parser succeeded: a mask left by an earlier run must not pass for this one's
            (self.ctx.out / "masks" / f"{key}.png").unlink(missing_ok=True)
        rows = []
        for name, res in parsed.items():
            if res.status != OK:
                rows.append(self._row(key, name, res.status, res.error))
                continue
            label = res.label
            mask = None
            if name == primary:
                mask = f"masks/{key}.png"
            elif self.cfg.save_all:
                mask = f"parser_masks/{name}/{key}.png"
            if mask:
                atomic_write_bytes(self.ctx.out / mask, encode_png(label))
            other = primary if name != primary else next((n for n in ok if n != primary), None)
            agreement = mean_iou(label, parsed[other].label) if other else None
            rows.append({**self._row(key, name, OK, ""), "primary": name == primary, "mask": mask,
                         "class_pixels": class_pixel_counts(label).tolist(), "agreement": agreement,
                         "fallback_for": fallback_for if name == primary else None})
        return rows

    @staticmethod
    def _row(key: str, parser: str, status: str, error: str) -> dict[str, Any]:
        return {"key": key, "status": status, "error": error, "parser": parser, "primary": False,
                "class_pixels": None, "agreement": None, "mask": None, "fallback_for": None}

    @classmethod
    def fingerprint(cls, cfg: ParseConfig) -> str:
        """Also fingerprints local model files by content, so retraining a model in place re-parses."""
        segformer = Path(cfg.segformer_model) if Path(cfg.segformer_model).exists() else None
        local = [p for p in (segformer if "segformer" in cfg.parsers else None,
                             cfg.farl_model if "farl" in cfg.parsers else None,
                             cfg.smp_model if "smp" in cfg.parsers else None) if p is not None]
        ident = hashlib.sha1("|".join(file_identity(p) for p in local).encode()).hexdigest()[:12]
        return f"{super().fingerprint(cfg)}:{ident}"

"""Caption: every ok image gets one caption per prompt of the prompt set, from a VLM (InternVL3).

Rows go to `captions/raw`, one per (key, prompt): prompt id/kind/hash, model and revision, the text,
prompt and output token counts, the finish reason, and `cache_key`. The cache key is (image sha256,
prompt hash, model + revision, sampling settings): what determines the text, nothing else.

The ledger is the cache. On start the stage indexes its own ok rows by `cache_key`; a request whose
key is there is answered from it and never reaches the engine. So a rerun generates nothing; editing
one prompt changes the stage fingerprint (every key is pending again) but only that prompt's requests
miss the cache; a re-ingested copy of an image (same sha256, new key) costs nothing. Switching engine,
device or dtype does not invalidate captions (same model, same prompt, same decoding).

Failures are rows: an image that does not decode gives `decode_error` rows for its prompts; an engine
failure gives `engine_error` (or `out_of_memory` once the engine has halved its batch down to one). An
engine failure that hits every key of a batch alike (a text-only model, a broken engine) is the stage's,
not the images': the run stops with that one reason and records none of them, so the next run retries them.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from pipeline.core.config import StageConfig, fingerprint, loading_model, model_ref, must_exist, volatile
from pipeline.core.identity import digest, model_revision
from pipeline.core.ledger import OK, DigestIndex, atomic_write_bytes
from pipeline.core.stage import Stage, StageContext
from pipeline.data.images import load_rgb
from pipeline.engines import Request, Result, SamplingParams, make_engine
from pipeline.engines import stats as engine_stats
from pipeline.text.prompts import Prompt, load_prompt_set, prompt_set_json

PROMPT_SET_FILE = "captions/prompt_set.json"
MODEL_HINT = "e.g. OpenGVLab/InternVL3-1B-hf, or .cache/tiny-models/internvl3 offline"


@dataclass(frozen=True)
class CaptionConfig(StageConfig):
    """Settings of the caption stage.

    Args:
        model: hub id (`OpenGVLab/InternVL3-1B-hf`, `-2B-hf`, `-8B-hf`) or a local model folder.
        revision: hub revision (branch, tag or commit) to pin; a local folder's revision is its content hash.
        engine: `transformers` (any machine) or `vllm` (GPU throughput; its own environment).
        prompts: a prompt-set YAML file (default: manifests/prompts/face-v1.yaml).
        temperature: 0 is greedy (the default: reproducible captions).
        top_p: nucleus sampling mass when sampling.
        seed: sampling seed.
        max_tiles: 448px tiles per image; 1 (default) sees a face whole in 256 image tokens.
        device: `auto`, `cpu`, `cuda`, `cuda:1` (transformers engine).
        dtype: `auto` (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32.
        engine_batch: requests per `generate` call (transformers engine; halved on out-of-memory).
        engine_options: extra engine arguments, e.g. `{gpu_memory_utilization: 0.8, max_model_len: 4096}`
            for vLLM or `{attn_implementation: sdpa}` for transformers.
    """

    model: str = model_ref("OpenGVLab/InternVL3-1B-hf")
    revision: str | None = None
    engine: Literal["transformers", "vllm"] = volatile("transformers")
    prompts: Path | None = must_exist(None)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_tiles: int = 1
    device: str = volatile("auto")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = volatile("auto")
    engine_batch: int = volatile(64)
    engine_options: dict[str, Any] = field(default_factory=dict, metadata={"volatile": True})
    batch_size: int = volatile(16)

    def __post_init__(self) -> None:
        SamplingParams(temperature=self.temperature, top_p=self.top_p)  # raises on a bad value
        if not 1 <= self.max_tiles <= 40:
            raise ValueError(f"max_tiles must be from 1 to 40, got {self.max_tiles}")
        if self.engine_batch < 1:
            raise ValueError(f"engine_batch must be >= 1, got {self.engine_batch}")
        load_prompt_set(self.prompts)  # a broken prompt file fails when the manifest loads, in one line


def sampling_for(cfg: CaptionConfig, prompt: Prompt) -> SamplingParams:
    return SamplingParams(max_tokens=prompt.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          seed=cfg.seed)


def cache_key(sha256: str, prompt: Prompt, model: str, revision: str, sampling: SamplingParams,
              max_tiles: int) -> str:
    """What determines a caption: the image bytes, the prompt, the model version, the decoding."""
    return digest(sha256, prompt.hash, model, revision, sampling.key(), max_tiles)[:20]


class CaptionStage(Stage):
    """One row per (image, prompt); answers from the ledger cache first, then the engine."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("prompt_id", pa.string()), ("prompt_kind", pa.string()), ("prompt_hash", pa.string()),
        ("model", pa.string()), ("revision", pa.string()), ("text", pa.string()),
        ("prompt_tokens", pa.int32()), ("output_tokens", pa.int32()), ("finish_reason", pa.string()),
        ("cache_key", pa.string()), ("cached", pa.bool_()),
    ])
    version: ClassVar[str] = "1"
    CACHED = ("text", "prompt_tokens", "output_tokens", "finish_reason")
    RECENT: ClassVar[int] = 4096  # answers of this run kept for the same image bytes in a later batch
    # Failures that say nothing about the image: when every key of a batch gets the same one, the model or
    # the engine is wrong for the whole stage, and the runner stops instead of recording them (runner.py).
    stage_wide_failures: ClassVar[tuple[str, ...]] = ("engine_error", "out_of_memory")
    stage_wide_fix: ClassVar[str] = (f"check stages.caption.model (an image+text model: {MODEL_HINT}), engine "
                                     "and device, then run again")

    def __init__(self, cfg: CaptionConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        self.prompts = load_prompt_set(cfg.prompts).prompts
        options = dict(revision=cfg.revision, max_tiles=cfg.max_tiles, dtype=cfg.dtype, **cfg.engine_options)
        if cfg.engine == "transformers":
            options.update(device=cfg.device, batch_size=cfg.engine_batch)
        # offline and not cached, a typo in the id, a broken folder, a folder of another kind of model
        with loading_model("stages.caption.model", cfg.model, f"it must be an image+text model ({MODEL_HINT})"):
            self.engine = make_engine(cfg.engine, cfg.model, **options)
        # A local folder is identified by its content hash, not where it sits: moving it keeps the cache.
        local = Path(self.engine.model_id).is_dir()
        self.model_key = Path(self.engine.model_id).name if local else self.engine.model_id
        # The cache: ok ledger rows by cache key, read per batch (DigestIndex: 12 bytes a row, no text held),
        # and the answers generated in this run, the last RECENT of them (the same image bytes again).
        rel = ctx.ledger("caption").dir.relative_to(ctx.out).as_posix()
        self.cache = DigestIndex(ctx.out, rel, "cache_key", list(self.CACHED))
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _lookup(self, cks: list[str]) -> list[dict[str, Any] | None]:
        found = [self.recent.get(ck) for ck in cks]
        stored = self.cache.get([ck for ck, hit in zip(cks, found, strict=True) if hit is None])
        it = iter(stored)
        return [hit if hit is not None else (None if (row := next(it)) is None else
                                             {c: row[c] for c in self.CACHED}) for hit in found]

    def _remember(self, ck: str, values: dict[str, Any]) -> None:
        self.recent[ck] = values
        self.recent.move_to_end(ck)
        if len(self.recent) > self.RECENT:
            self.recent.popitem(last=False)

    @classmethod
    def fingerprint(cls, cfg: CaptionConfig) -> str:
        # The prompt set's content, not its path; the model's resolved revision, not just its name.
        prompt_hash = load_prompt_set(cfg.prompts).hash
        rest = fingerprint(dataclasses.replace(cfg, prompts=None))
        return f"{cls.__name__}:{cls.version}:{rest}:{prompt_hash}:{model_revision(cfg.model, cfg.revision)}"

    @classmethod
    def finalize(cls, cfg: CaptionConfig, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        # The prompts beside the captions: cleaning strips echoed instructions, readers see what was asked.
        atomic_write_bytes(ctx.out / PROMPT_SET_FILE, prompt_set_json(load_prompt_set(cfg.prompts)))
        merged = engine_stats.merge(ctx.out / "captions")
        if merged:  # vLLM's own counters: does the shared image prefix pay?
            from rich.console import Console

            Console(stderr=True).print(f"[dim]{engine_stats.headline(merged)}; see captions/engine_stats.json[/dim]",
                                       highlight=False)

    def _image_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.ctx.out / p

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in ("key", "status", "error", *self.schema.names)}
        requests: list[Request] = []
        slots: list[tuple[int, int]] = []  # (output row, request index): one request per distinct cache key
        asked: dict[str, int] = {}
        samplings = [sampling_for(self.cfg, p) for p in self.prompts]
        cks = [[cache_key(str(sha), p, self.model_key, self.engine.revision, sp, self.cfg.max_tiles)
                for p, sp in zip(self.prompts, samplings, strict=True)] for sha in batch["sha256"]]
        hits = iter(self._lookup([ck for row in cks for ck in row]))
        for key, path, row_cks in zip(batch["key"], batch["path"], cks, strict=True):
            todo = []
            for p, sp, ck in zip(self.prompts, samplings, row_cks, strict=True):
                hit = next(hits)
                self._row(out, str(key), p, ck, hit)
                if hit is None and ck in asked:
                    slots.append((len(out["key"]) - 1, asked[ck]))  # same image bytes twice in a batch
                elif hit is None:
                    todo.append((len(out["key"]) - 1, p, sp, ck))
            if not todo:
                continue
            try:
                image = load_rgb(self._image_path(str(path)))
            except Exception as e:  # noqa: BLE001 - any decode failure is this image's rows, not the batch's
                for row, *_ in todo:
                    self._fail(out, row, "decode_error", f"cannot decode {path}: {type(e).__name__}: {e}")
                continue
            for row, p, sp, ck in todo:  # an image's prompts side by side: vLLM shares their prefix
                asked[ck] = len(requests)
                slots.append((row, len(requests)))
                requests.append(Request([{"role": "user", "content": p.text}], image, sp))
        if requests:
            try:
                results = self.engine.generate(requests)
            except Exception as e:  # noqa: BLE001 - an engine crash fails these rows, never the batch
                results = [Result("", finish_reason="error", error=f"{type(e).__name__}: {e}")] * len(requests)
            for row, i in slots:
                self._fill(out, row, results[i])
                if out["status"][row] == OK:
                    self._remember(out["cache_key"][row], {c: out[c][row] for c in self.CACHED})
            engine_stats.record(self.engine, self.ctx.out / "captions")
        return out

    def _row(self, out: dict[str, list], key: str, p: Prompt, ck: str, hit: dict[str, Any] | None) -> None:
        values = {"key": key, "status": OK, "error": "", "prompt_id": p.id, "prompt_kind": p.kind,
                  "prompt_hash": p.hash, "model": self.engine.model_id, "revision": self.engine.revision,
                  "cache_key": ck, "cached": hit is not None,
                  "text": "", "prompt_tokens": 0, "output_tokens": 0, "finish_reason": ""}
        values.update(hit or {})
        for name, v in values.items():
            out[name].append(v)

    def _fill(self, out: dict[str, list], row: int, res: Result) -> None:
        if res.finish_reason == "error":
            oom = "out of memory" in res.error.lower()
            self._fail(out, row, "out_of_memory" if oom else "engine_error", res.error)
            return
        out["text"][row], out["finish_reason"][row] = res.text, res.finish_reason
        out["prompt_tokens"][row], out["output_tokens"][row] = res.prompt_tokens, res.output_tokens
        if not res.text.strip():
            self._fail(out, row, "empty_output", f"the model generated no text ({res.output_tokens} tokens)")

    @staticmethod
    def _fail(out: dict[str, list], row: int, status: str, error: str) -> None:
        out["status"][row] = status
        out["error"][row] = (error.strip().splitlines() or [""])[0][:500]

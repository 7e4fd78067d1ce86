"""The transformers engine: the model's own processor and chat template, batched `generate`.

One class serves both kinds of model the pipeline uses, chosen from the model's config:
- image+text models (InternVL3 and any other `AutoModelForImageTextToText`) with their `AutoProcessor`;
- text-only causal LMs (Qwen3 for refinement) with their `AutoTokenizer`.
Requests are grouped by sampling parameters (each group is one `generate` call per batch, so
per-request `max_tokens` is honoured exactly), sorted by prompt length inside a group to waste little
on padding, and padded on the left. Out of memory halves the batch and retries; any other failure is
isolated to the request that caused it (see `base.isolate`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.core.identity import model_revision
from pipeline.engines.base import (
    Request,
    Result,
    SamplingParams,
    drop_incomplete_tail,
    error_result,
    is_out_of_memory,
    isolate,
    text_only,
    with_image_first,
)


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    """`auto`: bfloat16 on GPUs that have it, float16 on other GPUs, float32 on CPU."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class TransformersEngine:
    """Batched generation with transformers; works for VLMs and text-only LMs, on CPU or GPU.

    Args:
        model: hub id or local folder.
        revision: hub revision (branch, tag or commit); ignored for local folders.
        device: `auto` (cuda, then mps, then cpu) or a torch device string.
        dtype: `auto` (bf16 on GPU, fp32 on CPU) or a torch dtype name.
        batch_size: requests per `generate` call (halved on out-of-memory).
        max_tiles: image tiles per image for tiling processors (InternVL); 1 = one 448px tile.
        chat_template_kwargs: extra variables for the chat template, e.g. `{"enable_thinking": False}`.
        attn_implementation: passed to `from_pretrained` (`sdpa`, `flash_attention_2`, `eager`).
    """

    kind = "transformers"
    supports_json_schema = False  # a schema is recorded in the cache key but does not constrain decoding

    def __init__(self, model: str, revision: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, max_tiles: int = 1, chat_template_kwargs: dict[str, Any] | None = None,
                 attn_implementation: str | None = None):
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

        local = Path(model).expanduser()
        self.model_id = str(local.resolve()) if local.is_dir() else model
        kw: dict[str, Any] = {} if local.is_dir() else {"revision": revision}
        config = AutoConfig.from_pretrained(self.model_id, **kw)
        self.revision = getattr(config, "_commit_hash", None) or model_revision(self.model_id, revision)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.multimodal = type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        load = dict(kw, dtype=self.dtype)
        if attn_implementation:
            load["attn_implementation"] = attn_implementation
        if self.multimodal:
            self.processor = AutoProcessor.from_pretrained(self.model_id, **kw)
            self.tokenizer = self.processor.tokenizer
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_id, **load)
        else:
            self.tokenizer = self.processor = AutoTokenizer.from_pretrained(self.model_id, **kw)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_id, **load)
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.batch_size = max(1, batch_size)
        self.max_tiles = max(1, max_tiles)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.stats = {"calls": 0, "requests": 0, "output_tokens": 0, "seconds": 0.0, "oom_halvings": 0}
        self._torch = torch

    # -- prompts --------------------------------------------------------------------------------------

    def render(self, request: Request) -> str:
        """The request's prompt text through the model's own chat template (image placeholder first)."""
        if self.multimodal:
            messages = with_image_first(request.messages, request.image is not None)
        else:
            if request.image is not None:
                raise ValueError(f"{self.model_id} is a text-only model; it cannot take an image")
            messages = text_only(request.messages)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                  **self.chat_template_kwargs)

    def _inputs(self, requests: list[Request]) -> Any:
        texts = [self.render(r) for r in requests]
        if not self.multimodal:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            return enc.to(self.device)
        images = [r.image for r in requests if r.image is not None]
        kw: dict[str, Any] = {"return_tensors": "pt", "padding": True}
        if images:
            kw["images"] = images
            kw.update(crop_to_patches=self.max_tiles > 1, max_patches=self.max_tiles)
        enc = self.processor(text=texts, **kw)
        return enc.to(self.device, dtype=self.dtype)  # casts floating tensors (pixels) only

    # -- generation -----------------------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Result]:
        """One result per request, in order; failures are results with `finish_reason="error"`."""
        results: list[Result | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.sampling.key(), []).append(i)
        for idx in groups.values():
            # Similar lengths together: less padding. Text length is a good proxy (images are fixed-size).
            idx.sort(key=lambda i: sum(len(str(m.get("content", ""))) for m in requests[i].messages))
            start = 0
            while start < len(idx):
                chunk = idx[start:start + self.batch_size]
                try:
                    out = isolate(self._generate_batch, [requests[i] for i in chunk])
                except Exception as e:  # noqa: BLE001 - isolate re-raises only out-of-memory
                    if not is_out_of_memory(e):
                        raise
                    if len(chunk) > 1:
                        self.batch_size = (len(chunk) + 1) // 2
                        self.stats["oom_halvings"] += 1
                        self._free()
                        continue  # retry the same requests in smaller batches
                    out = [error_result(f"out of memory even with one request per batch: {e}")]
                for i, res in zip(chunk, out, strict=True):
                    results[i] = res
                start += len(chunk)
        return [r if r is not None else error_result("no result") for r in results]

    def _free(self) -> None:
        import gc

        gc.collect()
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()

    def _generate_batch(self, requests: list[Request]) -> list[Result]:
        torch = self._torch
        sp: SamplingParams = requests[0].sampling
        inputs = self._inputs(requests)
        kwargs: dict[str, Any] = dict(max_new_tokens=sp.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=sorted(self.eos_ids))
        if sp.min_tokens:
            kwargs["min_new_tokens"] = min(sp.min_tokens, sp.max_tokens)
        if sp.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(sp.seed)  # reproducible for the same batch composition
            kwargs.update(do_sample=True, temperature=sp.temperature, top_p=sp.top_p, top_k=None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        self.stats["seconds"] += time.perf_counter() - t0
        prompt_len = inputs["input_ids"].shape[1]
        new = out[:, prompt_len:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, n_prompt in zip(new, prompt_tokens, strict=True):
            n, stopped = len(row), False
            for j, t in enumerate(row):
                if t in self.eos_ids:
                    n, stopped = j + 1, True
                    break
            finish = "stop" if stopped or n < sp.max_tokens else "length"
            text = drop_incomplete_tail(self.tokenizer.decode(row[:n], skip_special_tokens=True), finish)
            results.append(Result(text=text, prompt_tokens=int(n_prompt), output_tokens=n, finish_reason=finish))
        self.stats["calls"] += 1
        self.stats["requests"] += len(requests)
        self.stats["output_tokens"] += sum(r.output_tokens for r in results)
        return results

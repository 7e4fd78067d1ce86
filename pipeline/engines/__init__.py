"""Text-generation engines for captioning (VLM) and refinement (LLM) behind one interface.

`make_engine("transformers" | "vllm", model, **options)` builds one; each engine module is imported only
when asked for, so a machine without vLLM (or a driver process that never generates) pays nothing.
"""

from __future__ import annotations

from typing import Any

from pipeline.engines.base import Engine, EngineUnavailable, Request, Result, SamplingParams

ENGINES = ("transformers", "vllm")

__all__ = ["ENGINES", "Engine", "EngineUnavailable", "Request", "Result", "SamplingParams", "make_engine"]


def make_engine(kind: str, model: str, **options: Any) -> Engine:
    """An engine of `kind` serving `model` (hub id or local folder); `options` go to its constructor.

    Raises:
        ValueError: an unknown kind.
        EngineUnavailable: the engine's library is not installed (the message says how to get it).
    """
    if kind == "transformers":
        from pipeline.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model, **options)
    if kind == "vllm":
        from pipeline.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, **options)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")

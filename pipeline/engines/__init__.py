"""Text-generation engines for captioning (VLM) and refinement (LLM) behind one interface."""

from pipeline.engines.base import Engine, Request, Result, SamplingParams

__all__ = ["Engine", "Request", "Result", "SamplingParams"]

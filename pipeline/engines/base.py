"""The engine interface: `generate(requests) -> results`, one result per request, in order.

A request is an optional image, chat messages and sampling parameters; a result has the text, prompt
and output token counts and a finish reason. Engines never raise for one bad request: its result has
`finish_reason="error"` and `error` set. Implementations: `transformers` (CPU, tests, any machine) and
`vllm` (GPU throughput; optional extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings (part of the cache key of every generated text).

    Args:
        max_tokens: most new tokens to generate.
        temperature: 0 is greedy.
        top_p: nucleus sampling mass.
        seed: sampling seed (ignored when greedy).
        json_schema: constrain output to this JSON schema where the engine supports guided decoding.
    """

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    json_schema: dict[str, Any] | None = None


@dataclass
class Request:
    """One generation: `messages` in chat format; `image` (a PIL image) goes first in the first user turn."""

    messages: list[dict[str, Any]]
    image: Any = None
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Result:
    """One generated text and its accounting."""

    text: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = "stop"  # stop | length | error
    error: str = ""


class Engine(Protocol):
    """What every engine offers."""

    model_id: str
    revision: str

    def generate(self, requests: list[Request]) -> list[Result]: ...

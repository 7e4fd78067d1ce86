"""The engine interface: `generate(requests) -> results`, one result per request, in order.

A request is an optional image, chat messages and sampling parameters; a result has the text, prompt
and output token counts and a finish reason. Engines never raise for one bad request: its result has
`finish_reason="error"` and `error` set. Implementations: `transformers` (CPU, tests, any machine) and
`vllm` (GPU throughput; optional extra).

Shared pieces live here so both engines behave the same: `with_image_first` (the image goes first in
the first user turn, so the prompts of one image share a prefix), `isolate` (a failing request becomes
an error result, never a failed batch) and `is_out_of_memory`. What a result was made with, for cache
keys, is `pipeline.core.identity.model_revision`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pipeline.core.config import ConfigError


class EngineUnavailable(ConfigError):
    """An engine whose library is not installed (the message says how to get it; the CLI prints one line)."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings (part of the cache key of every generated text).

    Args:
        max_tokens: most new tokens to generate.
        temperature: 0 is greedy.
        top_p: nucleus sampling mass.
        seed: sampling seed (ignored when greedy).
        json_schema: constrain output to this JSON schema where the engine supports guided decoding.
        min_tokens: fewest new tokens (end-of-sequence is suppressed until then; benchmarks use it to
            generate a fixed length from random weights).
    """

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    json_schema: dict[str, Any] | None = None
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key(self) -> str:
        """A stable text form: equal for settings that decode the same (the seed is moot when greedy)."""
        d = asdict(self)
        if self.greedy:
            d.pop("seed")
            d.pop("top_p")
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


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


def with_image_first(messages: list[dict[str, Any]], has_image: bool) -> list[dict[str, Any]]:
    """Messages in the content-list form chat templates take, the image item first in the first user turn.

    Putting the image before any text makes every prompt about one image start with the same tokens
    (chat header + image tokens), which is what prefix caching reuses.
    """
    out, placed = [], not has_image
    for m in messages:
        content = m.get("content", "")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        items = [c for c in items if c.get("type") != "image"]
        if not placed and m.get("role") == "user":
            items.insert(0, {"type": "image"})
            placed = True
        out.append({**m, "content": items})
    if not placed:
        raise ValueError("a request with an image needs a user message to put it in")
    return out


def text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with plain string content (what text-only chat templates such as Qwen3's expect)."""
    out = []
    for m in messages:
        content = m.get("content", "")
        if not isinstance(content, str):
            content = "".join(c.get("text", "") for c in content if c.get("type") == "text")
        out.append({**m, "content": content})
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA or host out-of-memory, whatever class the framework raised it as."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def error_result(exc: BaseException | str) -> Result:
    msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return Result(text="", finish_reason="error", error=(msg.strip().splitlines() or [""])[0][:500])


def drop_incomplete_tail(text: str, finish_reason: str = "") -> str:
    """Drop U+FFFD left at the end by a last token that ends inside a multi-byte character.

    Byte-level tokens can split a character; a generation that stops there (at max_tokens or at an end
    token) decodes to U+FFFD when the whole token list is decoded at once (the transformers engine),
    while vLLM's incremental detokenizer holds the incomplete bytes back. Dropping them gives the same
    text from the same tokens whichever engine ran. (`finish_reason` is kept for callers; it no longer
    matters: both kinds of stop were seen to end this way.)
    """
    del finish_reason
    return text.rstrip("\ufffd")


class EngineDead(RuntimeError):
    """The engine itself is gone (its process died, a restart failed): no request can succeed now."""


def isolate(fn: Callable[[list[Request]], list[Result]], requests: list[Request]) -> list[Result]:
    """`fn(requests)`; when it raises, bisect until each failing request alone gets an error result.

    Out-of-memory errors are re-raised: the caller shrinks its batch instead of blaming a request. A
    dead engine (`EngineDead`) fails every request at once with its one-line reason, without bisecting.
    """
    try:
        results = fn(requests)
        if len(results) != len(requests):
            raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")
        return results
    except EngineDead as e:
        return [error_result(e)] * len(requests)
    except Exception as e:  # noqa: BLE001 - one bad request must not fail its batch
        if is_out_of_memory(e):
            raise
        if len(requests) == 1:
            return [error_result(e)]
        half = len(requests) // 2
        return isolate(fn, requests[:half]) + isolate(fn, requests[half:])



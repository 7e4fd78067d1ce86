"""What the refiner is asked and how its answer is read: the chat prompt, the JSON schema, output parsing.

One image's cleaned captions (and, where the parse stage ran, what its mask shows) go into one chat
request (`build_messages`); engines with guided decoding are held to `json_schema`. `parse_output` reads
the answer: the schema's object, a bare list, code fences or a thinking block around it, and the complete
caption objects of an answer cut off at `max_tokens`. Which of those captions survive is decided by
`pipeline.text.judge`. `PROMPT_VERSION` is part of the refine stage's fingerprint: change it whenever the
prompt text changes.
"""

from __future__ import annotations

import json
import re
from typing import Any

PROMPT_VERSION = "refine-v2"


SYSTEM = """You edit captions of face photographs for a text-to-image training set. You never see the photo: \
you only know what the captions (and the segmentation evidence) say. Answer with JSON only."""


INSTRUCTIONS = """Write {n} different captions of this photo as JSON: {{"captions": [{{"text": "...", "source": "..."}}]}}.
Rules:
- Use only facts stated in the captions above or in the confident mask evidence. Never add a hair colour, \
length or style, eye colour, skin tone, ethnicity, age, gender, facial hair, makeup, freckles, scars, \
tattoos, piercings, accessory, clothing item or colour, expression, pose or photo style that no caption states, \
and never make a fact more specific ("earrings" must not become "gold hoop earrings").
- Where captions disagree, keep what most of them say; drop anything the mask evidence contradicts.
- First rephrase each caption as one fluent sentence (keyword lists too), "source" = its id; then write \
new captions that combine the stated facts differently, "source" = "new".
- Each caption: one or two sentences, at most 50 words, no numbering, no quotes, all different.
Answer with the JSON object only."""


def evidence_line(evidence: dict[str, Any]) -> str:
    """The mask evidence the refiner may rely on: confident items only, each with where it comes from."""
    if not evidence:
        return ""
    sure, weak = [], []
    for item, e in evidence.items():
        state, grade = (e, "given") if isinstance(e, str) else (e["state"], e.get("grade", "given"))
        if state != "unknown" and grade in ("ground_truth", "parsers_agree", "given"):
            sure.append(f"{item}: {state}" + ("" if grade == "given" else f" ({GRADE_WORDS[grade]})"))
        else:
            weak.append(item)
    line = ("Segmentation mask evidence (confident; where it disagrees with the captions, follow it): "
            + "; ".join(sure) + ".") if sure else ""
    if weak:
        line += (" " if line else "") + "Unknown from the mask (follow the captions): " + ", ".join(weak) + "."
    return line


GRADE_WORDS = {"ground_truth": "ground-truth mask", "parsers_agree": "two parsers agree",
               "single_parser": "one parser", "parsers_disagree": "parsers disagree"}


def majority_line(disputes: list[dict[str, Any]]) -> str:
    """Where the captions disagree: which side to keep, and which facts are too split to mention."""
    keep, drop = [], []
    for d in disputes:
        slot, _, value = d["fact"].partition(":")
        what = f"{slot.replace('_', ' ')} {value.replace('_', ' ')}"
        if d["majority"] == "for":
            keep.append(f"{what} ({d['for']} for, {d['against']} against)")
        elif d["majority"] == "against":
            drop.append(f"{what} ({d['for']} for, {d['against']} against)")
        else:
            drop.append(f"{what} (tied {d['for']}-{d['against']}: do not mention it either way)")
    parts = []
    if keep:
        parts.append("The captions disagree; keep the majority: " + "; ".join(keep) + ".")
    if drop:
        parts.append("Do not state: " + "; ".join(drop) + ".")
    return " ".join(parts)


def build_messages(captions: list[tuple[str, str]], evidence: dict[str, Any], n: int,
                   accepted: list[str] = (), rejected: list[tuple[str, str]] = (),
                   disputes: list[dict[str, Any]] = ()) -> list[dict[str, str]]:
    """Chat messages for one image; `accepted`/`rejected` turn it into a request for `n` more captions."""
    lines = ["Captions written by a vision model for ONE photo (some may be wrong or contradict each other):"]
    lines += [f"- [{pid}] {text}" for pid, text in captions]
    for line in (evidence_line(evidence), majority_line(list(disputes))):
        if line:
            lines.append(line)
    if accepted:
        lines.append("Already accepted (do not repeat): " + " | ".join(accepted))
    for text, why in list(rejected)[-3:]:
        lines.append(f"Rejected: {text!r} ({why}).")
    lines.append(INSTRUCTIONS.format(n=n))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def json_schema(n: int, sources: list[str]) -> dict[str, Any]:
    """Exactly `n` captions, each with text and a source that is an input's prompt id or "new"."""
    item = {"type": "object", "additionalProperties": False, "required": ["text", "source"],
            "properties": {"text": {"type": "string", "minLength": 8, "maxLength": 400},
                           "source": {"enum": [*sources, "new"]}}}
    return {"type": "object", "additionalProperties": False, "required": ["captions"],
            "properties": {"captions": {"type": "array", "items": item, "minItems": n, "maxItems": n}}}


class ParseError(ValueError):
    """A model answer with no usable captions; `reason` is a short code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_DECODER = json.JSONDecoder(strict=False)
_OBJECT = re.compile(r'\{\s*"text"\s*:\s*"((?:[^"\\]|\\.)*)"\s*(?:,\s*"source"\s*:\s*"((?:[^"\\]|\\.)*)"\s*)?\}')


def parse_output(text: str) -> tuple[list[tuple[str, str]], bool]:
    """(captions as (text, source), salvaged) from a model answer; raises ParseError when there are none.

    Accepts the schema's object, a bare list of objects or strings, code fences and a thinking block
    around it. An answer cut off by `max_tokens` keeps the caption objects that were complete
    (`salvaged` is then true).
    """
    body = re.sub(r"<think>.*?(?:</think>|$)", "", text or "", flags=re.S)
    body = re.sub(r"```(?:json)?", "", body).strip()
    if not body:
        raise ParseError("empty_output")
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ParseError("no_json", body[:60])
    try:
        # strict=False: raw control characters inside strings (guided decoders let a model write them)
        data, _ = _DECODER.raw_decode(body[start:])
    except json.JSONDecodeError:
        found = []
        for t, src in _OBJECT.findall(body):
            try:
                found.append((_DECODER.decode(f'"{t}"'), _DECODER.decode(f'"{src}"') if src else "new"))
            except json.JSONDecodeError:  # a bad escape in one salvaged caption: skip that one
                continue
        if found:
            return found, True
        raise ParseError("bad_json", body[start:start + 60]) from None
    items = data.get("captions") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ParseError("bad_shape", f"expected a list of captions, got {type(items).__name__}")
    out = []
    for it in items:
        if isinstance(it, str):
            out.append((it, "new"))
        elif isinstance(it, dict) and isinstance(it.get("text"), str):
            out.append((it["text"], str(it.get("source") or "new")))
    if not out:
        raise ParseError("bad_shape", "no caption with a text")
    return out, False

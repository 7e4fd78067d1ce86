"""The logic of refinement, apart from the stage: prompt, JSON schema, output parsing, caption checks.

Everything here is plain Python on strings, so tests feed it scripted model outputs through the same
code the stage runs. One image's refinement is a `KeyState`: its cleaned captions, the facts they
allow (lexicon facts of the inputs plus what the mask shows), and the captions accepted so far. Each
model answer is parsed (`parse_output`), and each caption in it is cleaned, fitted to the CLIP budget
and checked (`KeyState.offer`): a caption that adds a fact no input states (`invented_fact`), that
contradicts the mask (`mask_contradiction`), that repeats an accepted one (`duplicate`) or that cleans
to nothing is rejected, and the reason is counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.clean_rules import clean_text, is_list
from pipeline.lexicon import Facts, extract, extract_all
from pipeline.tokens import trim_to_budget

PROMPT_VERSION = "refine-v1"
# Mask items the refiner is told about: CelebAMask-HQ class id and the lexicon facts each one settles.
MASK_ITEMS: dict[str, tuple[int, tuple[str, ...]]] = {
    "eyeglasses": (3, ("accessory:glasses", "accessory:sunglasses")),
    "hat": (14, ("accessory:hat",)),
    "earrings": (15, ("accessory:earrings",)),
    "necklace": (16, ("accessory:necklace",)),
}

SYSTEM = """You edit captions of face photographs for a text-to-image training set. You never see the photo: \
you only know what the captions (and the segmentation evidence) say. Answer with JSON only."""

INSTRUCTIONS = """Write {n} different captions of this photo as JSON: {{"captions": [{{"text": "...", "source": "..."}}]}}.
Rules:
- Use only facts stated in the captions above or in the mask evidence. Never add a hair colour or style, \
eye colour, accessory, makeup, age, gender, facial hair or clothing colour that no caption states.
- Where captions disagree, keep what most of them say; drop anything the mask evidence contradicts.
- First rephrase each caption as one fluent sentence (keyword lists too), "source" = its id; then write \
new captions that combine the stated facts differently, "source" = "new".
- Each caption: one or two sentences, at most 50 words, no numbering, no quotes, all different.
Answer with the JSON object only."""


def evidence_line(evidence: dict[str, str]) -> str:
    if not evidence:
        return ""
    parts = [f"{item}: {state}" for item, state in evidence.items()]
    return "Segmentation mask evidence (reliable; trust it over the captions): " + "; ".join(parts) + "."


def build_messages(captions: list[tuple[str, str]], evidence: dict[str, str], n: int,
                   accepted: list[str] = (), rejected: list[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """Chat messages for one image; `accepted`/`rejected` turn it into a request for `n` more captions."""
    lines = ["Captions written by a vision model for ONE photo (some may be wrong or contradict each other):"]
    lines += [f"- [{pid}] {text}" for pid, text in captions]
    ev = evidence_line(evidence)
    if ev:
        lines.append(ev)
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
        data, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError:
        found = [(json.loads(f'"{t}"'), json.loads(f'"{s}"') if s else "new") for t, s in _OBJECT.findall(body)]
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


def dedup_key(text: str) -> str:
    """Captions that differ only in case, punctuation or articles are the same caption."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(w for w in words if w not in {"a", "an", "the"})


def mask_allows(evidence: dict[str, str]) -> Facts:
    """What the mask lets a caption assert (items present) and deny (items absent)."""
    f = Facts()
    for item, state in evidence.items():
        facts = MASK_ITEMS[item][1]
        if state == "present":
            f.asserted.add(facts[0])  # the mask shows glasses, not whether they are sunglasses
        elif state == "absent":
            f.denied.update(facts)
    return f


def mask_conflicts(facts: Facts, evidence: dict[str, str]) -> list[str]:
    """Mask items a caption contradicts: asserted where the mask has none, denied where it shows them."""
    bad = []
    for item, state in evidence.items():
        settled = set(MASK_ITEMS[item][1])
        if (state == "absent" and facts.asserted & settled) or (state == "present" and facts.denied & settled):
            bad.append(item)
    return bad


@dataclass
class KeyState:
    """One image's refinement in progress.

    Args:
        key: the image key.
        captions: its cleaned ok captions as (prompt_id, text), in prompt order.
        evidence: mask item -> present / absent / unknown ({} when the image has no mask).
        want: captions wanted (10).
        budget: CLIP tokens allowed per caption.
    """

    key: str
    captions: list[tuple[str, str]]
    evidence: dict[str, str]
    want: int = 10
    budget: int = 77
    accepted: list[tuple[str, str, int]] = field(default_factory=list)  # (text, provenance, tokens)
    rejected: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)
    parsed: bool = False
    trimmed: int = 0
    engine_error: str = ""

    def __post_init__(self) -> None:
        inputs = extract_all([t for _, t in self.captions])
        mask = mask_allows(self.evidence)
        self.allowed = Facts(inputs.asserted | mask.asserted, inputs.denied | mask.denied)
        self.sources = [pid for pid, _ in self.captions]
        self.seen: set[str] = set()

    @property
    def missing(self) -> int:
        return self.want - len(self.accepted)

    def messages(self) -> list[dict[str, str]]:
        accepted = [t for t, _, _ in self.accepted]
        return build_messages(self.captions, self.evidence, self.missing, accepted, self.examples)

    def reject(self, reason: str, text: str = "", why: str = "") -> None:
        self.rejected[reason] += 1
        if text:
            self.examples.append((text[:120], why or reason))

    def offer(self, text: str, source: str) -> str:
        """Check one refined caption and accept it; returns "" or the rejection reason."""
        if self.missing <= 0:
            return "surplus"
        cleaned, _, verdict = clean_text(text, "refined")
        if verdict:
            self.reject(verdict)
            return verdict
        facts = extract(cleaned)
        invented = sorted((facts.asserted - self.allowed.asserted) | (facts.denied - self.allowed.denied))
        if invented:
            self.reject("invented_fact", cleaned, "adds " + ", ".join(invented) + ", which no caption states")
            return "invented_fact"
        conflicts = mask_conflicts(facts, self.evidence)
        if conflicts:
            self.reject("mask_contradiction", cleaned, "the mask contradicts: " + ", ".join(conflicts))
            return "mask_contradiction"
        k = dedup_key(cleaned)
        if k in self.seen:
            self.reject("duplicate")
            return "duplicate"
        cleaned, n, how = trim_to_budget(cleaned, self.budget)
        self.trimmed += bool(how)
        self.seen.add(k)
        self.accepted.append((cleaned, f"refined:{source}" if source in self.sources else "generated", n))
        return ""

    def result(self) -> tuple[list[str], list[str], list[int], list[str]]:
        """(captions, provenance, clip_tokens, flags): accepted captions, filled from the cleaned ones."""
        flags = [] if self.evidence else ["no_mask_evidence"]
        final = list(self.accepted)
        if len(final) < self.want:
            fill = [(t, f"cleaned:{pid}") for pid, t in self.captions if dedup_key(t) not in self.seen]
            unique = {dedup_key(t): (t, p) for t, p in reversed(fill)}  # first occurrence wins
            fill = [unique[k] for k in dict.fromkeys(dedup_key(t) for t, _ in fill)]
            fill = fill[: self.want - len(final)]
            for t, p in fill:  # cleaned captions fit the clean stage's budget; this one may be smaller
                t, n, how = trim_to_budget(t, self.budget, end="" if is_list(t) else ".")
                self.trimmed += bool(how)
                final.append((t, p, n))
            if not self.parsed:
                flags.append("fallback:engine_error" if self.engine_error else "fallback:unparseable")
            elif fill:
                flags.append("filled_from_cleaned")
        if len(final) < self.want:
            flags.append("too_few_captions")
        flags += [f"rejected:{r}={n}" for r, n in sorted(self.rejected.items())]
        if self.trimmed:
            flags.append(f"trimmed={self.trimmed}")
        for i, (text, _, _) in enumerate(final):  # the final check: every caption against its mask
            flags += [f"mask_contradiction:{item}@{i}" for item in mask_conflicts(extract(text), self.evidence)]
        return [t for t, _, _ in final], [p for _, p, _ in final], [n for _, _, n in final], flags

"""The guard of refinement: which refined captions of one image are accepted, and why the others are not.

Plain Python on strings, so tests feed it scripted model outputs through the same code the refine stage
runs. One image's refinement is a `KeyState`: its cleaned captions, the facts they allow (lexicon facts
of the inputs plus what the mask shows), and the captions accepted so far. The stage parses each model
answer (`pipeline.text.refine_prompt.parse_output`) and offers every caption in it: `KeyState.offer`
cleans it, fits it to the CLIP budget and checks it; a caption that adds a fact no input states
(`invented_fact`), that contradicts the mask (`mask_contradiction`), that repeats an accepted one
(`duplicate`) or that cleans to nothing is rejected, and the reason is counted. `KeyState.messages`
asks again for the captions still missing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from pipeline.text.clean_rules import clean_text, is_list
from pipeline.text.lexicon import Facts, extract, extract_all
from pipeline.text.refine_prompt import build_messages
from pipeline.text.tokens import trim_to_budget

# Mask items the refiner is told about: CelebAMask-HQ class id and the lexicon facts each one settles.
MASK_ITEMS: dict[str, tuple[int, tuple[str, ...]]] = {
    "eyeglasses": (3, ("accessory:glasses", "accessory:sunglasses")),
    "hat": (14, ("accessory:hat",)),
    "earrings": (15, ("accessory:earrings",)),
    "necklace": (16, ("accessory:necklace",)),
}


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

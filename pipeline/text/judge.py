"""The guard of refinement: which captions of one image may survive, and why the others may not.

Plain Python on strings, so tests and `facecurate audit-captions` run the same checks as the refine
stage. Three ideas:
- **Facts with closure.** `pipeline.text.facts.extract` reads what a caption states and denies;
  `close` adds what that entails (hoop earrings -> earrings -> jewellery; "no jewellery" -> no earrings;
  a 25-year-old -> young). A candidate may generalise what the inputs say, never specialise it.
- **Votes.** Each of the image's cleaned captions votes once per fact: for it (asserts it), or against
  it (denies it, or asserts a value of the same slot it contradicts: "woman" against "man", "short
  hair" against "long hair"). A candidate that takes the losing side, or a side of a tie, is
  `inconsistent`; the refiner is told the majority (`Consensus.disputes`).
- **Graded evidence.** Mask evidence per item (eyeglasses, hat, earrings, necklace) is a state with a
  grade: `ground_truth` (the source's own mask), `parsers_agree` (two parsers reach the same state),
  `single_parser`, `parsers_disagree`. Only confident grades count (`CONFIDENT`, or a plain state
  string from a caller); they settle that item over the captions' votes and let a candidate state the
  generic item ("glasses", never "sunglasses") or deny it. A candidate against them is
  `mask_contradiction`; weak evidence is unknown.
Verdicts, first that applies: `mask_contradiction`, `inconsistent`, `invented_fact` (a fact no input
states and no evidence shows, or a denial no input makes). `judge()` is the public entry point;
`KeyState` is one image's refinement in progress (adds `duplicate`, checks candidates against the
captions already accepted, fills from the cleaned captions that agree with the majority, and flags
any contradiction left among the final captions).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pipeline.text import lexicon as L
from pipeline.text.clean_rules import clean_text, is_list
from pipeline.text.facts import age_group, extract
from pipeline.text.refine_prompt import build_messages
from pipeline.text.tokens import trim_to_budget

# Mask items: CelebAMask-HQ class id, the fact family the item settles, and what "present" lets a caption say.
MASK_ITEMS: dict[str, tuple[int, str, tuple[str, ...]]] = {
    "eyeglasses": (3, "eyewear", ("eyewear:any", "eyewear:glasses")),
    "hat": (14, "headwear", ("headwear:any", "headwear:hat")),
    "earrings": (15, "earrings", ("earrings:any",)),
    "necklace": (16, "necklace", ("necklace:any",)),
}
GRADES = ("ground_truth", "parsers_agree", "single_parser", "parsers_disagree")
CONFIDENT = {"ground_truth", "parsers_agree", "given"}
REASONS = ("mask_contradiction", "inconsistent", "invented_fact")


def dedup_key(text: str) -> str:
    """Captions that differ only in case, punctuation or articles are the same caption."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(w for w in words if w not in {"a", "an", "the"})


@lru_cache(maxsize=65536)
def _closure(asserted: frozenset[str], denied: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    a, d = set(asserted), set(denied)
    todo = list(a)
    while todo:
        f = todo.pop()
        more = list(L.IMPLIES.get(f, ()))
        if f.startswith("age_years:"):
            g = age_group(f)
            more += [g] if g else []
        for g in more:
            if g not in a:
                a.add(g)
                todo.append(g)
    todo = list(d)
    while todo:
        for g in L.GROUPS.get(todo.pop(), ()):
            if g not in d:
                d.add(g)
                todo.append(g)
    # "no jewelry other than earrings": what the caption states is the exception to what it denies
    d = {f for f in d if f not in a and not (_generics(f) & asserted)}
    return frozenset(a), frozenset(d)


@lru_cache(maxsize=4096)
def _generics(f: str) -> frozenset[str]:
    out, todo = set(), [f]
    while todo:
        for g in L.IMPLIES.get(todo.pop(), ()):
            if g not in out:
                out.add(g)
                todo.append(g)
    return frozenset(out)


def close(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(asserted, denied) of a caption with everything they entail."""
    f = extract(text)
    return _closure(frozenset(f.asserted), frozenset(f.denied))


def conflict(f: str, g: str) -> bool:
    """Two asserted facts that cannot both hold for one face."""
    if f == g:
        return False
    sf, _, vf = f.partition(":")
    sg, _, vg = g.partition(":")
    if sf == sg and sf in L.EXCLUSIVE:
        return frozenset((vf, vg)) not in L.COMPATIBLE.get(sf, set())
    if sf == sg == "garment_color":  # "a red sweater" vs "a green sweater"
        return vf.partition("=")[0] == vg.partition("=")[0]
    return frozenset((f, g)) in L.CONFLICTS


def _years(f: str) -> tuple[int, int]:
    lo, _, hi = f.split(":", 1)[1].partition("-")
    return int(lo), int(hi)


def normalize_evidence(evidence: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """item -> {"state", "grade"}; a plain state string is the caller's word (grade `given`)."""
    out = {}
    for item, v in (evidence or {}).items():
        if item not in MASK_ITEMS:
            raise ValueError(f"evidence: unknown item {item!r}; items: {', '.join(MASK_ITEMS)}")
        e = {"state": v, "grade": "given"} if isinstance(v, str) else dict(v)
        if e.get("state") not in ("present", "absent", "unknown"):
            raise ValueError(f"evidence.{item}: state must be present, absent or unknown, got {e.get('state')!r}")
        out[item] = e
    return out


def confident(evidence: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The items whose evidence counts: item -> present/absent."""
    return {i: e["state"] for i, e in evidence.items() if e["state"] != "unknown" and e.get("grade") in CONFIDENT}


class Consensus:
    """An image's cleaned captions as votes, plus its confident mask evidence."""

    def __init__(self, inputs: list[str], evidence: dict[str, Any] | None = None):
        self.inputs = list(inputs)
        self.evidence = normalize_evidence(evidence)
        self.mask = confident(self.evidence)
        self.closed = [close(t) for t in self.inputs]
        self.pro: Counter = Counter()
        self.con: Counter = Counter()
        for a, d in self.closed:
            self.pro.update(a)
            self.con.update(d)
        self.stated = set(self.pro)
        self.denied = set(self.con)
        self.years = [_years(f) for f in self.stated if f.startswith("age_years:")]
        self.settled = {MASK_ITEMS[i][1] for i in self.mask}
        self.allowed = {g for i, s in self.mask.items() if s == "present" for g in MASK_ITEMS[i][2]}
        self._against: dict[str, int] = {}

    def mask_conflicts(self, asserted: frozenset[str], denied: frozenset[str]) -> list[tuple[str, str, str]]:
        """(item, fact, "states"/"denies") where a caption's facts go against confident evidence."""
        out = []
        for f in sorted(asserted):
            item = self._family(f)
            if item and self.mask.get(item) == "absent":
                out.append((item, f, "states"))
        for f in sorted(denied):
            item = self._family(f)
            if item and self.mask.get(item) == "present" and f in MASK_ITEMS[item][2]:
                out.append((item, f, "denies"))
        return out

    def against(self, f: str) -> int:
        """Captions voting against an asserted fact: denying it or stating a value it contradicts."""
        if f not in self._against:
            self._against[f] = sum(1 for a, d in self.closed
                                   if f not in a and (f in d or any(conflict(f, g) for g in a)))
        return self._against[f]

    def _family(self, f: str) -> str | None:
        slot = f.split(":", 1)[0]
        return next((i for i, (_, fam, _) in MASK_ITEMS.items() if fam == slot), None)

    def check(self, raw_a: set[str], raw_d: set[str]) -> tuple[str, str]:
        """(reason, detail) for the facts a candidate states and denies; ("", "") when it may survive."""
        asserted, denied = _closure(frozenset(raw_a), frozenset(raw_d))
        # what the mask settles is checked against the mask alone, with everything it entails
        # (a necklace the mask shows is jewellery, whatever "no jewelry" said)
        voted, _ = _closure(frozenset(f for f in raw_a if f.split(":", 1)[0] not in self.settled), frozenset())
        for item, f, said in self.mask_conflicts(asserted, denied):
            grade = self.evidence[item]["grade"]
            return "mask_contradiction", (f"states {f} but the mask ({grade}) has no {item}" if said == "states" else
                                          f"denies {f} but the mask ({grade}) shows {item}")
        for f in sorted(voted):
            if f.split(":", 1)[0] in self.settled or f.startswith("age_years:"):
                continue
            n_against = self.against(f)
            if n_against and n_against >= self.pro[f]:
                return "inconsistent", f"states {f}: {n_against} caption(s) against, {self.pro[f]} for"
        for f in sorted(denied):
            if f.split(":", 1)[0] in self.settled:
                continue
            if self.pro[f] and self.pro[f] >= self.con[f]:
                return "inconsistent", f"denies {f}: {self.pro[f]} caption(s) state it, {self.con[f]} deny it"
        for f in sorted(raw_a):
            if f.startswith("age_years:"):
                lo, hi = _years(f)
                if not any(a - 5 <= lo and hi <= b + 5 for a, b in self.years):
                    return "invented_fact", f"states age {lo if lo == hi else f'{lo}-{hi}'}, which no caption states"
            elif f not in self.stated and f not in self.allowed:
                return "invented_fact", f"states {f}, which no caption states"
        for f in sorted(raw_d):
            item = self._family(f)
            if f in self.denied or (item and self.mask.get(item) == "absent"):
                continue
            if any(conflict(f, g) and self.pro[g] > self.against(g) for g in self.stated):
                continue  # "hair is not blonde" where the captions say brown
            return "invented_fact", f"denies {f}, which no caption denies"
        return "", ""

    def judge(self, text: str) -> tuple[str, str]:
        raw = extract(text)
        return self.check(raw.asserted, raw.denied)

    def disputes(self) -> list[dict[str, Any]]:
        """Facts the captions disagree on, with the votes and which side wins (or `tie`)."""
        out = []
        raw = set()
        for t in self.inputs:
            f = extract(t)
            raw |= f.asserted | f.denied
        for f in sorted(raw):
            if f.split(":", 1)[0] in self.settled or f.startswith("age_years:"):
                continue
            pro, con = self.pro[f], self.against(f)
            if pro and con:
                out.append({"fact": f, "for": pro, "against": con,
                            "majority": "for" if pro > con else "against" if con > pro else "tie"})
        seen = set()
        unique = []
        for d in out:  # "man 3 : 1" and "woman 1 : 3" are one dispute; keep the side that wins
            slot = d["fact"].split(":", 1)[0]
            key = (slot, d["for"] + d["against"]) if slot in L.EXCLUSIVE else (d["fact"],)
            if key in seen and d["majority"] != "for":
                continue
            seen.add(key)
            unique.append(d)
        return unique

    def votes(self) -> dict[str, dict[str, int]]:
        """slot -> value -> captions stating it (stated facts only, for reports)."""
        out: dict[str, dict[str, int]] = {}
        for t in self.inputs:
            f = extract(t)
            for fact in f.asserted:
                slot, _, v = fact.partition(":")
                out.setdefault(slot, {}).setdefault(v, 0)
                out[slot][v] += 1
            for fact in f.denied:
                slot, _, v = fact.partition(":")
                out.setdefault(slot, {}).setdefault(f"no {v}", 0)
                out[slot][f"no {v}"] += 1
        return {s: dict(sorted(v.items(), key=lambda kv: -kv[1])) for s, v in
                sorted(out.items(), key=lambda kv: L.SLOTS.index(kv[0]) if kv[0] in L.SLOTS else 99)}


def judge(candidate: str, inputs: list[str], evidence: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Whether a refined caption may survive, given the image's cleaned captions and mask evidence.

    `evidence` maps eyeglasses/hat/earrings/necklace to present/absent/unknown (taken as confident), or
    to {"state": ..., "grade": one of GRADES}. Returns (True, "") or (False, "<reason>: <detail>") with
    reason mask_contradiction, inconsistent or invented_fact.
    """
    reason, detail = Consensus(inputs, evidence).judge(candidate)
    return (not reason, f"{reason}: {detail}" if reason else "")


def contradictions(texts: list[str]) -> list[tuple[int, int, str]]:
    """Pairs of captions (i, j, fact) that contradict each other: one states what the other denies or rules out."""
    closed = [close(t) for t in texts]
    out = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            (ai, di), (aj, dj) = closed[i], closed[j]
            hit = next((f for f in sorted(ai) if f in dj or any(conflict(f, g) for g in aj)), None) \
                or next((f for f in sorted(aj) if f in di), None)
            if hit:
                out.append((i, j, hit))
    return out


@dataclass
class KeyState:
    """One image's refinement in progress.

    Args:
        key: the image key.
        captions: its cleaned ok captions as (prompt_id, text), in prompt order.
        evidence: mask item -> state or {"state", "grade"} ({} when the image has no mask).
        want: captions wanted (10).
        budget: CLIP tokens allowed per caption.
    """

    key: str
    captions: list[tuple[str, str]]
    evidence: dict[str, Any]
    want: int = 10
    budget: int = 77
    accepted: list[tuple[str, str, int]] = field(default_factory=list)  # (text, provenance, tokens)
    rejected: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)
    log: list[dict[str, str]] = field(default_factory=list)
    parsed: bool = False
    trimmed: int = 0
    engine_error: str = ""

    def __post_init__(self) -> None:
        self.consensus = Consensus([t for _, t in self.captions], self.evidence)
        self.sources = [pid for pid, _ in self.captions]
        self.seen: set[str] = set()
        self._closed: list[tuple[frozenset[str], frozenset[str]]] = []

    @property
    def missing(self) -> int:
        return self.want - len(self.accepted)

    def messages(self) -> list[dict[str, str]]:
        accepted = [t for t, _, _ in self.accepted]
        return build_messages(self.captions, self.consensus.evidence, self.missing, accepted, self.examples,
                              self.consensus.disputes())

    def reject(self, reason: str, text: str = "", why: str = "") -> None:
        self.rejected[reason] += 1
        if text:
            self.examples.append((text[:120], why or reason))
            self.log.append({"text": text[:300], "reason": reason, "why": why})

    def offer(self, text: str, source: str) -> str:
        """Check one refined caption and accept it; returns "" or the rejection reason."""
        if self.missing <= 0:
            return "surplus"
        cleaned, _, verdict = clean_text(text, "refined")
        if verdict:
            self.reject(verdict, text, "cleans to nothing usable")
            return verdict
        raw = extract(cleaned)
        a, d = _closure(frozenset(raw.asserted), frozenset(raw.denied))
        reason, why = self.consensus.check(raw.asserted, raw.denied)
        if not reason:
            clash = next(((f, t) for (pa, pd), (t, _, _) in zip(self._closed, self.accepted, strict=True)
                          for f in sorted(a) if f in pd or any(conflict(f, g) for g in pa)), None)
            if clash:
                reason, why = "inconsistent", f"states {clash[0]}, which contradicts an accepted caption"
        if reason:
            self.reject(reason, cleaned, why)
            return reason
        k = dedup_key(cleaned)
        if k in self.seen:
            self.reject("duplicate", cleaned, "repeats an accepted caption")
            return "duplicate"
        cleaned, n, how = trim_to_budget(cleaned, self.budget)
        self.trimmed += bool(how)
        self.seen.add(k)
        self._closed.append((a, d))
        self.accepted.append((cleaned, f"refined:{source}" if source in self.sources else "generated", n))
        return ""

    def result(self) -> tuple[list[str], list[str], list[int], list[str]]:
        """(captions, provenance, clip_tokens, flags): accepted captions, filled from the cleaned ones."""
        flags = [] if self.consensus.mask else (["no_mask_evidence"] if not self.evidence else ["weak_mask_evidence"])
        final = list(self.accepted)
        dropped = 0
        if len(final) < self.want:
            fill = []
            for pid, t in self.captions:
                if dedup_key(t) in self.seen:
                    continue
                if self.consensus.judge(t)[0] in ("inconsistent", "mask_contradiction"):
                    dropped += 1  # the minority's caption, or one the mask refutes: it would contradict
                    continue
                fill.append((t, f"cleaned:{pid}"))
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
        if dropped:
            flags.append(f"dropped_contradicting={dropped}")
        if len(final) < self.want:
            flags.append("too_few_captions")
        flags += [f"rejected:{r}={n}" for r, n in sorted(self.rejected.items())]
        if self.trimmed:
            flags.append(f"trimmed={self.trimmed}")
        texts = [t for t, _, _ in final]
        for i, t in enumerate(texts):  # the final checks: every caption against its mask and the others
            items = dict.fromkeys(item for item, _, _ in self.consensus.mask_conflicts(*close(t)))
            flags += [f"mask_contradiction:{item}@{i}" for item in items]
        flags += [f"contradiction:{f.split(':', 1)[0]}@{i},{j}" for i, j, f in contradictions(texts)]
        return texts, [p for _, p, _ in final], [n for _, _, n in final], flags

    def audit(self) -> dict[str, Any]:
        """What the report shows for this image: evidence, votes, disputes and every rejection."""
        return {"evidence": self.consensus.evidence, "votes": self.consensus.votes(),
                "disputes": self.consensus.disputes(), "rejections": self.log[:50]}

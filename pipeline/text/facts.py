"""The fact model: what one caption states and denies, with negation read by scope.

`extract(text) -> Facts` in four passes over a word tokenizer (hyphenated words and "n't" are tokens):
1. Rewrites that carry negation inside a word: "glasses-free" -> "no glasses", "hatless" -> "no hat",
   "bare-faced" -> "no makeup", each closed off so the negation reaches no further.
2. Spans: ages ("25-year-old", "in her early thirties", "aged 40") first, then the longest phrase of
   `lexicon.TERMS` at each position. Look-alike phrases ("cap sleeves", "hair tie", "shades of") are
   spans that state nothing, so their words cannot be read as a cap, a tie or sunglasses.
3. Negation scope, NegEx-style. A trigger ("no", "not", "n't", "without", "never", "neither", "nor",
   "lacks", "free of", "absence of", "rather than") opens a scope forward: its verb chain ("does not
   appear to be wearing any") is skipped, then the scope covers the words that follow and continues over
   a coordinated list ("glasses, earrings, hats or necklaces") while the next item is an accessory-like
   thing; it ends at a terminator (sentence punctuation, "but", "however", "except", "other than", ...)
   or at a new verb or "with" once something was negated. Post triggers ("are absent", "not visible",
   "Glasses? None.", "Accessories: none", "Hat: no") negate the list just before them. Pseudo
   negations ("not only", "no doubt", "nothing but") negate nothing.
4. Modifiers attach to their noun: walking back from "hair", "eyes", "skin" or a garment over colour,
   length and texture words and fillers ("long, thick, wavy auburn hair"), and forward over a
   predicate ("hair is long and brown", "Hair: long, straight, dark brown"). A colour next to
   "background" or "beard" states nothing tracked; "dark blonde" is blonde, "light brown skin" medium.
A negated span or modifier is a denial; a fact written "!slot:value" in the lexicon ("clean-shaven",
"eyes open") is a denial that a negation turns into an assertion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from pipeline.text import lexicon as L
from pipeline.text.clean_rules import is_list

_TOKEN = re.compile(r"[a-z0-9]+(?:['&/-][a-z0-9]+)*|n't|'s|§|[.,;:!?()]")
_FREE = re.compile(r"\b([a-z]+(?:-[a-z]+)?)-free\b")
_LESS = {"hatless": "no hat", "beardless": "no beard", "makeupless": "no makeup", "bareheaded": "no hat",
         "bare-headed": "no hat", "bare-faced": "no makeup", "barefaced": "no makeup", "bare-skinned": "no makeup",
         "earringless": "no earrings", "glassesless": "no glasses", "jewelry-less": "no jewelry",
         "unsmiling": "not smiling", "unadorned": "no jewelry", "accessory-less": "no accessories",
         "makeup-less": "no makeup", "mustacheless": "no mustache", "unbearded": "no beard"}
_LESS_RX = re.compile(r"\b(" + "|".join(re.escape(w) for w in _LESS) + r")\b")

PRE = {("no",), ("not",), ("n't",), ("without",), ("never",), ("neither",), ("nor",), ("lacks",), ("lacking",),
       ("lack", "of"), ("absence", "of"), ("free", "of"), ("free", "from"), ("devoid", "of"), ("none", "of"),
       ("instead", "of"), ("rather", "than"), ("zero",), ("nary", "a")}
PSEUDO = {("not", "only"), ("not", "just"), ("no", "doubt"), ("without", "a", "doubt"), ("without", "doubt"),
          ("nothing", "but"), ("no", "longer"), ("not", "necessarily"), ("not", "merely"), ("no", "matter"),
          ("not", "to", "mention"), ("no", "less"), ("not", "too"), ("not", "overly")}
# Post triggers; "not"/"n't" before a word of POST_WORDS is one too ("earrings are not visible"), unless a
# verb or a thing follows ("she is not seen wearing earrings" negates forward).
POST = {("absent",), ("missing",), ("none",), ("nowhere", "to", "be", "seen"), ("can", "not", "be", "seen"),
        ("ca", "n't", "be", "seen"), ("not", "to", "be", "seen")}
POST_WORDS = {"visible", "present", "seen", "apparent", "evident", "shown", "worn", "noticeable", "pictured",
              "observed", "included", "detected", "discernible", "obvious"}
_MAX_TRIGGER = 4
HARD_STOPS = {".", ";", "!", "?", "(", ")", "§", ":", "but", "however", "although", "though", "yet", "while",
              "whereas", "except", "excepting", "besides", "apart", "aside", "save", "other", "instead", "beyond",
              "unlike", "plus", "also", "only", "just", "which", "who", "whose"}
VERB_STOPS = {"has", "have", "had", "wears", "wearing", "wore", "worn", "with", "is", "are", "was", "were", "sports",
              "sporting", "shows", "showing", "features", "featuring", "displays", "displaying", "looks", "looking",
              "appears", "seems", "she", "he", "they", "her", "his", "their", "its", "it", "dons", "donning", "in",
              "smiles", "smiling", "gazes", "stands", "sits", "poses", "posing"}
CHAIN = {"appear", "appears", "appeared", "seem", "seems", "seemed", "to", "be", "been", "being", "wearing", "wear",
         "wears", "wore", "have", "has", "having", "had", "sporting", "sport", "any", "visible", "visibly", "apparent",
         "obvious", "seen", "see", "there", "is", "are", "was", "were", "a", "an", "the", "her", "his", "their",
         "of", "do", "does", "did", "showing", "show", "shows", "display", "displaying", "don", "donning", "signs",
         "sign", "trace", "traces", "evidence", "hint", "really", "at", "all", "put", "on", "seeing", "noticeable",
         "discernible", "detectable", "particular", "kind", "type", "other", "actually", "currently", "certainly",
         "clearly", "it", "that", "she", "he", "they", "with", "or", "and", "either", "obviously",
         "dressed", "in", "immediately", "readily", "distinct", "prominent", "real", "much", "heavy"}
DETERMINERS = {"a", "an", "any", "the", "her", "his", "their", "some", "no", "small", "large", "big", "visible",
               "other"}
BACK_SKIP = {",", "and", "or", "a", "an", "the", "her", "his", "their", "of", "is", "are", "was", "were", "be",
             "been", "appear", "appears", "seem", "seems", "to", "also", "both", "all", "any", "entirely",
             "completely", "clearly", "visibly", "totally", "noticeably", "conspicuously", "such", "as"}
LISTABLE = {"eyewear", "headwear", "hair_accessory", "earrings", "necklace", "jewelry", "accessories", "accessory",
            "makeup", "marks", "facial_hair", "clothing"}
BACK_SLOTS = LISTABLE | {"expression", "hair_style"}


@dataclass
class Facts:
    """What one caption asserts and denies, as `slot:value` strings."""

    asserted: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)

    def slots(self) -> set[str]:
        return {f.split(":", 1)[0] for f in self.asserted}


@dataclass
class _Span:
    start: int
    end: int
    facts: tuple[str, ...]
    head: str | None


def normalize(text: str) -> list[str]:
    """Lower-cased word tokens; "n't" split off, negating words rewritten ("glasses-free" -> no glasses §)."""
    t = text.lower().replace("’", "'").replace("‘", "'").replace("–", "-").replace("—", " , ").replace("…", ".")
    t = t.replace("“", '"').replace("”", '"')
    t = re.sub(r"(?<=[a-z])n't\b", " n't", t)
    t = re.sub(r"\bcannot\b", "can not", t)
    t = _FREE.sub(lambda m: f" no {m.group(1).replace('-', ' ')} § ", t)
    t = _LESS_RX.sub(lambda m: f" {_LESS[m.group(1)]} § ", t)
    tokens = []
    for tok in _TOKEN.findall(t):
        tokens.extend(_split(tok))
    return tokens


def _split(tok: str) -> list[str]:
    """"brown-haired" -> brown hair; "blue-eyed" -> blue eyes; "dark-brown" -> dark brown (known parts only)."""
    if "-" not in tok or (tok,) in _PHRASES:
        return [tok]
    head, _, suffix = tok.rpartition("-")
    if suffix == "looking" and head:  # "stern-looking" reads as "stern"
        return _split(head)
    noun = {"haired": "hair", "headed": "hair", "eyed": "eyes", "skinned": "skin", "complexioned": "skin"}.get(suffix)
    if noun:
        return [*_split(head), noun] if head else [noun]
    parts = tok.split("-")
    if all(p in _MODIFIERS for p in parts):
        return parts
    return [tok]


def _phrases() -> dict[tuple[str, ...], tuple[tuple[str, ...], str | None]]:
    table: dict[tuple[str, ...], tuple[tuple[str, ...], str | None]] = {}
    for key, facts in L.TERMS.items():
        table[key] = (facts, None)
    for words, head in ((L.HAIR_HEADS, "hair"), (L.EYE_HEADS, "eyes"), (L.SKIN_HEADS, "skin"),
                        (L.NEUTRAL_HEADS, "neutral"), (L.PERSON_NOUNS, "person")):
        for w in words:
            key = tuple(w.split())
            table[key] = (table.get(key, ((), None))[0], head)
    for w, v in L.GARMENTS.items():
        key = tuple(w.split())
        table[key] = (tuple(dict.fromkeys(table.get(key, ((), None))[0] + L.GARMENT_FACTS[v])), "garment")
    return table


_PHRASES = _phrases()
_LONGEST: dict[str, int] = {}  # first word -> longest phrase starting with it
for _k in _PHRASES:
    _LONGEST[_k[0]] = max(_LONGEST.get(_k[0], 0), len(_k))
_TRIGGER_FIRST = {k[0] for k in PRE | POST | PSEUDO}
_AGE_FIRST = {"aged", "age", "about", "around", "approximately", "roughly", "circa", "maybe", "early", "mid", "late",
              *L.DECADES}
_TABLES = {"hair": (("hair_color", L.HAIR_COLORS), ("hair_length", L.HAIR_LENGTHS),
                    ("hair_texture", L.HAIR_TEXTURES), ("hair_style", L.HAIR_STYLE_WORDS)),
           "eyes": (("eye_color", L.EYE_COLORS),), "skin": (("skin_tone", L.SKIN_TONES),),
           "garment": (("clothing_color", L.CLOTHING_COLORS),), "neutral": (), "person": ()}
_MODIFIERS = (set(L.HAIR_COLORS) | set(L.HAIR_LENGTHS) | set(L.HAIR_TEXTURES) | set(L.EYE_COLORS) | set(L.SKIN_TONES)
              | set(L.CLOTHING_COLORS) | L.SHADES)
_AGE = re.compile(r"^(\d{1,3})-years?-old$")
_DECADE = re.compile(r"^(\d)0s$")
_INT = re.compile(r"^\d{1,3}$")


@lru_cache(maxsize=65536)
def extract(text: str) -> Facts:
    """The facts a caption asserts and denies (raw: no implications; see `pipeline.text.judge.close`)."""
    tokens = normalize(text)
    spans = _spans(tokens)
    neg = _negation(tokens, spans, is_list(text))
    facts = Facts()
    for s in spans:
        for f in s.facts:
            _add(facts, f, neg[s.start])
    for s in spans:
        if s.head:
            _attach(tokens, spans, s, neg, facts)
    return facts


def _add(facts: Facts, fact: str, negated: bool) -> None:
    if fact.startswith("!"):
        fact, negated = fact[1:], not negated
    (facts.denied if negated else facts.asserted).add(fact)


def _age_span(tokens: list[str], i: int) -> tuple[int, str] | None:
    """(tokens used, "age_years:lo-hi") for an age written at i."""
    t = tokens[i]
    m = _AGE.match(t)
    if m:
        return 1, _years(int(m.group(1)))
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    if _INT.match(t) and nxt in ("year", "years", "year-old", "yr", "yrs"):
        used = 2 + (i + 2 < len(tokens) and tokens[i + 2] in ("old", "of"))
        used += (used == 3 and tokens[i + 2] == "of" and i + 3 < len(tokens) and tokens[i + 3] == "age")
        return used, _years(int(t))
    if t in ("aged", "age", "about", "around", "approximately", "roughly", "circa", "maybe") and _INT.match(nxt) \
            and (t in ("aged", "age") or 10 <= int(nxt) <= 110):
        used = 2
        if i + 2 < len(tokens) and tokens[i + 2] in ("year", "years", "yrs"):
            used = 3 + (i + 3 < len(tokens) and tokens[i + 3] == "old")
        return used, _years(int(nxt))
    if t in ("early", "mid", "mid-", "late") or _DECADE.match(t) or t in L.DECADES:
        part = t if t in ("early", "mid", "late") else ""
        d = tokens[i + 1] if part else t
        m = _DECADE.match(d)
        base = int(m.group(1)) * 10 if m else L.DECADES.get(d)
        if base is None:
            return None
        lo, hi = {"early": (0, 3), "mid": (3, 6), "late": (6, 9), "": (0, 9)}[part]
        return (2 if part else 1), f"age_years:{base + lo}-{base + hi}"
    return None


def _gaze_span(tokens: list[str], i: int) -> tuple[int, str] | None:
    """(tokens used, "gaze:...") for "looking slightly to the left", "looks off to the right", "gazing down"."""
    if tokens[i] not in L.GAZE_VERBS:
        return None
    j = i + 1
    while j < len(tokens) and j - i <= 3 and tokens[j] in L.GAZE_ADVERBS:
        j += 1
    for size in (3, 2, 1):
        where = L.GAZE_TARGETS.get(tuple(tokens[j:j + size]))
        if where:
            return j + size - i, f"gaze:{where}"
    if j > i + 1 and tokens[j - 1] in ("down", "up") and tokens[i] not in ("turned", "facing"):
        return j - i, f"gaze:{tokens[j - 1]}"
    return None


def _years(n: int) -> str:
    return f"age_years:{n}-{n}"


def age_group(fact: str) -> str | None:
    """The age group an `age_years:lo-hi` fact implies (by its midpoint)."""
    lo, _, hi = fact.split(":", 1)[1].partition("-")
    mid = (int(lo) + int(hi)) / 2
    return next((f"age:{g}" for a, b, g in L.AGE_GROUPS if a <= mid < b + 1), None)


def _spans(tokens: list[str]) -> list[_Span]:
    spans: list[_Span] = []
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        age = _age_span(tokens, i) if t[0].isdigit() or t in _AGE_FIRST else None
        if age:
            used, fact = age
            spans.append(_Span(i, i + used, (fact,), None))
            i += used
            continue
        gaze = _gaze_span(tokens, i) if t in L.GAZE_VERBS else None
        if gaze:
            used, fact = gaze
            spans.append(_Span(i, i + used, (fact,), None))
            i += used
            continue
        for size in range(min(_LONGEST.get(t, 0), n - i), 0, -1):
            hit = _PHRASES.get(tuple(tokens[i:i + size]))
            if hit is not None:
                facts, head = hit
                nxt = tokens[i + size] if i + size < n else ""
                if facts and all(f.startswith("hair_color:") for f in facts) and _is_neutral_head(nxt):
                    facts = ()  # "blonde highlights", "ginger beard": not the hair's colour
                spans.append(_Span(i, i + size, facts, head))
                i += size
                break
        else:
            if tokens[i] in L.PERSON_COLOURS and i + 1 < n and (tokens[i + 1],) in _PHRASES \
                    and _PHRASES[(tokens[i + 1],)][1] == "person":
                spans.append(_Span(i, i + 1, (L.PERSON_COLOURS[tokens[i]],), None))
            i += 1
    return spans


def _is_neutral_head(tok: str) -> bool:
    hit = _PHRASES.get((tok,))
    return bool(hit and hit[1] == "neutral")


def _match(tokens: list[str], i: int, table: set[tuple[str, ...]]) -> int:
    if tokens[i] not in _TRIGGER_FIRST:
        return 0
    for size in range(min(_MAX_TRIGGER, len(tokens) - i), 0, -1):
        if tuple(tokens[i:i + size]) in table:
            return size
    return 0


def _negation(tokens: list[str], spans: list[_Span], keywords: bool = False) -> list[bool]:
    """Per token: inside a negation's scope."""
    n = len(tokens)
    neg = [False] * n
    start_of = {s.start: s for s in spans}
    in_span = {}
    for s in spans:
        for k in range(s.start, s.end):
            in_span[k] = s
    i = 0
    while i < n:
        if _match(tokens, i, PSEUDO):
            i += _match(tokens, i, PSEUDO)
            continue
        post = _match(tokens, i, POST)
        if post and not (tokens[i] == "none" and i + 1 < n and tokens[i + 1] == "of"):
            _back(tokens, i, in_span, neg)
            i += post
            continue
        if tokens[i] == "no" and (i + 1 == n or tokens[i + 1] in HARD_STOPS) and i > 0 and tokens[i - 1] in ":?-,":
            _back(tokens, i, in_span, neg)  # "Glasses: no."
            i += 1
            continue
        size = _match(tokens, i, PRE)
        if size and tokens[i] in ("not", "n't") and i + 1 < n and tokens[i + 1] in POST_WORDS \
                and not (i + 2 < n and (tokens[i + 2] in _PRE_AFTER or i + 2 in start_of)):
            _back(tokens, i, in_span, neg)  # "glasses are not visible"
            i += 2
            continue
        if size:
            i = _forward(tokens, i + size, start_of, in_span, neg, keywords)
            continue
        i += 1
    return neg


_PRE_AFTER = {"wearing", "with", "in", "to", "sporting", "having", "any", "on", "a", "an", "the"}


def _listable(span: _Span | None) -> bool:
    return bool(span and span.facts and any(f.lstrip("!").split(":", 1)[0] in LISTABLE for f in span.facts))


def _forward(tokens: list[str], j: int, start_of: dict, in_span: dict, neg: list[bool], keywords: bool) -> int:
    n = len(tokens)
    seen = False
    lead = 0
    while j < n:
        t = tokens[j]
        if t in HARD_STOPS and not (t == "other" and seen is False and j + 1 < n and tokens[j + 1] != "than"):
            break
        if t == "than" and j > 0 and tokens[j - 1] == "other":
            break
        span = in_span.get(j)
        if not seen:
            if span is None and t not in CHAIN and t not in _MODIFIERS:
                lead += 1
                if lead > 3:
                    break
        else:
            if t in VERB_STOPS and span is None:
                break
            if t == "," and keywords:
                break  # a keyword list: each item stands alone ("no hat, hoodie")
            if t in (",", "and", "&"):
                k = j + 1
                while k < n and tokens[k] in DETERMINERS - {"no"}:
                    if t == "and" and tokens[k] in ("a", "an", "the", "some", "her", "his", "their"):
                        break
                    k += 1
                if k < n and tokens[k] in ("no", "not", "without", "nor", "n't"):
                    break
                if _listable(start_of.get(k)) and not (t == "and" and k > j + 1 and tokens[j + 1] != "any"):
                    j += 1
                    continue
                break
        neg[j] = True
        if (span is not None and span.facts) or t in _MODIFIERS or (span is not None and span.head):
            seen = seen or bool(span is not None and (span.facts or span.head)) or t in _MODIFIERS
        j += 1
    return j


def _back(tokens: list[str], p: int, in_span: dict, neg: list[bool]) -> None:
    j = p - 1
    seen = False
    while j >= 0:
        t = tokens[j]
        span = in_span.get(j)
        if span is not None and span.facts and any(f.lstrip("!").split(":", 1)[0] in BACK_SLOTS for f in span.facts):
            for k in range(span.start, span.end):
                neg[k] = True
            seen = True
            j = span.start - 1
            continue
        if t in (":", "?", "-") and not seen:
            j -= 1
            continue
        if t in BACK_SKIP or t in _MODIFIERS or t in L.FILLER:
            j -= 1
            continue
        break


def _attach(tokens: list[str], spans: list[_Span], head: _Span, neg: list[bool], facts: Facts) -> None:
    """Modifier runs before the head and in a predicate after it, read with the head's tables."""
    tables = _TABLES[head.head]
    if not tables:
        return
    span_at = {k: s for s in spans for k in range(s.start, s.end)}

    def is_mod(k: int) -> bool:
        t = tokens[k]
        s = span_at.get(k)
        if s is not None and s.head and s is not head:
            return False
        return t in L.FILLER or any(t in table for _, table in tables)

    run = []
    k = head.start - 1
    while k >= 0 and is_mod(k):
        run.append(k)
        k -= 1
    run.reverse()
    garment = next((f.split(":", 1)[1] for f in head.facts if f.startswith("clothing:") and f != "clothing:any"), "")
    _emit(tokens, run, tables, head.head, neg, facts, garment)
    # forward predicate: "hair is long and brown", "Hair: long, dark brown", "eyes that are blue"
    k, linked = head.end, False
    while k < len(tokens) and k - head.end < 5 and tokens[k] in ("is", "are", "looks", "look", "appears", "appear",
                                                                   "seems", "seem", "to", "be", ":", "-", "which",
                                                                   "that", ",", "not", "n't", "both", "quite", "very",
                                                                   "mostly", "naturally", "mainly", "possibly",
                                                                   "probably", "perhaps", "maybe", "likely"):
        linked = linked or tokens[k] not in (",", "to", "be", "not", "n't", "both", "quite", "very")
        k += 1
    if not linked:
        return
    run = []
    while k < len(tokens) and is_mod(k):
        run.append(k)
        k += 1
    if k < len(tokens) and span_at.get(k) is not None and span_at[k].head and run:
        cut = max((i for i, r in enumerate(run) if tokens[r] in (",", "and")), default=-1)
        run = run[:cut] if cut >= 0 else []  # "Hair: long, blue eyes": "blue" belongs to the eyes
    _emit(tokens, run, tables, head.head, neg, facts, garment)


def _emit(tokens: list[str], run: list[int], tables: tuple, kind: str, neg: list[bool], facts: Facts,
          garment: str = "") -> None:
    for i, k in enumerate(run):
        t = tokens[k]
        nxt = tokens[run[i + 1]] if i + 1 < len(run) and run[i + 1] == k + 1 else ""
        prev = tokens[run[i - 1]] if i > 0 and run[i - 1] == k - 1 else ""
        if kind == "skin" and ((t, nxt) in L.SKIN_COMPOUNDS or (prev, t) in L.SKIN_COMPOUNDS):
            if (t, nxt) in L.SKIN_COMPOUNDS:
                _add(facts, f"skin_tone:{L.SKIN_COMPOUNDS[(t, nxt)]}", neg[k])
            continue
        for slot, table in tables:
            value = table.get(t)
            if value is None:
                continue
            if t in L.SHADES and nxt:
                other = table.get(nxt)
                if other and other != value and frozenset((value, other)) not in L.COMPATIBLE.get(slot, set()):
                    continue  # "dark blonde": the shade of a colour, not a colour of its own
            _add(facts, f"{slot}:{value}", neg[k])
            if garment and slot == "clothing_color":  # "a red sweater": the sweater's colour, to compare
                _add(facts, f"garment_color:{garment}={value}", neg[k])

"""The cleaning rules for raw VLM captions: small, named, each tested (tests/fixtures/vlm_outputs.yaml).

`clean_text(text, kind, finish_reason)` applies every rule in `RULES` order and returns the cleaned
text, the names of the rules that changed it, and a verdict: "" (usable), `empty`, `meaningless` or
`refusal`. A rule is a plain function `(text, ctx) -> text`; a rule is recorded only when it changed
the text, so `rules_applied` says exactly what happened to each caption.

Order matters: unicode and chat debris first (so later patterns see plain text), then what wraps the
caption (instruction echoes, lead-ins, suffixes, markdown), then what sits inside it (placeholders,
meta-commentary, loops, an unfinished tail), then form (keyword lists, quotes, whitespace,
punctuation, capitals).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.text.tokens import is_plain_ascii

I = re.IGNORECASE  # noqa: E741 - short alias keeps the patterns readable


@dataclass(frozen=True)
class Ctx:
    """What a rule may know besides the text: the prompt kind and the generation's finish reason."""

    keywords: bool = False
    finish_reason: str = "stop"


# ---------------------------------------------------------------------------------------------- text


def unicode(text: str, ctx: Ctx) -> str:
    """Mojibake, curly quotes, ligatures, full-width forms, HTML entities, invisible characters.

    Also makes the caption count the same under open_clip and transformers' CLIPTokenizer (see tokens.py).
    """
    if not is_plain_ascii(text):
        import ftfy  # a dependency of open-clip-torch

        text = html.unescape(ftfy.fix_text(text))
    text = unicodedata.normalize("NFC", text).replace("\u00a0", " ").replace("…", "...")
    return re.sub(r"[\u200b-\u200f\u2060\ufeff]", "", text)


_SPECIAL = re.compile(r"<\|[a-z_]+\|>|</?s>|\[/?INST\]|</?img>|<IMG_CONTEXT>|<image>|<video>|</?think>", I)


def chat_tokens(text: str, ctx: Ctx) -> str:
    """Thinking blocks, chat special tokens and a leaked role header (`assistant\\n`)."""
    text = re.sub(r"<think>.*?(?:</think>|$)", " ", text, flags=re.S | I)
    text = _SPECIAL.sub(" ", text)
    return re.sub(r"^\s*(?:assistant|model|gpt)\s*:?\s*\n", "", text, flags=I)


_ECHO = (r"(?:generate|write|provide|give|create|describe|caption|list)\b[^:\n]{0,120}?"
         r"(?:image|photo|picture|person|face|portrait|keywords|caption|above|below)[^:\n]{0,40}[:\n]")
_PREFIXES = [
    re.compile(rf"^\s*{_ECHO}", I),
    re.compile(r"^\s*(?:sure|certainly|of course|absolutely|okay|ok|alright)\s*[!.,]\s*", I),
    re.compile(r"^\s*here(?:'s| is| are)\b[^:\n]{0,100}?(?:caption|description|keywords|summary|list|version|"
               r"answer|attempt|result|tags)[^:\n]{0,40}[:\n]", I),
    re.compile(r"^\s*(?:final |image |short |detailed |concise )?(?:caption|description|answer|output|response|"
               r"keywords|tags|result)s?\s*(?:\(\d+ words?\))?\s*[:\-]\s*", I),
]


def instruction_prefix(text: str, ctx: Ctx) -> str:
    """Echoed instructions and chatty lead-ins: "Generate a caption for the image above:", "Sure! Here is..."."""
    out = text
    for _ in range(4):  # they stack: "Sure! Here is the caption:\nCaption: ..."
        before = out
        for rx in _PREFIXES:
            out = rx.sub("", out, count=1)
        if out == before:
            break
    return out.lstrip() if out != text else text


_LEAD = re.compile(r"^\s*(?:in (?:this|the) (?:image|photo|picture),?\s*(?:we see|there is|there's)?\s*|"
                   r"(?:the|this) (?:image|photo|photograph|picture|shot) (?:shows|depicts|features|captures|"
                   r"presents|displays|is of|contains|portrays)\s+)", I)


def image_lead(text: str, ctx: Ctx) -> str:
    """"The image shows a woman..." -> "A woman...": the lead-in says nothing CLIP can use."""
    return _LEAD.sub("", text, count=1)


_SUFFIXES = [
    r"\(?\s*(?:max(?:imum)?\.?|under|at most|up to|less than)\s*\d+\s*(?:clip\s*)?(?:tokens?|words?)\s*\.?\s*\)?",
    r"\(\s*\d+\s*(?:tokens?|words?)\s*\)",
    r"(?:word|token|character) count\s*:?\s*\d+\.?",
    r"(?:i hope (?:this|that) helps|let me know if|feel free to|is there anything else|hope this helps)[^\n]*",
    r"\(?note\s*:[^\n]*\)?",
]
_SUFFIX = re.compile(r"(?:\s*(?:" + "|".join(_SUFFIXES) + r")\s*[.!]?)+\s*$", I)


def instruction_suffix(text: str, ctx: Ctx) -> str:
    """Echoed limits and sign-offs: "Max 75 tokens.", "(42 words)", "I hope this helps!", "Note: ..."."""
    out = _SUFFIX.sub("", text)
    return out.rstrip() if out != text else text


def markdown(text: str, ctx: Ctx) -> str:
    """Bold, italics, code, headings, bullets and numbered lists; list items become one line."""
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?!\w)", r"\1", text)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"^\s*#{1,6}\s*(?:keywords|tags|caption|description|answer|summary|output)\s*:?\s*$", "", text,
                  flags=re.M | I)  # a heading that only labels the answer
    text = re.sub(r"^\s*(?:#{1,6}\s+|>\s*|[-*•+]\s+|\d{1,2}[.)]\s+|-{3,}\s*$)", "", text, flags=re.M)
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) <= 1:
        return text
    if all(len(ln.split()) <= 4 and ln[-1] not in ".!?" for ln in lines):
        return ", ".join(ln.rstrip(",;") for ln in lines)  # a list of short items is a keyword list
    return " ".join(ln if ln[-1] in ".!?,;:" else ln + "." for ln in lines)


# ------------------------------------------------------------------------------------------ content

_PH = r"[\[{<][^\]}>\n]{1,60}[\]}>]"
_PLACEHOLDER_RULES = [
    (re.compile(r"\[photo style\]|\{photo style\}|<photo style>", I), "photo"),
    (re.compile(r"[\[{<](?:gender|person|subject|man/woman|woman/man)[\]}>]", I), "person"),
    # the placeholder and the words that only made sense around it
    (re.compile(rf"\s*,?\s*\b(?:wearing|with|has|having|in|sporting|dressed in|and|who is|featuring|looking|facing|gazing)\s+"
                rf"(?:an? |the |some )?{_PH}(?:\s+(?:features|appearance|hair|eyes|expression|clothing|"
                rf"attire|background|lighting|style|skin))?", I), "\x00"),
    (re.compile(rf"{_PH}\s+(?:features|appearance|hair|eyes|expression|clothing|skin)\b", I), "\x00"),
    (re.compile(_PH), "\x00"),
    # "a woman[, wearing X] and smiling" -> "a woman, smiling"
    (re.compile(r"(?:\s*\x00)+\s+(?:and|or)\b"), ","),
    (re.compile(r"\x00"), ""),
]
_DANGLING = re.compile(r"\b(?:a|an|the|with|wearing|and|of|in|has|having|is|who is)\s*(?=[,.;:!?]|$)", I)


def placeholders(text: str, ctx: Ctx) -> str:
    """Unfilled template slots ("[clothing/accessories]") and the words that only made sense around them."""
    if not re.search(_PH, text):
        return text
    for rx, repl in _PLACEHOLDER_RULES:
        text = rx.sub(repl, text)
    for _ in range(3):  # "wearing a ." -> "wearing ." -> "."
        text = _DANGLING.sub("", text)
    text = re.sub(r"\b(an?)\s+(an?)\b", r"\1", text)
    return re.sub(r" {2,}", " ", re.sub(r" +([,.;:!?])", r"\1", text)).strip()  # close the gaps left behind


_META = re.compile(
    r"\b(?:i (?:cannot|can't|can not|am unable to|'m unable to|am not able to|don't|do not)|"
    r"it (?:is|'s) (?:not possible|impossible|difficult|hard|unclear)|as an ai|i'm sorry|i apologi[sz]e|"
    r"(?:cannot|can't|could not|couldn't) be (?:determined|identified|inferred|confirmed)|"
    r"not (?:possible|appropriate) to (?:determine|identify|infer)|based (?:solely )?on (?:the|this) image alone|"
    r"(?:the|this) image does not (?:provide|show|allow)|without (?:more|additional) (?:context|information))", I)
_REFUSAL = re.compile(r"^\W*(?:i'm sorry|i am sorry|sorry|i (?:cannot|can't|won't)|as an ai|unfortunately)", I)
_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")


def meta_commentary(text: str, ctx: Ctx) -> str:
    """Sentences about the model rather than the face: "I cannot determine ...", "As an AI ..."."""
    if not _META.search(text):
        return text
    kept = [s for s in _SENTENCES.split(text.strip()) if not _META.search(s)]
    return " ".join(kept)


def repetition(text: str, ctx: Ctx) -> str:
    """Greedy-decoding loops: a repeated phrase collapses to one copy; repeated sentences are dropped."""
    text = re.sub(r"\b((?:[^\s]+\s+){0,8}?[^\s]+?)(?:[,;]?\s+\1\b){2,}", r"\1", text, flags=I)
    parts = _SENTENCES.split(text.strip())
    seen, kept = set(), []
    for s in parts:
        k = re.sub(r"\W+", " ", s).strip().lower()
        if k and k in seen:
            continue
        seen.add(k)
        kept.append(s)
    return " ".join(kept) if len(kept) < len(parts) else text


def unfinished_tail(text: str, ctx: Ctx) -> str:
    """A generation cut off by max_tokens ends mid-sentence: drop the unfinished sentence, or its last clause."""
    if ctx.finish_reason != "length" or not text.strip() or text.rstrip()[-1] in ".!?" or is_list(text, ctx):
        return text
    text = text.rstrip()
    parts = _SENTENCES.split(text)
    if len(parts) > 1:
        return " ".join(parts[:-1])
    cut = max(text.rfind(","), text.rfind(";"))
    return text[:cut] + "." if cut > len(text) // 3 else text


# --------------------------------------------------------------------------------------------- form


def is_list(text: str, ctx: Ctx | None = None) -> bool:
    """A keyword answer: comma-separated items and no sentence inside; short items unless the prompt asked."""
    items = [i for i in re.split(r"[,;\n|•]", text) if i.strip()]
    if re.search(r"[.!?]\s+\S", text.strip()):
        return False
    if ctx is not None and ctx.keywords and len(items) >= 3:
        return True
    return len(items) >= 4 and sum(len(i.split()) for i in items) / len(items) <= 3.0


def keyword_list(text: str, ctx: Ctx) -> str:
    """Keyword answers become one clean, lower-case, de-duplicated comma list."""
    if not is_list(text, ctx):
        return text
    items, seen = [], set()
    for raw in re.split(r"[,;\n|•]|\s+-\s+", text):
        item = re.sub(r"^(?:and|or)\s+", "", raw.strip().strip(".!?:\"'").strip(), flags=I)
        item = item if item.isupper() and len(item) <= 4 else item.lower()
        if item and item not in seen:
            seen.add(item)
            items.append(item)
    return ", ".join(items)


def quotes(text: str, ctx: Ctx) -> str:
    """Quotes wrapped around the whole caption, and stray unbalanced ones at its ends."""
    out = text.strip()
    for _ in range(2):
        m = re.fullmatch(r"([\"'`])(.*)\1([.!?]?)", out, flags=re.S)
        if not m or m.group(1) in m.group(2):
            break
        out = m.group(2).strip() + m.group(3)
    if out.count('"') % 2:
        out = out.strip('"').strip()
    return out if out != text.strip() else text


def whitespace(text: str, ctx: Ctx) -> str:
    """One space between words, none before punctuation, one after it; nothing at the ends."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    return re.sub(r"([,;])(?=[^\s\d,;.:!?])", r"\1 ", text)


def punctuation(text: str, ctx: Ctx) -> str:
    """Doubled or clashing marks collapse, leading marks go, and a sentence caption ends with one."""
    text = re.sub(r"\(\s*\)", "", text)
    text = re.sub(r"([!?])\1+", r"\1", text)
    text = re.sub(r"\s*\.{2,}\s*(?=\S)", ", ", text)  # a mid-text ellipsis is a pause
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"\s*[,;:]\s*([.!?])", r"\1", text)
    text = re.sub(r"([.!?])\s*[,;:]", r"\1", text)
    text = re.sub(r"^[\s,.;:!?\-]+", "", text)
    text = re.sub(r"\s*[,;:\-–]+$", "", text).strip()
    if is_list(text, ctx):
        return text.rstrip(".")
    return text + "." if text and text[-1] not in ".!?" else text


def capitalise(text: str, ctx: Ctx) -> str:
    """Shouting becomes sentence case; every sentence starts with a capital (keyword lists stay lower case)."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) > 12 and sum(c.isupper() for c in letters) > 0.7 * len(letters):
        text = text.lower()
    if is_list(text, ctx):
        return text
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


RULES: list[tuple[str, Callable[[str, Ctx], str]]] = [
    ("unicode", unicode), ("chat_tokens", chat_tokens), ("instruction_prefix", instruction_prefix),
    ("image_lead", image_lead), ("instruction_suffix", instruction_suffix), ("markdown", markdown),
    ("placeholders", placeholders), ("meta_commentary", meta_commentary), ("repetition", repetition),
    ("unfinished_tail", unfinished_tail), ("keyword_list", keyword_list), ("quotes", quotes),
    ("whitespace", whitespace), ("punctuation", punctuation), ("capitalise", capitalise),
]
RULE_NAMES = tuple(n for n, _ in RULES)
_NULL = re.compile(r"^\W*(?:n/?a|none|null|unknown|nothing|no caption|no description|not applicable|"
                   r"image|photo|caption|description|keywords?)\W*$", I)


# Words that carry no fact about a face: a caption made only of these says nothing.
GENERIC = frozenset(["a", "an", "the", "of", "with", "and", "in", "on", "at", "to", "is", "are", "this", "that", "it", "its", "photo", "photograph", "image", "picture", "portrait", "headshot", "shot", "close", "up", "close-up", "closeup", "person", "people", "face", "individual", "subject", "someone", "camera", "view", "frame", "front", "background", "foreground"])


def verdict(raw: str, text: str, min_words: int) -> str:
    """"" for a usable caption, else why not: `empty`, `refusal` or `meaningless`."""
    if not text.strip():
        return "refusal" if _REFUSAL.search(raw.strip()) or _META.search(raw) else "empty"
    if _REFUSAL.search(text):
        return "refusal"
    words = re.findall(r"[^\W\d_]{2,}", text)
    if (_NULL.match(text) or len(words) < min_words or sum(map(len, words)) < 0.5 * len(re.sub(r"\s", "", text))
            or all(w.lower() in GENERIC for w in re.findall(r"[\w'-]+", text))):
        return "meaningless"
    return ""


def clean_text(text: str, kind: str = "", finish_reason: str = "stop", disable: tuple[str, ...] = (),
               min_words: int = 2) -> tuple[str, list[str], str]:
    """Apply the rules; returns (cleaned text, names of the rules that changed it, verdict)."""
    ctx = Ctx(keywords="keyword" in kind.lower(), finish_reason=finish_reason or "stop")
    applied = []
    out = text or ""
    for name, rule in RULES:
        if name in disable:
            continue
        new = rule(out, ctx)
        if new != out:
            applied.append(name)
            out = new
    return out, applied, verdict(text or "", out, min_words)

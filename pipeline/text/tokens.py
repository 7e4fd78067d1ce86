"""Exact CLIP token counts for batches of captions, and trimming to CLIP's 77-token context.

Every caption we ship must fit the CLIP text encoder (77 tokens including the start and end tokens),
so counts are exact, never estimated: `count_tokens` reproduces open_clip's `SimpleTokenizer` id for
id (tests/text/test_tokens.py checks it against open_clip and `transformers.CLIPTokenizer`). The vocabulary
is open_clip's bundled `bpe_simple_vocab_16e6.txt.gz` (no network).

How it is fast. open_clip cleans the text (ftfy, HTML unescape, whitespace collapse, lower case),
splits it with one regex (letter runs, single digits, punctuation runs, `'s`-style suffixes) and BPEs
each piece. No piece ever spans a space, so a caption's count is the sum of its space-separated
chunks' counts. `ClipCounter` therefore keeps a chunk -> count cache; a caption costs one `lower()`,
one `split()` and one dict lookup per chunk, and only the chunks it has never seen are split by the
regex and BPE-encoded (by the `tokenizers` BPE model, once per batch of captions). Text that is printable ASCII without `&` is unchanged
by ftfy and HTML unescaping; anything else is cleaned as open_clip does, with `_ftfy`, which returns
exactly `ftfy.fix_text(text)` but runs each of ftfy's steps only where a cheap test cannot rule out
that it changes the text (emoji, CJK, accents and curly quotes cost a few microseconds instead of
ftfy's ~0.3 ms; only real mojibake pays for ftfy's repair). `tools/bench_tokens.py` measures it on
realistic captions against open_clip and the Rust `tokenizers`.

`transformers.CLIPTokenizer` skips ftfy and HTML unescaping, so it counts curly quotes, ligatures and
entities differently from open_clip; the clean stage applies both fixes, so cleaned captions count the
same under all three tokenizers.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77
# open_clip's own names for the special tokens (ids 49406, 49407); its regex matches them in text.
OC_SPECIAL = ("<start_of_text>", "<end_of_text>")
OC_PATTERN = "|".join(OC_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# The same split for lower-case ASCII (where \p{L} is [a-z] and \p{N} is [0-9]); stdlib `re` is faster.
_ASCII_SPLIT = re.compile("|".join(OC_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""")
# Printable ASCII (plus tab/newline/CR) without `&`: ftfy and html.unescape leave such text unchanged.
_FAST = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")
# Where a caption may be cut: after a sentence end or a clause mark, or before a joining word.
_BOUNDARY = re.compile(r"(?<=[.!?;:,])\s+|\s+(?=(?:and|but|while|with|wearing|holding)\b)")


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP reversible byte -> printable unicode map.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_bpe_path() -> Path:
    """The `bpe_simple_vocab_16e6.txt.gz` shipped inside open_clip (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("open_clip is not installed: `pip install open-clip-torch` ships the CLIP vocabulary")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


_BYTE_UNIT = _bytes_to_unicode()  # a UTF-8 byte -> CLIP's byte-level unit


@functools.lru_cache(maxsize=1)
def load_clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49,408 ids; SOT 49406, EOT 49407) and merge list, exactly as open_clip builds them."""
    with gzip.open(clip_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    units = list(_bytes_to_unicode().values())
    vocab_list = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + [SOT, EOT]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges  # type: ignore[return-value]


def is_plain_ascii(text: str) -> bool:
    """Printable ASCII without `&` (tab, newline and CR allowed): text that ftfy and html.unescape keep as is."""
    return _FAST.fullmatch(text) is not None


# ---- ftfy.fix_text, exactly, without paying for it ---------------------------------------------------
#
# open_clip runs `ftfy.fix_text` on every caption, and on a 150-character caption that costs ~0.3 ms, most
# of it `ftfy.badness.is_bad` (a 37-branch regex tried at every position) and eight fixers, each a full
# pass over the text, run in a loop until nothing changes. `_ftfy` runs the very same loop with ftfy's own
# functions, but skips each step where a cheap test proves it would leave the text unchanged:
#   unescape_html   acts only on `&...;` (HTML_ENTITY_RE), so it runs only when "&" is in the text;
#   fix_encoding    repeats one step until the text stops changing, and a step returns text that is not
#                   `is_bad` unchanged: the steps run only while `_is_bad(text)`, which equals `is_bad`
#                   but searches only near the characters every BADNESS_RE branch needs (proved from the
#                   parsed regex by `_badness_needles`); real mojibake is repaired by ftfy's own step;
#   the 8 fixers    c1 controls, ligatures, character width, curly quotes, line breaks, surrogates,
#                   terminal escapes, control characters: each changes only characters of a fixed set
#                   (from ftfy's own tables), so each runs, in ftfy's order, only when one is present;
#   NFC             `unicodedata.normalize` (a C quick check on normalized text).
# Lines are fixed one at a time and "<" stops HTML unescaping for the rest of the text, as in `fix_text`.
# With another ftfy release (`_FTFY_READ`), or a regex not of the shape the proof needs, `_ftfy` is plain
# `ftfy.fix_text` (tests fail then, asking for a re-read).
# tests/text/test_tokens.py checks equality with ftfy on tricky, fuzzed and regex-derived text.

_FTFY_READ = ("6.3.",)  # the ftfy releases whose source this was checked against (others: plain ftfy)
_GROUP = ("fix_c1_controls", "fix_latin_ligatures", "fix_character_width", "uncurl_quotes", "fix_line_breaks",
          "fix_surrogates", "remove_terminal_escapes", "remove_control_chars")


def _char_class(codepoints: set[int]) -> str:
    """A regex character class (without brackets) for a set of code points, as ranges."""
    out, cps = [], sorted(codepoints)
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        out.append(f"\\U{cps[i]:08x}" + (f"-\\U{cps[j]:08x}" if j > i else ""))
        i = j + 1
    return "".join(out)


def _sre() -> Any:
    try:  # Python 3.11+
        from re import _constants, _parser  # type: ignore[attr-defined]
    except ImportError:  # 3.10
        import sre_constants as _constants
        import sre_parse as _parser
    return _parser, _constants


def _class_members(pattern: str) -> set[int]:
    """Code points of a one-class regex such as ftfy's "[\u2018-\u201b]" (no negation, categories)."""
    parser, c = _sre()
    (op, av), = parser.parse(pattern).data
    if op is c.LITERAL:
        return {av}
    return _in_members(av) if op is c.IN else set()


def _in_members(items: list) -> set[int]:
    """Members of a parsed `[...]` class; empty when it has a negation or a category (\\w, \\s)."""
    c = _sre()[1]
    out: set[int] = set()
    for op, av in items:
        if op is c.LITERAL:
            out.add(av)
        elif op is c.RANGE:
            out.update(range(av[0], av[1] + 1))
        else:
            return set()
    return out


# Non-ASCII characters common in ordinary text; `_badness_needles` prefers needles outside this set.
_EVERYDAY = frozenset("‘’‚“”„‹›«»–—…•·°©®™€£¥¢¡¿´\xa0\xad")


def _badness_needles(bad_re: re.Pattern) -> tuple[str, dict[str, tuple[int, int]]] | None:
    """(needles, reach): every match of `bad_re` holds a needle (a character of the class `needles`) at
    some i and lies within [i - left, i + right), (left, right) = reach[that character].

    Proved from the parsed regex: it must be one alternation of sequences of single characters, classes,
    "." and bounded repeats of those (and "^"), with no lookaround, back reference or case folding.
    In every branch, each top-level item made only of non-ASCII literals is matched by every match of the
    branch at a fixed-range offset; we take the one with the fewest letters and everyday characters (so
    curly quotes and accented letters are needles only where no branch allows better), and its reach is
    the widest the items before and from it can be. None when the regex is not of that shape: then
    nothing is skipped.
    """
    try:
        parser, c = _sre()
        if bad_re.flags & re.IGNORECASE:
            return None
        (op, (_, branches)), = parser.parse(bad_re.pattern, bad_re.flags).data
        if op is not c.BRANCH:
            return None
        single = {c.LITERAL, c.IN, c.ANY}
        reach: dict[str, tuple[int, int]] = {}
        for branch in branches:
            widths, best = [], None
            for k, (op, av) in enumerate(branch.data):
                if op in single:
                    widths.append(1)
                elif op is c.AT and av is c.AT_BEGINNING:
                    widths.append(0)
                elif (op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[1] < 64
                      and all(o in single for o, _ in av[2].data)):
                    widths.append(av[1] * len(av[2].data))
                else:
                    return None
                members = {av} if op is c.LITERAL else _in_members(av) if op is c.IN else set()
                if members and min(members) > 0x7F:
                    score = (sum(chr(m).isalpha() or chr(m) in _EVERYDAY for m in members), len(members))
                    if best is None or score < best[0]:
                        best = (score, k, members)
            if best is None:
                return None
            _, k, members = best
            left, right = sum(widths[:k]), sum(widths[k:])
            for m in map(chr, members):
                l0, r0 = reach.get(m, (0, 0))
                reach[m] = (max(l0, left), max(r0, right))
        return _char_class({ord(m) for m in reach}), reach
    except Exception:  # a regex shape or parser this proof does not know: no shortcut
        return None


@functools.lru_cache(maxsize=1)
def _ftfy_plan() -> Any:
    """What `_ftfy` needs from ftfy (its fixers and the proved skip tests), or None to call ftfy as is."""
    import ftfy
    from ftfy import badness, chardata, fixes

    if not ftfy.__version__.startswith(_FTFY_READ):
        return None
    found = _badness_needles(badness.BADNESS_RE)
    if found is None:
        return None
    needles, reach = found
    # The characters each fixer of the group can change (from ftfy's own tables and regexes); a fixer is
    # the identity on text without them.
    acts_on = {
        "fix_c1_controls": _class_members(chardata.C1_CONTROL_RE.pattern),
        "fix_latin_ligatures": set(chardata.LIGATURES),
        "fix_character_width": set(chardata.WIDTH_MAP),
        "uncurl_quotes": _class_members(chardata.SINGLE_QUOTE_RE.pattern)
        | _class_members(chardata.DOUBLE_QUOTE_RE.pattern),
        "fix_line_breaks": {ord(c) for c in "\r\u2028\u2029\x85"},  # its str.replace calls
        "fix_surrogates": _class_members(fixes.SURROGATE_RE.pattern),
        "remove_terminal_escapes": {0x1B},  # ANSI_RE starts with ESC
        "remove_control_chars": set(chardata.CONTROL_CHARS),
    }
    if not all(acts_on.values()):
        return None
    any_fixer = _char_class(set().union(*acts_on.values()))
    touched = re.compile(f"[{any_fixer}]")
    group = tuple((frozenset(map(chr, acts_on[name])), ftfy.FIXERS[name]) for name in _GROUP)
    one_step = getattr(ftfy, "_fix_encoding_one_step_and_explain", None)
    if one_step is None:
        return None
    quiet = re.compile(f"[{needles}{any_fixer}&\n]")  # text without these: no step but NFC can act
    return (re.compile(f"[{needles}]"), reach, badness.BADNESS_RE, touched, group, ftfy.FIXERS["unescape_html"],
            one_step, ftfy.TextFixerConfig(explain=False), quiet)


def _is_bad(text: str, needle: re.Pattern, reach: dict[str, tuple[int, int]], bad_re: re.Pattern) -> bool:
    """`ftfy.badness.is_bad(text)`: BADNESS_RE searched only in windows around needles.

    A match holds a needle at some i and lies in [i - left, i + right) (see `_badness_needles`);
    overlapping windows are merged. `search(text, pos, endpos)` keeps "^" at the true start, and a
    match in a window is one in the whole text (the regex has no lookaround or end anchor): exact.
    """
    first = needle.search(text)
    if first is None:
        return False
    start = end = -1
    for m in needle.finditer(text, first.start()):
        i = m.start()
        left, right = reach[m.group()]
        lo, hi = max(0, i - left), i + right
        if lo > end:  # not touching the current window: search that one, start another
            if end >= 0 and bad_re.search(text, start, end):
                return True
            start, end = lo, hi
        else:
            start, end = min(start, lo), max(end, hi)
    return bad_re.search(text, start, end) is not None


def _ftfy(text: str) -> str:
    """`ftfy.fix_text(text)` (default settings), exactly; fast where nothing needs fixing (see above)."""
    plan = _ftfy_plan()
    if plan is None or len(text) > 1_000_000:  # fix_text splits longer lines at 1M characters
        import ftfy

        return ftfy.fix_text(text)
    if not plan[-1].search(text):  # one line, no "&", no needle, nothing a fixer acts on: only NFC may act
        fixed = unicodedata.normalize("NFC", text)
        if fixed == text:  # then ftfy's loop ends after its first pass
            return text
    if "\n" not in text:
        return _fix_segment(text, "<" not in text, plan)
    out, unescape, pos = [], True, 0
    while pos < len(text):  # fix_text's segments: lines, each with its "\n"
        brk = text.find("\n", pos) + 1 or len(text)
        segment = text[pos:brk]
        unescape = unescape and "<" not in segment  # fix_text stops unescaping for good at the first "<"
        out.append(_fix_segment(segment, unescape, plan))
        pos = brk
    return "".join(out)


def _fix_segment(text: str, unescape: bool, plan: Any) -> str:
    """ftfy's `fix_and_explain(text).text` loop, each step skipped where it provably changes nothing."""
    needle, reach, bad_re, touched, group, unescape_html, one_step, config, _ = plan
    normalize = unicodedata.normalize
    while True:
        orig = text
        if unescape and "&" in text:
            text = unescape_html(text)
        # `fix_encoding`: ftfy repeats one step until the text stops changing, and a step returns text
        # that is not `is_bad` unchanged, so stop as soon as the text is not bad (skipping ftfy's own
        # final full-length `is_bad` scan, the costly part on mojibake).
        while text and _is_bad(text, needle, reach, bad_re):
            fixed = one_step(text, config)[0]
            if fixed == text:
                break
            text = fixed
        present = touched.findall(text)
        if present:  # then each fixer, in ftfy's order, where its characters are present
            chars = set(present)
            for acts_on, fix in group:
                if not chars.isdisjoint(acts_on):
                    fixed = fix(text)
                    if fixed != text:
                        text, chars = fixed, set(touched.findall(fixed))
        text = normalize("NFC", text)
        if text == orig:
            return text


def clip_clean(text: str) -> str:
    """open_clip's `_clean_lower`: ftfy, HTML unescape (twice), whitespace collapse, lower case."""
    if _FAST.fullmatch(text):
        return " ".join(text.split()).lower()
    return " ".join(clean_lower(text).split())


def clean_lower(text: str) -> str:
    """`clip_clean(text)` before the whitespace collapse: its `split()` is the same list of chunks.

    (Collapsing first changes nothing that `lower()` sees: no white space character is case-ignorable,
    so the final-sigma rule reads the same context, and lower-casing never makes or removes white space.)
    """
    return html.unescape(html.unescape(_ftfy(text))).lower()


@functools.lru_cache(maxsize=1)
def _unicode_split() -> Any:
    import regex  # open_clip's own regex engine (a transformers dependency too)

    return regex.compile(OC_PATTERN, regex.IGNORECASE)


class ClipCounter:
    """Exact CLIP BPE token counts with a chunk cache; the `tokenizers` BPE model encodes unseen words.

    Args:
        max_cache: chunks kept before the cache is cleared (bounds memory on endless streams).
    """

    def __init__(self, max_cache: int = 2_000_000):
        from tokenizers import Tokenizer, models

        vocab, merges = load_clip_bpe()
        # Pieces are already regex-split words, mapped to CLIP's byte units: the BPE model alone encodes them.
        self._bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
        self._special = {s: (vocab[SOT] if i == 0 else vocab[EOT],) for i, s in enumerate(OC_SPECIAL)}
        self._words: dict[str, tuple[int, ...]] = dict(self._special)
        self._chunks: dict[str, int] = {}
        self.max_cache = max_cache

    SLICE = 8192

    def count(self, texts: list[str]) -> np.ndarray:
        """Tokens of each text with start and end tokens (int32); compare with `CONTEXT_LENGTH`."""
        texts = list(texts)
        if len(texts) > self.SLICE:  # bounds the texts held for one learning pass
            return np.concatenate([self._count(texts[i:i + self.SLICE]) for i in range(0, len(texts), self.SLICE)])
        return self._count(texts)

    def _count(self, texts: list[str]) -> np.ndarray:
        out: list[int] = []
        unseen: list[tuple[int, list[str]]] = []  # texts with a chunk not in the cache, counted after learning
        get = self._chunks.__getitem__
        for text in texts:
            # Lower-cased, cleaned text: its split() is open_clip's whitespace_clean. Plain ASCII (printable,
            # or with tab/newline/CR, and no "&") is what ftfy and HTML unescaping leave alone.
            if text.isascii() and "&" not in text and (text.isprintable() or _FAST.fullmatch(text)):
                t = text.lower()
            else:
                t = clean_lower(text)
            try:
                out.append(sum(map(get, t.split())))
            except KeyError:
                unseen.append((len(out), t.split()))
                out.append(0)
        if unseen:
            chunks = {c for _, cs in unseen for c in cs}
            missing = chunks.difference(self._chunks)
            if len(self._chunks) + len(missing) > self.max_cache:  # full: start over with these chunks
                self._chunks.clear()
                self._words = dict(self._special)
                missing = chunks
            self._learn_chunks(missing)
            for i, cs in unseen:
                out[i] = sum(map(get, cs))
        return np.array(out, np.int32).reshape(len(out)) + 2

    def encode(self, texts: list[str]) -> list[list[int]]:
        """CLIP BPE ids of each text, without start/end tokens and untruncated (open_clip's `encode`)."""
        result = []
        for text in texts:
            words = self._split(clip_clean(text))
            self._learn_words(words)
            result.append([i for w in words for i in self._words[w]])
        return result

    def _split(self, chunk: str) -> list[str]:
        return _ASCII_SPLIT.findall(chunk) if chunk.isascii() else _unicode_split().findall(chunk)

    def _learn_chunks(self, chunks: set[str]) -> None:
        split = {c: self._split(c) for c in chunks}
        self._learn_words([w for ws in split.values() for w in ws])
        words = self._words
        for c, ws in split.items():
            self._chunks[c] = sum(len(words[w]) for w in ws)

    def _learn_words(self, words: list[str]) -> None:
        known, tokenize, byte = self._words, self._bpe.model.tokenize, _BYTE_UNIT.__getitem__
        for w in set(words).difference(known):  # BPE each word's byte-level form ("</w>" at its end)
            known[w] = tuple(t.id for t in tokenize("".join(map(byte, w.encode()))))


@functools.lru_cache(maxsize=1)
def default_counter() -> ClipCounter:
    return ClipCounter()


def count_tokens(texts: list[str]) -> np.ndarray:
    """CLIP token count of each text, start and end tokens included (int32)."""
    return default_counter().count(list(texts))


def encode(texts: list[str]) -> list[list[int]]:
    """CLIP BPE ids of each text, without start and end tokens (open_clip's `SimpleTokenizer.encode`)."""
    return default_counter().encode(list(texts))


def trim_to_budget(text: str, budget: int = CONTEXT_LENGTH, end: str = ".") -> tuple[str, int, str]:
    """Cut `text` at the last clause or sentence boundary whose prefix fits `budget` tokens.

    Args:
        text: the caption.
        budget: tokens allowed, start and end tokens included.
        end: what a cut prefix ends with (a full stop; "" for keyword lists).

    Returns:
        (text, tokens, how): `how` is "" when it already fitted, "clause" when cut at a boundary,
        "word" when no boundary fits and it was cut after the last whole word that fits (a single
        clause longer than the whole budget), "char" for one enormous word.
    """
    n = int(count_tokens([text])[0])
    if n <= budget:
        return text, n, ""
    for how, pattern in (("clause", _BOUNDARY), ("word", re.compile(r"\s+"))):
        candidates = [c for c in (_close(text[: m.start()], end) for m in pattern.finditer(text)) if c]
        counts = count_tokens(candidates)  # one batch: every candidate prefix counted exactly
        fits = [i for i, c in enumerate(counts) if c <= budget]
        if fits:
            best = max(fits, key=lambda i: len(candidates[i]))
            return candidates[best], int(counts[best]), how
    lo, hi = 0, len(text)
    while lo < hi:  # the longest character prefix that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count_tokens([text[:mid]])[0] <= budget else (lo, mid - 1)
    return text[:lo], int(count_tokens([text[:lo]])[0]), "char"


def _close(prefix: str, end: str) -> str:
    """A cut prefix ends cleanly: trailing commas, colons and dashes go, and `end` is added."""
    prefix = prefix.rstrip().rstrip(",;:-–—").rstrip()
    if end and prefix and prefix[-1] not in ".!?":
        prefix += end
    return prefix

"""Exact CLIP token counts for batches of captions, and trimming to CLIP's 77-token context.

Every caption we ship must fit the CLIP text encoder (77 tokens including the start and end tokens),
so counts are exact, never estimated: `count_tokens` reproduces open_clip's `SimpleTokenizer` id for
id (tests/text/test_tokens.py checks it against open_clip and `transformers.CLIPTokenizer`). The vocabulary
is open_clip's bundled `bpe_simple_vocab_16e6.txt.gz` (no network).

How it is fast. open_clip cleans the text (ftfy, HTML unescape, whitespace collapse, lower case),
splits it with one regex (letter runs, single digits, punctuation runs, `'s`-style suffixes) and BPEs
each piece. No piece ever spans a space, so a caption's count is the sum of its space-separated
chunks' counts. `ClipCounter` therefore keeps a chunk -> count cache; a batch costs one `lower()`,
one `split()` and one dict lookup per chunk, and only the chunks it has never seen are split by the
regex and BPE-encoded, as one `tokenizers` batch. Captions share most of their words, so after the
first few thousand captions nearly every chunk is a hit. Text that is printable ASCII without `&`
is unchanged by ftfy and HTML unescaping (the fast path); anything else is cleaned exactly as open_clip
does, one string at a time.

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
_SEP = "\x01"  # never survives cleaning (ftfy drops C0 controls; the fast path admits none)
_FAST_JOINED = re.compile(r"[\x01\t\n\r\x20-\x25\x27-\x7e]*")
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


# Common caption non-ASCII that no ftfy fixer touches except `uncurl_quotes`: Latin-1 letters and signs
# (no NBSP, soft hyphen or C1 controls), Latin Extended-A without its ligatures, dashes, ellipsis, curly
# quotes. Such text (one line, no `&`) is fixed by ftfy to exactly its uncurled form unless ftfy's own
# mojibake detector (`is_bad`) fires, which we check (see `_ftfy_fast`).
_LATIN = re.compile(r"[\t\x20-\x25\x27-\x7e\u00a1-\u00ac\u00ae-\u00ff\u0100-\u0131\u0134-\u0148\u014a-\u017f"
                    r"\u2013\u2014\u2018-\u201f\u2026]*")
_CURLY1, _CURLY2 = re.compile("[\u02bc\u2018-\u201b]"), re.compile("[\u201c-\u201f]")


def _ftfy(text: str) -> str:
    """`ftfy.fix_text(text)`, without paying for it on the common case (see `_LATIN`)."""
    import ftfy  # a dependency of open-clip-torch

    if len(text) < 10_000 and _LATIN.fullmatch(text):
        straight = _CURLY1.sub("'", _CURLY2.sub('"', text))
        # ftfy's loop: fix_encoding acts only on text its detector calls bad; then uncurl_quotes; NFC is a
        # no-op on these precomposed characters; a second pass changes nothing unless the result is bad.
        if not ftfy.badness.is_bad(text) and (straight == text or not ftfy.badness.is_bad(straight)):
            return straight
    return ftfy.fix_text(text)


def clip_clean(text: str) -> str:
    """open_clip's `_clean_lower`: ftfy, HTML unescape (twice), whitespace collapse, lower case."""
    if _FAST.fullmatch(text):
        return " ".join(text.split()).lower()
    return " ".join(html.unescape(html.unescape(_ftfy(text))).split()).lower()


@functools.lru_cache(maxsize=1)
def _unicode_split() -> Any:
    import regex  # open_clip's own regex engine (a transformers dependency too)

    return regex.compile(OC_PATTERN, regex.IGNORECASE)


class ClipCounter:
    """Exact CLIP BPE token counts with a chunk cache; `tokenizers` BPE-encodes unseen pieces in batches.

    Args:
        max_cache: chunks kept before the cache is cleared (bounds memory on endless streams).
    """

    def __init__(self, max_cache: int = 2_000_000):
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab, merges = load_clip_bpe()
        bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
        # Input pieces are already regex-split words: only map bytes to unicode, then BPE the whole piece.
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self._bpe = bpe
        self._special = {s: (vocab[SOT] if i == 0 else vocab[EOT],) for i, s in enumerate(OC_SPECIAL)}
        self._words: dict[str, tuple[int, ...]] = dict(self._special)
        self._chunks: dict[str, int] = {_SEP: -1}
        self.max_cache = max_cache

    SLICE = 8192

    def count(self, texts: list[str]) -> np.ndarray:
        """Tokens of each text with start and end tokens (int32); compare with `CONTEXT_LENGTH`."""
        if len(texts) > self.SLICE:  # the first slice learns most chunks; the rest then count at cache speed
            return np.concatenate([self._count(texts[i:i + self.SLICE]) for i in range(0, len(texts), self.SLICE)])
        return self._count(texts)

    def _count(self, texts: list[str]) -> np.ndarray:
        n = len(texts)
        out = np.zeros(n, np.int32)
        if not n:
            return out
        joined = f" {_SEP} ".join(texts)
        # The common case: one lower() and one split() for the whole batch.
        if _FAST_JOINED.fullmatch(joined) and joined.count(_SEP) == n - 1:
            out[:] = self._sum_chunks(joined.lower().split(), n)
            return out + 2
        fast = [_FAST.fullmatch(t) is not None for t in texts]
        groups = [[i for i in range(n) if fast[i]], [i for i in range(n) if not fast[i]]]
        for idx, cleaned in zip(groups, ([texts[i].lower() for i in groups[0]],
                                         [clip_clean(texts[i]) for i in groups[1]]), strict=True):
            if not idx:
                continue
            if any(_SEP in t for t in cleaned):  # a text holding the separator itself: count it alone
                out[idx] = [self._sum_chunks(t.split(), 1)[0] for t in cleaned]
            else:
                out[idx] = self._sum_chunks(f" {_SEP} ".join(cleaned).split(), len(idx))
        return out + 2

    def encode(self, texts: list[str]) -> list[list[int]]:
        """CLIP BPE ids of each text, without start/end tokens and untruncated (open_clip's `encode`)."""
        result = []
        for text in texts:
            words = self._split(clip_clean(text))
            self._learn_words(words)
            result.append([i for w in words for i in self._words[w]])
        return result

    def _sum_chunks(self, chunks: list[str], n: int) -> np.ndarray:
        """Per-text sums over `chunks`, where texts are separated by `_SEP` chunks."""
        cache = self._chunks
        try:
            vals = np.fromiter(map(cache.__getitem__, chunks), np.int64, len(chunks))
        except KeyError:
            missing = set(chunks).difference(cache)
            if len(cache) + len(missing) > self.max_cache:  # full: start over with this batch's chunks
                self._chunks, self._words = {_SEP: -1}, dict(self._special)
                missing = set(chunks).difference(self._chunks)
            self._learn_chunks(missing)
            vals = np.fromiter(map(self._chunks.__getitem__, chunks), np.int64, len(chunks))
        seps = np.flatnonzero(vals < 0)
        if len(seps) != n - 1:
            raise RuntimeError("a separator survived cleaning; this is a bug in ClipCounter")
        vals[seps] = 0
        csum = np.concatenate([[0], np.cumsum(vals)])
        starts = np.concatenate([[0], seps + 1])
        ends = np.concatenate([seps, [len(vals)]])
        return csum[ends] - csum[starts]

    def _split(self, chunk: str) -> list[str]:
        return _ASCII_SPLIT.findall(chunk) if chunk.isascii() else _unicode_split().findall(chunk)

    def _learn_chunks(self, chunks: set[str]) -> None:
        split = {c: self._split(c) for c in chunks}
        self._learn_words([w for ws in split.values() for w in ws])
        words = self._words
        for c, ws in split.items():
            self._chunks[c] = sum(len(words[w]) for w in ws)

    def _learn_words(self, words: list[str]) -> None:
        new = list(set(words).difference(self._words))
        if new:
            for w, enc in zip(new, self._bpe.encode_batch(new, add_special_tokens=False), strict=True):
                self._words[w] = tuple(enc.ids)


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

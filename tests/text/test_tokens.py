"""Exact CLIP token counts: equal to open_clip's tokenizer (and transformers' CLIPTokenizer on clean text);
batched counting equals one-by-one; trimming cuts at the last clause that fits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from pipeline.text import tokens
from pipeline.text.clean_rules import clean_text

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vlm_outputs.yaml"
TRICKY = [
    "A woman’s face — café, naïve résumé, jalapeño", "ﬁne ＦＵＬＬ width ｃａｐｓ", "&amp; AT&T &lt;b&gt; &#39;x&#39;",
    "Σίσυφος ΟΔΥΣΣΕΥΣ (final sigma)", "İstanbul ǅ ß ﬀ", "日本語のキャプション、笑顔の女性", "emoji 👩🏽‍🦰 with ZWJ 👨‍👩‍👧 🇯🇵",
    "hindi हिन्दी देवनागरी", "thai ภาษาไทย", "arabic مرحبا بالعالم", "supercalifragilisticexpialidocious" * 6,
    "it's they're I'M WE'LL you'D o'clock rock'n'roll", "a\x0bb\x0cc\x1cd\x7fe\x00f\x01g", "  lots   of\tspace\n\n",
    "<start_of_text> hi <end_of_text> and <|endoftext|>", "numbers 1234567 3.14 1st 2nd 1,000,000", "...!!!???,,,;;;---",
    "\u200bzero\u200dwidth\ufeff", "Ã©tÃ© mojibake â€™", "e\u0301 decomposed", "", " ", "x", "tab\tsep",
    "x'ſ \u0345 K Å", "https://example.com/a_b?c=d#e", "snake_case CamelCase kebab-case", "“quoted” ‘single’",
    "\U0001F600" * 30, "a" * 500, "🙂🙃" + "é" * 40,
]


def fuzz(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [(32, 126), (0x80, 0x2FF), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4E80), (0x1F600, 0x1F64F), (0, 31)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append("".join(chr(rng.randint(*rng.choice([(32, 126), (lo, hi)]))) for _ in range(rng.randint(0, 60))))
    return out


@pytest.fixture(scope="module")
def reference():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def test_ids_and_counts_equal_open_clip_on_tricky_strings(reference):
    corpus = TRICKY + fuzz(1500)
    ids = tokens.encode(corpus)
    counts = tokens.count_tokens(corpus)
    for text, got, n in zip(corpus, ids, counts, strict=True):
        want = reference.encode(text)
        assert got == want, repr(text)
        assert n == len(want) + 2, repr(text)


def test_counts_equal_transformers_clip_tokenizer_on_clean_text(reference):
    from transformers import CLIPTokenizer

    vocab, merges = tokens.load_clip_bpe()
    hf = CLIPTokenizer(vocab=vocab, merges=list(merges))
    cases = yaml.safe_load(FIXTURE.read_text())["cases"]
    cleaned = [clean_text(c["raw"], c["kind"], c.get("finish", "stop"))[0] for c in cases]
    # open_clip runs ftfy and HTML unescaping, CLIPTokenizer does not: after the clean stage's `unicode`
    # rule they agree even on the tricky strings. Not on "'ſ" and U+0345, where open_clip's regex is
    # case-insensitive (ſ folds to s, U+0345 to a letter) and CLIPTokenizer's is not.
    tricky = [clean_text(t)[0] for t in TRICKY if "<" not in t and "ſ" not in t]
    corpus = [c for c in cleaned + tricky if c]
    assert len(corpus) > 50
    counts = tokens.count_tokens(corpus)
    for text, n in zip(corpus, counts, strict=True):
        assert len(hf(text)["input_ids"]) == n == len(reference.encode(text)) + 2, repr(text)


def test_a_batch_counts_exactly_like_one_text_at_a_time():
    corpus = TRICKY + fuzz(300, seed=1) + ["plain ascii caption, with commas."] * 5 + ["a\x01b", "\x01", ""]
    random.Random(2).shuffle(corpus)
    batch = tokens.count_tokens(corpus)
    single = [int(tokens.count_tokens([t])[0]) for t in corpus]
    assert batch.tolist() == single
    assert tokens.count_tokens([]).tolist() == []


def test_a_bounded_cache_stays_exact(reference):
    counter = tokens.ClipCounter(max_cache=50)  # cleared many times over this corpus
    corpus = fuzz(400, seed=3)
    got = [n for i in range(0, len(corpus), 10) for n in counter.count(corpus[i:i + 10]).tolist()]
    assert got == [len(reference.encode(t)) + 2 for t in corpus]
    assert len(counter._chunks) <= 50 + 10 * 60  # at most the limit plus one batch's chunks


LONG = ("A close-up studio portrait of a smiling young woman with long wavy auburn hair falling over her "
        "shoulders, bright green eyes, thin arched eyebrows and light freckles, wearing small gold hoop "
        "earrings, a delicate pearl necklace and a cream knit sweater; she is looking slightly to the left "
        "under soft window light, against a plain gray background, and the photo has a shallow depth of field.")


def test_trim_cuts_at_the_last_clause_boundary_that_fits():
    assert tokens.count_tokens([LONG])[0] > 77
    text, n, how = tokens.trim_to_budget(LONG)
    assert how == "clause" and n <= 77 and n == tokens.count_tokens([text])[0]
    assert text.endswith(".") and LONG.startswith(text[:-1])
    # it is the longest clause prefix within budget: every later boundary would not have fitted
    prefixes = [tokens._close(LONG[: m.start()], ".") for m in tokens._BOUNDARY.finditer(LONG)]
    later = [p for p in [*prefixes, LONG] if len(p) > len(text)]
    assert text in prefixes and later and all(tokens.count_tokens([p])[0] > 77 for p in later)


def test_trim_falls_back_to_words_then_characters_and_keeps_short_text():
    clause = " ".join(["very"] * 100) + " long"
    text, n, how = tokens.trim_to_budget(clause)
    assert how == "word" and n <= 77 and clause.startswith(text.rstrip("."))
    word = "x" * 2000
    text, n, how = tokens.trim_to_budget(word)
    assert how == "char" and 70 <= n <= 77 and word.startswith(text)
    assert tokens.trim_to_budget("A short caption.") == ("A short caption.", 6, "")  # sot a short caption . eot
    text, n, _ = tokens.trim_to_budget(", ".join(["smiling", "young", "female"] * 40), end="")
    assert n <= 77 and not text.endswith((",", "."))


def test_the_ftfy_shortcut_equals_ftfy_on_latin_text_and_mojibake():
    import ftfy

    rng = random.Random(4)
    alphabet = ([chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0xA1, 0x180)] +
                list("–—‘’‚‛“”„‟…ʼ"))
    corpus = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50))) for _ in range(3000)]
    corpus += ["The woman’s café — “naïve”…", "sÃ³ voilÃ le travail", "isnâ€™t", "Ã©tÃ©", "â€œquotedâ€\x9d"]
    for text in corpus:
        assert tokens._ftfy(text) == ftfy.fix_text(text), repr(text)

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


# ---- the ftfy shortcut (`tokens._ftfy`) and realistic captions -----------------------------------------

EMOJI_CJK_ENTITIES_MOJIBAKE = [
    "A woman 👩🏽‍🦰 with a smile 😊", "family 👨‍👩‍👧‍👦 and ❤️ and 🏳️‍🌈 flags 🇯🇵🏴󠁧󠁢󠁳󠁣󠁴󠁿", "👍🏿👋🏽🙏🏻 skin tones",
    "笑顔の女性、黒い髪", "미소 짓는 여자", "一位年轻女子的特写肖像，长发，微笑。", "ＦＵＬＬ　ｗｉｄｔｈ ｶﾀｶﾅ",
    "Tom &amp; Jerry &quot;quoted&quot; it&#39;s &#x27;x&#x27; caf&eacute; &hellip; &nbsp;x &lt;3 &AMP; &EACUTE;",
    "&lt;b&gt;bold&lt;/b&gt; &amp;amp; double-escaped", "<b>tag</b> &amp; entity after a tag",
    "a line\n<b> &amp; second line", "first &amp;\nsecond <i> &amp;\nthird &amp;", "&#128512; &#xd83d; &#0; &#1;",
    "cafÃ©", "donâ€™t", "â€œsmileâ€\x9d", "ZoÃ« naÃ¯ve Ã¼ber", "Ã  la mode", "Ã ", "voilÃ le travail",
    "the womanâ€™s faceÂ â€” close-up", "sÃ³ Ã©", "â\x80\x99", "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "Ã\xa0 ÃƒÂ©",
    "e\u0301 and A\u030a and \u1e9b\u0323", "ﬁne ﬂower Ĳssel", "x\u2028y\u2029z\x85w", "a\r\nb\rc",
    "\x1b[31mred\x1b[0m text", "\ud83d\ude00 surrogates \ud83d", "\ufeffbom \u206a \ufffc",
    "\x80\x81\x9f c1 controls", "ΟΔΥΣΣΕΥΣ Σ ΣΣ", "İstanbul KELVIN \u212a", "’s ‘x’ “y” „z‟ ‚ ʼ",
    "–—…•", "¢£¥€ 25°C ±5 ×2 ½", "Ã\x83Â©", "\n\n", "\n", "<", "&", "&;", "&#;", "&#x;", "&foo;",
]


def _mojibake(text: str) -> str:
    out = []
    for b in text.encode("utf-8", "surrogatepass"):
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out)


def test_the_ftfy_shortcut_is_active_and_equals_ftfy_on_any_text():
    import ftfy

    assert tokens._ftfy_plan() is not None  # the installed ftfy is one the proof covers: nothing is skipped blindly
    needle, reach, bad_re, touched, *_ = tokens._ftfy_plan()
    rng = random.Random(5)
    needles = [chr(c) for c in range(0x80, 0x2600) if needle.match(chr(c))]
    acted = [chr(c) for c in range(0x80, 0x10000) if touched.match(chr(c))]
    assert len(needles) < 300 and "’" not in needles and "é" not in needles  # common text skips is_bad
    pieces = (needles * 2 + acted + list("abcXYZ \n\r\t<>&;#'\".,-") * 3 + list("éëçñüï’—…😊日本") * 2 +
              ["&amp;", "&quot;", "&#39;", "&lt;", "&eacute;", "&#x2019;", "&rsquo;", "&AMP;", "Ã©", "â€™",
               "â€œ", "â€\x9d", "Ã ", "Â ", "\x1b[1m", "e\u0301", "\ud83d", "\ude00"])
    corpus = list(EMOJI_CJK_ENTITIES_MOJIBAKE) + TRICKY
    corpus += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(4000)]
    corpus += [_mojibake(t) for t in EMOJI_CJK_ENTITIES_MOJIBAKE + TRICKY]
    for text in corpus:
        assert tokens._ftfy(text) == ftfy.fix_text(text), repr(text)
        assert tokens._is_bad(text, needle, reach, bad_re) == ftfy.badness.is_bad(text), repr(text)


def _badness_branch_samples(per_branch: int = 30, seed: int = 6) -> list[str]:
    """Text matching each branch of ftfy's BADNESS_RE, built from the parsed regex with as few needles
    as the branch allows (so a window too narrow misses it), inside ASCII filler."""
    import ftfy

    parser, c = tokens._sre()
    bad_re, needle = ftfy.badness.BADNESS_RE, tokens._ftfy_plan()[0]
    (_, (_, branches)), = parser.parse(bad_re.pattern, bad_re.flags).data
    rng = random.Random(seed)

    def pick(op, av) -> str:
        if op is c.LITERAL:
            return chr(av)
        members = tokens._in_members(av) if op is c.IN else set()
        if not members:  # ".", \s, \w, [^...]: try a few, the final match check filters
            return rng.choice("a1 _.")
        quiet = [m for m in members if not needle.match(chr(m))]
        return chr(rng.choice(quiet or sorted(members)))

    def sample(branch, fixed: dict[int, str]) -> str | None:
        parts, at_start = [], False
        for k, (op, av) in enumerate(branch.data):
            if op is c.AT:
                at_start = True
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
                parts += [pick(o, a) for o, a in av[2].data] * rng.choice(av[:2])
            else:
                parts.append(fixed.get(k) or pick(op, av))
        match = "".join(parts)
        if not bad_re.match(match):
            return None
        filler = ["".join(rng.choice("abc xyz") for _ in range(rng.randint(0, 12))) for _ in range(2)]
        return ("" if at_start else filler[0]) + match + filler[1]

    out = []
    for branch in branches:
        tries = [{} for _ in range(per_branch)]
        for k, (op, av) in enumerate(branch.data):  # every non-ASCII member of every class, in its place
            members = {av} if op is c.LITERAL else tokens._in_members(av) if op is c.IN else set()
            if members and min(members) > 0x7F:
                tries += [{k: chr(m)} for m in sorted(members)]
        out += [t for t in (sample(branch, fixed) for fixed in tries) if t is not None]
    return out


def test_is_bad_windows_find_every_branch_of_the_badness_regex():
    import ftfy

    needle, reach, bad_re, *_ = tokens._ftfy_plan()
    samples = _badness_branch_samples()
    assert len(samples) > 3000
    # a match at the very start ("^[ÃÂ][ ]"), in the middle, at the end, and needles far apart or close
    samples += ["Ã x", "x" * 50 + "cafÃ©" + "y" * 50, "y" * 80 + "â€", "Â" + " " * 30 + "ГўВЂВ a",
                "€ " * 40 + "é", "a" * 7 + "Ã" + "\xa0", "ÃÃÃÃÃÃÃÃ", "×" + "x" * 10 + "²", "× ²", " Ã x"]
    for text in samples:
        assert tokens._is_bad(text, needle, reach, bad_re) == ftfy.badness.is_bad(text), repr(text)
    assert sum(map(ftfy.badness.is_bad, samples)) > 3000


def test_lowering_before_the_whitespace_collapse_splits_the_same():
    # ClipCounter splits `clean_lower(text)`; open_clip lower-cases after collapsing white space.
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    for s in spaces:
        text = f"AΣ{s}Σ'Σ{s}{s}ΣA Σ.{s}"
        assert text.lower().split() == " ".join(text.split()).lower().split(), hex(ord(s))
    for text in EMOJI_CJK_ENTITIES_MOJIBAKE + TRICKY:
        assert tokens.clean_lower(text).split() == tokens.clip_clean(text).split(), repr(text)


def test_realistic_captions_count_exactly_cold_warm_and_one_by_one(reference):
    from tools.bench_tokens import realistic_captions

    corpus = realistic_captions(3000, seed=11) + EMOJI_CJK_ENTITIES_MOJIBAKE + ["", " ", "\x01", "a\x01b", "\t\n"]
    assert sum(not t.isascii() or "&" in t for t in corpus) > 600  # the mix really is mixed
    want = [len(reference.encode(t)) + 2 for t in corpus]
    assert sum(n > 77 for n in want) > 150
    counter = tokens.ClipCounter()
    assert counter.count(corpus).tolist() == want  # cold
    assert counter.count(corpus).tolist() == want  # warm
    assert tokens.ClipCounter().count(corpus[::-1]).tolist() == want[::-1]
    assert [int(tokens.count_tokens([t])[0]) for t in corpus[:300]] == want[:300]
    assert tokens.encode(corpus[:500]) == [reference.encode(t) for t in corpus[:500]]


def test_long_captions_agree_with_open_clips_77_token_truncation(reference):
    from tools.bench_tokens import realistic_captions

    long = [t for t in realistic_captions(400, seed=12) if len(t) > 300][:30]
    long += [LONG, "😊 " * 100, "日本語" * 60, "&amp; " * 90, _mojibake(LONG)]
    counts = tokens.count_tokens(long)
    assert (counts > 77).sum() >= 30
    rows = reference(long).tolist()  # open_clip's tokenize: cut at 77, the last slot replaced by the end token
    for text, n, ids, row in zip(long, counts, tokens.encode(long), rows, strict=True):
        want = [reference.sot_token_id, *ids, reference.eot_token_id]
        assert n == len(want), repr(text)
        want = want[:76] + [reference.eot_token_id] if n > 77 else want
        assert row == want + [0] * (77 - len(want)), repr(text)
    for text in long[:8]:
        cut, n, _ = tokens.trim_to_budget(text)
        assert n <= 77 and n == len(reference.encode(cut)) + 2, repr(text)

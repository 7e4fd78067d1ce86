"""CLIP token counting throughput: the batched counter against open_clip and the Rust tokenizers.

Counts `--n` captions (default 100,000) with every method below, side by side on the same captions, and
checks each method's count against open_clip's on every caption.

Captions (`--mix realistic`, the default): seeded face captions in the caption prompts' styles (sentences,
keyword lists, detailed descriptions) over a large vocabulary with made-up names, about 27% holding
non-ASCII text or HTML entities (accented names and words, emoji with ZWJ sequences, skin tones and
flags, Chinese, Japanese and Korean, curly quotes and dashes, `&amp;` `&quot;` `&#39;` and friends, UTF-8
read as Windows-1252 mojibake that ftfy repairs) and about 9% longer than CLIP's 77 tokens.
`--mix legacy` is the old set (ten captions per face, 199 distinct chunks, 3% non-ASCII), which a chunk
cache wins trivially.

Methods:
  open_clip          `SimpleTokenizer.encode`, one caption at a time (ftfy + HTML unescape + BPE): the
                     definition of exact; `_clean_lower` alone is timed too
  tokenizers         a bare `tokenizers.Tokenizer` with open_clip's vocabulary, merges and split regex,
                     `encode_batch` over open_clip's cleaned text (see `rust_tokenizer`)
  CLIPTokenizerFast  transformers' `CLIPTokenizerFast`, one batched call over the same cleaned text
  counter cold       `pipeline.text.tokens.ClipCounter` on the raw captions, a fresh instance
  counter warm       the same instance again (a long run's steady state)
The Rust baselines run with their thread pool and on one thread (the faster counts). They are exact only
after open_clip's own cleaning, so they are timed on the cleaned text with the cleaning not charged (the
strictest comparison), and again with open_clip's cleaning added (an exact pipeline on raw text). Every
method's count is compared with open_clip's on every caption (the mismatches column). The counter's
ratio is the best baseline's time over its own. `--repeat k` interleaves k runs of every method and
reports medians (use it on a shared machine).

Needs open_clip (reference and vocabulary), tokenizers and transformers; run from the repo root.
Usage: python tools/bench_tokens.py [--n 100000] [--repeat 3] [--mix realistic|legacy] [--seed 0]
                                    [--rare 0.2] [--no-hf] [--no-tokenizers]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AGES = ["young", "middle-aged", "elderly", "teenage", "young adult", "older"]
GENDERS = [("woman", "she", "her", "female"), ("man", "he", "his", "male")]
HAIR_COLORS = ["black", "dark brown", "light brown", "blonde", "auburn", "red", "gray", "white", "platinum blonde"]
HAIR_STYLES = ["long wavy", "short straight", "shoulder-length curly", "cropped", "long straight", "short curly",
               "slicked-back", "braided", "messy"]
EYES = ["brown", "blue", "green", "hazel", "gray", "dark"]
EXPRESSIONS = ["a soft smile", "a broad smile showing teeth", "a neutral expression", "a serious look",
               "a surprised expression", "a slight smirk", "a warm laugh"]
ACCESSORIES = ["small gold earrings", "silver hoop earrings", "rectangular glasses", "round sunglasses",
               "a pearl necklace", "a red baseball cap", "a black beanie", "a thin chain necklace", "no accessories"]
CLOTHES = ["a white shirt", "a navy blazer", "a red sweater", "a black turtleneck", "a striped t-shirt",
           "a denim jacket", "a green hoodie", "a beige coat"]
SHOTS = ["close-up portrait", "studio headshot", "candid photo", "portrait photograph", "high-resolution headshot"]
LIGHT = ["soft window light", "studio lighting", "natural daylight", "warm indoor light", "harsh sunlight"]
ODD = ["’s", "café", "—", "naïve", "“", "…"]


def synthetic_captions(n_images: int, seed: int = 0, rare: float = 0.0) -> list[list[str]]:
    """Ten captions per synthetic face in the caption prompts' styles, facts consistent within a face.

    The legacy benchmark set (and tools/bench_refine.py's captions): few distinct chunks, ~3% non-ASCII.
    `rare`: share of captions that get one made-up word (a typo, a name, a rare term): the worst case for
    a chunk cache, since every such word is new.
    """
    rng = random.Random(seed)
    images = []
    for _ in range(n_images):
        age, (noun, she, her, sex) = rng.choice(AGES), rng.choice(GENDERS)
        hair = f"{rng.choice(HAIR_STYLES)} {rng.choice(HAIR_COLORS)} hair"
        eyes, expr, acc = rng.choice(EYES), rng.choice(EXPRESSIONS), rng.choice(ACCESSORIES)
        cloth, shot, light = rng.choice(CLOTHES), rng.choice(SHOTS), rng.choice(LIGHT)
        caps = [
            f"A {shot} of a {age} {noun} with {hair}, {eyes} eyes and {expr}, wearing {acc}.",
            f"The {noun} has an oval face, thin arched eyebrows, {eyes} eyes, a straight nose and full lips.",
            f"A {shot} of a {age} {noun} with {hair}, wearing {cloth} and {acc}.",
            f"A photo of a {age} {noun} with {expr}, looking at the camera under {light}.",
            f"{age}, {sex}, {hair}, {eyes} eyes, {expr.split(' ', 1)[1]}, {acc}, {cloth.split(' ', 1)[1]}",
            f"{shot}, frontal pose, looking at camera, {light}, plain background, color, high quality",
            f"{she.capitalize()} wears {acc} and {cloth}.",
            f"{she.capitalize()} has no visible makeup; {her} eyebrows are natural and {her} skin is smooth.",
            f"{her.capitalize()} hair is {hair.replace(' hair', '')}, with a side part and no bangs.",
            f"{she.capitalize()} shows {expr}, mouth closed, eyes relaxed, head tilted slightly to the left.",
        ]
        if rng.random() < 0.3:
            i = rng.randrange(10)
            caps[i] = caps[i].replace(" ", f" {rng.choice(ODD)} ", 1)
        for i in range(10):
            if rng.random() < rare:
                caps[i] = _add_rare_word(caps[i], rng)
        images.append(caps)
    return images


def _add_rare_word(caption: str, rng: random.Random) -> str:
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 12)))
    return caption.replace(" with ", f" with {word} ", 1).replace(", ", f", {word} ", 1)


# ---- the realistic mix ------------------------------------------------------------------------------

R_AGES = ["young", "middle-aged", "elderly", "teenage", "young adult", "older", "mature", "youthful",
          "twenty-something", "thirty-year-old", "forty-something", "retired", "college-age", "senior"]
R_PEOPLE = [("woman", "she", "her"), ("man", "he", "his"), ("girl", "she", "her"), ("boy", "he", "his"),
            ("lady", "she", "her"), ("gentleman", "he", "his"), ("person", "they", "their"),
            ("bride", "she", "her"), ("groom", "he", "his"), ("nurse", "she", "her"), ("chef", "he", "his"),
            ("grandmother", "she", "her"), ("grandfather", "he", "his"), ("teenager", "they", "their"),
            ("athlete", "she", "her"), ("musician", "he", "his"), ("student", "they", "their")]
R_HAIR_COLORS = ["black", "jet-black", "dark brown", "chestnut", "light brown", "honey blonde", "ash blonde",
                 "platinum blonde", "strawberry blonde", "auburn", "copper", "ginger", "red", "gray", "silver",
                 "salt-and-pepper", "white", "pastel pink", "teal", "lavender", "bleached", "ombre"]
R_HAIR_STYLES = ["long wavy", "short straight", "shoulder-length curly", "cropped", "pixie-cut", "bob-cut",
                 "braided", "box-braided", "dreadlocked", "buzz-cut", "shaved", "high-ponytail", "messy-bun",
                 "cornrowed", "afro-textured", "undercut", "feathered", "slicked-back", "tousled", "layered",
                 "side-swept", "permed", "frizzy", "spiky", "lob", "finger-waved", "mohawk"]
R_EYES = ["brown", "dark brown", "blue", "ice-blue", "green", "hazel", "gray", "amber", "honey-colored",
          "almond-shaped", "hooded", "deep-set", "wide-set", "monolid", "heterochromatic"]
R_SKIN = ["fair", "pale", "porcelain", "olive", "tan", "sun-kissed", "deep brown", "ebony", "freckled",
          "rosy", "ruddy", "light", "medium", "weathered", "dewy", "matte"]
R_EXPRESSIONS = ["a soft smile", "a broad grin showing teeth", "a neutral expression", "a serious look",
                 "a surprised expression", "a slight smirk", "a warm laugh", "pursed lips", "a pensive gaze",
                 "a playful wink", "a raised eyebrow", "a shy smile", "a confident stare", "a tired look",
                 "a gentle frown", "an amused half-smile", "tears in the eyes", "a puzzled squint"]
R_FEATURES = ["high cheekbones", "a square jaw", "a dimpled chin", "light freckles", "a small mole", "a scar",
              "thick eyebrows", "thin arched eyebrows", "a stubble beard", "a full beard", "a handlebar moustache",
              "laugh lines", "crow's feet", "rosy cheeks", "a button nose", "a roman nose", "a septum piercing",
              "a nose stud", "a tattoo on the neck", "long eyelashes", "winged eyeliner", "red lipstick",
              "glossy lips", "a gap between the front teeth", "braces", "a cleft chin", "sunburned cheeks"]
R_ACCESSORIES = ["small gold earrings", "silver hoop earrings", "pearl studs", "rectangular glasses",
                 "round tortoiseshell glasses", "aviator sunglasses", "cat-eye sunglasses", "a pearl necklace",
                 "a red baseball cap", "a black beanie", "a wide-brimmed straw hat", "a fedora", "a headband",
                 "a silk headscarf", "a hijab", "a turban", "a bandana", "a choker", "a bolo tie",
                 "a thin chain necklace", "wireless earbuds", "a hearing aid", "a flower crown", "a tiara",
                 "a face mask", "a monocle", "a nose ring", "ear cuffs"]
R_COLORS = ["white", "black", "navy", "red", "maroon", "burgundy", "olive", "mustard", "beige", "cream",
            "charcoal", "forest-green", "sky-blue", "lilac", "coral", "teal", "rust", "khaki", "plaid",
            "striped", "polka-dot", "floral", "houndstooth", "tie-dye", "sequined"]
R_GARMENTS = ["shirt", "blazer", "sweater", "turtleneck", "t-shirt", "denim jacket", "hoodie", "coat",
              "cardigan", "blouse", "tank top", "polo shirt", "leather jacket", "trench coat", "kimono",
              "sari", "dress", "suit", "uniform", "apron", "lab coat", "scrubs", "jersey", "parka", "vest",
              "poncho", "wedding gown", "tuxedo", "overalls", "windbreaker"]
R_SHOTS = ["close-up portrait", "studio headshot", "candid photo", "portrait photograph", "selfie",
           "high-resolution headshot", "passport-style photo", "black-and-white portrait", "polaroid",
           "film photograph", "webcam still", "profile picture", "three-quarter view portrait",
           "extreme close-up", "environmental portrait", "ID photo", "yearbook photo", "snapshot"]
R_LIGHT = ["soft window light", "studio lighting", "natural daylight", "warm indoor light", "harsh sunlight",
           "golden-hour light", "overcast light", "neon light", "candlelight", "ring light", "backlighting",
           "rim lighting", "dappled shade", "fluorescent light", "flash", "blue-hour light", "low-key lighting"]
R_BACKGROUNDS = ["a plain gray background", "a white backdrop", "a brick wall", "a bookshelf", "a busy street",
                 "a beach at sunset", "a forest", "an office", "a kitchen", "a subway car", "a concert stage",
                 "a hospital corridor", "a garden", "a snowy mountain", "a cafe terrace", "a classroom",
                 "a blurred city skyline", "a graffiti wall", "a library", "a wheat field", "a living room",
                 "a train station", "a rooftop", "a swimming pool", "a wedding venue", "a market stall"]
R_POSES = ["facing the camera", "looking over the shoulder", "in three-quarter view", "in profile",
           "head tilted to the left", "head tilted to the right", "chin resting on a hand", "looking down",
           "looking up", "eyes closed", "mid-laugh", "leaning forward", "arms crossed", "hand in the hair"]
R_CAMERA = ["85mm lens", "shallow depth of field", "bokeh", "f/1.8", "f/2.8", "ISO 400", "50mm", "35mm film",
            "DSLR", "smartphone camera", "4k", "8k", "sharp focus", "film grain", "HDR", "soft focus",
            "high detail", "award-winning", "color graded", "RAW photo", "Kodak Portra 400"]
SYLLABLES = ["ka", "lo", "ren", "vi", "mar", "tho", "sel", "dra", "quin", "bel", "zor", "an", "eth", "ul",
             "mi", "ros", "ta", "gwen", "dor", "fi", "nell", "ya", "sha", "kor", "bri", "el", "wyn", "jo"]

ACCENTED_NAMES = ["Zoë", "José", "Renée", "François", "Björn", "Łukasz", "Siobhán", "Chloé", "Inés", "Søren",
                  "Müller", "Gonçalves", "Nguyễn", "Đặng", "İlkay", "Şebnem", "Ólafur", "Dvořák", "Małgorzata",
                  "Jürgen", "Mañana", "Raphaël", "Noémie", "Ñuñez", "Ævar", "Grzegorz Brzęczyszczykiewicz",
                  "Anaïs", "Thérèse", "Željko", "Dagný", "Fañch", "Agnès", "Joël", "Björk", "Tomáš", "Çelik"]
ACCENTED_WORDS = ["café", "naïve", "façade", "crème", "jalapeño", "rosé", "über", "déjà vu", "soirée",
                  "protégé", "fiancée", "blasé", "mêlée", "piñata", "résumé", "coöperative", "señora",
                  "Mädchen", "smørrebrød", "outré", "à la mode", "cliché", "décolleté", "sautéed", "doña"]
EMOJI = ["😊", "😂", "🙂", "😍", "😎", "🥰", "😢", "😡", "🤔", "✨", "📸", "🔥", "💯", "❤️", "❤", "👍", "👍🏿",
         "👋🏽", "🙏🏻", "💁🏼‍♀️", "🤷🏾‍♂️", "👩🏽‍🦰", "👨🏻‍🦳", "🧑🏿‍🦱", "👩‍❤️‍👨", "👨‍👩‍👧‍👦", "🧔🏻", "🏳️‍🌈",
         "🏳️‍⚧️", "🇯🇵", "🇧🇷", "🇫🇷", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "☀️", "🌸", "💄", "👓", "🎉", "🧕🏽", "👁️", "☺️", "💇‍♀️"]
CJK = ["笑顔の女性", "黒い髪の男性", "眼鏡をかけた女性", "ポートレート写真", "戴眼镜的女人", "金发碧眼",
       "微笑的男人", "长发女孩", "미소 짓는 여자", "안경을 쓴 남자", "검은 머리", "スタジオ撮影", "自然光",
       "高画質", "短髪", "卷发", "눈이 큰 소녀", "和服を着た女性", "穿着红色毛衣", "一位年轻女子的特写"]
CJK_CAPTIONS = ["一位年轻女子的特写肖像，长发，微笑，自然光。", "黒い髪と茶色の目をした若い男性のポートレート。",
                "안경을 쓴 중년 남성의 스튜디오 사진, 부드러운 조명.", "金髪の女性、笑顔、白い背景、高画質",
                "戴着珍珠项链的老年妇女，温暖的室内光线"]
OTHER_SCRIPTS = ["Наталья", "портрет", "улыбка", "Γιώργος", "πορτρέτο", "Ελένη", "Ахмед", "שלום",
                 "مرحبا", "हिन्दी", "Ясмина", "Σοφία"]
ENTITY_FORMS = [("&", "&amp;"), ('"', "&quot;"), ("'", "&#39;"), ("'", "&#x27;"), ("'", "&rsquo;"),
                ("'", "&#8217;"), ("...", "&hellip;"), ("-", "&ndash;"), ("--", "&mdash;"), ("é", "&eacute;"),
                (" ", "&nbsp;"), ("<", "&lt;"), (">", "&gt;")]


def _mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252 (bytes it lacks read as Latin-1): the mojibake ftfy repairs."""
    out = []
    for b in text.encode("utf-8"):
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out)


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()


def _clauses(rng: random.Random, noun: str, she: str, her: str) -> list[str]:
    """Detail clauses for long captions (each 8-15 tokens)."""
    return [
        f"{her} {rng.choice(R_HAIR_STYLES)} {rng.choice(R_HAIR_COLORS)} hair falls over {her} shoulders",
        f"{she} has {rng.choice(R_FEATURES)}, {rng.choice(R_FEATURES)} and {rng.choice(R_SKIN)} skin",
        f"{rng.choice(R_EYES)} eyes look {rng.choice(['directly at', 'past', 'away from'])} the camera",
        f"wearing {rng.choice(R_ACCESSORIES)} and a {rng.choice(R_COLORS)} {rng.choice(R_GARMENTS)}",
        f"the {noun} is photographed against {rng.choice(R_BACKGROUNDS)} under {rng.choice(R_LIGHT)}",
        f"{she} shows {rng.choice(R_EXPRESSIONS)}, {rng.choice(R_POSES)}",
        f"shot with a {rng.choice(R_CAMERA)} and {rng.choice(R_CAMERA)}, {rng.choice(R_CAMERA)}",
        f"a {rng.choice(R_COLORS)} {rng.choice(R_GARMENTS)} with a {rng.choice(R_COLORS)} collar is visible",
        f"in the background there is {rng.choice(R_BACKGROUNDS)} slightly out of focus",
    ]


def _caption(rng: random.Random) -> str:
    age, (noun, she, her) = rng.choice(R_AGES), rng.choice(R_PEOPLE)
    hair = f"{rng.choice(R_HAIR_STYLES)} {rng.choice(R_HAIR_COLORS)} hair"
    eyes, expr, acc = rng.choice(R_EYES), rng.choice(R_EXPRESSIONS), rng.choice(R_ACCESSORIES)
    cloth = f"a {rng.choice(R_COLORS)} {rng.choice(R_GARMENTS)}"
    shot, light, bg = rng.choice(R_SHOTS), rng.choice(R_LIGHT), rng.choice(R_BACKGROUNDS)
    feat, pose, skin = rng.choice(R_FEATURES), rng.choice(R_POSES), rng.choice(R_SKIN)
    if rng.random() < 0.09:  # a long detailed description: well over 77 tokens
        head = f"A {shot} of a {age} {noun} with {hair}"
        clauses = rng.sample(_clauses(rng, noun, she, her), rng.randint(6, 9))
        return head + ", " + ", ".join(clauses) + "."
    forms = [
        f"A {shot} of a {age} {noun} with {hair}, {eyes} eyes and {expr}, wearing {acc}.",
        f"A {age} {noun} with {skin} skin, {feat} and {hair}, {pose}.",
        f"The {noun} has {feat}, {eyes} eyes and {expr}; {she} is wearing {cloth}.",
        f"{shot}, {age} {noun}, {hair}, {eyes} eyes, {expr.split(' ', 1)[1]}, {acc}, {light}, {bg}",
        f"{she.capitalize()} wears {acc} and {cloth}, standing in front of {bg}.",
        f"{her.capitalize()} hair is {hair.replace(' hair', '')} and {her} skin is {skin}, {pose}.",
        f"Photo of a {noun} aged {rng.randint(16, 90)} with {expr}, {light}, {rng.choice(R_CAMERA)}.",
        f"{age} {noun}, {feat}, {acc}, {cloth.split(' ', 1)[1]}, {rng.choice(R_CAMERA)}, {rng.choice(R_CAMERA)}",
        f"A {noun} with {expr} and {feat} poses {pose} against {bg}.",
    ]
    cap = rng.choice(forms)
    if rng.random() < 0.15:
        cap = cap.replace(f" {noun}", f" {noun} named {_name(rng)}", 1)
    if rng.random() < 0.08:  # a typo: swap two letters of one word
        words = cap.split(" ")
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        cap = " ".join(words)
    if rng.random() < 0.05:
        cap = cap.replace(" ", "  ", 1)
    return cap


def _decorate(cap: str, rng: random.Random) -> str:
    """One piece of non-ASCII or HTML-escaped text, as VLMs and scraped alt text produce it."""
    kind = rng.choices(["name", "word", "emoji", "curly", "entity", "cjk", "mojibake", "script"],
                       [14, 11, 22, 17, 13, 10, 8, 5])[0]
    if kind == "name":
        return cap.replace(" with ", f" named {rng.choice(ACCENTED_NAMES)} with ", 1) if " with " in cap \
            else f"{rng.choice(ACCENTED_NAMES)}: {cap}"
    if kind == "word":
        return cap.rstrip(".") + f", {rng.choice(['like a', 'at a', 'very', 'in a'])} {rng.choice(ACCENTED_WORDS)}."
    if kind == "emoji":
        e = "".join(rng.choice(EMOJI) for _ in range(rng.choice([1, 1, 1, 2, 3])))
        where = rng.random()
        if where < 0.5:
            return f"{cap} {e}"
        if where < 0.8:
            return cap.replace(", ", f" {e}, ", 1)
        return cap.rstrip(".") + e  # glued to the last word
    if kind == "curly":
        cap = cap.replace(" is ", "’s ", 1) if rng.random() < 0.5 else cap.replace(", ", " — ", 1)
        if rng.random() < 0.5:
            words = cap.split(" ")
            i = rng.randrange(len(words))
            words[i] = f"“{words[i]}”"
            cap = " ".join(words)
        return cap.replace(", ", "… ", 1) if rng.random() < 0.3 else cap.replace("-", "–", 1)
    if kind == "entity":
        for _ in range(rng.choice([1, 1, 2])):
            plain, ent = rng.choice(ENTITY_FORMS)
            if plain in cap and plain not in ("é", " "):
                cap = cap.replace(plain, ent, 1)
            elif plain == " ":
                cap = cap.replace(" ", ent, 1)
            else:
                cap = cap.replace(" and ", f" {ent} ", 1) if plain in "&<>" else cap.replace(
                    " with ", f" with {ent}{_name(rng).lower()}{ent} ", 1)
        return cap if "&" in cap else cap.replace(" and ", " &amp; ", 1) + " caf&eacute;"
    if kind == "cjk":
        if rng.random() < 0.25:
            return rng.choice(CJK_CAPTIONS)
        return f"{cap} ({rng.choice(CJK)})" if rng.random() < 0.6 else cap.replace(", ", f", {rng.choice(CJK)}, ", 1)
    if kind == "mojibake":
        fixed = _decorate(cap, rng) if rng.random() < 0.5 else cap.replace(" is ", "’s ", 1).replace(
            ", ", " — “", 1) + "”"
        if fixed.isascii():
            fixed = fixed.replace(" with ", f" with {rng.choice(ACCENTED_WORDS)} ", 1) + " ’"
        return _mojibake(fixed)
    return cap.replace(" of ", f" of {rng.choice(OTHER_SCRIPTS)} ", 1) if " of " in cap \
        else f"{cap} {rng.choice(OTHER_SCRIPTS)}"


def realistic_captions(n: int, seed: int = 0, rare: float = 0.0, odd: float = 0.285) -> list[str]:
    """`n` face captions (see the module docstring). `odd`: the chance that a caption gets non-ASCII text or
    HTML entities (a few decorations find nothing to change: 0.285 makes ~28% of captions odd)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cap = _caption(rng)
        if rng.random() < odd:
            cap = _decorate(cap, rng)
            if rng.random() < 0.2:
                cap = _decorate(cap, rng)
        if rng.random() < rare:
            cap = _add_rare_word(cap, rng)
        out.append(cap)
    return out


# ---- timing -----------------------------------------------------------------------------------------

def timed(fn, *args) -> tuple[float, object]:
    """Wall time of fn(*args) with the cyclic GC paused, as timeit does, for every method alike: the
    results this script keeps alive (100k token lists) would otherwise bill GC scans to whoever runs next."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn(*args)
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


def rust_tokenizer():
    """A bare `tokenizers.Tokenizer` doing open_clip's split and BPE, for text already cleaned by open_clip.

    Given its best shot: a BPE cache large enough for every word, and open_clip's regex without its
    case-insensitive flag (twice as fast in oniguruma; on lower-cased text it only matters for "ſ" and
    U+0345, which case-fold to letters: the mismatch column shows whether the captions have any).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from pipeline.text.tokens import OC_PATTERN, load_clip_bpe

    vocab, merges = load_clip_bpe()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False,
                               cache_capacity=1_000_000))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(OC_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok


def threads(on: bool):
    """Rust tokenizers' thread pool on or off for the next call (it reads the variable on every call)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="captions to count (default 100,000)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of every method; medians reported")
    ap.add_argument("--mix", choices=["realistic", "legacy"], default="realistic", help="caption set")
    ap.add_argument("--seed", type=int, default=0, help="caption generator seed")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' CLIPTokenizerFast")
    ap.add_argument("--no-tokenizers", action="store_true", help="skip the bare tokenizers baseline")
    ap.add_argument("--rare", type=float, default=0.0,
                    help="share of captions with one more made-up word (0.2: ~20k never-seen words per 100k)")
    args = ap.parse_args(argv)

    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    # open_clip sets TOKENIZERS_PARALLELISM=false on import; the pipeline never imports open_clip, so
    # give the Rust tokenizers their threads back (ClipCounter's own BPE batches included).
    threads(True)
    from pipeline.text.tokens import ClipCounter, load_clip_bpe

    if args.mix == "legacy":
        texts = [c for caps in synthetic_captions((args.n + 9) // 10, args.seed, args.rare) for c in caps][: args.n]
    else:
        texts = realistic_captions(args.n, args.seed, args.rare)
    n = len(texts)
    reference = SimpleTokenizer()
    cleaned = [_clean_lower(t) for t in texts]  # what the Rust baselines count (also timed below)
    REF, CLEAN, COLD, WARM = ("open_clip SimpleTokenizer.encode, one by one", "open_clip cleaning only (_clean_lower)",
                              "ClipCounter, cold (fresh instance)", "ClipCounter, warm (same instance)")
    methods = [(REF, lambda: [len(reference.encode(t)) + 2 for t in texts]),
               (CLEAN, lambda: [_clean_lower(t) for t in texts])]
    baselines = [REF]
    # The Rust baselines both with their thread pool and on one thread: on a busy 2-core machine the
    # pool can lose, and the faster is the baseline.
    if not args.no_tokenizers:
        tok = rust_tokenizer()
        for on in (True, False):
            name = f"tokenizers encode_batch, cleaned text, {'threads' if on else '1 thread'}"
            methods.append((name, lambda on=on: threads(on) or [
                len(e.ids) + 2 for e in tok.encode_batch(cleaned, add_special_tokens=False)]))
            baselines.append(name)
    if not args.no_hf:
        from transformers import CLIPTokenizerFast

        vocab, merges = load_clip_bpe()
        hf = CLIPTokenizerFast(vocab=vocab, merges=list(merges))
        for on in (True, False):
            name = f"CLIPTokenizerFast batch, cleaned text, {'threads' if on else '1 thread'}"
            methods.append((name, lambda on=on: threads(on) or [len(ids) for ids in hf(cleaned)["input_ids"]]))
            baselines.append(name)
    state: dict[str, ClipCounter] = {}

    def cold():
        state["c"] = ClipCounter()
        return state["c"].count(texts).tolist()

    methods += [(COLD, lambda: threads(True) or cold()), (WARM, lambda: state["c"].count(texts).tolist())]
    # Warm the process on a throwaway instance (lazy imports, first-touch allocations), as the reference
    # run warms open_clip; the cold rows still time an empty chunk cache.
    ClipCounter().count(texts[:1000])

    secs: dict[str, list[float]] = {name: [] for name, _ in methods}
    results: dict[str, list] = {}
    for _ in range(max(1, args.repeat)):
        for name, fn in methods:
            s, out = timed(fn)
            secs[name].append(s)
            results.setdefault(name, out)  # type: ignore[arg-type]
    med = {name: statistics.median(s) for name, s in secs.items()}
    ref = results[REF]
    mismatches = {name: sum(a != b for a, b in zip(results[name], ref, strict=True)) for name in baselines + [COLD, WARM]}

    over77 = sum(c > 77 for c in ref)
    print(f"CLIP token counting, {args.mix} captions (seed {args.seed}): {n:,} captions, "
          f"{sum(not t.isascii() for t in texts) / n:.1%} non-ASCII, {sum('&' in t for t in texts) / n:.1%} with '&' "
          f"({sum(not t.isascii() or '&' in t for t in texts) / n:.1%} either), {over77 / n:.1%} over 77 tokens, "
          f"{len(state['c']._chunks):,} distinct chunks")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"median of {len(secs[REF])} interleaved run(s)\n")
    print(f"{'method':56s} {'captions/s':>11s} {'mismatches':>11s}")
    for name, _ in methods:
        if name == CLEAN:
            print(f"{name:56s} {n / med[name]:11,.0f}")
            continue
        print(f"{name:56s} {n / med[name]:11,.0f} {mismatches[name]:11,d}")
        if name in baselines[1:]:
            print(f"{'  + open_clip cleaning (exact pipeline)':56s} {n / (med[name] + med[CLEAN]):11,.0f}")
    best = min(baselines, key=med.__getitem__)
    print(f"\nbest baseline: {best} ({n / med[best]:,.0f}/s"
          + (", open_clip's cleaning not charged)" if best != REF else ")"))
    for name in (COLD, WARM):
        print(f"{name}: {med[best] / med[name]:.2f}x the best baseline's speed (its time / ours), "
              f"{med[REF] / med[name]:.1f}x open_clip one by one")
    for name in baselines[1:]:
        if mismatches[name]:
            bad = [t for t, a, b in zip(cleaned, results[name], ref, strict=True) if a != b][:3]
            print(f"note: {name} differs from open_clip on {mismatches[name]} caption(s), e.g. {bad!r}")
        else:
            print(f"{name}: equal to open_clip on every caption")
    exact = mismatches[COLD] == mismatches[WARM] == 0
    print(f"ClipCounter equal to open_clip on every caption: {'yes' if exact else 'NO'}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())

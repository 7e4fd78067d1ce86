"""BASELINE for tools/eval_judge.py only: the regex lexicon facecurate used before the fact model
(pipeline/text/facts.py), kept verbatim so the judge's gains are measured side by side.

The face-attribute lexicon: which facts a caption states (and denies), as `category:value` strings.

Refinement may rephrase captions but must not add facts. To check that mechanically we reduce every
caption to facts from a closed lexicon: hair colour and style, eye colour, accessories, makeup,
expression, age, gender, facial hair and clothing colour. Synonyms map to one value ("spectacles",
"eyeglasses" -> `accessory:glasses`); a few facts imply others ("laughing" implies `expression:smile`,
"black hair" implies `hair_color:dark`, "red lipstick" implies `makeup:any`), so a faithful summary
is not mistaken for an invention. A mention inside a negation ("no glasses", "not wearing a hat",
"without earrings") is a denial, kept apart from the assertions.

Colours only count next to what they describe: walking back from "hair", "eyes" or a garment over
adjectives (and forward over "hair is ...", "Hair: long, brown"), so the "blue" of "a blue shirt and
long hair" is a clothing colour, never a hair colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CATEGORIES = ("hair_color", "hair_style", "eye_color", "accessory", "makeup", "expression", "age",
              "gender", "facial_hair", "clothing_color")

# Colour words -> canonical value, per thing coloured.
HAIR_COLORS = {"black": "black", "jet-black": "black", "raven": "black", "brown": "brown", "brunette": "brown",
               "chestnut": "brown", "auburn": "red", "blonde": "blonde", "blond": "blonde", "golden": "blonde",
               "platinum": "blonde", "fair": "blonde", "red": "red", "ginger": "red", "copper": "red",
               "gray": "gray", "grey": "gray", "silver": "gray", "salt-and-pepper": "gray", "graying": "gray",
               "greying": "gray", "white": "white", "dark": "dark", "light": "light", "pink": "pink",
               "blue": "blue", "purple": "purple", "green": "green"}
EYE_COLORS = {"blue": "blue", "brown": "brown", "green": "green", "hazel": "hazel", "gray": "gray", "grey": "gray",
              "black": "dark", "dark": "dark", "amber": "amber", "light": "light"}
CLOTHING_COLORS = {c: c for c in ("black", "white", "gray", "blue", "red", "green", "yellow", "orange", "pink",
                                  "purple", "brown", "beige")} | {
    "grey": "gray", "navy": "blue", "maroon": "red", "burgundy": "red", "crimson": "red", "violet": "purple",
    "lavender": "purple", "khaki": "beige", "tan": "beige", "cream": "white", "olive": "green", "teal": "blue"}
HAIR_STYLES = {"long": "long", "short": "short", "shoulder-length": "medium", "medium-length": "medium",
               "chin-length": "short", "cropped": "short", "curly": "curly", "wavy": "wavy", "straight": "straight",
               "slicked-back": "slicked", "slicked": "slicked", "messy": "messy", "tousled": "messy",
               "spiky": "spiky", "thinning": "thinning", "receding": "receding", "braided": "braids",
               "frizzy": "curly", "coily": "curly", "permed": "curly"}
HAIR_FILLER = {"and", ",", "dark", "light", "medium", "very", "slightly", "thick", "thin", "fine", "shiny", "glossy",
               "natural", "dyed", "neat", "neatly", "styled", "her", "his", "their", "the", "a", "voluminous",
               "sleek", "full", "short-cropped", "mid-length", "tied", "loose"}
EYE_FILLER = {"and", ",", "bright", "deep", "striking", "piercing", "almond-shaped", "large", "big", "small",
              "narrow", "her", "his", "their", "the", "expressive", "kind", "soft", "wide", "open", "sparkling"}
CLOTH_FILLER = {"and", ",", "a", "an", "the", "dark", "light", "bright", "pale", "plain", "striped", "collared",
                "button-up", "button-down", "casual", "formal", "long-sleeved", "short-sleeved", "sleeveless",
                "knit", "denim", "leather", "cotton", "wool", "silk", "v-neck", "crew-neck", "simple", "her", "his"}
GARMENTS = ("shirt", "t-shirt", "tshirt", "blouse", "top", "sweater", "jumper", "jacket", "coat", "dress", "suit",
            "hoodie", "cardigan", "vest", "uniform", "turtleneck", "blazer", "tank", "polo", "spacesuit",
            "clothing", "outfit", "attire", "garment", "robe", "gown", "tuxedo")

# (category, value, regex over the normalised text). Order does not matter.
PATTERNS: list[tuple[str, str, str]] = [
    ("hair_style", "bald", r"\bbald(?:ing)?\b|\bshaved head\b|\bshaven head\b"),
    ("hair_style", "ponytail", r"\bpony ?tails?\b"),
    ("hair_style", "bun", r"\b(?:hair )?buns?\b|\bupdo\b|\btop ?knot\b"),
    ("hair_style", "braids", r"\bbraids?\b|\bbraided\b|\bplaits?\b|\bcornrows\b"),
    ("hair_style", "bangs", r"\bbangs\b|\bfringe\b"),
    ("hair_style", "curly", r"\bcurls\b|\bringlets\b|\bafro\b"),
    ("hair_style", "dreadlocks", r"\bdreadlocks\b|\bdreads\b|\blocs\b"),
    ("hair_style", "short", r"\bbuzz ?cut\b|\bcrew ?cut\b|\bpixie cut\b|\bcrewcut\b"),
    ("hair_style", "receding", r"\breceding hairline\b"),
    ("hair_color", "red", r"\bred ?heads?\b|\bred-haired\b|\bginger-haired\b"),
    ("hair_color", "brown", r"\bbrunettes?\b|\bbrown-haired\b"),
    ("hair_color", "blonde", r"\bblondes?\b|\bblond\b|\bblond-haired\b|\bblonde-haired\b|\bfair-haired\b"),
    ("hair_color", "gray", r"\bgr[ae]y-haired\b|\bsilver-haired\b|\bgr[ae]ying\b"),
    ("hair_color", "white", r"\bwhite-haired\b"),
    ("hair_color", "dark", r"\bdark-haired\b"),
    ("hair_color", "black", r"\bblack-haired\b"),
    ("accessory", "glasses", r"\b(?:eye ?)?glasses\b|\bspectacles\b|\bspecs\b|\beyewear\b|\bbifocals\b"),
    ("accessory", "sunglasses", r"\bsun ?glasses\b|\baviators\b"),
    ("accessory", "hat", r"\bhats?\b|\bcaps?\b|\bbeanies?\b|\bberets?\b|\bfedoras?\b|\bbaseball cap\b|\bheadwear\b"),
    ("accessory", "earrings", r"\bear ?rings?\b|\bhoops\b|\bear studs?\b|\bstud earrings\b"),
    ("accessory", "necklace", r"\bnecklaces?\b|\bpendants?\b|\bchokers?\b|\bchains?\b|\bpearls\b|\blocket\b"),
    ("accessory", "headband", r"\bhead ?bands?\b|\bhair ?bands?\b|\bhair clips?\b|\bhair bows?\b|\btiaras?\b"),
    ("accessory", "scarf", r"\bscarf\b|\bscarves\b|\bheadscarf\b|\bhijab\b|\bbandana\b"),
    ("accessory", "tie", r"\bneck ?ties?\b|\bbow ?ties?\b|\bties?\b"),
    ("accessory", "piercing", r"\bpiercings?\b|\bpierced\b|\bnose rings?\b|\bnose studs?\b"),
    ("accessory", "headphones", r"\bhead ?phones\b|\bear ?buds\b|\bheadset\b"),
    ("accessory", "jewelry", r"\bjewel(?:le)?ry\b"),
    ("makeup", "lipstick", r"\blip ?sticks?\b|\blip ?gloss\b|\blip colou?r\b|\bred lips\b|\bpainted lips\b"),
    ("makeup", "eyeliner", r"\beye ?liner\b|\bkohl\b|\bwinged liner\b"),
    ("makeup", "mascara", r"\bmascara\b|\bfalse lashes\b|\beyelash extensions\b"),
    ("makeup", "eyeshadow", r"\beye ?shadows?\b"),
    ("makeup", "blush", r"\bblush\b|\brouge\b|\bblusher\b"),
    ("makeup", "heavy", r"\bheavy make ?-?up\b|\bbold make ?-?up\b|\bdramatic make ?-?up\b"),
    ("makeup", "any", r"\bmake ?-?up\b|\bcosmetics\b"),
    ("expression", "smile", r"\bsmil(?:e|es|ing|ed)\b|\bgrin(?:s|ning)?\b|\bbeaming\b|\bsmirk(?:s|ing)?\b"),
    ("expression", "laugh", r"\blaugh(?:s|ing|ter)?\b"),
    ("expression", "neutral", r"\bneutral\b|\bexpressionless\b|\bblank (?:expression|stare|look)\b|\bstraight face\b|\bdeadpan\b"),
    ("expression", "serious", r"\bserious\b|\bstern\b|\bsolemn\b|\bsomber\b|\bintense\b"),
    ("expression", "surprised", r"\bsurprised?\b|\bshocked\b|\bastonished\b|\bamazed\b"),
    ("expression", "sad", r"\bsad(?:ness)?\b|\bfrown(?:s|ing)?\b|\bunhappy\b|\bmelancholy\b|\bsorrowful\b"),
    ("expression", "angry", r"\bangry\b|\bscowl(?:s|ing)?\b|\bfurious\b|\bannoyed\b"),
    ("expression", "mouth_open", r"\bmouth (?:is )?(?:slightly |wide |partly |partially )?open\b|\bopen mouth\b|"
                                 r"\bopen-mouthed\b|\bparted lips\b|\blips (?:are )?(?:slightly )?parted\b"),
    ("expression", "eyes_closed", r"\beyes (?:are )?closed\b|\bclosed eyes\b"),
    ("age", "child", r"\bbab(?:y|ies)\b|\binfants?\b|\btoddlers?\b|\bchild(?:ren)?\b|\bkids?\b|\blittle (?:boy|girl)\b"),
    ("age", "teen", r"\bteens?\b|\bteenagers?\b|\bteenage\b|\badolescents?\b|\bteens\b"),
    ("age", "young", r"\byoung\b|\byouthful\b|\btwenties\b|\bthirties\b|\b[23]0s\b|\b(?:1[89]|2\d|3[0-4])-year-old\b"),
    ("age", "middle", r"\bmiddle-? ?aged\b|\bforties\b|\bfifties\b|\b[45]0s\b|\b(?:3[5-9]|[45]\d)-year-old\b"),
    ("age", "old", r"\belderly\b|\bold(?:er)? (?:man|woman|men|women|person|lady|gentleman)\b|\bseniors?\b|(?<!middle )(?<!-)\baged\b|"
                   r"\bsixties\b|\bseventies\b|\beighties\b|\b[6-9]0s\b|\b(?:[6-9]\d)-year-old\b|\b[6-9]\d years old\b|"
                   r"\bwrinkles\b"),
    ("age", "adult", r"\badults?\b|\bgrown\b"),
    ("gender", "female", r"\bwom[ae]n\b|\bfemales?\b|\bgirls?\b|\blad(?:y|ies)\b|\bshe\b|\bher\b|\bherself\b|"
                         r"\bfeminine\b|\bactress\b|\bmother\b|\bgrandmother\b"),
    ("gender", "male", r"\bm[ae]n\b|\bmales?\b|\bboys?\b|\bgentlem[ae]n\b|\bguys?\b|\bhe\b|\bhis\b|\bhim\b|"
                       r"\bhimself\b|\bmasculine\b|\bactor\b|\bfather\b|\bgrandfather\b"),
    ("facial_hair", "beard", r"\bbeards?\b|\bbearded\b"),
    ("facial_hair", "mustache", r"\bmou?stache[sd]?\b"),
    ("facial_hair", "goatee", r"\bgoatee\b"),
    ("facial_hair", "stubble", r"\bstubble\b|\bstubbly\b|\bunshaven\b|\bfive o'clock shadow\b"),
    ("facial_hair", "sideburns", r"\bsideburns\b"),
    ("facial_hair", "clean_shaven", r"\bclean-? ?shaven\b"),
]
IMPLIES: dict[str, tuple[str, ...]] = {
    "expression:laugh": ("expression:smile",),
    "accessory:sunglasses": ("accessory:glasses",),
    "accessory:earrings": ("accessory:jewelry",),
    "accessory:necklace": ("accessory:jewelry",),
    "hair_color:black": ("hair_color:dark",),
    "hair_color:blonde": ("hair_color:light",),
    "facial_hair:goatee": ("facial_hair:beard",),
    "age:young": ("age:adult",), "age:middle": ("age:adult",), "age:old": ("age:adult",),
    **{f"makeup:{m}": ("makeup:any",) for m in ("lipstick", "eyeliner", "mascara", "eyeshadow", "blush", "heavy")},
}
# Denying a group denies each member ("no jewelry" -> no earrings, no necklace).
GROUPS: dict[str, tuple[str, ...]] = {
    "accessory:jewelry": ("accessory:earrings", "accessory:necklace", "accessory:piercing"),
    "makeup:any": ("makeup:lipstick", "makeup:eyeliner", "makeup:mascara", "makeup:eyeshadow", "makeup:blush",
                   "makeup:heavy"),
    "accessory:glasses": ("accessory:sunglasses",),
}
_ACCESSORIES_WORD = re.compile(r"\baccessor(?:y|ies)\b")
NEGATIONS = {"no", "not", "without", "n't", "none", "never", "nor", "neither", "lacks", "lacking", "free"}
# Words that end a negation's reach ("no beard but wears glasses"), unless a negation sits just before them.
NEG_STOPS = {"but", "with", "wearing", "wears", "has", "have", "is", "are", "and"}
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|n't|[.,;:!?()]")


def normalize(text: str) -> str:
    """Lower case, curly quotes straightened, words and punctuation separated by single spaces."""
    text = text.lower().replace("’", "'").replace("‘", "'").replace("–", "-").replace("—", " , ")
    text = re.sub(r"n't\b", " n't", text)
    return " ".join(_TOKEN.findall(text))


@dataclass
class Facts:
    """What one caption asserts and denies."""

    asserted: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)

    def categories(self) -> set[str]:
        return {f.split(":", 1)[0] for f in self.asserted}


def extract(text: str) -> Facts:
    """The lexicon facts a caption asserts and denies."""
    norm = normalize(text)
    facts = Facts()
    for category, value, pattern in _COMPILED:
        for m in pattern.finditer(norm):
            _add(facts, f"{category}:{value}", _negated(norm, m.start()))
    for m in _ACCESSORIES_WORD.finditer(norm):  # "no accessories" denies them all; "accessories" asserts none
        if _negated(norm, m.start()):
            facts.denied.update(f"accessory:{v}" for c, v, _ in PATTERNS if c == "accessory")
    _colours(norm, facts)
    for f in list(facts.asserted):
        facts.asserted.update(IMPLIES.get(f, ()))
    for f in list(facts.denied):
        facts.denied.update(GROUPS.get(f, ()))
    return facts


def extract_all(texts: list[str]) -> Facts:
    """The union of the facts of several captions."""
    out = Facts()
    for t in texts:
        f = extract(t)
        out.asserted |= f.asserted
        out.denied |= f.denied
    return out


def _add(facts: Facts, fact: str, negated: bool) -> None:
    (facts.denied if negated else facts.asserted).add(fact)


def _negated(norm: str, pos: int, reach: int = 5) -> bool:
    before = norm[:pos].split()[-reach:]
    for i in range(len(before) - 1, -1, -1):
        w = before[i]
        if w in NEGATIONS:
            return True
        if w in ".;:!?(),":
            return False
        if w in NEG_STOPS and not (i > 0 and before[i - 1] in NEGATIONS):
            return False
    return False


def _colours(norm: str, facts: Facts) -> None:
    """Colours and hair styles found next to the word they describe (see the module docstring)."""
    for rx_back, rx_fwd, table, category, style in _COLOUR_RULES:
        for rx in (rx_back, rx_fwd):
            if rx is None:
                continue
            for m in rx.finditer(norm):
                neg = _negated(norm, m.start())
                for w in m.group("adj").replace(",", " ").split():
                    if w in table:
                        _add(facts, f"{category}:{table[w]}", neg)
                    if style and w in HAIR_STYLES:
                        _add(facts, f"hair_style:{HAIR_STYLES[w]}", neg)


def _alt(words: set[str] | dict[str, str] | tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _walk(words: set[str], nouns: str) -> tuple[re.Pattern, re.Pattern]:
    adj = rf"(?:(?:{_alt(words)})(?= |$) ?)+"
    back = re.compile(rf"(?<![a-z0-9'-])(?P<adj>{adj})(?:{nouns})\b")
    # "hair is long and brown", "Hair: long, straight, dark brown with a side part": the adjective run
    # must end the clause or lead into a non-noun, or it belongs to the next noun ("hair, blue eyes").
    fwd = re.compile(rf"\b(?:{nouns}) (?:: |, which (?:is|are) |that (?:is|are) |(?:is|are|looks|appears) )"
                     rf"(?P<adj>{adj})(?=$|[.,;:!?)]|(?:with|in|that|styled|worn|parted|pulled|tied|falling|"
                     rf"framing|swept|cut)\b)")
    return back, fwd


_COMPILED = [(c, v, re.compile(p)) for c, v, p in PATTERNS]
_COLOUR_RULES = [
    (*_walk(set(HAIR_COLORS) | set(HAIR_STYLES) | HAIR_FILLER, r"hair|hairstyle|haircut|locks|mane"),
     HAIR_COLORS, "hair_color", True),
    (*_walk(set(EYE_COLORS) | EYE_FILLER, r"eyes|eye|irises"), EYE_COLORS, "eye_color", False),
    (_walk(set(CLOTHING_COLORS) | CLOTH_FILLER, _alt(GARMENTS))[0], None, CLOTHING_COLORS, "clothing_color", False),
]


# The old guard's rule (pipeline/text/judge.py before the fact model), for the side-by-side score.
OLD_MASK = {"eyeglasses": ("accessory:glasses", "accessory:sunglasses"), "hat": ("accessory:hat",),
            "earrings": ("accessory:earrings",), "necklace": ("accessory:necklace",)}


def old_judge(candidate: str, inputs: list[str], evidence: dict | None = None) -> str:
    """'accepted', 'invented_fact' or 'mask_contradiction' as the old KeyState.offer decided."""
    ev = {k: (v if isinstance(v, str) else v["state"]) for k, v in (evidence or {}).items()}
    allowed = extract_all(inputs)
    for item, state in ev.items():
        if state == "present":
            allowed.asserted.add(OLD_MASK[item][0])
        elif state == "absent":
            allowed.denied.update(OLD_MASK[item])
    f = extract(candidate)
    if (f.asserted - allowed.asserted) | (f.denied - allowed.denied):
        return "invented_fact"
    for item, state in ev.items():
        settled = set(OLD_MASK[item])
        if (state == "absent" and f.asserted & settled) or (state == "present" and f.denied & settled):
            return "mask_contradiction"
    return "accepted"

"""The face vocabulary: every fact a caption can state, as `slot:value` strings, and how facts relate.

Data only; `pipeline.text.facts` reads captions with it. Four tables:
- `TERMS`: phrases (token sequences, longest match wins) and the facts they state. A phrase that maps
  to no fact is a look-alike blocker: "cap sleeves" is not a cap, "hair tie" not a tie, "shades of"
  not sunglasses, "chain-link" (one token) nothing at all.
- `HEADS`: nouns that take modifiers ("long wavy auburn hair", "eyes are blue", "a navy blazer"), with
  the modifier table for each: a colour means hair colour next to "hair", eye colour next to "eyes",
  skin tone next to "skin", clothing colour next to a garment and nothing next to "background".
- `IMPLIES`: specific facts entail generic ones (hoops -> earrings -> jewellery; black hair -> dark hair;
  a 25-year-old -> young). A refiner may generalise, never specialise.
- `GROUPS`: denying a generic fact denies its members ("no jewellery" -> no earrings, no necklace).
Slots in `EXCLUSIVE` hold one value per face: two values contradict unless `COMPATIBLE` pairs them
(dark~brown hair, wavy~curly). `CONFLICTS` lists contradictions between facts of non-exclusive slots
(laughing vs a serious face, hair down vs a ponytail).
"""

from __future__ import annotations

# Slots in the order reports show them.
SLOTS = ("gender", "age", "age_years", "ethnicity", "skin_tone", "hair_color", "hair_length", "hair_texture",
         "hair_style", "eye_color", "facial_hair", "makeup", "marks", "eyewear", "headwear", "hair_accessory",
         "earrings", "necklace", "jewelry", "accessories", "accessory", "clothing", "clothing_color",
         "garment_color", "expression", "pose", "head_tilt", "gaze", "photo", "setting")

EXCLUSIVE = {"gender", "age", "ethnicity", "skin_tone", "hair_color", "hair_length", "hair_texture", "eye_color",
             "pose", "gaze", "photo", "setting"}

# Values of an exclusive slot that do not contradict each other (symmetric; same value is always fine).
COMPATIBLE: dict[str, set[frozenset[str]]] = {
    "age": {frozenset(p) for p in [("adult", "young"), ("adult", "middle"), ("adult", "old"), ("older", "middle"),
                                   ("older", "old"), ("older", "adult"), ("teen", "young"),
                                   ("teen", "adult")]},
    "hair_color": {frozenset(p) for p in [("dark", "black"), ("dark", "brown"), ("light", "blonde"), ("light", "brown"),
                                          ("light", "gray"), ("light", "white"), ("gray", "white"), ("red", "brown")]},
    "hair_length": {frozenset(p) for p in [("bald", "short"), ("short", "medium"), ("medium", "long")]},
    "hair_texture": {frozenset(p) for p in [("wavy", "curly"), ("wavy", "straight")]},
    "eye_color": {frozenset(p) for p in [("dark", "brown"), ("dark", "black"), ("light", "blue"), ("light", "green"),
                                         ("light", "gray"), ("hazel", "brown"), ("hazel", "green"), ("light", "hazel"),
                                         ("light", "amber"), ("amber", "brown"), ("amber", "hazel")]},
    "skin_tone": {frozenset(p) for p in [("light", "medium"), ("medium", "dark")]},
    "ethnicity": {frozenset(("mixed", e)) for e in ("asian", "east_asian", "south_asian", "southeast_asian", "black",
                                                     "white", "hispanic", "middle_eastern")}
                 | {frozenset(("asian", e)) for e in ("east_asian", "south_asian", "southeast_asian")},
    "pose": {frozenset(p) for p in [("three_quarter", "frontal"), ("three_quarter", "profile")]},
    "setting": {frozenset(("studio", "indoor"))},
}

# Contradicting facts outside the exclusive slots (both asserted by one face cannot both be true).
CONFLICTS: set[frozenset[str]] = {frozenset(p) for p in [
    *[(f"expression:{a}", f"expression:{b}") for a in ("smile", "laugh") for b in ("sad", "angry", "serious")],
    ("expression:laugh", "expression:neutral"), ("expression:surprised", "expression:neutral"),
    *[("hair_style:down", f"hair_style:{s}") for s in ("ponytail", "bun", "updo", "tied_back", "pigtails")],
]}

IMPLIES: dict[str, tuple[str, ...]] = {
    "expression:laugh": ("expression:smile",),
    "eyewear:glasses": ("eyewear:any",), "eyewear:sunglasses": ("eyewear:glasses", "eyewear:any"),
    "eyewear:goggles": ("eyewear:any",),
    **{f"headwear:{h}": ("headwear:hat", "headwear:any") for h in ("cap", "beanie", "beret", "fedora", "cowboy_hat",
                                                                   "sun_hat", "bucket_hat", "top_hat", "straw_hat")},
    **{f"headwear:{h}": ("headwear:any",) for h in ("hat", "helmet", "hood", "turban", "hijab", "headscarf",
                                                    "bandana", "crown")},
    **{f"earrings:{k}": ("earrings:any",) for k in ("studs", "hoops", "drop")},
    **{f"necklace:{k}": ("necklace:any",) for k in ("pendant", "choker", "chain", "pearls", "locket")},
    "earrings:any": ("jewelry:any",), "necklace:any": ("jewelry:any",),
    **{f"jewelry:{k}": ("jewelry:any",) for k in ("bracelet", "ring", "brooch")},
    **{f"makeup:{k}": ("makeup:any",) for k in ("lipstick", "lip_gloss", "eyeliner", "mascara", "eyeshadow", "blush",
                                                "foundation", "heavy")},
    **{f"facial_hair:{k}": ("facial_hair:any",) for k in ("beard", "mustache", "stubble", "sideburns")},
    "facial_hair:goatee": ("facial_hair:beard", "facial_hair:any"),
    **{f"hair_accessory:{k}": ("hair_accessory:any",) for k in ("headband", "hair_clip", "hair_tie", "tiara", "bow")},
    "hair_color:black": ("hair_color:dark",), "hair_color:blonde": ("hair_color:light",),
    "eye_color:brown": ("eye_color:dark",), "eye_color:black": ("eye_color:dark",),
    **{f"eye_color:{c}": ("eye_color:light",) for c in ("blue", "green", "gray")},
    "ethnicity:east_asian": ("ethnicity:asian",), "ethnicity:south_asian": ("ethnicity:asian",),
    "ethnicity:southeast_asian": ("ethnicity:asian",),
    "hair_style:pixie": ("hair_length:short",), "setting:studio": ("setting:indoor",),
    **{f"marks:{k}_piercing": ("marks:piercing",) for k in ("nose", "lip", "eyebrow")}, "hair_style:buzz_cut": ("hair_length:short",),
    "hair_style:afro": ("hair_texture:curly",), "hair_style:updo": ("hair_style:bun",),
    "age:young": ("age:adult",), "age:middle": ("age:adult", "age:older"), "age:old": ("age:adult", "age:older"),
}

_MEMBERS: dict[str, list[str]] = {}
for _f, _gens in IMPLIES.items():
    for _g in _gens:
        _MEMBERS.setdefault(_g, []).append(_f)
# Denying a generic fact denies every fact that implies it; a few groups have no single generic word.
GROUPS: dict[str, tuple[str, ...]] = {g: tuple(sorted(m)) for g, m in _MEMBERS.items()
                                      if not g.startswith(("age:", "hair_color:", "eye_color:", "hair_length:",
                                                           "hair_texture:", "expression:", "ethnicity:"))}
GROUPS["accessories:any"] = ("eyewear:any", "headwear:any", "earrings:any", "necklace:any", "jewelry:any",
                             "clothing:scarf", "clothing:tie", "hair_accessory:any", "accessory:watch")
GROUPS["hair_style:tied_back"] = ()

# Age groups by years (the numbers a caption states map to these).
AGE_GROUPS = ((0, 12, "child"), (13, 19, "teen"), (20, 34, "young"), (35, 59, "middle"), (60, 130, "old"))
DECADES = {"teens": 10, "twenties": 20, "thirties": 30, "forties": 40, "fifties": 50, "sixties": 60, "seventies": 70,
           "eighties": 80, "nineties": 90}


def _t(text: str, *facts: str) -> tuple[str, tuple[str, ...]]:
    return text, facts


# Phrase -> facts. Hyphenated words are single tokens ("t-shirt", "clean-shaven", "cap-sleeve").
_TERM_LIST = [
    # gender (pronouns included: "she has ..." states a woman)
    *[_t(w, "gender:female") for w in ("woman", "women", "girl", "girls", "lady", "ladies", "female", "females", "she",
                                       "her", "hers", "herself", "feminine", "actress", "mother", "grandmother",
                                       "businesswoman", "bride", "daughter", "sister", "wife", "gal")],
    *[_t(w, "gender:male") for w in ("man", "men", "boy", "boys", "gentleman", "gentlemen", "guy", "guys", "male",
                                     "males", "he", "him", "his", "himself", "masculine", "actor", "father",
                                     "grandfather", "businessman", "groom", "son", "brother", "husband", "dude")],
    # age
    *[_t(w, "age:child") for w in ("baby", "babies", "infant", "toddler", "child", "children", "kid", "kids",
                                   "preschooler", "schoolgirl", "schoolboy")],
    _t("little girl", "age:child", "gender:female"), _t("little boy", "age:child", "gender:male"),
    *[_t(w, "age:teen") for w in ("teen", "teens", "teenager", "teenagers", "teenage", "adolescent", "adolescents")],
    *[_t(w, "age:young") for w in ("young", "youthful", "younger")],
    _t("young adult", "age:young"),
    *[_t(w, "age:middle") for w in ("middle-aged", "middle aged", "midlife")],
    *[_t(w, "age:old") for w in ("elderly", "old", "senior", "seniors", "aged", "aging", "ageing", "grandma",
                                 "grandpa", "pensioner", "retiree")],
    _t("older", "age:older"), _t("mature", "age:older"),
    *[_t(w, "age:adult") for w in ("adult", "adults", "grown-up", "grown")],
    _t("old-fashioned"), _t("year-old"), _t("old photo"), _t("old photograph"),
    # perceived ethnicity (black/white as ethnicity only before a person noun: see facts.PERSON_COLOURS)
    *[_t(w, "ethnicity:asian") for w in ("asian", "asians")],
    *[_t(w, "ethnicity:east_asian") for w in ("east asian", "east-asian", "chinese", "japanese", "korean")],
    *[_t(w, "ethnicity:south_asian") for w in ("south asian", "south-asian", "indian", "pakistani", "bangladeshi",
                                               "sri lankan")],
    *[_t(w, "ethnicity:southeast_asian") for w in ("southeast asian", "south-east asian", "southeast-asian",
                                                   "filipino", "filipina", "vietnamese", "thai", "indonesian")],
    *[_t(w, "ethnicity:black") for w in ("african", "african american", "african-american", "afro-caribbean",
                                         "of african descent")],
    *[_t(w, "ethnicity:white") for w in ("caucasian", "european", "of european descent")],
    *[_t(w, "ethnicity:hispanic") for w in ("hispanic", "latino", "latina", "latinx", "latin american")],
    *[_t(w, "ethnicity:middle_eastern") for w in ("middle eastern", "middle-eastern", "arab", "arabic", "persian")],
    *[_t(w, "ethnicity:mixed") for w in ("mixed-race", "mixed race", "biracial", "multiracial", "mixed ethnicity")],
    _t("indian summer"), _t("black and white"), _t("black-and-white", "photo:black_and_white"),
    # skin tone words that need no noun
    *[_t(w, "skin_tone:light") for w in ("pale-skinned", "fair-skinned", "light-skinned")],
    *[_t(w, "skin_tone:medium") for w in ("olive-skinned", "tan-skinned", "tanned", "suntanned", "sun-kissed")],
    *[_t(w, "skin_tone:dark") for w in ("dark-skinned", "deep-skinned", "brown-skinned")],
    # hair words that need no "hair"
    *[_t(w, "hair_color:blonde") for w in ("blonde", "blondes", "blond", "platinum blonde")],
    *[_t(w, "hair_color:brown") for w in ("brunette", "brunettes")],
    *[_t(w, "hair_color:red") for w in ("redhead", "redheads", "red-head", "ginger-haired", "ginger")],
    _t("strawberry blonde", "hair_color:blonde", "hair_color:red"),
    _t("salt-and-pepper", "hair_color:gray"), _t("salt and pepper", "hair_color:gray"),
    *[_t(w, "hair_length:bald") for w in ("bald", "balding", "shaved head", "shaven head", "bald head", "hairless")],
    _t("man bun", "hair_style:bun"), _t("ponytail", "hair_style:ponytail"), _t("ponytails", "hair_style:ponytail"), _t("pony tail", "hair_style:ponytail"),
    _t("pigtails", "hair_style:pigtails"),
    *[_t(w, "hair_style:bun") for w in ("bun", "buns", "hair bun", "top knot", "topknot", "chignon")],
    *[_t(w, "hair_style:updo") for w in ("updo", "up-do", "hair up", "pinned up", "pulled up")],
    *[_t(w, "hair_style:braids") for w in ("braid", "braids", "braided", "plait", "plaits", "plaited", "cornrows")],
    *[_t(w, "hair_style:bangs") for w in ("bangs", "fringe", "side-swept bangs")],
    *[_t(w, "hair_style:dreadlocks") for w in ("dreadlocks", "dreads", "locs")],
    _t("afro", "hair_style:afro"), _t("mohawk", "hair_style:mohawk"), _t("bob", "hair_style:bob"),
    _t("bob cut", "hair_style:bob"), _t("pixie cut", "hair_style:pixie"), _t("pixie", "hair_style:pixie"),
    *[_t(w, "hair_style:buzz_cut") for w in ("buzz cut", "buzzcut", "crew cut", "crewcut", "buzzed")],
    *[_t(w, "hair_style:side_part") for w in ("side part", "side parting", "side-parted", "parted to the side")],
    *[_t(w, "hair_style:center_part") for w in ("center part", "centre part", "middle part", "center-parted")],
    *[_t(w, "hair_style:slicked_back") for w in ("slicked back", "slicked-back", "combed back", "swept back",
                                                 "slicked")],
    *[_t(w, "hair_style:tied_back") for w in ("tied back", "pulled back", "tied up")],
    *[_t(w, "hair_style:down") for w in ("hair down", "worn down", "hair loose", "worn loose", "loose hair")],
    *[_t(w, "hair_style:receding") for w in ("receding hairline", "receding")],
    _t("thinning hair", "hair_style:thinning"), _t("thinning", "hair_style:thinning"),
    *[_t(w, "hair_texture:curly") for w in ("curls", "ringlets", "coils", "kinky")],
    _t("ring of curls", "hair_texture:curly"),
    # facial hair
    *[_t(w, "facial_hair:beard") for w in ("beard", "beards", "bearded", "full beard")],
    *[_t(w, "facial_hair:mustache") for w in ("mustache", "moustache", "mustaches", "moustaches", "mustached",
                                              "moustached")],
    _t("goatee", "facial_hair:goatee"),
    *[_t(w, "facial_hair:stubble") for w in ("stubble", "stubbly", "unshaven", "five o'clock shadow",
                                             "five o 'clock shadow", "scruff", "scruffy")],
    _t("sideburns", "facial_hair:sideburns"),
    _t("facial hair", "facial_hair:any"),
    *[_t(w, "!facial_hair:any") for w in ("clean-shaven", "clean shaven", "clean-shaved", "freshly shaven",
                                          "freshly-shaven", "smooth-shaven", "shaved face", "smooth-faced")],
    # makeup
    *[_t(w, "makeup:any") for w in ("makeup", "make-up", "make up", "cosmetics", "made up", "made-up")],
    *[_t(w, "makeup:heavy") for w in ("heavy makeup", "heavy make-up", "bold makeup", "dramatic makeup",
                                      "glamorous makeup", "dramatic eye makeup", "bold eye makeup", "heavy eye makeup",
                                      "smoky eye makeup", "dramatic eye make-up", "full makeup", "full glam")],
    *[_t(w, "makeup:any") for w in ("eye makeup", "eye make-up", "natural makeup", "light makeup", "subtle makeup",
                                    "minimal makeup")],
    *[_t(w, "makeup:lipstick") for w in ("lipstick", "lipsticks", "lip color", "lip colour", "painted lips",
                                         "red lips", "lip stain")],
    *[_t(w, "makeup:lip_gloss") for w in ("lip gloss", "lipgloss", "glossy lips")],
    *[_t(w, "makeup:eyeliner") for w in ("eyeliner", "eye liner", "eye-liner", "kohl", "winged liner")],
    *[_t(w, "makeup:mascara") for w in ("mascara", "false lashes", "false eyelashes", "eyelash extensions")],
    *[_t(w, "makeup:eyeshadow") for w in ("eyeshadow", "eye shadow", "eye-shadow", "smoky eyes", "smokey eyes")],
    *[_t(w, "makeup:blush") for w in ("blush", "blusher", "rouge")],
    _t("foundation", "makeup:foundation"),
    # marks
    *[_t(w, "marks:freckles") for w in ("freckles", "freckled", "freckle", "frecklesd")],
    *[_t(w, "marks:mole") for w in ("mole", "moles", "beauty mark", "beauty spot")],
    *[_t(w, "marks:scar") for w in ("scar", "scars", "scarred")],
    *[_t(w, "marks:tattoo") for w in ("tattoo", "tattoos", "tattooed", "face tattoo", "neck tattoo")],
    *[_t(w, "marks:piercing") for w in ("piercing", "piercings", "pierced", "facial piercings", "facial piercing")],
    *[_t(w, "marks:nose_piercing") for w in ("nose ring", "nose rings", "nose stud", "nose studs", "nose piercing",
                                             "septum ring", "septum piercing", "pierced nose", "nostril piercing")],
    *[_t(w, "marks:lip_piercing") for w in ("lip ring", "lip piercing", "lip stud", "labret")],
    *[_t(w, "marks:eyebrow_piercing") for w in ("eyebrow ring", "eyebrow piercing", "eyebrow stud")],
    *[_t(w, "marks:birthmark") for w in ("birthmark", "birthmarks", "birth mark")],
    *[_t(w, "marks:wrinkles") for w in ("wrinkles", "wrinkled", "wrinkle", "crow's feet", "smile lines",
                                        "laugh lines", "fine lines")],
    *[_t(w, "marks:dimples") for w in ("dimple", "dimples", "dimpled")],
    *[_t(w, "marks:acne") for w in ("acne", "pimples", "blemishes", "blemish")],
    _t("pierced ears", "earrings:any"),
    # eyewear
    *[_t(w, "eyewear:glasses") for w in ("glasses", "eyeglasses", "eye glasses", "eye-glasses", "spectacles", "specs",
                                         "bifocals", "reading glasses", "prescription glasses", "pair of glasses")],
    *[_t(w, "eyewear:sunglasses") for w in ("sunglasses", "sun glasses", "sunnies", "shades", "aviators",
                                            "aviator sunglasses", "tinted glasses", "dark glasses")],
    _t("goggles", "eyewear:goggles"),
    *[_t(w, "eyewear:any") for w in ("eyewear", "eye wear")],
    _t("shades of"), _t("various shades"), _t("glassy"), _t("glass"), _t("magnifying glass"), _t("wine glass"),
    # headwear
    *[_t(w, "headwear:hat") for w in ("hat", "hats")],
    *[_t(w, "headwear:any") for w in ("headwear", "headgear", "head covering", "head-covering", "head wear")],
    *[_t(w, "headwear:cap") for w in ("cap", "caps", "baseball cap", "ball cap", "trucker cap", "snapback",
                                      "peaked cap", "flat cap", "newsboy cap")],
    *[_t(w, "headwear:beanie") for w in ("beanie", "beanies", "knit cap", "knitted cap", "knit hat", "knitted hat",
                                         "woolly hat", "wool hat", "toque", "tuque", "stocking cap", "bobble hat")],
    _t("beret", "headwear:beret"), _t("berets", "headwear:beret"),
    _t("fedora", "headwear:fedora"), _t("trilby", "headwear:fedora"),
    _t("cowboy hat", "headwear:cowboy_hat"), _t("sun hat", "headwear:sun_hat"), _t("sunhat", "headwear:sun_hat"),
    _t("bucket hat", "headwear:bucket_hat"), _t("top hat", "headwear:top_hat"), _t("straw hat", "headwear:straw_hat"),
    *[_t(w, "headwear:helmet") for w in ("helmet", "helmets", "hard hat")],
    _t("hood", "headwear:hood"), _t("hood up", "headwear:hood"), _t("hooded", "headwear:hood"),
    _t("hood down"), _t("hood is down"), _t("hood lowered"), _t("hood of"), _t("hood pushed back"),
    *[_t(w, "!headwear:any") for w in ("nothing on her head", "nothing on his head", "nothing on their head",
                                       "bare head", "uncovered head", "head uncovered")],
    _t("turban", "headwear:turban"), _t("turbans", "headwear:turban"),
    *[_t(w, "headwear:hijab") for w in ("hijab", "hijabs", "niqab", "headscarf hijab")],
    *[_t(w, "headwear:headscarf") for w in ("headscarf", "head scarf", "headscarves", "kerchief", "head wrap",
                                            "headwrap")],
    _t("bandana", "headwear:bandana"), _t("bandanna", "headwear:bandana"), _t("do-rag", "headwear:bandana"),
    _t("crown", "headwear:crown"),
    _t("cap sleeve"), _t("cap sleeves"), _t("cap-sleeve"), _t("cap-sleeved"), _t("knee cap"), _t("ice cap"),
    _t("capped teeth"), _t("thinking cap"), _t("hat trick"), _t("top of her head"), _t("top of his head"),
    # hair accessories (not headwear)
    *[_t(w, "hair_accessory:headband") for w in ("headband", "headbands", "head band", "hairband", "hair band",
                                                 "alice band")],
    *[_t(w, "hair_accessory:hair_clip") for w in ("hair clip", "hair clips", "hairclip", "barrette", "barrettes",
                                                  "hairpin", "hair pin", "bobby pins", "hair slide")],
    *[_t(w, "hair_accessory:hair_tie") for w in ("hair tie", "hair ties", "scrunchie", "scrunchy", "hair elastic")],
    *[_t(w, "hair_accessory:tiara") for w in ("tiara", "tiaras", "diadem")],
    _t("hair bow", "hair_accessory:bow"), _t("hair bows", "hair_accessory:bow"), _t("bow in her hair", "hair_accessory:bow"),
    _t("hair accessory", "hair_accessory:any"), _t("hair accessories", "hair_accessory:any"),
    # earrings
    *[_t(w, "earrings:any") for w in ("earring", "earrings", "ear rings", "ear ring", "ear-rings", "ear cuff",
                                      "ear cuffs", "ear jewelry", "ear jewellery")],
    *[_t(w, "earrings:studs") for w in ("studs", "stud earrings", "ear studs", "stud earring", "stud")],
    *[_t(w, "earrings:hoops") for w in ("hoops", "hoop earrings", "hoop earring", "hoop")],
    *[_t(w, "earrings:drop") for w in ("drop earrings", "dangling earrings", "dangly earrings", "dangle earrings",
                                       "chandelier earrings", "dangling", "drop earring")],
    _t("studded"),
    # necklaces
    *[_t(w, "necklace:any") for w in ("necklace", "necklaces", "neck chain")],
    *[_t(w, "necklace:pendant") for w in ("pendant", "pendants", "pendant necklace")],
    *[_t(w, "necklace:choker") for w in ("choker", "chokers", "choker necklace")],
    *[_t(w, "necklace:chain") for w in ("chain", "chains", "chain necklace", "gold chain", "silver chain")],
    *[_t(w, "necklace:pearls") for w in ("pearls", "pearl necklace", "string of pearls", "strand of pearls")],
    _t("locket", "necklace:locket"),
    _t("chain-link"), _t("chain link"), _t("chain link fence"), _t("chain of"), _t("pearly"), _t("pearl-white"),
    _t("mother of pearl"), _t("mother-of-pearl"),
    # other jewellery
    *[_t(w, "jewelry:any") for w in ("jewelry", "jewellery", "jewels", "jewel")],
    *[_t(w, "jewelry:bracelet") for w in ("bracelet", "bracelets", "bangle", "bangles")],
    *[_t(w, "jewelry:ring") for w in ("ring", "rings", "wedding ring", "engagement ring")],
    _t("brooch", "jewelry:brooch"),
    _t("ring light"), _t("ring-light"), _t("ring lights"), _t("ring of"), _t("rings of"), _t("rings under"),
    _t("accessories", "accessories:any"), _t("accessory", "accessories:any"),
    _t("watch", "accessory:watch"), _t("wristwatch", "accessory:watch"),
    # clothing (colours attach through HEADS below)
    _t("scarf", "clothing:scarf"), _t("scarves", "clothing:scarf"),
    *[_t(w, "clothing:tie") for w in ("tie", "ties", "necktie", "neckties", "bow tie", "bowtie", "bow-tie", "cravat")],
    _t("tie-dye"), _t("tie-dyed"), _t("tie dye"),
    # expression
    *[_t(w, "expression:smile") for w in ("smile", "smiles", "smiling", "smiled", "grin", "grins", "grinning", "beaming",
                                          "smirk", "smirks", "smirking", "smiley")],
    *[_t(w, "expression:laugh") for w in ("laugh", "laughs", "laughing", "laughter", "chuckling")],
    *[_t(w, "expression:neutral") for w in ("neutral", "expressionless", "blank expression", "blank stare",
                                            "blank look", "straight face", "deadpan", "poker face", "impassive")],
    *[_t(w, "expression:serious") for w in ("serious", "stern", "solemn", "somber", "sombre", "grave")],
    *[_t(w, "expression:surprised") for w in ("surprised", "surprise", "shocked", "astonished", "amazed",
                                              "startled")],
    *[_t(w, "expression:sad") for w in ("sad", "sadness", "unhappy", "melancholy", "melancholic", "sorrowful",
                                        "frowning", "frown", "tearful", "crying", "downcast")],
    *[_t(w, "expression:angry") for w in ("angry", "anger", "scowl", "scowling", "furious", "annoyed", "irritated")],
    *[_t(w, "expression:mouth_open") for w in ("mouth open", "open mouth", "open-mouthed", "mouth slightly open",
                                               "mouth wide open", "parted lips", "lips parted", "lips slightly parted",
                                               "mouth agape", "mouth is open", "mouth is slightly open",
                                               "teeth showing", "showing teeth", "showing her teeth", "showing his teeth",
                                               "toothy")],
    *[_t(w, "expression:eyes_closed") for w in ("eyes closed", "closed eyes", "eyes are closed", "eyes shut")],
    _t("no-nonsense"),
    *[_t(w, "!expression:eyes_closed") for w in ("eyes open", "open eyes", "eyes are open", "eyes wide open")],
    *[_t(w, "!expression:mouth_open") for w in ("closed mouth", "mouth closed", "lips closed", "lips together",
                                                "lips pressed together", "closed lips", "mouth is closed",
                                                "closed-mouth", "tight-lipped", "pursed lips")],
    # pose and gaze
    *[_t(w, "pose:frontal") for w in ("frontal", "front-facing", "facing the camera", "facing forward",
                                      "faces the camera", "front view", "facing the viewer", "head-on", "straight-on",
                                      "facing front", "forward-facing", "en face")],
    *[_t(w, "pose:three_quarter") for w in ("three-quarter", "three-quarter view", "three quarter view",
                                            "three-quarters", "3/4 view", "turned slightly", "slightly turned",
                                            "angled slightly", "slightly angled")],
    *[_t(w, "pose:profile") for w in ("profile", "side view", "side profile", "in profile", "side-on")],
    *[_t(w, "head_tilt:tilted") for w in ("tilted", "tilts", "tilting", "head tilt", "tilt", "cocked")],
    _t("swept to the side"), _t("to the side of"), _t("brushed to the side"), _t("pushed to the side"),
    _t("combed to the side"),
    *[_t(w, "gaze:at_camera") for w in ("at the camera", "at the viewer", "into the camera", "into the lens",
                                        "at the lens", "toward the camera", "towards the camera", "toward the viewer",
                                        "towards the viewer", "looking straight ahead", "direct gaze", "eye contact",
                                        "looking forward", "camera-facing gaze")],
    *[_t(w, "gaze:away") for w in ("looking away", "looks away", "looking off", "looking to the side",
                                   "looking to the left", "looking to the right", "looking sideways",
                                   "looking off-camera", "off-camera", "averted gaze", "gaze averted",
                                   "looking into the distance", "looking off to the side", "glancing sideways",
                                   "looks to the side", "looks to the left", "looks to the right", "gazing away",
                                   "gazing off", "looking past the camera")],
    *[_t(w, "gaze:down") for w in ("looking down", "looks down", "downward gaze", "gazing down", "eyes downcast",
                                   "looking downward")],
    *[_t(w, "gaze:up") for w in ("looking up", "looks up", "upward gaze", "gazing up", "looking upward")],
    # photo style and setting
    *[_t(w, "photo:black_and_white") for w in ("black and white photo", "black and white photograph",
                                               "black and white image", "black and white portrait", "b&w",
                                               "monochrome", "grayscale", "greyscale", "monochromatic",
                                               "in black and white", "black-and-white photo")],
    *[_t(w, "photo:color") for w in ("color photo", "colour photo", "color photograph", "colour photograph",
                                     "color image", "colour image", "in color", "in colour", "full color",
                                     "full-color", "color portrait", "colour portrait", "colorful", "colourful",
                                     "vibrant colors")],
    *[_t(w, "setting:studio") for w in ("studio", "studio portrait", "studio headshot", "studio photo",
                                        "studio lighting", "studio shot")],
    *[_t(w, "setting:outdoor") for w in ("outdoor", "outdoors", "outside", "outdoor setting", "in a park",
                                         "on the street", "on a beach", "at the beach", "in nature", "open air",
                                         "natural outdoor")],
    *[_t(w, "setting:indoor") for w in ("indoor", "indoors", "inside", "in a room", "in an office", "at home")],
    _t("selfie", "photo:selfie"),
]
TERMS: dict[tuple[str, ...], tuple[str, ...]] = {}
for _text, _facts in _TERM_LIST:
    TERMS[tuple(_text.split())] = tuple(_facts)

# Colour words per thing coloured. A colour counts only beside the noun it describes.
HAIR_COLORS = {"black": "black", "jet-black": "black", "raven": "black", "raven-black": "black", "ebony": "black",
               "brown": "brown", "brunette": "brown", "chestnut": "brown", "chocolate": "brown", "mahogany": "brown",
               "hazel": "brown", "mousy": "brown", "auburn": "red", "blonde": "blonde", "blond": "blonde",
               "golden": "blonde", "platinum": "blonde", "honey": "blonde", "flaxen": "blonde", "sandy": "blonde",
               "fair": "blonde", "ash-blonde": "blonde", "red": "red", "ginger": "red", "copper": "red",
               "coppery": "red", "strawberry": "red", "titian": "red", "reddish": "red", "gray": "gray", "grey": "gray",
               "silver": "gray", "silvery": "gray", "graying": "gray", "greying": "gray", "grizzled": "gray",
               "white": "white", "snow-white": "white", "dark": "dark", "darker": "dark", "light": "light",
               "lighter": "light", "pink": "pink", "blue": "blue", "purple": "purple", "green": "green",
               "lavender": "purple", "teal": "blue", "orange": "orange", "rainbow": "dyed"}
HAIR_LENGTHS = {"long": "long", "longer": "long", "very long": "long", "waist-length": "long", "short": "short",
                "shorter": "short", "cropped": "short", "close-cropped": "short", "short-cropped": "short",
                "chin-length": "short", "ear-length": "short", "shoulder-length": "medium",
                "medium-length": "medium", "mid-length": "medium", "medium": "medium", "collar-length": "medium",
                "shaved": "bald", "shaven": "bald"}
HAIR_TEXTURES = {"straight": "straight", "sleek": "straight", "wavy": "wavy", "wave": "wavy", "waves": "wavy",
                 "curly": "curly", "frizzy": "curly", "coily": "curly", "kinky": "curly", "permed": "curly",
                 "tightly": None}
HAIR_STYLE_WORDS = {"messy": "messy", "tousled": "messy", "spiky": "spiky", "braided": "braids",
                    "slicked-back": "slicked_back", "slicked": "slicked_back", "thinning": "thinning",
                    "receding": "receding", "side-parted": "side_part", "parted": None, "curled": None}
EYE_COLORS = {"blue": "blue", "brown": "brown", "green": "green", "hazel": "hazel", "gray": "gray", "grey": "gray",
              "black": "black", "dark": "dark", "amber": "amber", "light": "light", "dark-brown": "brown",
              "blue-green": "green", "blue-gray": "gray", "grey-blue": "blue", "gray-blue": "blue",
              "ice-blue": "blue", "sky-blue": "blue", "chocolate": "brown", "honey": "amber"}
SKIN_TONES = {"fair": "light", "pale": "light", "light": "light", "porcelain": "light", "ivory": "light",
              "alabaster": "light", "creamy": "light", "rosy": "light", "medium": "medium", "olive": "medium",
              "tan": "medium", "tanned": "medium", "golden": "medium", "bronze": "medium", "bronzed": "medium",
              "caramel": "medium", "beige": "medium", "light-brown": "medium", "honey": "medium",
              "dark": "dark", "deep": "dark", "brown": "dark", "dark-brown": "dark", "ebony": "dark",
              "chocolate": "dark", "black": "dark", "mahogany": "dark"}
CLOTHING_COLORS = {c: c for c in ("black", "white", "gray", "blue", "red", "green", "yellow", "orange", "pink",
                                  "purple", "brown", "beige", "gold", "silver")} | {
    "grey": "gray", "navy": "blue", "navy-blue": "blue", "royal-blue": "blue", "light-blue": "blue",
    "dark-blue": "blue", "sky-blue": "blue", "maroon": "red", "burgundy": "red", "crimson": "red", "scarlet": "red",
    "wine": "red", "violet": "purple", "lavender": "purple", "lilac": "purple", "khaki": "beige", "tan": "beige",
    "camel": "beige", "cream": "white", "ivory": "white", "off-white": "white", "olive": "green",
    "teal": "blue", "turquoise": "blue", "charcoal": "gray", "mustard": "yellow", "coral": "pink", "magenta": "pink",
    "dark-green": "green", "light-gray": "gray", "dark-gray": "gray"}
# Words allowed inside a modifier run that state nothing ("thick, glossy brown hair").
FILLER = {"and", ",", "very", "slightly", "somewhat", "quite", "fairly", "rather", "thick", "thin", "fine",
          "shiny", "glossy", "lustrous", "natural", "natural-looking", "naturally", "dyed", "neat", "neatly",
          "styled", "voluminous", "full", "loose", "soft", "flowing", "healthy", "silky", "smooth", "tidy",
          "well-groomed", "groomed", "lovely", "beautiful", "gorgeous", "bright", "deep", "striking", "piercing",
          "almond-shaped", "large", "big", "small", "narrow", "expressive", "kind", "wide", "sparkling", "warm",
          "clear", "round", "hooded", "light-colored", "dark-colored", "colored", "coloured", "plain", "simple",
          "casual", "formal", "striped", "patterned", "collared", "button-up", "button-down", "long-sleeved",
          "short-sleeved", "sleeveless", "knit", "knitted", "denim", "leather", "cotton", "wool", "woolen", "silk",
          "satin", "lace", "velvet", "v-neck", "crew-neck", "high-necked", "fitted", "loose-fitting", "oversized",
          "elegant", "stylish", "classic", "crisp", "trimmed", "well-trimmed", "neatly-trimmed", "closely",
          "cut", "gently", "tightly", "her", "his", "their", "the", "a", "an", "pale", "even", "clean", "flawless",
          "glowing", "radiant", "smooth-looking", "textured", "layered", "side-swept", "swept",
          "bouncy", "unruly", "wild", "windswept", "wind-swept", "combed", "brushed", "tinted", "toned", "mid",
          "medium-dark", "medium-light", "jet", "pure", "bright-colored", "vivid"}
GARMENTS = {"shirt": "shirt", "shirts": "shirt", "t-shirt": "t_shirt", "tshirt": "t_shirt", "tee": "t_shirt",
            "t-shirts": "t_shirt", "blouse": "blouse", "blouses": "blouse", "sweater": "sweater", "jumper": "sweater",
            "pullover": "sweater", "sweatshirt": "sweater", "hoodie": "hoodie", "hoody": "hoodie",
            "hooded sweatshirt": "hoodie", "jacket": "jacket", "jackets": "jacket", "coat": "coat", "overcoat": "coat",
            "trench coat": "coat", "blazer": "blazer", "suit jacket": "blazer", "sport coat": "blazer",
            "suit": "suit", "suits": "suit", "dress": "dress", "dresses": "dress", "gown": "dress",
            "tank top": "tank_top", "tank": "tank_top", "camisole": "tank_top", "turtleneck": "turtleneck",
            "polo neck": "turtleneck", "roll-neck": "turtleneck", "cardigan": "cardigan", "uniform": "uniform",
            "vest": "vest", "waistcoat": "vest", "top": "top", "tops": "top", "polo shirt": "shirt", "polo": "shirt",
            "robe": "robe", "tuxedo": "suit", "kimono": "robe", "spacesuit": "uniform", "scrubs": "uniform",
            "clothing": "any", "clothes": "any", "outfit": "any", "attire": "any", "garment": "any",
            "jersey": "t_shirt", "collar": "shirt", "scarf": "scarf", "tie": "tie", "necktie": "tie",
            "bow tie": "tie", "dress shirt": "shirt", "button-down shirt": "shirt", "button-up shirt": "shirt",
            "overalls": "overalls", "apron": "apron"}
GARMENT_FACTS = {v: ("clothing:any",) if v == "any" else (f"clothing:{v}",) for v in set(GARMENTS.values())}
for _v in set(GARMENTS.values()) - {"any"}:
    IMPLIES.setdefault(f"clothing:{_v}", ("clothing:any",))
GROUPS["clothing:any"] = tuple(sorted(f"clothing:{v}" for v in set(GARMENTS.values()) - {"any"}))
# Nouns whose colours describe nothing the judge tracks (the colour is consumed, not misread).
NEUTRAL_HEADS = {"background", "backdrop", "wall", "walls", "lighting", "shadow", "shadows",
                 "sky", "setting", "tones", "tone", "hue", "hues", "frame", "frames", "rims", "rimmed", "lens",
                 "lenses", "beard", "mustache", "moustache", "stubble", "eyebrows", "eyebrow", "brows", "lashes",
                 "eyelashes", "lips", "lipstick", "eyeshadow", "eyeliner", "nails", "teeth", "hat", "cap", "beanie",
                 "headband", "earrings", "earring", "studs", "hoops", "necklace", "pendant", "chain", "bracelet",
                 "glasses", "sunglasses", "scarf", "tie", "highlights", "streaks", "tips", "roots", "ombre",
                 "balayage", "flowers", "flower", "curtain", "border", "vignette", "filter", "tint", "color",
                 "colour", "colors", "colours", "photo", "image", "picture", "portrait", "photograph", "pearls",
                 "ribbon", "bow", "helmet", "hood", "turban", "hijab", "headscarf", "bandana", "crown",
                 "tattoo", "tattoos", "freckles", "mole", "scar", "cheeks", "lip", "face", "features"}

# Nouns that take modifiers, by the table their modifiers are read with.
HAIR_HEADS = {"man bun", "hair", "hairstyle", "hairstyles", "haircut", "hairdo", "locks", "mane", "tresses", "curls", "waves",
              "ponytail", "bun", "braids", "braid", "bob", "pixie cut", "bangs", "fringe", "afro", "mohawk",
              "dreadlocks", "updo", "crop", "hair color", "hair colour", "hairline", "strands", "ringlets"}
EYE_HEADS = {"eyes", "eye", "irises", "iris", "gaze", "eye color", "eye colour"}
SKIN_HEADS = {"skin", "complexion", "skin tone", "skintone", "skin-tone", "skin color", "skin colour"}
PERSON_NOUNS = {"woman", "women", "man", "men", "girl", "girls", "boy", "boys", "lady", "ladies", "gentleman",
                "guy", "person", "individual", "people", "female", "male", "features", "descent", "ethnicity",
                "heritage", "teenager", "teen", "child", "kid", "adult", "model", "actor", "actress"}
PERSON_COLOURS = {"black": "ethnicity:black", "white": "ethnicity:white"}
# Shade words: before another colour they only shade it ("dark blonde" is blonde, not dark).
SHADES = {"dark", "light", "darker", "lighter", "medium", "pale", "deep", "bright"}
SKIN_COMPOUNDS = {("light", "brown"): "medium", ("golden", "brown"): "medium", ("medium", "brown"): "medium",
                  ("dark", "brown"): "dark", ("deep", "brown"): "dark", ("light", "olive"): "medium",
                  ("light", "tan"): "medium"}
FILLER |= SHADES | {"dirty", "ash", "rich", "warm-toned", "cool-toned", "sun-kissed"}

# Gaze: a looking verb, a few adverbs, then where ("looking slightly to the left", "looks off to the right").
GAZE_VERBS = {"looking", "looks", "look", "looked", "gazing", "gazes", "gaze", "glancing", "glances", "staring",
              "stares", "peering", "peers", "eyes", "turned", "facing"}
GAZE_ADVERBS = {"slightly", "directly", "straight", "just", "a", "bit", "little", "somewhat", "intently", "softly",
                "gently", "warmly", "calmly", "thoughtfully", "pensively", "off", "out", "over", "back", "towards",
                "toward", "dreamily", "confidently", "shyly", "up", "down"}
GAZE_TARGETS = {("at", "the", "camera"): "at_camera", ("at", "the", "viewer"): "at_camera",
                ("at", "the", "lens"): "at_camera", ("into", "the", "camera"): "at_camera",
                ("into", "the", "lens"): "at_camera", ("at", "camera"): "at_camera", ("forward",): "at_camera",
                ("ahead",): "at_camera", ("to", "the", "left"): "away", ("to", "the", "right"): "away",
                ("to", "the", "side"): "away", ("to", "her", "left"): "away", ("to", "her", "right"): "away",
                ("to", "his", "left"): "away", ("to", "his", "right"): "away", ("to", "one", "side"): "away",
                ("away",): "away", ("sideways",): "away", ("off-camera",): "away", ("into", "the", "distance"): "away",
                ("past", "the", "camera"): "away", ("left",): "away", ("right",): "away",
                ("downward",): "down", ("downwards",): "down", ("at", "the", "ground"): "down",
                ("upward",): "up", ("upwards",): "up", ("at", "the", "sky"): "up"}

"""The fact model and the judge: negation scope, the open vocabulary, votes, graded evidence.

The first block is the issue's list of old failures, each as it was found through the guard; then the
labelled evaluation set (tests/fixtures/judge_cases/), whose figures the README reports.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.text.facts import extract
from pipeline.text.judge import Consensus, KeyState, contradictions, judge
from tools.eval_judge import HELDOUT, load_cases, score, verdict

ROOT = Path(__file__).resolve().parents[2]
ACCESSORIES = "She is not wearing any glasses, earrings, hats or necklaces."
INPUTS = ["A young woman with long brown hair and a soft smile.", ACCESSORIES]


def reason(candidate: str, inputs=INPUTS, evidence=None) -> str:
    ok, why = judge(candidate, inputs, evidence)
    return "accepted" if ok else why.split(":", 1)[0]


# --- the old failures -----------------------------------------------------------------------------

def test_a_negated_accessory_list_denies_every_item():
    f = extract(ACCESSORIES)
    assert {"eyewear:glasses", "earrings:any", "headwear:hat", "necklace:any"} <= f.denied
    assert not f.asserted - {"gender:female"}


def test_an_invented_earring_against_the_negated_list_is_rejected():
    assert reason("A smiling young woman with long brown hair and gold hoop earrings.") == "inconsistent"


def test_the_faithful_input_is_no_contradiction_of_an_absent_mask():
    ok, why = judge(ACCESSORIES, INPUTS, {"earrings": "absent", "hat": "absent", "necklace": "absent"})
    assert ok, why
    s = KeyState("k", [("p0", INPUTS[0]), ("p1", ACCESSORIES)], {"earrings": "absent"}, want=2)
    assert not any(f.startswith(("mask_contradiction", "contradiction")) for f in s.result()[3])


@pytest.mark.parametrize("text, denied", [
    ("He does not appear to be wearing glasses.", "eyewear:glasses"),
    ("Eyeglasses are absent.", "eyewear:glasses"),
    ("A glasses-free portrait of a man.", "eyewear:glasses"),
    ("A makeup-free young woman.", "makeup:any"),
    ("Glasses? None.", "eyewear:glasses"),
    ("Accessories: none.", "accessories:any"),
    ("Earrings are not visible.", "earrings:any"),
    ("Neither glasses nor a hat.", "headwear:hat"),
    ("Hat: no.", "headwear:hat"),
    ("A hatless man.", "headwear:hat"),
    ("A clean-shaven man.", "facial_hair:any"),
])
def test_post_nominal_predicate_and_word_negation_are_denials(text, denied):
    f = extract(text)
    assert denied in f.denied and denied not in f.asserted


@pytest.mark.parametrize("text, fact", [
    ("A young Black woman with dark skin.", "ethnicity:black"),
    ("A man with East Asian features.", "ethnicity:east_asian"),
    ("She has fair skin and freckles.", "marks:freckles"),
    ("A tattoo on his neck.", "marks:tattoo"),
    ("She has a nose piercing.", "marks:nose_piercing"),
    ("A small scar above his eyebrow.", "marks:scar"),
    ("A mole on her cheek.", "marks:mole"),
    ("He wears shades.", "eyewear:sunglasses"),
    ("A man in a turban.", "headwear:turban"),
    ("Small studs in her ears.", "earrings:studs"),
    ("A grey knit cap.", "headwear:beanie"),
])
def test_the_open_vocabulary_sees_what_the_old_lexicon_missed(text, fact):
    assert fact in extract(text).asserted


@pytest.mark.parametrize("text, not_fact", [
    ("A blouse with cap-sleeves and cap sleeves.", "headwear:cap"),
    ("Her hair is held by a hair tie.", "clothing:tie"),
    ("Behind him is a chain-link fence.", "necklace:chain"),
    ("Her hair has shades of brown.", "eyewear:sunglasses"),
    ("A 25-year-old woman.", "age:old"),
    ("A black and white photo of a woman with blonde highlights.", "hair_color:blonde"),
    ("A dark background behind a man with blue eyes.", "hair_color:dark"),
])
def test_look_alike_words_are_not_the_item(text, not_fact):
    assert not_fact not in extract(text).asserted


def test_an_elderly_rewrite_of_a_25_year_old_is_inconsistent():
    inputs = ["A 25-year-old woman with short black hair.", "She is smiling at the camera."]
    assert reason("An elderly woman with short black hair, smiling.", inputs) == "inconsistent"
    assert reason("A young woman with short black hair, smiling.", inputs) == "accepted"
    assert reason("A 27-year-old woman with short dark hair.", inputs) == "accepted"  # within five years, black -> dark
    assert reason("A 45-year-old woman with short black hair.", inputs) == "inconsistent"


def test_the_majority_wins_and_the_minority_caption_is_left_out():
    inputs = ["A man with short gray hair.", "He wears a navy suit.", "A middle-aged man, serious.",
              "A woman with short gray hair."]
    assert reason("A serious middle-aged man with short gray hair.", inputs) == "accepted"
    assert reason("A woman in a navy suit.", inputs) == "inconsistent"
    s = KeyState("k", [(f"p{i}", t) for i, t in enumerate(inputs)], {}, want=10)
    s.parsed = True
    captions, _, _, flags = s.result()
    assert "A woman with short gray hair." not in captions and "dropped_contradicting=1" in flags
    assert not contradictions(captions)
    prompt = s.messages()[1]["content"]
    assert "keep the majority: gender male (3 for, 1 against)" in prompt


def test_a_tie_is_not_taken_either_way():
    inputs = ["A person wearing glasses.", "A person without glasses, smiling."]
    assert reason("A smiling person with glasses.", inputs) == "inconsistent"
    assert reason("A smiling person without glasses.", inputs) == "inconsistent"
    assert reason("A smiling person.", inputs) == "accepted"


def test_accepted_captions_never_contradict_each_other():
    # Votes alone cannot let two contradicting captions through unless an input contradicts itself
    # ("dark, light hair"); the check against the accepted ones is the net for that case.
    s = KeyState("k", [("p0", "A man with dark, light hair."), ("p1", "He has dark, light hair.")], {}, want=3)
    assert s.offer("A man with dark hair.", "p0") == ""
    assert s.offer("A man with light hair.", "new") == "inconsistent"
    assert "contradicts an accepted caption" in s.log[-1]["why"]


def test_graded_evidence_ground_truth_settles_weak_does_not():
    inputs = ["A woman with long hair.", "She wears no earrings."]
    gt = {"earrings": {"state": "present", "grade": "ground_truth"}}
    assert reason("A woman with long hair and earrings.", inputs, gt) == "accepted"
    assert reason("A woman with long hair and no earrings.", inputs, gt) == "mask_contradiction"
    assert reason("A woman with hoop earrings.", inputs, gt) == "invented_fact"  # the mask shows earrings, not hoops
    weak = {"earrings": {"state": "present", "grade": "single_parser"}}
    assert reason("A woman with long hair and earrings.", inputs, weak) == "inconsistent"  # the captions decide
    assert reason("A woman with long hair and no earrings.", inputs, weak) == "accepted"


def test_the_prompt_states_confident_evidence_with_its_grade_only():
    s = KeyState("k", [("p0", "A man.")], {"eyeglasses": {"state": "absent", "grade": "ground_truth"},
                                           "hat": {"state": "present", "grade": "single_parser"}})
    text = s.messages()[1]["content"]
    assert "eyeglasses: absent (ground-truth mask)" in text and "hat: present" not in text
    assert "Unknown from the mask (follow the captions): hat" in text


def test_consensus_votes_count_each_caption_once():
    c = Consensus(["A man with a beard.", "He has a beard and a mustache.", "A clean-shaven man."])
    assert c.votes()["facial_hair"] == {"beard": 2, "mustache": 1, "no any": 1}
    assert c.against("facial_hair:beard") == 1 and c.pro["facial_hair:beard"] == 2


# --- the labelled evaluation set --------------------------------------------------------------------

CASES = load_cases()
HELDOUT_CASES = load_cases(HELDOUT)


def test_the_labelled_sets_are_big_and_cover_every_verdict_and_family():
    assert len(CASES) + len(HELDOUT_CASES) >= 300 and len(HELDOUT_CASES) >= 150
    for cases in (CASES, HELDOUT_CASES):
        assert len({(c["file"], c["id"]) for c in cases}) == len(cases)
        assert {c["verdict"] for c in cases} == {"accepted", "invented_fact", "inconsistent", "mask_contradiction"}
    assert len({c["kind"] for c in CASES}) >= 20
    # the held-out set shares no case with the dev set
    assert not {(c["candidate"], tuple(c["inputs"])) for c in CASES} & \
        {(c["candidate"], tuple(c["inputs"])) for c in HELDOUT_CASES}


def _readme_table(marker: str) -> dict[str, tuple[float, float]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"<!-- {marker} -->"):text.index(f"<!-- /{marker} -->")]
    return {m[0].strip(): (float(m[1]), float(m[2])) for m in
            re.findall(r"^\| ([a-z_ ()]+) \| \d+ \| ([\d.]+)% \| ([\d.]+)% \|$", section, flags=re.M)}


@pytest.mark.parametrize("marker, which", [("judge-figures", "dev"), ("judge-heldout", "heldout")])
def test_precision_and_recall_per_verdict_are_what_the_readme_says(marker, which):
    s = score(CASES if which == "dev" else HELDOUT_CASES)
    table = _readme_table(marker)
    assert set(table) == {"accepted", "invented_fact", "inconsistent", "mask_contradiction", "rejected (any reason)"}
    for kind, (p, r) in table.items():
        got = s["kinds"][kind]
        assert (round(100 * got["precision"], 1), round(100 * got["recall"], 1)) == (p, r), kind
    assert s["accuracy"] >= 0.95


def test_every_verdict_comes_with_its_reason():
    for c in CASES[:80] + HELDOUT_CASES[:40]:
        got, why = verdict(c)
        assert (got == "accepted") == (why == "")
        assert got == "accepted" or why.startswith(got + ": ")

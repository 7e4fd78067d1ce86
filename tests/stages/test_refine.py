"""Refinement: output parsing, the invented-fact guard, mask evidence, dedup and fallback on scripted model
answers through the real parsing code; and the tiny Qwen3 through the real transformers engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import ConfigError, RunnerConfig, from_dict
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from pipeline.engines import Result
from pipeline.stages import refine as refine_mod
from pipeline.stages.clean import CleanConfig
from pipeline.stages.refine import RefineConfig, RefineStage, mask_evidence
from pipeline.text.judge import KeyState, dedup_key
from pipeline.text.refine_prompt import ParseError, build_messages, parse_output
from pipeline.text.tokens import count_tokens
from tests.captions_data import face_pixels, ingested, keys, write_parse, write_raw

CAPTIONS = [
    ("fewshot_portrait", "A close-up photo of a young woman with long brown hair, smiling."),
    ("keywords_appearance", "young, female, long brown hair, brown eyes, smiling, small earrings"),
    ("detail_accessories", "She wears small gold earrings and no glasses."),
    ("detail_hair", "Her hair is long, straight and brown with a side part."),
]
GOOD = [
    "A young woman with long brown hair smiles warmly.",
    "A smiling young woman with brown eyes and long straight brown hair.",
    "Portrait of a young woman wearing small gold earrings, smiling.",
    "A close-up of a smiling woman with long brown hair parted to the side.",
    "A young woman with brown eyes, long brown hair and small earrings.",
    "A close-up photo of a smiling young woman who wears no glasses.",
    "Long straight brown hair frames the smiling face of a young woman.",
    "A young woman smiling softly, her brown hair long and straight.",
    "A smiling woman with a side part in her long brown hair.",
    "A young woman with small gold earrings and long brown hair.",
]


def answer(texts: list[str], sources: list[str] | None = None) -> str:
    sources = sources or ["new"] * len(texts)
    return json.dumps({"captions": [{"text": t, "source": s} for t, s in zip(texts, sources, strict=True)]})


# -- parsing ----------------------------------------------------------------------------------------------


def test_parse_accepts_the_schema_fences_thinking_and_bare_lists():
    assert parse_output(answer(["A woman."], ["p1"])) == ([("A woman.", "p1")], False)
    fenced = "<think>\nok\n</think>\n```json\n" + answer(["A man."]) + "\n```"
    assert parse_output(fenced) == ([("A man.", "new")], False)
    assert parse_output('Here you go: ["A woman.", {"text": "A man.", "source": "p2"}]') == \
        ([("A woman.", "new"), ("A man.", "p2")], False)


def test_parse_reads_raw_control_characters_a_guided_decoder_lets_through():
    # found through vLLM's structured outputs: a random model wrote "\x00" inside a JSON string
    assert parse_output('{"captions": [{"text": "A wo\x00man.", "source": "new"}]}') == ([("A wo\x00man.", "new")], False)
    cut = '{"captions": [{"text": "A\x01 man.", "source": "new"}, {"text": "A wo'
    assert parse_output(cut) == ([("A\x01 man.", "new")], True)


def test_parse_salvages_complete_captions_of_a_cut_off_answer():
    cut = answer(GOOD[:3])[:-60]  # max_tokens reached inside the third caption
    items, salvaged = parse_output(cut)
    assert salvaged and [t for t, _ in items] == GOOD[:2]


@pytest.mark.parametrize("text,reason", [("", "empty_output"), ("\n\n\n", "empty_output"),
                                         ("A woman with brown hair.", "no_json"), ('{"captions": [', "bad_json"),
                                         ('{"captions": "a woman"}', "bad_shape"), ('{"captions": [1, 2]}', "bad_shape")])
def test_parse_errors_say_why(text, reason):
    with pytest.raises(ParseError) as e:
        parse_output(text)
    assert e.value.reason == reason


# -- the guard --------------------------------------------------------------------------------------------


def state(evidence: dict | None = None, captions=CAPTIONS) -> KeyState:
    return KeyState("k", list(captions), evidence or {})


def test_invented_facts_are_rejected_and_synonyms_accepted():
    s = state()
    assert s.offer("A young woman with long red hair, smiling.", "new") == "invented_fact"
    assert s.offer("A smiling young woman with long brown hair and glasses.", "new") == "inconsistent"  # "no glasses"
    assert s.offer("A young woman with long brown hair, wearing a black hat.", "new") == "invented_fact"
    assert s.offer("A laughing young woman with brown hair.", "new") == "invented_fact"  # smiling != laughing
    assert s.offer("An elderly woman with long brown hair.", "new") == "inconsistent"  # the inputs say young
    assert s.offer("A smiling young man with long brown hair.", "new") == "inconsistent"  # ... and she
    assert s.offer("She wears no necklace.", "new") == "invented_fact"  # a denial no input makes
    # synonyms and implied facts are not inventions
    assert s.offer("A smiling young female with long brunette hair and small gold earrings.", "fewshot_portrait") == ""
    assert s.offer("A young lady with brown eyes who is not wearing eyeglasses, smiling.", "new") == ""
    assert s.rejected["invented_fact"] == 4 and s.rejected["inconsistent"] == 3
    assert [p for _, p, _ in s.accepted] == ["refined:fewshot_portrait", "generated"]
    assert "which no caption states" in s.examples[0][1]


def test_mask_evidence_overrules_captions_and_allows_what_it_shows():
    s = state({"eyeglasses": "absent", "hat": "unknown", "earrings": "present", "necklace": "absent"},
              captions=[*CAPTIONS, ("detail_makeup", "She wears glasses and a thin necklace.")])
    assert s.offer("A smiling young woman with long brown hair and glasses.", "new") == "mask_contradiction"
    assert s.offer("A young woman with a thin necklace and long brown hair.", "new") == "mask_contradiction"
    assert s.offer("A young woman with long brown hair and no earrings.", "new") == "mask_contradiction"
    assert s.offer("A young woman with long brown hair and earrings, without a necklace.", "new") == ""
    assert s.rejected == {"mask_contradiction": 3}


def test_duplicates_differing_in_case_punctuation_or_articles_are_rejected():
    s = state()
    assert s.offer(GOOD[0], "new") == ""
    assert s.offer(GOOD[0].upper(), "new") == "duplicate"
    assert s.offer("young woman with long brown hair smiles warmly", "new") == "duplicate"
    assert dedup_key("A Woman, smiling!") == dedup_key("woman smiling")


def test_result_fills_from_cleaned_captions_and_never_invents():
    s = state()
    for t in GOOD[:5]:
        s.parsed = True
        assert s.offer(t, "new") == ""
    caps, prov, toks, flags = s.result()
    assert len(caps) == 9 and len(set(map(dedup_key, caps))) == 9  # 5 refined + 4 cleaned, all unique
    assert prov[5:] == [f"cleaned:{pid}" for pid, _ in CAPTIONS]
    assert "filled_from_cleaned" in flags and "too_few_captions" in flags and "no_mask_evidence" in flags
    assert toks == count_tokens(caps).tolist() and max(toks) <= 77


def test_fallback_captions_are_fitted_to_a_smaller_refine_budget():
    s = KeyState("k", list(CAPTIONS), {}, budget=12)
    caps, _, toks, flags = s.result()
    assert max(toks) <= 12 and toks == count_tokens(caps).tolist() and "trimmed=3" in flags


def test_the_fallback_leaves_out_cleaned_captions_the_mask_refutes():
    s = state({"eyeglasses": "absent", "hat": "absent", "earrings": "absent", "necklace": "unknown"})
    caps, prov, _, flags = s.result()  # nothing parsed: the cleaned captions, checked against the mask
    assert prov == ["cleaned:fewshot_portrait", "cleaned:detail_hair"]  # the two with earrings are left out
    assert "fallback:unparseable" in flags and "dropped_contradicting=2" in flags
    assert not any(f.startswith(("mask_contradiction", "contradiction")) for f in flags)


def test_the_final_check_flags_accepted_captions_that_contradict_each_other():
    s = KeyState("k", [("p0", "A man with dark, light hair.")], {}, want=2)
    s.accepted = [("A man with dark hair.", "generated", 8), ("A man with light hair.", "generated", 8)]
    assert "contradiction:hair_color@0,1" in s.result()[3]


def test_retry_messages_ask_for_the_missing_count_and_show_rejections():
    msgs = build_messages(CAPTIONS, {"hat": "absent"}, 3, ["A woman."], [("A man with a hat.", "mask says no")])
    user = msgs[1]["content"]
    assert "Write 3 different captions" in user and "hat: absent" in user and "A man with a hat." in user
    assert "[keywords_appearance]" in user and msgs[0]["role"] == "system"


# -- the stage with a scripted engine (logic) and with the tiny Qwen3 (real engine) -------------------------


class ScriptedEngine:
    """Answers from a script, one list of texts per round; records every request it gets."""

    model_id, revision = "scripted", "0"

    def __init__(self, rounds: list[list[str]], guided: bool = False):
        self.rounds, self.requests = list(rounds), []
        self.supports_json_schema = guided

    def generate(self, requests):
        self.requests.append(requests)
        texts = self.rounds.pop(0)
        return [Result(text=t, output_tokens=10) if t != "ERROR" else Result("", finish_reason="error", error="boom")
                for t in texts]


def prepared(demo_data, tmp_path, n_keys: int = 3, parse: dict | None = None) -> Path:
    out = ingested(demo_data, tmp_path)
    ks = keys(out)[:n_keys]
    write_raw(out, [{"key": k, "prompt_id": pid, "text": text, "prompt_kind": pid.split("_")[0]}
                    for k in ks for pid, text in CAPTIONS])
    run_stage("clean", from_dict(CleanConfig, {}, "stages.clean"), StageContext(out), RunnerConfig())
    if parse:  # two parsers that agree: confident evidence
        write_parse(out, {ks[i]: px for i, px in parse.items()}, {ks[i]: px for i, px in parse.items()})
    return out


def refine(out: Path, **settings):
    cfg = from_dict(RefineConfig, {"model": "scripted", **settings}, "stages.refine")
    return run_stage("refine", cfg, StageContext(out), RunnerConfig())


def final_rows(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in StageContext(out).ledger("refine").read().to_pylist()}


def test_stage_rejects_retries_and_accepts_with_a_scripted_engine(demo_data, tmp_path, monkeypatch):
    # k0's mask shows earrings; k1's shows eyeglasses and no earrings; k2 has no mask
    out = prepared(demo_data, tmp_path, parse={0: face_pixels(ear_r=900), 1: face_pixels(eye_g=6000)})
    k0, k1, k2 = keys(out)
    glasses = ["A smiling young woman with long brown hair and eyeglasses.",
               "A young woman wearing eyeglasses, with brown eyes.",
               "A woman with long brown hair in eyeglasses, smiling.",
               "Eyeglasses and long straight brown hair on a young woman."]
    rounds = [
        # round 1 (k0, k1, k2): k0 gets 8 good + an invention + a duplicate; k1 unparseable; k2 engine error
        [answer(GOOD[:8] + ["A young woman with red hair.", GOOD[0]], ["fewshot_portrait"] + ["new"] * 9),
         "I think the captions are fine.", "ERROR"],
        # round 2: k0 asked for 2 more; k1 and k2 again for 10. For k1, the 3 earring captions and the
        # "no glasses" one contradict its mask.
        [answer(GOOD[8:]), answer(GOOD), "ERROR"],
        [answer(glasses), answer(GOOD)],  # round 3: k1 needs 4 more, k2 all ten
    ]
    engine = ScriptedEngine(rounds, guided=True)
    monkeypatch.setattr(refine_mod, "make_engine", lambda *a, **kw: engine)
    refine(out, batch_size=8)
    assert [len(r) for r in engine.requests] == [3, 3, 2]  # every round is one batched call
    second = {r.messages[1]["content"].count("Already accepted"): r for r in engine.requests[1]}
    assert "Write 2 different captions" in second[1].messages[1]["content"]
    assert second[1].sampling.json_schema["properties"]["captions"]["minItems"] == 2  # guided: exactly 2
    assert second[1].sampling.temperature == 0.7 and engine.requests[0][0].sampling.temperature == 0.0
    assert "Write 4 different captions" in engine.requests[2][0].messages[1]["content"]
    rows = final_rows(out)
    r0, r1, r2 = rows[k0], rows[k1], rows[k2]
    assert r0["captions"] == GOOD and r0["provenance"][0] == "refined:fewshot_portrait"
    assert "rejected:invented_fact=1" in r0["flags"] and "rejected:duplicate=1" in r0["flags"]
    assert r1["captions"] == [GOOD[i] for i in (0, 1, 3, 6, 7, 8)] + glasses
    assert "rejected:unparseable=1" in r1["flags"] and "rejected:mask_contradiction=4" in r1["flags"]
    assert r2["status"] == "ok" and r2["captions"] == GOOD and "rejected:engine_error=2" in r2["flags"]
    assert "no_mask_evidence" in r2["flags"] and "no_mask_evidence" not in r0["flags"]
    for r in rows.values():
        assert max(r["clip_tokens"]) <= 77 and len(set(r["captions"])) == 10
        assert not any(f.startswith(("mask_contradiction", "fallback", "too_few")) for f in r["flags"])


def test_a_crashing_engine_gives_engine_error_rows_with_fallback_captions(demo_data, tmp_path, monkeypatch):
    out = prepared(demo_data, tmp_path, n_keys=2)

    class Crashing(ScriptedEngine):
        def generate(self, requests):
            raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(refine_mod, "make_engine", lambda *a, **kw: Crashing([]))
    result = refine(out, max_retries=1)
    assert result.counts["engine_error"] == 2  # not ok, so --retry-failed runs them again
    for r in final_rows(out).values():
        assert r["status"] == "engine_error" and "device-side assert" in r["error"]
        assert "fallback:engine_error" in r["flags"] and len(r["captions"]) == len(CAPTIONS)


def test_identical_inputs_reuse_the_ledger_row_without_generating(demo_data, tmp_path, monkeypatch):
    out = prepared(demo_data, tmp_path)
    engine = ScriptedEngine([[answer(GOOD)] * 3])
    monkeypatch.setattr(refine_mod, "make_engine", lambda *a, **kw: engine)
    refine(out)
    assert len(engine.requests) == 1
    assert refine(out).pending == 0  # unchanged inputs: not pending at all
    cfg = from_dict(RefineConfig, {"model": "scripted"}, "stages.refine")
    stage = RefineStage(cfg, StageContext(out))
    inputs = RefineStage.inputs(cfg, StageContext(out))
    assert inputs.column_names == ["key", "_part", "_parse_part", "gt_mask", "_src"]  # no caption text
    row = final_rows(out)[keys(out)[0]]
    batch = {"key": ["photos/copy"], "_fp": [row["_fp"]],
             **{n: [inputs[n][0].as_py()] for n in ("_part", "_parse_part", "gt_mask")}}
    got = stage(batch)  # a new key whose inputs hash equals an existing row's: reused, nothing generated
    assert got["captions"] == [row["captions"]] and len(engine.requests) == 1


def test_mask_evidence_thresholds_and_grades(demo_data, tmp_path):
    out = prepared(demo_data, tmp_path)
    px0, px1 = face_pixels(eye_g=6000, hat=40, ear_r=100, neck_l=3), face_pixels(eye_g=200, hat=20000)
    write_parse(out, {k: p for k, p in zip(keys(out), (px0, px1), strict=False)})
    cfg = from_dict(RefineConfig, {"model": "scripted"}, "stages.refine")
    k0, k1, k2 = keys(out)

    def states(ev, k):
        return {i: e["state"] for i, e in ev[k].items()}

    ev = mask_evidence(out, cfg)
    assert states(ev, k0) == {"eyeglasses": "present", "hat": "unknown", "earrings": "present", "necklace": "absent"}
    assert states(ev, k1) == {"eyeglasses": "unknown", "hat": "present", "earrings": "absent", "necklace": "absent"}
    assert {e["grade"] for e in ev[k0].values()} == {"single_parser"}  # one parser: weak
    strict = from_dict(RefineConfig, {"model": "scripted", "mask_present_share": {"earrings": 0.001}}, "stages.refine")
    assert mask_evidence(out, strict)[k0]["earrings"]["state"] == "unknown"
    # a second parser: agreement makes evidence confident, disagreement makes it unknown
    write_parse(out, {k0: px0}, {k0: face_pixels(eye_g=6000, hat=40, ear_r=0, neck_l=3)})
    ev = mask_evidence(out, cfg)[k0]
    assert ev["eyeglasses"] == {"state": "present", "grade": "parsers_agree", "share": ev["eyeglasses"]["share"]}
    assert ev["earrings"]["state"] == "unknown" and ev["earrings"]["grade"] == "parsers_disagree"
    assert ev["necklace"]["grade"] == "parsers_agree"
    # the source's own mask beats both parsers
    gt = np.zeros((64, 64), np.uint8)
    gt[:2, :3] = 15  # six pixels of earring
    (out / "gt_masks").mkdir(exist_ok=True)
    Image.fromarray(gt).save(out / "gt_masks" / "x.png")
    ev = mask_evidence(out, cfg, {k0: "gt_masks/x.png"})[k0]
    assert ev["earrings"]["state"] == "present" and ev["earrings"]["grade"] == "ground_truth"
    assert ev["eyeglasses"]["state"] == "absent" and k2 not in mask_evidence(out, cfg, {k0: "gt_masks/x.png"})
    assert mask_evidence(tmp_path / "nothing", cfg) is None


def test_settings_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown item.*glasses"):
        from_dict(RefineConfig, {"model": "x", "mask_present_share": {"glasses": 0.1}}, "stages.refine")
    with pytest.raises(ConfigError, match="above mask_absent_share"):
        from_dict(RefineConfig, {"model": "x", "mask_present_share": {"hat": 0.00001}}, "stages.refine")
    with pytest.raises(ConfigError, match="budget"):
        from_dict(RefineConfig, {"model": "x", "budget": 78}, "stages.refine")


def test_tiny_qwen3_through_the_transformers_engine_falls_back_visibly(demo_data, tmp_path, tiny_model):
    model = tiny_model("qwen3")
    out = prepared(demo_data, tmp_path, parse={0: face_pixels(eye_g=6000)})
    cfg = from_dict(RefineConfig, {"model": str(model), "max_new_tokens": 24, "max_retries": 1}, "stages.refine")
    result = run_stage("refine", cfg, StageContext(out), RunnerConfig())
    assert result.pending == 3 and result.ok == 3
    rows = final_rows(out)
    k0 = keys(out)[0]
    for k, r in rows.items():
        assert "fallback:unparseable" in r["flags"] and "rejected:unparseable=2" in r["flags"]
        # k0's mask (two parsers agree) shows glasses and no earrings: the two cleaned captions with
        # earrings are left out of its fallback, the others keep all four
        assert len(r["captions"]) == (2 if k == k0 else len(CAPTIONS)) and "too_few_captions" in r["flags"]
        assert len({dedup_key(c) for c in r["captions"]}) == len(r["captions"])
        assert r["clip_tokens"] == count_tokens(r["captions"]).tolist() and max(r["clip_tokens"]) <= 77
        assert all(p.startswith("cleaned:") for p in r["provenance"])
    assert "dropped_contradicting=2" in rows[k0]["flags"]
    assert not any(f.startswith(("mask_contradiction", "contradiction")) for r in rows.values() for f in r["flags"])
    report = json.loads((out / "captions" / "report.json").read_text())
    assert report["flags"]["fallback:unparseable"] == 3 and report["rejections"]["unparseable"] == 6
    assert report["consistency"]["minority_captions_dropped"] == 2 and report["mask"]["contradictions"] == {}
    assert report["mask"]["evidence_by_grade"]["parsers_agree:present"] == 1
    assert report["mask"]["images_with_evidence"] == 1 and report["tokens"]["over_budget"] == 0
    assert report["coverage"]["hair_color"] == 1.0
    assert (out / "captions" / "token_lengths.png").stat().st_size > 1000
    page = (out / "captions" / "report.html").read_text()
    assert "Captions" in page and page.count("<div class=img ") == 3 and "data:image/jpeg;base64," in page
    assert "dropped_contradicting=2" in page and "two parsers agree" not in page
    assert run_stage("refine", cfg, StageContext(out), RunnerConfig()).pending == 0  # the ledger is the cache
    cli = CliRunner().invoke(app, ["refine", str(out), "--model", str(model), "--max-new-tokens", "24",
                                   "--max-retries", "1"])
    assert cli.exit_code == 0, cli.output
    assert "fallback:unparseable" in cli.output and "rejections by reason" in cli.output

"""Cleaning: every rule on real-looking VLM outputs (tests/fixtures/vlm_outputs.yaml), and the clean stage
on a caption ledger: one row per raw caption, statuses instead of drops, exact counts, trimming, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import ConfigError, RunnerConfig, from_dict
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from pipeline.stages.clean import CleanConfig
from pipeline.text.clean_rules import RULE_NAMES, clean_text
from pipeline.text.tokens import count_tokens
from tests.captions_data import ingested, keys, write_raw

CASES = yaml.safe_load((Path(__file__).resolve().parents[1] / "fixtures" / "vlm_outputs.yaml").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_each_fixture_output_cleans_as_expected(case):
    text, rules, verdict = clean_text(case["raw"], case["kind"], case.get("finish", "stop"))
    assert text == case["clean"]
    assert rules == case["rules"]
    assert (verdict or "ok") == case.get("status", "ok")


def test_the_fixture_is_big_enough_and_exercises_every_rule():
    assert len(CASES) >= 40
    used = {r for c in CASES for r in c["rules"]}
    assert used == set(RULE_NAMES), f"rules without a fixture case: {set(RULE_NAMES) - used}"
    assert {c.get("status", "ok") for c in CASES} >= {"ok", "empty", "meaningless", "refusal"}


def test_a_disabled_rule_does_not_run():
    raw = "The image shows a young man with short curly hair."
    assert clean_text(raw)[0] == "A young man with short curly hair."
    text, rules, _ = clean_text(raw, disable=("image_lead",))
    assert text == raw and "image_lead" not in rules


LONG = ("A close-up studio portrait of a smiling young woman with long wavy auburn hair falling over her shoulders, "
        "bright green eyes, thin arched eyebrows and light freckles, wearing small gold hoop earrings, a delicate "
        "pearl necklace and a cream knit sweater; she is looking slightly to the left under soft window light, "
        "against a plain gray background, and the photo has a shallow depth of field.")


def raw_rows(ks: list[str]) -> list[dict]:
    """Three images' captions: fixture outputs, a failed request, an over-long caption, keyword lists."""
    by_id = {c["id"]: c for c in CASES}
    picks = [["echoed_instruction_and_limit", "template_fully_unfilled", "keywords_label_dupes_case", "refusal"],
             ["image_shows", "cut_off_mid_sentence", "markdown_keyword_bullets"],
             ["thinking_block", "mojibake_and_curly_quotes", "empty_answer"]]
    rows = []
    for k, ids in zip(ks, picks, strict=True):
        for i, cid in enumerate(ids):
            c = by_id[cid]
            rows.append({"key": k, "prompt_id": f"p{i}", "prompt_kind": c["kind"], "text": c["raw"],
                         "finish_reason": c.get("finish", "stop")})
    rows.append({"key": ks[0], "prompt_id": "long", "prompt_kind": "few_shot", "text": LONG})
    rows.append({"key": ks[1], "prompt_id": "failed", "status": "engine_error", "error": "CUDA error", "text": ""})
    return rows


def clean(out: Path, **settings):
    cfg = from_dict(CleanConfig, settings, "stages.clean")
    return run_stage("clean", cfg, StageContext(out), RunnerConfig())


def test_the_clean_stage_writes_one_row_per_raw_caption(demo_data, tmp_path):
    out = ingested(demo_data, tmp_path)
    ks = keys(out)
    write_raw(out, raw_rows(ks))
    result = clean(out)
    assert result.pending == 3
    rows = {(r["key"], r["prompt_id"]): r for r in StageContext(out).ledger("clean").read().to_pylist()}
    assert len(rows) == len(raw_rows(ks))  # nothing dropped
    status = {k: r["status"] for k, r in rows.items()}
    assert status[(ks[0], "p1")] == "meaningless" and status[(ks[0], "p3")] == "refusal"
    assert status[(ks[2], "p2")] == "empty"
    assert status[(ks[1], "failed")] == "caption_failed" and "CUDA error" in rows[(ks[1], "failed")]["error"]
    assert rows[(ks[1], "p1")]["rules_applied"] == ["unfinished_tail"]
    assert rows[(ks[0], "p2")]["text"] == "smiling, young, female, brown hair, small earrings"
    long = rows[(ks[0], "long")]
    assert long["trimmed"] and long["rules_applied"][-1] == "trim_clause" and LONG.startswith(long["text"][:-1])
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert [r["clip_tokens"] for r in ok] == count_tokens([r["text"] for r in ok]).tolist()
    assert max(r["clip_tokens"] for r in ok) <= 77
    assert not any(r["trimmed"] for r in ok if r is not long)


def test_clean_resumes_and_redoes_only_a_changed_key(demo_data, tmp_path):
    out = ingested(demo_data, tmp_path)
    ks = keys(out)
    write_raw(out, raw_rows(ks))
    assert clean(out).pending == 3
    assert clean(out).pending == 0  # same captions: nothing to do
    assert clean(out, batch_size=1).pending == 0  # volatile settings do not invalidate
    write_raw(out, [{"key": ks[2], "prompt_id": "p0", "text": "Caption: A woman with a red scarf."}])
    result = clean(out)
    assert result.pending == 1  # only the key whose captions changed
    row = [r for r in StageContext(out).ledger("clean").read().to_pylist() if r["key"] == ks[2]]
    assert [r["text"] for r in row] == ["A woman with a red scarf."]
    assert clean(out, budget=60).pending == 3  # a setting that changes outputs redoes everything


def test_settings_errors_are_one_line():
    with pytest.raises(ConfigError, match="budget must be from 8 to 77"):
        from_dict(CleanConfig, {"budget": 100}, "stages.clean")
    with pytest.raises(ConfigError, match="unknown rule.*image_leads"):
        from_dict(CleanConfig, {"disable": ["image_leads"]}, "stages.clean")


def test_cli_clean_prints_summary_and_rules(demo_data, tmp_path):
    out = ingested(demo_data, tmp_path)
    write_raw(out, raw_rows(keys(out)))
    result = CliRunner().invoke(app, ["clean", str(out)])
    assert result.exit_code == 0, result.output
    assert "clean" in result.output and "rules applied" in result.output and "trim_clause" in result.output
    assert "meaningless" in result.output
    assert CliRunner().invoke(app, ["clean", "--help"]).output.count("facecurate clean") >= 2


def test_inputs_hold_no_caption_text_and_a_compacted_raw_ledger_cleans_the_same(demo_data, tmp_path):
    from pipeline.core.ledger import Ledger
    from pipeline.stages.clean import CleanStage

    out = ingested(demo_data, tmp_path)
    ks = keys(out)
    write_raw(out, raw_rows(ks))
    write_raw(out, [{"key": ks[2], "prompt_id": "p0", "text": "Caption: A woman with a red scarf."}])
    cfg = from_dict(CleanConfig, {}, "stages.clean")
    inputs = CleanStage.inputs(cfg, StageContext(out))
    assert inputs.column_names == ["key", "_part", "_src"] and sorted(inputs["key"].to_pylist()) == sorted(ks)
    assert dict(zip(inputs["key"].to_pylist(), inputs["_part"].to_pylist(), strict=True))[ks[2]] == 1
    clean(out)

    def rows(where):
        return sorted((r["key"], r["prompt_id"], r["status"], r["text"]) for r in Ledger(where, "captions/clean").read().to_pylist())

    first = rows(out)
    Ledger(out, "captions/raw").compact()
    for p in (out / "captions" / "clean").glob("part-*"):
        p.unlink()
    assert clean(out).pending == 3  # every key again: its clean rows were removed
    assert rows(out) == first
    again = CleanStage.inputs(cfg, StageContext(out))
    assert sorted(again["_src"].to_pylist()) == sorted(inputs["_src"].to_pylist())

"""The caption report's numbers, summed one ledger part at a time: checked against the same numbers
counted row by row in the test, over several parts with superseded rows, nulls and every flag kind."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from pipeline.core.ledger import Ledger
from pipeline.reports import caption_report
from pipeline.reports.caption_report import build_report, write_report

CAPS = ["A smiling young woman with long brown hair.", "An old man with a grey beard and glasses.",
        "A child with curly red hair.", "A woman with blue eyes and short blond hair."]
DISPUTE = {"fact": "hair_color:brown", "for": 2, "against": 1, "majority": "hair_color:brown"}


def final(key: str, flags: list[str] | None, n: int = 2, status: str = "ok", tokens: int = 12) -> dict:
    return {"key": key, "status": status, "error": "", "_fp": "f", "captions": CAPS[:n],
            "provenance": ["refined:p1"] * (n - 1) + ["cleaned:p2"] * min(n, 1), "clip_tokens": [tokens] * n,
            "flags": flags, "audit": json.dumps({"disputes": [DISPUTE] if flags else [], "evidence": {}})}


@pytest.fixture
def out(tmp_path):
    led = Ledger(tmp_path, "captions/final")
    led.write(pa.Table.from_pylist([final("a", ["rejected:invented_fact=2"]), final("b", None, n=4, tokens=80),
                                    final("gone", ["fallback:engine_error"], status="engine_error")]))
    led.write(pa.Table.from_pylist([final("a", ["rejected:invented_fact=1", "contradiction:hair_color@1",
                                                "trimmed=2"], n=3),  # supersedes a's first row
                                    final("c", ["mask_contradiction:eyeglasses@0", "dropped_contradicting=2",
                                                "no_mask_evidence"], n=1)]))
    Ledger(tmp_path, "captions/clean").write(pa.Table.from_pylist([
        {"key": "a", "status": "ok", "error": "", "_fp": "f", "prompt_id": "p1", "text": "A woman.", "trimmed": True,
         "rules_applied": ["strip", "echo"]},
        {"key": "b", "status": "empty", "error": "", "_fp": "f", "prompt_id": "p1", "text": "", "trimmed": False,
         "rules_applied": ["strip"]}]))
    return tmp_path


def test_numbers_match_a_row_by_row_count(out):
    r = build_report(out)
    assert r["images"] == 4 and r["ok"] == 3 and r["by_status"] == {"ok": 3, "engine_error": 1}
    assert r["captions"] == 3 + 4 + 1 and r["captions_per_image"] == {1: 1, 3: 1, 4: 1}
    assert r["images_with_all"] == 0 and r["mean_captions"] == round(8 / 3, 2)
    assert r["provenance"] == {"refined": 5, "cleaned": 3}
    assert r["tokens"]["max"] == 80 and r["tokens"]["over_budget"] == 4
    assert len(r["tokens"]["histogram"]) == 81 and r["tokens"]["histogram"][12] == 4  # longer: one is over 77
    assert r["rejections"] == {"invented_fact": 1} and r["trimmed_in_refine"] == 2
    assert r["flags"] == {"no_mask_evidence": 1, "trimmed": 1}
    assert r["consistency"] == {"images_with_disputes": 2, "minority_captions_dropped": 2,
                                "contradictions_left": 1, "contradictions_by_slot": {"hair_color": 1},
                                "images_with_contradiction": 1}
    assert r["mask"]["contradictions"] == {"eyeglasses": 1} and r["mask"]["images_with_contradiction"] == 1
    assert r["mask"]["images_with_evidence"] == 2 and "coverage_sample" not in r
    assert r["clean"] == {"rows": 2, "ok": 1, "by_status": {"empty": 1, "ok": 1}, "trimmed": 1,
                          "rules": {"strip": 2, "echo": 1}}
    only = build_report(out, pa.array(["c", "gone"]))
    assert only["images"] == 2 and only["ok"] == 1 and only["captions"] == 1


def test_the_detail_lists_the_most_problems_first(out):
    stats, top = caption_report._scan(out, None, 2)
    assert [row["key"] for row in top] == ["c", "a"]  # 10 + 3·2 for c, then 1 + 10 for a; b has none
    assert [caption_report.problems(row) for row in top] == [16, 11]
    records = caption_report.image_records(out, top)
    assert [r["key"] for r in records] == ["c", "a"] and records[1]["clean"] == [("p1", "A woman.", "ok",
                                                                                   ["strip", "echo"])]
    assert write_report(out) == build_report(out)  # the page's numbers are the report's


def test_coverage_beyond_the_sample_reads_a_fixed_share_of_images_by_key_hash(tmp_path, monkeypatch):
    led = Ledger(tmp_path, "captions/final")
    led.write(pa.Table.from_pylist([final(f"k{i:03d}", None, n=1) for i in range(300)]))
    monkeypatch.setattr(caption_report, "COVERAGE_SAMPLE", 100)
    r = build_report(tmp_path)
    assert 60 <= r["coverage_sample"] <= 140 and r["ok"] == 300  # about 100 of the 300 images
    assert r == build_report(tmp_path)  # the same images every time
    assert r["coverage"]["gender"] == 1.0 and r["captions"] == 300  # every other number counts every image
    assert Counter(r["top_values"]["gender"]).total() == r["coverage_sample"]

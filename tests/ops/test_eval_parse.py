"""eval-parse: 1.0 for a copy of the ground truth, exact hand-computed scores for a hand-made perturbation."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.stage import StageContext
from pipeline.ops.eval_parse import evaluate
from pipeline.stages.parse import encode_png
from tests.face_runs import ingest_faces


def test_ground_truth_copy_scores_one(demo_data, tmp_path):
    out = ingest_faces(tmp_path / "out", demo_data, photos=())
    copy = tmp_path / "copy"
    gt = StageContext(out).index(["key", "gt_mask"]).to_pylist()
    for r in gt:
        if r["gt_mask"]:  # the predictions are at the image size (1024), twice the ground truth's
            with Image.open(out / r["gt_mask"]) as m:
                big = m.resize((1024, 1024), Image.Resampling.NEAREST)
            (copy / r["key"]).parent.mkdir(parents=True, exist_ok=True)
            big.save(copy / f"{r['key']}.png")
    report = evaluate(out, {"copy": copy})
    s = report["sources"]["copy"]
    assert report["ground_truth_images"] == 3 and s["images"] == 3 and s["missing"] == 0
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0 and s["miou_no_background"] == 1.0
    assert s["per_class_iou"]["hat"] == 1.0  # one demo face wears a hat
    assert s["per_class_iou"]["neck_l"] is None  # in no ground truth and no prediction: left out


@pytest.fixture
def hand_made(tmp_path):
    """A two-image run: 4x4 ground truth, 8x8 predictions (nearest-upscaled) with four wrong pixels."""
    out = tmp_path / "out"
    gt = {"a/1": np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]], np.uint8),
          "a/2": np.ones((4, 4), np.uint8)}
    pred = {k: v.copy() for k, v in gt.items()}
    pred["a/1"][0, 0] = 1  # background predicted as skin
    pred["a/1"][2, 0] = 0  # nose predicted as background
    pred["a/2"][3, 3] = 13  # skin predicted as hair
    for k, m in gt.items():
        (out / "gt_masks" / k).parent.mkdir(parents=True, exist_ok=True)
        (out / "gt_masks" / f"{k}.png").write_bytes(encode_png(m))
        (out / "masks" / k).parent.mkdir(parents=True, exist_ok=True)
        (out / "masks" / f"{k}.png").write_bytes(encode_png(np.kron(pred[k], np.ones((2, 2), np.uint8))))
    keys = [*gt, "a/3"]  # a/3 has no ground truth: not evaluated
    pq.write_table(pa.table({"key": keys, "status": ["ok"] * 3, "split": ["val", "test", "val"],
                             "gt_mask": [f"gt_masks/{k}.png" for k in gt] + [None]}), out / "index.parquet")
    return out


def test_hand_made_perturbation_scores(hand_made):
    s = evaluate(hand_made, {"pred": hand_made / "masks"})["sources"]["pred"]
    assert s["folder"] == "masks"  # relative to the run: the report reads the same wherever the run lives
    # background: TP 3, FP 1 (the nose pixel), FN 1 -> 3/5; skin: TP 23, FP 1, FN 1 -> 23/25;
    # nose: TP 3, FN 1 -> 3/4; hair: predicted once, never true -> 0/1
    iou = {"background": 3 / 5, "skin": 23 / 25, "nose": 3 / 4, "hair": 0.0}
    for name, value in iou.items():
        assert s["per_class_iou"][name] == pytest.approx(value)
    assert s["per_class_iou"]["l_eye"] is None
    assert s["miou"] == pytest.approx(sum(iou.values()) / 4)
    assert s["miou_no_background"] == pytest.approx((23 / 25 + 3 / 4 + 0.0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(29 / 32) and s["pixels"] == 32
    only_test = evaluate(hand_made, {"pred": hand_made / "masks"}, split="test")["sources"]["pred"]
    assert only_test["images"] == 1 and only_test["pixel_accuracy"] == pytest.approx(15 / 16)


def test_eval_parse_command(hand_made, tmp_path):
    (hand_made / "masks" / "a" / "2.png").unlink()  # a missing prediction is counted, not fatal
    report_path = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval-parse", str(hand_made), "--masks", str(hand_made / "masks"),
                                      "--json", str(report_path)], catch_exceptions=False)
    assert result.exit_code == 0 and "mIoU" in result.output and "pixel accuracy" in result.output
    doc = json.loads(report_path.read_text())
    (source,) = doc["sources"].values()
    assert source["images"] == 1 and source["missing"] == 1 and source["missing_keys"] == ["a/2"]
    assert source["pixel_accuracy"] == pytest.approx(14 / 16)
    assert CliRunner().invoke(app, ["eval-parse", "--help"]).output.count("facecurate eval-parse") >= 2

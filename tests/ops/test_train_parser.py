"""train-parser: class weights by hand, flip label swapping, a tiny CPU training run used as parser smp:<folder>."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import ConfigError
from pipeline.core.manifest import build_manifest
from pipeline.core.stage import StageContext
from pipeline.ops.train_parser import FLIP_SWAP, TrainParserConfig, class_weights, train_parser
from pipeline.stages.parse import encode_png
from tests.face_runs import ingest_faces, run

TINY = {"arch": "Unet", "encoder": "tu-test_efficientnet", "encoder_depth": 3, "decoder_channels": (16, 8, 8),
        "image_size": 64, "batch_size": 1, "workers": 0, "device": "cpu"}


def test_flip_swaps_left_and_right_classes():
    mask = np.array([[4, 1, 5], [8, 13, 9], [6, 2, 7]], np.uint8)  # l_eye skin r_eye / l_ear hair r_ear / ...
    flipped = FLIP_SWAP[mask[:, ::-1]]
    # the mirrored image's left eye is the old right eye, now on the left side: still class l_eye
    np.testing.assert_array_equal(flipped, mask)


def test_class_weights_by_hand(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[0, :3] = 1
    m[3, 3] = 15  # background 12 px, skin 3, earring 1: frequencies 0.75, 0.1875, 0.0625
    (tmp_path / "gt.png").write_bytes(encode_png(m))
    rows = [{"gt_mask": "gt.png"}]
    w, freq = class_weights(tmp_path, rows, "inverse", max_weight=50)
    np.testing.assert_allclose(freq[[0, 1, 15]], [0.75, 0.1875, 0.0625])
    # median / f = [0.25, 1, 3]; scaled so the mean pixel weight sum(f * w) is 1 (it was 0.5625)
    np.testing.assert_allclose(w[[0, 1, 15]], np.array([0.25, 1, 3]) / 0.5625, rtol=1e-6)
    assert w[5] == pytest.approx(1 / 0.5625)  # absent classes keep weight 1 (scaled)
    w, _ = class_weights(tmp_path, rows, "sqrt", max_weight=50)
    raw = np.sqrt([0.25, 1, 3])
    np.testing.assert_allclose(w[[0, 1, 15]], raw / (raw @ [0.75, 0.1875, 0.0625]), rtol=1e-6)
    w, _ = class_weights(tmp_path, rows, "none", max_weight=50)
    assert (w == 1).all()


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="multiple of 2"):
        TrainParserConfig(out=tmp_path, save=tmp_path, image_size=100)
    with pytest.raises(ValueError, match="one per encoder stage"):
        TrainParserConfig(out=tmp_path, save=tmp_path, encoder_depth=3, decoder_channels=(8, 8))


def test_tiny_training_saves_resumes_and_parses(demo_data, tmp_path):
    out = ingest_faces(tmp_path / "out", demo_data, photos=("astronaut.png",))
    save = tmp_path / "parser"
    meta = train_parser(TrainParserConfig(out=out, save=save, epochs=2, **TINY), log=lambda s: None)
    assert sorted(p.name for p in save.iterdir()) == ["model.safetensors", "parser.json"]
    doc = json.loads((save / "parser.json").read_text())
    assert doc["epochs_done"] == 2 and doc["images"] == {"train": 1, "val": 1} == meta["images"]
    assert len(doc["history"]) == 2 and 0.0 <= doc["history"][-1]["val_miou"] <= 1.0
    assert doc["labels"][15] == "ear_r" and len(doc["class_weights"]) == 19
    resumed = train_parser(TrainParserConfig(out=out, save=save, epochs=3, resume=True, **TINY), log=lambda s: None)
    assert resumed["epochs_done"] == 3 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    # the trained folder is a third parser: smp:<folder>
    result = run("parse", out, {"parsers": [f"smp:{save}"]})
    assert result.failed == {} and result.ok == result.inputs
    rows = StageContext(out).ledger("parse").read().to_pylist()
    assert {r["parser"] for r in rows} == {"smp"} and all(r["primary"] and r["agreement"] is None for r in rows)
    with Image.open(out / "masks/photos/astronaut.png") as img:
        assert img.mode == "L" and img.size == (512, 512) and np.asarray(img).max() <= 18
    with pytest.raises(ConfigError, match="does not exist"):
        build_manifest({"stages": {"parse": {"parsers": [f"smp:{tmp_path / 'nowhere'}"]}}}, None)


def test_train_parser_command(demo_data, tmp_path):
    out = ingest_faces(tmp_path / "out", demo_data, photos=())
    args = ["train-parser", str(out), "--save", str(tmp_path / "p"), "--encoder", "tu-test_efficientnet",
            "--image-size", "64", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--set", "encoder_depth=3", "--set", "decoder_channels=[16, 8, 8]"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0 and "smp:" in result.output
    assert "facecurate train-parser" in CliRunner().invoke(app, ["train-parser", "--help"]).output

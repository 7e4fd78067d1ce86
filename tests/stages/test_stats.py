"""Stats: EC²Face Eq. 10 by hand, the group rule, mergeable counts, attributes.json and the HTML report."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.core.stage import StageContext
from pipeline.data.attributes import ec2face_weights, groups, weight_map
from pipeline.data.labels import NAMES, PALETTE
from pipeline.stages.parse import encode_png
from pipeline.stages.stats import StatsConfig, aggregate
from tests.face_runs import ingest_faces, run


def test_ec2face_weights_on_a_3x3_example_by_hand():
    mask = np.array([[0, 0, 1], [0, 1, 2], [13, 13, 13]])
    totals = np.bincount(mask.ravel(), minlength=19)  # T_0 = 3, T_1 = 2, T_2 = 1, T_13 = 3; sum 9
    w = ec2face_weights(totals)
    # w_c = sum(T) / (n_c * T_c + 1) with n_c = 19
    assert w[0] == pytest.approx(9 / 58) and w[13] == pytest.approx(9 / 58)
    assert w[1] == pytest.approx(9 / 39) and w[2] == pytest.approx(9 / 20)
    assert w[15] == pytest.approx(9.0)  # an absent class: sum(T) / 1
    expected = np.array([[9 / 58, 9 / 58, 9 / 39], [9 / 58, 9 / 39, 9 / 20], [9 / 58, 9 / 58, 9 / 58]], np.float32)
    np.testing.assert_allclose(weight_map(mask, w), expected, rtol=1e-6)


def test_group_rule_thresholds():
    rule = {"hfa_share": 0.02, "hfa_occurrence": 0.9, "rfa_share": 0.001, "rfa_occurrence": 0.3}
    share = np.array([0.3, 0.02, 0.019, 0.5, 0.0009, 0.0009, 0.001])
    occ = np.array([1.0, 0.9, 0.95, 0.5, 0.29, 0.3, 0.1])
    assert groups(share, occ, rule) == ["HFA", "HFA", "NFA", "NFA", "RFA", "NFA", "NFA"]


def test_counts_merge_like_one_pass():
    import pyarrow as pa

    rng = np.random.default_rng(0)
    rows = [{"key": f"k{i}", "status": "ok", "split": ["train", "val"][i % 2], "parser": "segformer",
             "class_pixels": rng.integers(0, 50, 19).tolist(), "agreement": float(rng.random()),
             "sketch_ink": None if i % 3 else 0.1, "flags": ["no_face"] if i % 4 == 0 else []} for i in range(40)]
    cfg = StatsConfig(min_share=0.05)
    whole, low = aggregate(pa.Table.from_pylist(rows), cfg)
    a, low_a = aggregate(pa.Table.from_pylist(rows[:17]), cfg)
    b, low_b = aggregate(pa.Table.from_pylist(rows[17:]), cfg)
    for split in whole:
        merged = a[split].merge(b[split])
        assert merged.images == whole[split].images and merged.parsers == whole[split].parsers
        np.testing.assert_array_equal(merged.pixels, whole[split].pixels)
        np.testing.assert_array_equal(merged.present, whole[split].present)
        np.testing.assert_array_equal(merged.agreement_hist, whole[split].agreement_hist)
        assert (merged.sketches, merged.no_face, merged.ink_sum) == pytest.approx(
            (whole[split].sketches, whole[split].no_face, whole[split].ink_sum))
    assert sorted(low_a + low_b) == sorted(low)


CAPTIONS = ["A woman with <b>short</b> hair & a smile.", "Short hair, smiling.", "A smiling woman.", "Fourth."]


def hand_masks() -> dict[str, np.ndarray]:
    """16x16 label maps per demo key (splits: celebahq 0/1/2 train/val/test, ffhq 00000/00001 train/val)."""
    def mask(**boxes):
        m = np.zeros((16, 16), np.uint8)
        for name, (y0, y1, x0, x1) in boxes.items():
            m[y0:y1, x0:x1] = NAMES.index(name)
        return m

    return {
        "celebahq/0": mask(skin=(0, 16, 0, 16), hair=(0, 4, 0, 16), ear_r=(8, 10, 0, 1)),   # ear_r: 2 px
        "ffhq/00000": mask(skin=(4, 16, 2, 14), hair=(0, 4, 0, 16), ear_r=(8, 11, 0, 1)),   # ear_r: 3 px
        "celebahq/1": mask(skin=(2, 14, 2, 14), eye_g=(5, 7, 3, 13)),
        "ffhq/00001": mask(skin=(2, 14, 2, 14)),
        "celebahq/2": mask(hat=(0, 8, 0, 16)),
    }


@pytest.fixture(scope="module")
def stats_run(tiny_model, demo_data, tmp_path_factory):
    """Parse (tiny Segformer) and sketch (tiny U2Net), then hand-made masks replace the predictions."""
    out = ingest_faces(tmp_path_factory.mktemp("stats") / "out", demo_data, photos=())
    run("parse", out, {"segformer_model": str(tiny_model("segformer-face-tiny"))})
    run("sketch", out, {"model": str(tiny_model("u2net-portrait-tiny")), "size": 64})
    for key, m in hand_masks().items():
        (out / "masks" / f"{key}.png").write_bytes(encode_png(m))
    import pyarrow as pa

    from pipeline.core.ledger import Ledger

    Ledger(out, "captions/final").write(pa.table({  # final captions of one key: the triplets show them
        "key": ["celebahq/0"], "status": ["ok"], "error": [""], "_fp": ["c0"],
        "captions": [CAPTIONS], "flags": [[]]}))
    result = run("stats", out, {"resolution": 16, "min_share": 0.01, "samples": 5})
    return out, result


def test_attributes_match_hand_counts(stats_run):
    out, result = stats_run
    assert result.failed == {} and result.ok == 5
    doc = json.loads((out / "stats" / "attributes.json").read_text())
    masks = hand_masks()
    assert doc["images"] == {"all": 5, "train": 2, "val": 2, "test": 1}
    train = sum(np.bincount(masks[k].ravel(), minlength=19) for k in ("celebahq/0", "ffhq/00000"))
    assert doc["ec2face"]["reference_split"] == "train" and doc["ec2face"]["T"] == train.tolist()
    np.testing.assert_allclose(doc["ec2face"]["weights"], train.sum() / (19 * train + 1.0))
    by_name = {c["name"]: c for c in doc["classes"]}
    assert by_name["hair"]["pixel_share"]["train"] == pytest.approx(128 / 512)
    # ear_r covers 2 px in one train mask and 3 in the other: only 3 >= 0.01 * 256 counts as occurring
    assert by_name["ear_r"]["occurrence"]["train"] == 0.5 and by_name["ear_r"]["pixels"]["train"] == 5
    assert by_name["eye_g"]["occurrence"] == {"all": 0.2, "train": 0.0, "val": 0.5, "test": 0.0}
    share, occ = train / train.sum(), np.array([by_name[n]["occurrence"]["train"] for n in NAMES])
    expected = groups(share, occ, StatsConfig().rule())
    assert [c["group"] for c in doc["classes"]] == expected
    assert by_name["skin"]["group"] == "HFA" and by_name["ear_r"]["group"] == "NFA"  # 0.98% share: not rare
    assert doc["groups"]["text"].startswith("HFA: mean pixel share >= 3.00%")
    assert doc["sketch"]["images"] == 5 and doc["agreement"]["low_count"] == 0  # one parser: no agreement


def test_report_is_self_contained_with_plots_and_triplets(stats_run):
    out, _ = stats_run
    html = (out / "stats" / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "src='/" not in html
    assert html.count("data:image/png;base64") >= 4 + 2 * 5  # plots, then a mask and a sketch per sample
    assert html.count("data:image/jpeg;base64") == 5  # one thumbnail per sample image
    assert "EC²Face" in html and "HFA: mean pixel share" in html
    for name in ("pixel_share", "occurrence", "groups", "ec2face_weights"):
        with Image.open(out / "stats" / f"{name}.png") as img:
            assert img.size[0] > 300


def test_report_opens_in_headless_chromium(stats_run, tmp_path):
    from tools.screenshot_report import find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (apt-get install -y chromium)")
    out, _ = stats_run
    png = screenshot(out / "stats" / "report.html", tmp_path / "report.png", width=1280, height=6000)
    shot = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("RGB")).astype(int)
    # the mask thumbnails are drawn: the hand-made masks' skin and hat colours appear on screen
    for cls in ("skin", "hat"):
        hit = (np.abs(shot - PALETTE[NAMES.index(cls)].astype(int)).sum(-1) <= 6).sum()
        assert hit > 500, f"{cls} colour not found in the screenshot"


def test_triplets_show_the_first_final_captions_escaped(stats_run):
    import subprocess

    from tools.screenshot_report import find_chromium

    out, _ = stats_run
    page = (out / "stats" / "report.html").read_text()
    assert "A woman with &lt;b&gt;short&lt;/b&gt; hair &amp; a smile." in page and "Fourth." not in page
    assert page.count("no final captions (run refine)") == 4  # the other four samples
    assert "href='../index.html'" in page  # back to the run's front page, which links here
    front = (out / "index.html").read_text()
    assert "href='stats/report.html'" in front
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on PATH (apt-get install -y chromium)")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "stats" / "report.html").as_uri()], capture_output=True, text=True, timeout=90).stdout
    assert "<li>A woman with &lt;b&gt;short&lt;/b&gt; hair &amp; a smile.</li>" in dom  # text, not markup
    assert "<li>A smiling woman.</li>" in dom


def test_stats_is_incremental(stats_run):
    out, _ = stats_run
    again = run("stats", out, {"resolution": 16, "min_share": 0.01, "samples": 5})
    assert again.pending == 0 and again.ok == 5
    assert StageContext(out).ledger("stats").read(["key"]).num_rows == 5

"""Parse: label maps in CelebAMask-HQ ids from Segformer and FaRL, label mappings, agreement, failures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import ConfigError
from pipeline.core.identity import file_identity
from pipeline.core.manifest import build_manifest
from pipeline.core.stage import StageContext
from pipeline.data.labels import NAME_TO_ID, NAMES, merge_binary_masks
from pipeline.parsers import FARL_CELEBM_NAMES, FARL_TO_CELEBAMASK, check_label_space, mean_iou
from tests.face_runs import ingest_faces, run


@pytest.fixture(scope="module")
def models(tiny_model):
    seg = tiny_model("segformer-face-tiny")
    farl = tiny_model("farl-celebm-tiny") / "face_parsing.farl.celebm.tiny_jit.pt"
    det = tiny_model("retinaface-tiny") / "mobilenet0.25_Final.pth"
    return {"segformer_model": str(seg), "farl_model": str(farl), "farl_detector": str(det)}


@pytest.fixture(scope="module")
def two_parsers(models, demo_data, tmp_path_factory):
    """One run parsed by Segformer (primary) and FaRL, both maps kept."""
    out = ingest_faces(tmp_path_factory.mktemp("parse") / "out", demo_data)
    result = run("parse", out, {"parsers": ["segformer", "farl"], "save_all": True, **models})
    return out, result


def ledger_rows(out):
    return StageContext(out).ledger("parse").read().to_pylist()


def test_farl_mapping_against_hand_made_masks():
    import facer.face_parsing.farl as farl

    assert tuple(farl.pretrain_settings["celebm/448"]["label_names"]) == FARL_CELEBM_NAMES
    # FaRL's names are mirrored: `rr` is the CelebAMask-HQ `l_ear` file, `re` the `l_eye` file, ...
    meaning = {"background": "background", "neck": "neck", "face": "skin", "cloth": "cloth", "rr": "l_ear",
               "lr": "r_ear", "rb": "l_brow", "lb": "r_brow", "re": "l_eye", "le": "r_eye", "nose": "nose",
               "imouth": "mouth", "llip": "l_lip", "ulip": "u_lip", "hair": "hair", "eyeg": "eye_g", "hat": "hat",
               "earr": "ear_r", "neck_l": "neck_l"}
    assert [NAME_TO_ID[meaning[n]] for n in FARL_CELEBM_NAMES] == FARL_TO_CELEBAMASK.tolist()
    assert FARL_TO_CELEBAMASK.tolist() == [0, 17, 1, 18, 8, 9, 6, 7, 4, 5, 2, 10, 12, 11, 13, 3, 14, 15, 16]
    farl_ids = {n: i for i, n in enumerate(FARL_CELEBM_NAMES)}
    hand = np.array([[farl_ids["hair"], farl_ids["hair"], farl_ids["hat"]],
                     [farl_ids["re"], farl_ids["face"], farl_ids["le"]],
                     [farl_ids["rr"], farl_ids["ulip"], farl_ids["earr"]]], np.uint8)
    expected = np.array([[13, 13, 14], [4, 1, 5], [8, 11, 15]], np.uint8)  # hair, hat / l_eye skin r_eye / ...
    np.testing.assert_array_equal(FARL_TO_CELEBAMASK[hand], expected)


def test_merge_order_on_hand_made_masks():
    """Later classes in the table overwrite earlier ones (g_mask.py's order, not FaRL's loader's): l_eye paints
    over eye_g, neck over neck_l (a necklace on the neck mask disappears), cloth over both."""
    shape = (4, 4)

    def box(y0, y1, x0, x1, rgb=False):
        m = np.zeros((*shape, 3) if rgb else shape, np.uint8)
        m[y0:y1, x0:x1] = 255
        return m

    masks = {"skin": box(0, 4, 0, 4), "eye_g": box(0, 2, 0, 4), "l_eye": box(0, 1, 0, 1, rgb=True),
             "neck": box(2, 4, 0, 4), "neck_l": box(3, 4, 0, 3), "cloth": box(3, 4, 2, 4)}
    only_green = np.zeros((*shape, 3), np.uint8)
    only_green[..., 1] = 255  # membership is the first channel's: this mask marks nothing
    masks["hat"] = only_green
    neck_l_alone = box(1, 2, 0, 1)  # a necklace pixel no later class covers stays a necklace
    masks["neck_l"] = masks["neck_l"] | neck_l_alone
    expected = np.array([[4, 3, 3, 3], [16, 3, 3, 3], [17, 17, 17, 17], [17, 17, 18, 18]], np.uint8)
    np.testing.assert_array_equal(merge_binary_masks(masks, shape), expected)


def test_label_space_check_maps_by_index_and_refuses_other_label_sets():
    assert check_label_space(dict(enumerate(NAMES)), "ours") is None
    # jonathandinu/face-parsing before "Fix labels": file names, in an order the weights never had
    old = ["background", "skin.png", "nose.png", "r_eye.png", "l_eye.png", "r_brow.png", "l_brow.png", "r_ear.png",
           "l_ear.png", "mouth.png", "u_lip.png", "l_lip.png", "neck.png", "hair.png", "neck_l.png", "cloth.png",
           "eye_g.png", "hat.png", "ear_r.png"]
    assert "by index" in check_label_space(dict(enumerate(old)), "old")
    cityscapes = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                  "bicycle"]
    with pytest.raises(ValueError, match="does not map onto the CelebAMask-HQ classes"):
        check_label_space(dict(enumerate(cityscapes)), "cityscapes")
    with pytest.raises(ValueError, match="predicts 150 labels"):
        check_label_space({i: f"thing{i}" for i in range(150)}, "ade20k")


def test_segformer_with_foreign_labels_is_refused(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from pipeline.parsers.segformer import SegformerParser

    cfg = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 2],
                          decoder_hidden_size=16, num_labels=3, id2label={0: "sky", 1: "road", 2: "car"})
    SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="predicts 3 labels"):
        SegformerParser(str(tmp_path), "cpu")


def test_mean_iou_by_hand():
    a = np.array([[0, 0, 1], [1, 2, 2]])
    b = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2
    assert mean_iou(a, b) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert mean_iou(a, a) == 1.0


def test_two_parsers_masks_rows_and_agreement(two_parsers):
    out, result = two_parsers
    index = {r["key"]: r for r in StageContext(out).index(["key", "width", "height"]).to_pylist()}
    rows = ledger_rows(out)
    assert result.failed == {} and len(rows) == 2 * len(index)
    for key, meta in index.items():
        mine = [r for r in rows if r["key"] == key]
        assert sorted(r["parser"] for r in mine) == ["farl", "segformer"]
        primary = [r for r in mine if r["primary"]]
        assert [r["parser"] for r in primary] == ["segformer"] and primary[0]["mask"] == f"masks/{key}.png"
        maps = {}
        for r in mine:
            with Image.open(out / r["mask"]) as img:
                assert img.mode == "L" and img.size == (meta["width"], meta["height"])
                maps[r["parser"]] = np.asarray(img)
            assert maps[r["parser"]].dtype == np.uint8 and maps[r["parser"]].max() <= 18
            assert len(r["class_pixels"]) == 19 and sum(r["class_pixels"]) == meta["width"] * meta["height"]
            assert r["class_pixels"] == np.bincount(maps[r["parser"]].ravel(), minlength=19).tolist()
        # agreement is the mIoU of the two saved maps, recorded on both rows
        expected = mean_iou(maps["segformer"], maps["farl"])
        assert [r["agreement"] for r in mine] == [pytest.approx(expected)] * 2


def test_rerun_is_free(two_parsers, models):
    out, _ = two_parsers
    again = run("parse", out, {"parsers": ["segformer", "farl"], "save_all": True, **models})
    assert again.pending == 0 and again.counts == {"ok": 2 * again.inputs}


def test_primary_falls_back_when_farl_finds_no_face(models, demo_data, tmp_path):
    """An unreachable detector threshold: FaRL rows are no_face for photos, Segformer's map becomes primary."""
    out = ingest_faces(tmp_path / "out", demo_data, photos=("astronaut.png",))
    run("parse", out, {"parsers": ["farl", "segformer"], "detector_threshold": 0.99, **models})
    rows = ledger_rows(out)
    photo = {r["parser"]: r for r in rows if r["key"] == "photos/astronaut"}
    assert photo["farl"]["status"] == "no_face" and "RetinaFace" in photo["farl"]["error"]
    assert photo["segformer"]["primary"] and photo["segformer"]["agreement"] is None
    assert (out / "masks/photos/astronaut.png").exists()
    aligned = {r["parser"]: r for r in rows if r["key"] == "celebahq/0"}  # aligned crops skip the detector
    assert aligned["farl"]["primary"] and aligned["farl"]["status"] == "ok"


def test_unaligned_photo_goes_through_detector_and_warp(models, demo_data, tmp_path):
    """FaRL on an unaligned photo: detect, warp to 448, parse, warp back: a full-size map with background."""
    from pipeline.parsers.farl import FarlParser

    parser = FarlParser(models["farl_model"], models["farl_detector"], "cpu", detector_size=256)
    img = np.asarray(Image.open(demo_data / "photos" / "grace_hopper.jpg").convert("RGB"))
    (res,) = parser([img], [False])
    assert res.status == "ok" and res.label.shape == img.shape[:2] and res.label.dtype == np.uint8
    assert res.label.max() <= 18 and (res.label == 0).any()  # outside the warped face: background


@pytest.mark.parametrize("shape", [(1, 3000), (2000, 1)])
def test_extreme_aspect_ratios_in_every_parser(models, shape):
    """A 1-pixel strip: FaRL's detector downscale used to round its short side to 0 and Segformer's processor
    took a 1-pixel-high image for channels-first; every path now returns a map at the image's own size."""
    from pipeline.parsers.farl import FarlParser
    from pipeline.parsers.segformer import SegformerParser

    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    seg = SegformerParser(models["segformer_model"], "cpu")
    # a threshold the random tiny detector passes on noise, so the detect-warp-unwarp path runs too
    farl = FarlParser(models["farl_model"], models["farl_detector"], "cpu", threshold=0.05, detector_size=640)
    results = [*seg([img], [False]), *farl([img, img], [True, False])]
    for res in results:
        assert res.status == "ok", res.error
        assert res.label.shape == shape and res.label.dtype == np.uint8 and res.label.max() <= 18


def test_strip_images_through_the_stage(models, tmp_path):
    """1x3000 and 2000x1 photos: both parsers' rows are ok and masks/ keeps each image's frame."""
    folder = tmp_path / "strips"
    folder.mkdir()
    rng = np.random.default_rng(1)
    sizes = {"photos/wide": (3000, 1), "photos/tall": (1, 2000)}  # PIL (width, height)
    for key, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{key.split('/')[1]}.png")
    out = tmp_path / "out"
    run("ingest", out, {"sources": [{"path": str(folder), "name": "photos"}], "min_size": 1})
    result = run("parse", out, {"parsers": ["farl", "segformer"], "detector_threshold": 0.05, **models})
    rows = ledger_rows(out)
    assert result.failed == {} and {r["status"] for r in rows} == {"ok"} and len(rows) == 4
    for key, size in sizes.items():
        (primary,) = [r for r in rows if r["key"] == key and r["primary"]]
        assert primary["parser"] == "farl" and primary["fallback_for"] is None
        with Image.open(out / "masks" / f"{key}.png") as m:
            assert m.size == size and m.mode == "L"


def test_a_raising_parser_keeps_the_other_parsers_map(models, demo_data, tmp_path, monkeypatch):
    """FaRL (primary) raises on one photo: that key gets a one-line farl parser_error row and Segformer's map
    becomes primary (marked fallback_for); the batch's other keys keep their FaRL maps."""
    from pipeline.data.views import upstream
    from pipeline.parsers.farl import FarlParser

    real = FarlParser._unaligned

    def flaky(self, img):
        if img.shape[:2] == (512, 512):  # astronaut.png; grace_hopper.jpg is 600x512
            raise RuntimeError("detector blew up\nsecond line of a traceback")
        return real(self, img)

    monkeypatch.setattr(FarlParser, "_unaligned", flaky)
    out = ingest_faces(tmp_path / "out", demo_data)
    result = run("parse", out, {"parsers": ["farl", "segformer"], **models})
    rows = ledger_rows(out)
    assert result.failed.get("stage_error") is None and "stage_error" not in {r["status"] for r in rows}
    bad = {r["parser"]: r for r in rows if r["key"] == "photos/astronaut"}
    assert bad["farl"]["status"] == "parser_error" and bad["farl"]["mask"] is None
    assert bad["farl"]["error"] == "farl: RuntimeError: detector blew up"
    seg = bad["segformer"]
    assert seg["status"] == "ok" and seg["primary"] and seg["fallback_for"] == "farl"
    assert seg["mask"] == "masks/photos/astronaut.png" and (out / seg["mask"]).exists()
    for key in ("photos/grace_hopper", "celebahq/0"):  # parsed again one by one after the batch raised
        good = {r["parser"]: r for r in rows if r["key"] == key}
        assert good["farl"]["status"] == "ok" and good["farl"]["primary"] and good["farl"]["fallback_for"] is None
    # downstream stages (latents, shard) take the key's mask from the row marked primary
    masks = {r["key"]: (r["mask"], r["parser"]) for r in upstream(out, ("parse",)).masks.to_pylist()}
    assert masks["photos/astronaut"] == ("masks/photos/astronaut.png", "segformer")
    assert masks["photos/grace_hopper"] == ("masks/photos/grace_hopper.png", "farl")


def test_decode_error_and_bad_settings(models, demo_data, tmp_path):
    out = ingest_faces(tmp_path / "out", demo_data, photos=("astronaut.png",))
    src = tmp_path / "out-photos" / "astronaut.png"
    src.write_bytes(src.read_bytes()[:200])  # the file broke after ingest
    run("parse", out, {"parsers": ["segformer", "farl"], **models})
    broken = [r for r in ledger_rows(out) if r["key"] == "photos/astronaut"]
    assert {r["status"] for r in broken} == {"decode_error"} and len(broken) == 2
    for bad, match in [({"parsers": ["segformer", "segformer"]}, "distinct"), ({"parsers": ["sam"]}, "unknown parser"),
                       ({"parsers": ["farl"], "primary": "segformer"}, "not among parsers"),
                       ({"parsers": ["smp"]}, "smp_model")]:
        with pytest.raises(ConfigError, match=match):
            build_manifest({"stages": {"parse": bad}}, None)


def test_file_identity_follows_content(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"a" * 100)
    before = file_identity(f)
    f.write_bytes(b"b" * 100)
    assert file_identity(f) != before
    assert file_identity(tmp_path) == file_identity(tmp_path)

"""Sketch: the U2Net architecture and output convention, the reference face crop, the stage end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.config import ConfigError
from pipeline.core.manifest import build_manifest
from pipeline.core.stage import StageContext
from pipeline.models.u2net import STAGES, U2NET, load_u2net
from pipeline.stages.sketch import crop_face, detect_face, load_cascade, normalise, paste_back, to_sketch
from tests.face_runs import ingest_faces, run


def test_u2net_forward_shapes_and_output_convention():
    torch.manual_seed(0)
    net = U2NET(3, 1, "tiny").eval()
    x = torch.randn(2, 3, 64, 48)  # not a multiple of 32: upsampling to the skip's size keeps shapes aligned
    with torch.no_grad():
        outs = net(x)
    assert len(outs) == 7  # the fused map d0 first, then the six side outputs
    for o in outs:
        assert o.shape == (2, 1, 64, 48) and float(o.min()) >= 0.0 and float(o.max()) <= 1.0
    # d0 is the sigmoid of outconv over the six side logits (the fused map, not a side output)
    with torch.no_grad():
        sides = torch.logit(torch.cat(outs[1:], 1).double().clamp(1e-12, 1 - 1e-12)).float()
        fused = torch.sigmoid(net.outconv(sides))
    torch.testing.assert_close(fused, outs[0], atol=1e-4, rtol=1e-4)


def test_u2net_full_config_matches_the_public_layout(tmp_path):
    full = U2NET(3, 1)  # u2net_portrait.pth's architecture
    assert sum(p.numel() for p in full.parameters()) == 44_009_869
    keys = list(full.state_dict())
    assert keys[0] == "stage1.rebnconvin.conv_s1.weight" and keys[-1] == "outconv.bias"
    assert "stage1.rebnconv7.conv_s1.weight" in keys and "stage5.rebnconv4.conv_s1.weight" in keys
    assert "stage1.pool5" not in keys and full.stage1.rebnconv7.conv_s1.dilation == (2, 2)
    assert full.stage5.rebnconv4.conv_s1.dilation == (8, 8)  # RSU-4F dilates instead of pooling
    # a DataParallel checkpoint (module. prefix) of a narrower width loads, widths read off the shapes
    torch.manual_seed(1)
    tiny = U2NET(3, 1, "tiny").eval()
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, tmp_path / "u2net_portrait.pth")
    loaded = load_u2net(tmp_path)
    assert loaded.widths == tiny.widths and len(loaded.widths) == len(STAGES)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], tiny(x)[0])
    with pytest.raises(ValueError, match="not a U2NET state dict"):
        U2NET.from_state_dict({"conv.weight": torch.zeros(1)})


def test_haar_crop_on_the_demo_portrait(demo_data):
    img = np.asarray(Image.open(demo_data / "photos" / "astronaut.png").convert("RGB"))
    face = detect_face(img, load_cascade())
    assert face == (177, 66, 95, 95)  # environment.md's measured box
    crop, region = crop_face(img, face)
    # grown by int(0.4w) left and right, int(0.6h) up, int(0.2h) down: 171 x 171, already square
    assert region == (177 - 38, 66 - 57, 177 + 95 + 38, 66 + 95 + 19)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8


def test_crop_pads_white_past_the_border_and_to_a_square():
    img = np.zeros((100, 200, 3), np.uint8)
    crop, region = crop_face(img, (0, 10, 50, 50), size=64)
    # left = -20 (white), top = 10 - 30 = -20 (white), right = 70, bottom = 70; 90 x 90 is square
    assert region == (-20, -20, 70, 70)
    assert (crop[:5, :, :] == 255).all() and (crop[:, :5, :] == 255).all() and (crop[40:, 40:] == 0).all()
    crop, region = crop_face(img, (80, 40, 40, 20), size=64)
    # 72 wide (80-16 .. 136) x 36 tall (40-12 .. 64) -> padded by 18 above and below to a square
    assert region == (64, 28 - 18, 136, 64 + 18) and crop.shape == (64, 64, 3)
    whole, region = crop_face(img, None, size=64)
    assert region == (0, 0, 200, 100) and whole.shape == (64, 64, 3)


def test_reversed_normalisation_and_output_inversion():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200  # divided by the image's maximum: red becomes 1.0
    x = normalise(red)
    assert x.shape == (3, 2, 2)
    assert x[0, 0, 0] == pytest.approx((1.0 - 0.406) / 0.225)  # R with B's ImageNet statistics
    assert x[1, 0, 0] == pytest.approx((0.0 - 0.456) / 0.224)
    assert x[2, 0, 0] == pytest.approx((0.0 - 0.485) / 0.229)  # B with R's
    drawing, flat = to_sketch(np.array([[0.2, 0.6, 1.0]]))
    # 1 - d0 = [0.8, 0.4, 0.0]; min-max -> [1, 0.5, 0]; x255 truncated -> [255, 127, 0]
    assert drawing.tolist() == [[255, 127, 0]] and not flat
    assert to_sketch(np.full((3, 3), 0.5))[1]  # a constant map is a flagged white page


def test_paste_back_lines_up_with_the_image():
    sketch = np.zeros((8, 8), np.uint8)
    out = paste_back(sketch, (-2, 1, 4, 9), (6, 5))
    assert out.shape == (6, 5)
    assert (out[1:, :4] == 0).all() and (out[0] == 255).all() and (out[:, 4] == 255).all()


@pytest.fixture(scope="module")
def sketched(tiny_model, demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sketch")
    (root / "out-photos").mkdir()
    yy, xx = np.mgrid[0:120, 0:160]
    sky = np.stack([xx, yy, xx // 2 + 40], -1).astype(np.uint8)  # a gradient: no face to find
    Image.fromarray(sky).save(root / "out-photos" / "sky.png")
    out = ingest_faces(root / "out", demo_data, photos=("astronaut.png",))
    model = tiny_model("u2net-portrait-tiny") / "u2net_portrait.pth"
    result = run("sketch", out, {"model": str(model), "size": 128})
    return out, result, model


def test_sketch_stage_end_to_end(sketched):
    out, result, _ = sketched
    assert result.failed == {}
    index = {r["key"]: r for r in StageContext(out).index(["key", "width", "height"]).to_pylist()}
    rows = {r["key"]: r for r in StageContext(out).ledger("sketch").read().to_pylist()}
    assert set(rows) == set(index)
    assert rows["photos/astronaut"]["face_box"] == [177, 66, 95, 95] and rows["photos/astronaut"]["flags"] == []
    assert rows["photos/sky"]["face_box"] is None and rows["photos/sky"]["flags"] == ["no_face"]
    for key, r in rows.items():
        assert r["status"] == "ok" and r["sketch"] == f"sketches/{key}.png"
        with Image.open(out / r["sketch"]) as img:
            assert img.mode == "L" and img.size == (index[key]["width"], index[key]["height"])
            arr = np.asarray(img)
        assert arr.max() > 200 and arr.min() < arr.max()  # min-max normalised, then resized into the frame
    astro = np.asarray(Image.open(out / "sketches/photos/astronaut.png"))
    assert (astro[:9] == 255).all() and (astro[:, 311:] == 255).all()  # white outside the face crop


def test_sketch_crop_placement_and_settings(sketched, tmp_path):
    out, _, model = sketched
    again = run("sketch", out, {"model": str(model), "size": 128})
    assert again.pending == 0
    run("sketch", out, {"model": str(model), "size": 128, "placement": "crop"})  # a new fingerprint: redone
    with Image.open(out / "sketches/photos/astronaut.png") as img:
        assert img.size == (128, 128)
    rows = StageContext(out).ledger("sketch").read(["key", "flags"]).to_pylist()
    assert all("crop_frame" in r["flags"] for r in rows)
    for bad, match in [({}, "u2net_portrait"), ({"model": str(model), "size": 100}, "multiple of 32"),
                       ({"model": str(tmp_path / "missing.pth")}, "does not exist")]:
        with pytest.raises(ConfigError, match=match):
            build_manifest({"stages": {"sketch": bad}}, None)

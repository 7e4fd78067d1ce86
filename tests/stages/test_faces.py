"""The faces stage with dlib's real models on real portraits that ship in packages (scikit-image, matplotlib)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image, ImageFilter, ImageOps
from skimage import data

from pipeline.core.config import RunnerConfig, from_dict
from pipeline.core.ledger import Ledger
from pipeline.core.manifest import build_manifest
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from pipeline.models.dlib_faces import DlibFaces, ffhq_align, to_crop
from pipeline.stages.faces import FacesConfig

ASTRONAUT = Image.fromarray(data.astronaut())
with cbook.get_sample_data("grace_hopper.jpg") as f:
    HOPPER = Image.open(f).convert("RGB")


@pytest.fixture(scope="module")
def dlib_faces():
    return DlibFaces()


@pytest.mark.parametrize("img", [ASTRONAUT, ASTRONAUT.resize((1024, 1024), Image.Resampling.BICUBIC)],
                         ids=["portrait", "resized"])
def test_landmarks_on_the_aligned_crop_sit_where_the_ffhq_procedure_puts_them(dlib_faces, img):
    face = max(dlib_faces.detect(np.asarray(img)), key=lambda f: f.score)
    crop, quad = ffhq_align(img, face.landmarks, 256, transform_size=512)
    expected = to_crop(face.landmarks, quad, 256)  # where the quad transform takes the photo's landmarks
    again = dlib_faces.detect(np.asarray(crop))
    assert len(again) >= 1 and crop.size == (256, 256)
    err = np.abs(again[0].landmarks - expected).mean(0) / 256
    assert (err < 0.01).all(), err
    # the FFHQ layout: eyes level, mouth centred below them
    eyes = (again[0].landmarks[36:42].mean(0), again[0].landmarks[42:48].mean(0))
    assert abs(eyes[0][1] - eyes[1][1]) < 0.02 * 256 and abs(again[0].landmarks[51][0] - 128) < 0.04 * 256


def run_faces(photos: dict[str, Image.Image], tmp: Path, **settings) -> tuple[Path, dict[str, list[dict]]]:
    src = tmp / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name, im in photos.items():
        im.save(src / name, quality=70) if name.endswith(".jpg") else im.save(src / name)
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    manifest = build_manifest({"stages": {"ingest": {"sources": [{"path": str(src), "name": "photos"}],
                                                     "val_fraction": 0.5}}}, None)
    run_stage("ingest", manifest.stages["ingest"], StageContext(out), RunnerConfig())
    cfg = from_dict(FacesConfig, {"size": 256, **settings}, "stages.faces")
    run_stage("faces", cfg, StageContext(out), RunnerConfig())
    rows: dict[str, list[dict]] = {}
    for r in Ledger(out, "faces").read().to_pylist():
        rows.setdefault(r["key"].split("/", 1)[1], []).append(r)
    return out, rows


def test_no_face_a_small_face_and_a_blurred_copy_are_rows_with_their_reason(tmp_path):
    small = Image.new("RGB", (512, 512), (90, 120, 90))
    small.paste(ASTRONAUT.crop((150, 50, 300, 200)).resize((60, 60)), (200, 200))
    _, rows = run_faces({"coffee.png": Image.fromarray(data.coffee()), "small.png": small,
                         "blurred.png": ASTRONAUT.filter(ImageFilter.GaussianBlur(2.5)), "sharp.png": ASTRONAUT},
                        tmp_path)
    status = {k: (v[0]["status"], v[0]["error"]) for k, v in rows.items()}
    assert status["coffee"] == ("no_face", "no face detected")
    assert status["small"][0] == "face_too_small" and "under min_face 64" in status["small"][1]
    assert status["blurred"][0] == "too_blurry" and "sharpness" in status["blurred"][1]
    assert status["sharp"][0] == "ok"


def test_variants_share_an_identity_are_near_duplicates_and_never_straddle_splits(tmp_path):
    w, h = ASTRONAUT.size
    photos = {"astronaut.png": ASTRONAUT, "mirror.png": ImageOps.mirror(ASTRONAUT),
              "resized.png": ASTRONAUT.resize((1024, 1024), Image.Resampling.BICUBIC),
              "grey.png": ASTRONAUT.convert("L").convert("RGB"), "resaved.jpg": ASTRONAUT,
              "cropped.png": ASTRONAUT.crop((12, 10, w - 12, h - 10)), "hopper.png": HOPPER}
    out, rows = run_faces(photos, tmp_path, split_by="identity")
    kept = {k: v[0] for k, v in rows.items()}
    assert all(r["status"] in ("ok", "near_duplicate") for r in kept.values()), {k: r["error"] for k, r in kept.items()}
    variants = [k for k in kept if k != "hopper"]
    assert len({kept[k]["identity"] for k in variants}) == 1
    assert kept["hopper"]["identity"] != kept["astronaut"]["identity"]
    twins = {k: kept[k]["near_duplicate_of"] for k in variants if kept[k]["status"] == "near_duplicate"}
    assert set(twins) == set(variants) - {"astronaut"} and set(twins.values()) == {"photos/astronaut"}
    assert len({kept[k]["split"] for k in variants}) == 1  # one identity, one split
    index = StageContext(out).index(["key", "path", "photo_key"]).to_pylist()  # what downstream stages read
    assert [r["key"] for r in index] == ["photos/astronaut", "photos/hopper"]
    assert all(r["path"].startswith("aligned/") and (out / r["path"]).is_file() for r in index)
    report = (out / "faces" / "report.json").read_text()
    assert '"identities": 2' in report and '"splits_per_identity_max": 1' in report


@pytest.mark.parametrize("policy, expect", [
    ("all", [("photos/group#face1", "ok"), ("photos/group#face2", "ok")]),
    ("largest", [("photos/group", "ok")]),
    ("reject", [(None, "multiple_faces")]),
])
def test_a_group_photo_follows_the_multi_face_policy(tmp_path, policy, expect):
    group = Image.new("RGB", (1024, 512))
    group.paste(ASTRONAUT, (0, 0))
    group.paste(HOPPER.resize((512, 512)), (512, 0))
    _, rows = run_faces({"group.png": group}, tmp_path, multi_face=policy)
    assert [(r["face_key"], r["status"]) for r in rows["group"]] == expect
    if policy == "all":
        assert rows["group"][0]["identity"] != rows["group"][1]["identity"]
        assert all(r["faces_found"] == 2 for r in rows["group"])


def test_downstream_reads_the_crops_verify_checks_them_and_a_rerun_restores_a_lost_one(tmp_path):
    group = Image.new("RGB", (1024, 512))
    group.paste(ASTRONAUT, (0, 0))
    group.paste(HOPPER.resize((512, 512)), (512, 0))
    out, rows = run_faces({"group.png": group, "astronaut.png": ASTRONAUT}, tmp_path, multi_face="all")
    index = StageContext(out).index(["key", "path", "sha256", "photo_key"]).to_pylist()
    assert [r["key"] for r in index] == ["photos/astronaut", "photos/group#face1"]  # face2: the astronaut again
    assert index[1]["photo_key"] == "photos/group" and index[1]["sha256"] == rows["group"][0]["aligned_sha256"]
    from rich.console import Console

    from pipeline.ops.verify import verify_run

    def verify(o):
        return verify_run(o, Console(quiet=True))

    problems, _ = verify(out)
    assert not problems
    (out / index[0]["path"]).unlink()
    problems, _ = verify(out)
    assert any("aligned crop" in p and "missing" in p for p in problems)
    cfg = from_dict(FacesConfig, {"size": 256, "multi_face": "all"}, "stages.faces")
    assert run_stage("faces", cfg, StageContext(out), RunnerConfig()).pending == 1
    assert (out / index[0]["path"]).is_file() and not verify(out)[0]

"""Ingest on the demo data and on container sources: one row per file, each bad file with its reason."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.config import RunnerConfig
from pipeline.core.manifest import build_manifest
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from pipeline.stages.ingest import hash_split, jpeg_complete

EXPECTED_BAD = {
    "photos/bad/truncated": "truncated",
    "photos/bad/empty": "empty_file",
    "photos/bad/notes": "decode_error",
    "photos/bad/tiny": "too_small",
    "photos/bad/bomb": "decompression_bomb",
    "photos/bad/animation": "unsupported_format",
    "photos/bad/missing": "unreadable",
    "photos/bad/astronaut_copy": "duplicate",
    "photos/bad/same_astronaut": "duplicate",
}


def ingest(out: Path, sources: list[dict], **settings) -> dict[str, dict]:
    m = build_manifest({"stages": {"ingest": {"sources": sources, **settings}}}, None)
    run_stage("ingest", m.stages["ingest"], StageContext(out), RunnerConfig())
    return {r["key"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}


@pytest.fixture(scope="module")
def demo_index(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest")
    rows = ingest(out, [{"path": str(demo_data / "photos"), "name": "photos"},
                        {"path": str(demo_data / "celebamask-hq")}, {"path": str(demo_data / "ffhq")}])
    return out, rows


def all_files(root: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, filenames in os.walk(root):  # os.walk does not follow the symlink loop
        found += [Path(dirpath) / f for f in filenames]
    return found


def test_every_file_has_exactly_one_row_or_is_listed_as_ignored(demo_index, demo_data):
    out, rows = demo_index
    photo_rows = [r for r in rows.values() if r["source"] == "photos"]
    ignored = [ln.split("\t")[0] for ln in (out / "ingest" / "ignored.tsv").read_text().splitlines()]
    files = all_files(demo_data / "photos")
    assert len(photo_rows) + len(ignored) == len(files)
    assert sorted(r["origin"] for r in photo_rows) == sorted(str(f) for f in files if str(f) not in ignored)
    assert ignored == [str(demo_data / "photos" / "README.txt")]


def test_each_bad_file_has_its_reason_and_everything_else_is_ok(demo_index):
    _, rows = demo_index
    for key, reason in EXPECTED_BAD.items():
        assert rows[key]["status"] == reason, (key, rows[key]["error"])
        assert rows[key]["error"], key
    ok = {k for k, r in rows.items() if r["status"] == "ok"}
    assert ok == set(rows) - set(EXPECTED_BAD)
    assert "text, not an image" in rows["photos/bad/notes"]["error"]
    assert rows["photos/bad/tiny"]["error"] == "16x16 is below min_size 64"


def test_duplicates_point_at_their_twin(demo_index):
    _, rows = demo_index
    for k in ("photos/bad/astronaut_copy", "photos/bad/same_astronaut"):
        assert rows[k]["duplicate_of"] == "photos/astronaut"
        assert rows[k]["sha256"] == rows["photos/astronaut"]["sha256"]
    assert rows["photos/astronaut"]["duplicate_of"] is None


def test_modes_exif_and_extension_mismatch_are_recorded(demo_index):
    _, rows = demo_index
    r = rows["photos/variants/hopper_exif_rotated"]
    assert (r["width"], r["height"]) == (512, 600)  # stored 600x512, displayed upright
    assert "exif_orientation:6" in r["flags"]
    assert rows["photos/variants/hopper_cmyk"]["mode"] == "CMYK"
    assert rows["photos/variants/astronaut_16bit"]["mode"].startswith("I;16")
    assert rows["photos/variants/astronaut_palette"]["mode"] == "P"
    assert rows["photos/portraits/mislabelled"]["format"] == "PNG"
    assert "extension_mismatch:.jpg_is_PNG" in rows["photos/portraits/mislabelled"]["flags"]


def test_keys_are_filesystem_safe_unique_and_stable(demo_index, demo_data, tmp_path):
    _, rows = demo_index
    for k in rows:
        assert re.fullmatch(r"[A-Za-z0-9._/-]+", k), k
        assert not any(part.startswith(".") for part in k.split("/")), k
    unicode_key = next(k for k in rows if k.startswith("photos/portraits/astronaute"))
    assert re.fullmatch(r"photos/portraits/astronaute_caf_-[0-9a-f]{8}", unicode_key)
    again = ingest(tmp_path, [{"path": str(demo_data / "photos"), "name": "photos"}])
    assert sorted(again) == sorted(k for k in rows if k.startswith("photos/"))


def test_celebamask_masks_merge_in_the_documented_order(demo_index):
    out, rows = demo_index
    label = np.asarray(Image.open(out / rows["celebahq/1"]["gt_mask"]))
    assert label.dtype == np.uint8 and label.shape == (512, 512) and label.max() <= 18
    # Hand check against tools/make_demo_data.face_masks (boxes in pixels of the 512 mask):
    assert label[230, 220] == 4   # l_eye (4) is painted after eye_g (3) where both are set
    assert label[228, 256] == 13  # hair (13) is painted after eye_g (3)
    assert label[245, 256] == 3   # eye_g (3) is painted after nose (2)
    assert label[100, 256] == 13  # hair overwrites skin
    assert label[10, 10] == 0     # background
    assert label[600 // 2 + 200, 256] == 18  # cloth
    hat = np.asarray(Image.open(out / rows["celebahq/2"]["gt_mask"]))
    assert hat[60, 256] == 14     # hat painted over hair
    assert 3 not in np.unique(np.asarray(Image.open(out / rows["celebahq/0"]["gt_mask"])))


def test_official_splits_and_ffhq_licenses(demo_index):
    _, rows = demo_index
    assert [rows[f"celebahq/{i}"]["split"] for i in range(3)] == ["train", "val", "test"]
    assert rows["ffhq/00000"]["split"] == "train" and rows["ffhq/00001"]["split"] == "val"
    assert rows["ffhq/00000"]["license"] == "Public Domain Mark"
    assert rows["ffhq/00001"]["source_url"] == "https://example.org/photo/00001"


def test_hash_split_is_deterministic_and_proportional():
    splits = [hash_split(f"k/{i}", "seed", 0.1, 0.05) for i in range(20000)]
    assert splits == [hash_split(f"k/{i}", "seed", 0.1, 0.05) for i in range(20000)]
    assert abs(splits.count("val") / 20000 - 0.1) < 0.01
    assert abs(splits.count("test") / 20000 - 0.05) < 0.01


def test_jpeg_completeness_ignores_an_exif_thumbnail_eoi():
    img = Image.new("RGB", (64, 64), (200, 10, 10))
    thumb = io.BytesIO()
    img.resize((8, 8)).save(thumb, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 1
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes() + thumb.getvalue())  # an EOI inside APP1
    data = buf.getvalue()
    assert jpeg_complete(data)
    assert not jpeg_complete(data[:-2])
    assert not jpeg_complete(data[: len(data) // 2])


def jpeg_bytes(color: tuple[int, int, int], size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_webdataset_source_materialises_members_and_reports_broken_tars(tmp_path):
    src = tmp_path / "wds"
    src.mkdir()
    with tarfile.open(src / "shard-000000.tar", "w") as tf:
        add(tf, "a.jpg", jpeg_bytes((255, 0, 0)))
        add(tf, "a.json", b"{}")
        add(tf, "b.png", b"not really a png")
        add(tf, "c.json", b"{}")
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w") as tf:
        add(tf, "d.jpg", jpeg_bytes((0, 255, 0)))
        add(tf, "e.jpg", jpeg_bytes((0, 0, 255)))
    (src / "shard-000001.tar").write_bytes(good.getvalue()[:1500])  # cut inside the second member
    out = tmp_path / "out"
    rows = ingest(out, [{"path": str(src), "type": "webdataset"}])
    assert rows["wds/shard-000000/a"]["status"] == "ok"
    assert (out / rows["wds/shard-000000/a"]["path"]).read_bytes() == jpeg_bytes((255, 0, 0))
    assert rows["wds/shard-000000/b"]["status"] == "decode_error"
    assert rows["wds/shard-000000/c"]["status"] == "unsupported_format"
    assert "no image member" in rows["wds/shard-000000/c"]["error"]
    assert rows["wds/shard-000001/d"]["status"] == "ok"
    broken = [r for k, r in rows.items() if k.startswith("wds/shard-000001/") and r["status"] != "ok"]
    assert broken, rows.keys()


def test_parquet_source_reads_hf_image_structs(tmp_path):
    images = [jpeg_bytes((i * 40, 10, 10)) for i in range(3)]
    struct = pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images)] + [{"bytes": None, "path": "x"}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": struct, "id": ["x0", "x1", "x2", "x3"]}), tmp_path / "train.parquet")
    out = tmp_path / "out"
    rows = ingest(out, [{"path": str(tmp_path / "train.parquet"), "id_column": "id"}])
    assert [rows[f"parquet/train/x{i}"]["status"] for i in range(4)] == ["ok", "ok", "ok", "unreadable"]
    assert (out / rows["parquet/train/x1"]["path"]).read_bytes() == images[1]


def test_a_changed_file_is_processed_again_and_nothing_else(tmp_path):
    src = tmp_path / "p"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes((i * 50, 0, 0)))
    out = tmp_path / "out"
    m = build_manifest({"stages": {"ingest": {"sources": [{"path": str(src)}]}}}, None)
    ctx = StageContext(out)
    first = run_stage("ingest", m.stages["ingest"], ctx, RunnerConfig())
    assert first.pending == 3
    assert run_stage("ingest", m.stages["ingest"], ctx, RunnerConfig()).pending == 0
    (src / "1.jpg").write_bytes(jpeg_bytes((1, 2, 3), size=128))
    again = run_stage("ingest", m.stages["ingest"], ctx, RunnerConfig())
    assert again.pending == 1
    row = {r["key"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}["p/1"]
    assert row["width"] == 128


def test_a_broken_parquet_file_is_a_row_and_a_missing_image_column_is_one_line(tmp_path):
    from pipeline.core.config import ConfigError

    src = tmp_path / "pq"
    src.mkdir()
    pq.write_table(pa.table({"img": pa.array([jpeg_bytes((9, 9, 9))], pa.binary())}), src / "a.parquet")
    (src / "b.parquet").write_bytes(b"PAR1 but not really")
    rows = ingest(tmp_path / "out", [{"path": str(src), "type": "parquet"}])
    assert rows["parquet/a/00000000"]["status"] == "ok"
    assert rows["parquet/b/__parquet__"]["status"] == "decode_error"
    pq.write_table(pa.table({"text": ["no images here"]}), tmp_path / "t.parquet")
    with pytest.raises(ConfigError, match=r"sources\[0\] .*no image column"):
        ingest(tmp_path / "out2", [{"path": str(tmp_path / "t.parquet")}])

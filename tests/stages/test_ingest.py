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


def ignored_tsv(out: Path) -> dict[str, str]:
    lines = (out / "ingest" / "ignored.tsv").read_text().splitlines()
    return dict(ln.split("\t", 1) for ln in lines)


def test_symlinks_outside_the_source_root_are_listed_and_not_read(tmp_path):
    outside = tmp_path / "outside"
    (outside / "faces").mkdir(parents=True)
    (outside / "shadow").write_text("root:TOPSECRET-HASH:19000:0:99999:7:::\n")  # stands in for /etc/shadow
    (outside / "faces" / "far.jpg").write_bytes(jpeg_bytes((0, 0, 200)))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (src / "leak.jpg").symlink_to(outside / "shadow")
    (src / "hop.jpg").symlink_to("leak.jpg")  # a link inside the root to a link that leaves it
    (src / "elsewhere").symlink_to(outside / "faces", target_is_directory=True)
    (src / "inner.jpg").symlink_to("a.jpg")  # links within the root keep working
    (src / "sub" / "up").symlink_to("..", target_is_directory=True)  # and loops still end
    out = tmp_path / "out"
    rows = ingest(out, [{"path": str(src), "name": "src"}])
    assert sorted(rows) == ["src/a", "src/inner"]
    ignored = ignored_tsv(out)
    assert sorted(ignored) == sorted(str(src / n) for n in ("elsewhere", "hop.jpg", "leak.jpg"))
    assert ignored[str(src / "leak.jpg")] == (f"symlink to {outside / 'shadow'} outside the source root; "
                                              "set follow_external_symlinks: true to read it")
    assert "TOPSECRET" not in (out / "index.parquet").read_bytes().decode(errors="replace")

    out2 = tmp_path / "out2"
    rows = ingest(out2, [{"path": str(src), "name": "src", "follow_external_symlinks": True}])
    assert sorted(rows) == ["src/a", "src/elsewhere/far", "src/hop", "src/inner", "src/leak"]
    assert rows["src/elsewhere/far"]["status"] == "ok"
    assert rows["src/leak"]["status"] == "decode_error"
    assert rows["src/leak"]["error"] == "content is text, not an image"  # never the content itself
    assert ignored_tsv(out2) == {}


def test_celebamask_and_ffhq_scanners_do_not_follow_links_out_of_their_root(tmp_path):
    from pipeline.data.sources import scan_celebamask, scan_ffhq

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(jpeg_bytes((1, 2, 3)))
    (outside / "meta.json").write_text('{"0": {"image": {"file_path": "images1024x1024/00000.png"}}}')
    ffhq = tmp_path / "ffhq"
    (ffhq / "images1024x1024").mkdir(parents=True)
    (ffhq / "images1024x1024" / "00000.jpg").write_bytes(jpeg_bytes((5, 5, 5)))
    (ffhq / "images1024x1024" / "00001.jpg").symlink_to(outside / "x.jpg")
    (ffhq / "ffhq-dataset-v2.json").symlink_to(outside / "meta.json")
    s = scan_ffhq(ffhq, "ffhq")
    assert [r["key"] for r in s.rows] == ["ffhq/00000"]
    assert sorted(p for p, _ in s.ignored) == sorted(
        str(p) for p in (ffhq / "ffhq-dataset-v2.json", ffhq / "images1024x1024" / "00001.jpg"))
    assert all("outside the source root" in why for _, why in s.ignored)
    assert len(scan_ffhq(ffhq, "ffhq", follow_external_symlinks=True).rows) == 2

    celeba = tmp_path / "celeba"
    (celeba / "CelebA-HQ-img").mkdir(parents=True)
    (celeba / "CelebAMask-HQ-mask-anno" / "0").mkdir(parents=True)
    (celeba / "CelebA-HQ-img" / "0.jpg").write_bytes(jpeg_bytes((7, 7, 7)))
    (celeba / "CelebA-HQ-img" / "1.jpg").symlink_to(outside / "x.jpg")
    (celeba / "CelebAMask-HQ-mask-anno" / "0" / "00000_hair.png").symlink_to(outside / "x.jpg")
    s = scan_celebamask(celeba, "celebahq")
    assert [(r["key"], r["gt_masks"]) for r in s.rows] == [("celebahq/0", None)]
    assert sorted(p for p, _ in s.ignored) == sorted(
        str(p) for p in (celeba / "CelebA-HQ-img" / "1.jpg", celeba / "CelebAMask-HQ-mask-anno" / "0" / "00000_hair.png"))


def test_a_named_image_column_must_hold_bytes_and_a_non_bytes_cell_is_a_row_error(tmp_path):
    from pipeline.core.config import ConfigError
    from pipeline.data.sources import read_bytes

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({
        "n": pa.array([10**12], pa.int64()),  # bytes(10**12) would ask for a terabyte
        "s": ["not bytes"],
        "odd": pa.array([{"bytes": 3}], pa.struct([("bytes", pa.int64())])),
    }), path)
    for col, shown in (("n", "int64"), ("s", "string"), ("odd", "struct<bytes: int64>")):
        with pytest.raises(ConfigError, match=rf"sources\[0\] .*image_column '{col}' has type {re.escape(shown)}; "
                                              r"expected binary, large_binary or a struct"):
            ingest(tmp_path / f"out-{col}", [{"path": str(path), "image_column": col}])
    with pytest.raises(ValueError, match="row 0 of column 'n' holds int, not image bytes"):
        read_bytes({"kind": "parquet", "path": str(path), "member": "n:0"})


def test_tar_members_that_are_not_regular_files_are_listed_and_never_followed(tmp_path):
    src = tmp_path / "wds"
    src.mkdir()
    tar_path = src / "shard.tar"
    with tarfile.open(tar_path, "w") as tf:
        d = tarfile.TarInfo("sub")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        add(tf, "sub/a.jpg", jpeg_bytes((9, 9, 9)))
        specials = [("link.jpg", tarfile.SYMTYPE, "/etc/shadow"), ("hard.jpg", tarfile.LNKTYPE, "sub/a.jpg"),
                    ("pipe.jpg", tarfile.FIFOTYPE, ""), ("tty.jpg", tarfile.CHRTYPE, "")]
        for name, kind, link in specials:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            tf.addfile(info)
    (src / "notes.txt").write_text("not a shard")
    out = tmp_path / "out"
    rows = ingest(out, [{"path": str(src), "type": "webdataset"}])
    assert sorted(rows) == ["wds/shard/sub/a"] and rows["wds/shard/sub/a"]["status"] == "ok"
    assert ignored_tsv(out) == {
        f"{tar_path}#link.jpg": "tar member is a symlink (to /etc/shadow), not a regular file; not read",
        f"{tar_path}#hard.jpg": "tar member is a hardlink (to sub/a.jpg), not a regular file; not read",
        f"{tar_path}#pipe.jpg": "tar member is a fifo, not a regular file; not read",
        f"{tar_path}#tty.jpg": "tar member is a device, not a regular file; not read",
        str(src / "notes.txt"): "not a .tar file",
    }


def test_folder_scan_keys_kinds_and_identities_are_those_of_the_helpers(tmp_path):
    """scan_folder works out each file's kind, key and identity in one pass over the walk (its stat, one
    key prefix per folder): they must stay `_classify`'s, `make_key`'s and `_stat_id`'s."""
    from pipeline.data.sources import _classify, _preset, _stat_id, make_key, scan_folder

    names = ["a.jpg", "b.JPEG", "c.d.png", "sp ace.webp", "\u00fc \u540d.bmp", "x.gif", "y.TIFF", "..dots.jpg",
             ".hidden.jpg", "noext", "trailing.", "notes.txt", "L" * 120 + ".jpg", "k.jpg.txt", "_u.Png"]
    for folder in ("", "sub/", "sub/deeper dir/", "dir.with.dots/", "D" * 100 + "/", ".dot/"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for n in names:
            (tmp_path / folder / n).write_bytes(n.encode())
    os.symlink("a.jpg", tmp_path / "link.jpg")
    os.symlink("missing.jpg", tmp_path / "broken.jpg")
    scan = scan_folder(tmp_path, "src")
    rel = {r["path"]: os.path.relpath(r["path"], tmp_path) for r in scan.rows}
    assert len(rel) == len(scan.rows) == 6 * 9 + 2
    for r in scan.rows:
        kind = _classify(rel[r["path"]])
        assert r["key"] == make_key("src", rel[r["path"]]) and kind is not None
        assert r["preset_error"] == _preset(kind, rel[r["path"]])
        assert (r["size"], r["_src"]) == (_stat_id(r["path"])[0], f"{_stat_id(r['path'])[1]}:{r['path']}")
    assert sorted(p for p, why in scan.ignored) == sorted(
        str(p) for p in tmp_path.rglob("*") if p.is_file() and _classify(str(p.relative_to(tmp_path))) is None)
    assert {why for _, why in scan.ignored} == {"not an image file"}


def test_colliding_stems_get_their_extension_and_the_scan_is_arrow_sorted_by_key(tmp_path):
    from pipeline.data.sources import RowBuffer, _dedupe_keys, scan_folder

    root = tmp_path / "photos"
    (root / "z").mkdir(parents=True)
    for name in ["b.jpg", "a.png", "a.jpg", "z/c.jpg", "a.webp", "a_jpg.jpg"]:
        (root / name).write_bytes(b"")
    s = scan_folder(root, "photos")
    assert s.table.column_names == s.table.schema.names and isinstance(s.rows, list)
    keys = s.table["key"].to_pylist()
    assert keys[2:] == ["photos/a_png", "photos/a_webp", "photos/b", "photos/z/c"]
    # a.jpg's photos/a_jpg meets a_jpg.jpg's: both then carry a hash of their path
    assert len(set(keys)) == 6 and all(k.startswith("photos/a_jpg_") and len(k) == 21 for k in keys[:2])
    buf = RowBuffer(chunk=2)  # rows made Arrow every two rows read back whole and in key order
    for r in reversed(s.rows):
        buf.append(r)
    assert _dedupe_keys(buf)["key"].to_pylist() == sorted(s.table["key"].to_pylist())

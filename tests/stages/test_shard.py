"""Shards: every field round-trips, plain loaders read them, verify catches damage, a killed run resumes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image
from rich.console import Console

from pipeline.core.config import ConfigError
from pipeline.core.ledger import Ledger
from pipeline.core.stage import StageContext
from pipeline.data.arrays import read_npz_members
from pipeline.data.labels import class_pixel_counts
from pipeline.data.wds import END_OF_ARCHIVE, decode_key, encode_key, iter_tar, sample_fragment
from pipeline.ops.verify import verify_run
from tests.shard_helpers import (
    FAILED_PARSE,
    NO_CAPTIONS,
    NO_SKETCH,
    RESOLUTION,
    all_samples,
    captions_for,
    copy_run,
    ingest,
    reference_view,
    run,
    stage_settings,
    write_upstream,
)

ROOT = Path(__file__).resolve().parents[2]
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def encoded(demo_data, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shard") / "encoded"
    ingest(demo_data, out)
    write_upstream(out)
    run(out, {"latents": stage_settings(tiny_model)["latents"]})
    return out


@pytest.fixture(scope="module")
def sharded(encoded, tiny_model, tmp_path_factory) -> Path:
    out = copy_run(encoded, tmp_path_factory.mktemp("shard") / "sharded")
    run(out, {"shard": stage_settings(tiny_model)["shard"]})
    return out


def png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.mode == "L"
    return np.asarray(img)


def test_every_field_reads_back_equal(sharded):
    out = sharded
    index_rows = {r["key"]: r for r in StageContext(out).index(["key", "path", "split", "license", "gt_mask"]).to_pylist()}
    samples = all_samples(out)
    assert set(samples) == set(index_rows)
    latents = {(r["key"], r["vae"]): r for r in Ledger(out, "latents").read().to_pylist()}
    for key, (shard, f) in samples.items():
        meta = json.loads(f["json"])
        row = index_rows[key]
        assert shard.startswith(row["split"] + "-") and meta["split"] == row["split"]
        assert (meta["key"], meta["license"], meta["resolution"]) == (key, row["license"] or "", RESOLUTION)
        assert meta["aligned"] == {"photo_key": "", "procedure": "", "crop": ""}  # not a faces run
        photo = reference_view(Path(row["path"]), RESOLUTION, Image.Resampling.LANCZOS).astype(np.float64)
        jpg = np.asarray(Image.open(io.BytesIO(f["jpg"])).convert("RGB")).astype(np.float64)
        assert 10 * np.log10(255**2 / np.mean((jpg - photo) ** 2)) > 30  # JPEG q95 of the same view
        mask_path = row["gt_mask"] or (None if key == FAILED_PARSE else f"masks/{key}.png")
        if mask_path is None:
            assert "mask.png" not in f and "no_mask" in meta["flags"] and meta["class_pixels"] == [0] * 19
            assert meta["mask_source"] == ""
        else:
            want = reference_view(out / mask_path, RESOLUTION, Image.Resampling.NEAREST, "L")
            assert np.array_equal(png(f["mask.png"]), want)
            assert meta["class_pixels"] == class_pixel_counts(want).tolist()
            assert meta["mask_source"] == ("gt" if row["gt_mask"] else "segformer")
        if key == NO_SKETCH:
            assert "sketch.png" not in f and "no_sketch" in meta["flags"]
            assert "flux.sketch_latent.npy" not in f
        else:
            want = reference_view(out / f"sketches/{key}.png", RESOLUTION, Image.Resampling.LANCZOS, "L")
            assert np.array_equal(png(f["sketch.png"]), want)
        if key == NO_CAPTIONS:
            assert "captions.json" not in f and "no_captions" in meta["flags"]
        else:
            assert json.loads(f["captions.json"]) == captions_for(key)
        for vae, channels in (("flux", 16), ("sd", 4)):
            members = read_npz_members(out / latents[(key, vae)]["file"])
            for kind, field in (("image", "latent"), ("mask", "mask_latent"), ("sketch", "sketch_latent")):
                if kind in members:
                    assert f[f"{vae}.{field}.npy"] == members[kind]  # bit-exact: the same .npy bytes
            a = np.load(io.BytesIO(f[f"{vae}.latent.npy"]), allow_pickle=False)
            assert a.dtype == np.float16 and a.shape == (channels, RESOLUTION // 8, RESOLUTION // 8)
            assert meta["vae"][vae]["channels"] == channels
        assert meta["vae"]["flux"]["scaling_factor"] == 0.3611 and meta["vae"]["flux"]["shift_factor"] == 0.1159
        assert meta["vae"]["sd"]["shift_factor"] is None
    flagged = [k for k, (_, f) in samples.items() if "sketch:no_face" in json.loads(f["json"])["flags"]]
    assert flagged  # upstream flags travel, prefixed with their stage

    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["samples"] == len(samples) and index["left_out"] == {}
    import hashlib

    for e in index["shards"]:
        data = (out / "shards" / e["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (e["bytes"], e["sha256"])
        assert 1 <= e["samples"] <= 4
    assert sorted(index["splits"]) == ["test", "train", "val"]
    card = (out / "shards" / "README.md").read_text()
    assert "## How to load" in card and "Public Domain Mark" in card and "flux" in card
    assert verify_run(out, QUIET, "full")[0] == []


def test_plain_webdataset_and_hf_datasets_load_the_shards(sharded, tmp_path):
    import datasets
    import webdataset as wds

    shards = sharded / "shards"
    ours = {k: f for k, (_, f) in all_samples(sharded).items()}
    grey = lambda b: np.asarray(Image.open(io.BytesIO(b)))  # noqa: E731 - the card's recipe
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    seen = 0
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(
            wds.handle_extension("mask.png sketch.png", grey), "rgb8"):
        key = s["json"]["key"]
        assert decode_key(s["__key__"]) == key and s["jpg"].shape == (RESOLUTION, RESOLUTION, 3)
        if "mask.png" in s:
            assert s["mask.png"].shape == (RESOLUTION, RESOLUTION) and s["mask.png"].max() < 19
        z = np.load(io.BytesIO(ours[key]["flux.latent.npy"]), allow_pickle=False)
        assert s["flux.latent.npy"].dtype == np.float16 and np.array_equal(s["flux.latent.npy"].view(np.uint16), z.view(np.uint16))
        seen += 1
    assert seen == len(ours)

    features = datasets.Features.from_dict(json.loads((shards / "features.json").read_text()))
    index = json.loads((shards / "index.json").read_text())
    for split, d in index["splits"].items():
        ds = datasets.load_dataset("webdataset", data_files={split: str(shards / f"{split}-*.tar")}, split=split,
                                   features=features, cache_dir=str(tmp_path / "hf"))
        assert len(ds) == d["samples"]
        for r in ds.with_format("numpy"):
            key = r["json"]["key"]
            z = np.load(io.BytesIO(ours[key]["sd.latent.npy"]), allow_pickle=False)
            assert np.array_equal(r["sd.latent.npy"], z.astype(np.float32))  # float16 widened exactly
            assert (r["sketch.png"] is None) == (key == NO_SKETCH)
    card = datasets.load_dataset(str(shards), split="val", cache_dir=str(tmp_path / "hf2"))  # README's YAML
    assert len(card) == index["splits"]["val"]["samples"] and card[0]["mask.png"].mode == "L"


def test_hf_datasets_types_every_json_key_from_the_samples_alone(sharded, tmp_path):
    """Without `features`, `datasets` types each json key from the first samples and casts the rest to
    that type: a license that is null there and a string later failed the split with "Couldn't cast
    array of type string to null". (Offline: conftest sets HF_HUB_OFFLINE.)"""
    import datasets

    shards = sharded / "shards"
    ours = {k: json.loads(f["json"]) for k, (shard, f) in all_samples(sharded).items()
            if shard.startswith("train-")}
    first = [json.loads(f["json"]) for _, f in iter_tar(shards / "train-000000.tar")]
    assert not any(m["license"] for m in first) and any(m["license"] for m in ours.values())  # the bug's case
    tars = sorted(str(p) for p in shards.glob("train-*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(ours)
    assert {r["json"]["key"]: r["json"] for r in ds} == ours  # every key of every sample, values unchanged

    declared = datasets.Features.from_dict(json.loads((shards / "features.json").read_text()))["json"]
    inferred = ds.features["json"]
    assert set(inferred) == set(declared)
    assert all(inferred[k] == declared[k] for k in declared if k != "vae")  # features.json: what json holds
    null = datasets.Value("null")  # a VAE setting it lacks (sd's shift_factor) is null in every sample
    assert {v: {f: t if t != null else declared["vae"][v][f] for f, t in fs.items()}
            for v, fs in inferred["vae"].items()} == declared["vae"]


def test_the_dataset_cards_code_runs(sharded, tmp_path, monkeypatch):
    import re

    import datasets

    card = (sharded / "shards" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(sharded)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    wds_ns: dict = {}
    exec(blocks[0], wds_ns)  # noqa: S102 - the card's own snippet, on this run's shards
    assert wds_ns["image"].shape == (RESOLUTION, RESOLUTION, 3) and wds_ns["z"].dtype == np.float16
    hf_ns: dict = {}
    exec(blocks[1], hf_ns)  # noqa: S102
    index = json.loads((sharded / "shards" / "index.json").read_text())
    assert len(hf_ns["ds"]) == index["splits"]["train"]["samples"]


def test_require_leaves_samples_out_with_a_reason(encoded, tiny_model, tmp_path):
    out = copy_run(encoded, tmp_path / "run")
    (result,) = run(out, {"shard": stage_settings(tiny_model, require=["sketch", "captions"])["shard"]})
    rows = {r["key"]: r for r in Ledger(out, "shards").read().to_pylist()}
    assert rows[NO_SKETCH]["status"] == "missing_sketch" and "require" in rows[NO_SKETCH]["error"]
    assert rows[NO_CAPTIONS]["status"] == "missing_captions"
    assert result.failed == {"missing_captions": 1, "missing_sketch": 1}
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["left_out"] == {"missing_captions": 1, "missing_sketch": 1}
    assert set(all_samples(out)) == set(rows) - {NO_SKETCH, NO_CAPTIONS}
    assert verify_run(out, QUIET)[0] == []


def _rewrite(path: Path, edit) -> None:
    """Rewrite a shard through `edit(key, fields) -> fields | None` and fix its index entry (so only the
    content checks, not the checksum, can catch what changed)."""
    import hashlib

    samples = [(decode_key(n), f) for n, f in iter_tar(path)]
    kept = [(k, edit(k, dict(f))) for k, f in samples]
    data = b"".join(sample_fragment(k, list(f.items())) for k, f in kept if f is not None) + END_OF_ARCHIVE
    path.write_bytes(data)
    index_path = path.parent / "index.json"
    index = json.loads(index_path.read_text())
    for e in index["shards"]:
        if e["name"] == path.name:
            e.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), samples=sum(f is not None for _, f in kept))
    index["samples"] = sum(e["samples"] for e in index["shards"])
    index_path.write_text(json.dumps(index))


def test_verify_catches_a_flipped_byte_and_every_mismatch(sharded, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = copy_run(sharded, tmp_path / "run")
    first = out / "shards" / "train-000000.tar"
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 1 and "train-000000.tar: sha256 differs" in result.output

    out = copy_run(sharded, tmp_path / "run2")
    (out / "shards" / "train-000099.tar").write_bytes(END_OF_ARCHIVE)
    rgb = io.BytesIO()
    Image.new("RGB", (RESOLUTION, RESOLUTION)).save(rgb, "PNG")
    victim = {}

    def damage(key, f):
        if not victim:
            victim["dropped"] = key
            return None                      # a sample missing from the shards
        if "mask.png" in f and "rgb" not in victim:
            victim["rgb"] = key
            f["mask.png"] = rgb.getvalue()   # a 3-channel mask
        return f

    _rewrite(out / "shards" / "val-000000.tar", damage)
    problems, _ = verify_run(out, QUIET, "full")  # decodes every field
    text = "\n".join(problems)
    assert "train-000099.tar: on disk but not in index.json" in text
    assert f"{victim['rgb']}: ValueError: mask.png is RGB" in text
    assert "in the shard ledger but in no shard" in text and victim["dropped"] in text


def test_rerun_rewrites_nothing_and_replanning_reprepares_nothing(sharded, tiny_model, tmp_path):
    out = copy_run(sharded, tmp_path / "run")
    settings = stage_settings(tiny_model)["shard"]
    shards = out / "shards"
    stamps = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    index = (shards / "index.json").read_text()
    (again,) = run(out, {"shard": settings})
    assert again.pending == 0 and (shards / "index.json").read_text() == index
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")} == stamps  # nothing rewritten
    keys = set(all_samples(out))

    (bigger,) = run(out, {"shard": {**settings, "max_samples": 100, "order": "key"}})  # assembly only
    assert bigger.pending == 0
    assert sorted(p.name for p in shards.glob("*.tar")) == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]
    assert set(all_samples(out)) == keys

    (dropped,) = run(out, {"shard": {**settings, "keep_staged": False}})  # fragments deleted after assembly
    assert dropped.pending == 0 and not list((shards / ".samples").rglob("*.tar"))
    (smaller,) = run(out, {"shard": {**settings, "max_samples": 2}})  # re-plan: lost fragments re-made
    assert smaller.pending == 0 and len(list(shards.glob("train-*.tar"))) == 5
    assert set(all_samples(out)) == keys and verify_run(out, QUIET)[0] == []

    t = Ledger(out, "captions/final").read()  # one key's captions change: only it is prepared again
    changed = t.filter(pc.equal(t["key"], "celebahq/0"))
    changed = changed.set_column(changed.schema.get_field_index("captions"), "captions",
                                 pa.array([["a new caption"]], pa.list_(pa.string())))
    Ledger(out, "captions/final").write(changed.set_column(changed.schema.get_field_index("_fp"), "_fp", pa.array(["new"])))
    (one,) = run(out, {"shard": {**settings, "max_samples": 2}})
    assert one.pending == 1 and json.loads(all_samples(out)["celebahq/0"][1]["captions.json"]) == ["a new caption"]


def test_stale_latents_are_flagged_not_paired(encoded, tiny_model, tmp_path):
    out = copy_run(encoded, tmp_path / "run")
    key = "photos/variants/hopper"  # its mask changes after the latents were made
    img = Image.open(out / "masks" / f"{key}.png")
    Image.fromarray(np.full(img.size[::-1], 13, np.uint8), "L").save(out / "masks" / f"{key}.png")
    run(out, {"shard": stage_settings(tiny_model)["shard"]})
    _, f = all_samples(out)[key]
    meta = json.loads(f["json"])
    assert {"stale_latents:flux", "stale_latents:sd"} <= set(meta["flags"]) and meta["vae"] == {}
    assert "flux.latent.npy" not in f and png(f["mask.png"]).min() == 13
    assert verify_run(out, QUIET)[0] == []


def test_shard_resolution_must_match_the_latents(encoded, tiny_model, tmp_path):
    out = copy_run(encoded, tmp_path / "run")
    with pytest.raises(ConfigError, match="resolution: 128, but the latents were encoded at"):
        run(out, {"shard": {**stage_settings(tiny_model)["shard"], "resolution": 128}})


@pytest.mark.parametrize("phase", ["prepare", "assemble"])
def test_killed_shard_run_resumes_without_duplicates_or_gaps(encoded, tmp_path, phase):
    script, settings = str(ROOT / "tests" / "run_shard_killable.py"), json.dumps({"max_samples": 3})
    ref = copy_run(encoded, tmp_path / "ref")
    subprocess.run([sys.executable, script, str(ref), "none", settings], check=True, timeout=300)
    killed = copy_run(encoded, tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, script, str(killed), phase, settings])
    shards = killed / "shards"

    def progressed() -> bool:
        if phase == "prepare":
            return len(list(shards.glob("part-*.parquet"))) >= 4
        return len([p for p in shards.glob("*.tar")]) >= 2

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not progressed() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert progressed() and not (shards / "index.json").exists(), "the run ended before it could be killed"
    subprocess.run([sys.executable, script, str(killed), "none", settings], check=True, timeout=300)
    assert (shards / "index.json").read_text() == (ref / "shards" / "index.json").read_text()
    for p in (ref / "shards").glob("*.tar"):
        assert (shards / p.name).read_bytes() == p.read_bytes()
    assert set(all_samples(killed)) == set(all_samples(ref))  # all_samples fails on a duplicate key
    assert not [p for p in shards.iterdir() if ".tmp-" in p.name]
    assert verify_run(killed, QUIET)[0] == []


@pytest.mark.parametrize("key", ["photos/astronaut", "celebahq/0", "_x/__y", "a.b/c.d.e", "ffhq/" + "z" * 120,
                                 "sp ace/caf\u00e9\u2615", "%41/%2F", "-/-", ".hidden/..x"])
def test_keys_encode_reversibly_into_safe_member_names(key, tmp_path):
    name = encode_key(key)
    assert decode_key(name) == key
    assert "/" not in name and "." not in name and not name.startswith(("_", "."))  # HF skips __*, .*
    path = tmp_path / "t.tar"
    path.write_bytes(sample_fragment(key, [("jpg", b"x" * 700), ("a.b.npy", b"y")]) + END_OF_ARCHIVE)
    assert [(decode_key(k), sorted(f)) for k, f in iter_tar(path)] == [(key, ["a.b.npy", "jpg"])]


def _outcome(read, path) -> tuple[list, tuple[str, str] | None]:
    """(samples, (exception type, text) or None): everything a reader yields and how it ends."""
    out = []
    try:
        for key, fields in read(path):
            out.append((key, dict(fields)))
    except Exception as e:  # noqa: BLE001 - what each reader raises is part of the comparison
        return out, (type(e).__name__, str(e))
    return out, None


def _tarfile_reader(path):
    """iter_tar on tarfile's stream reader (as it used to be): the reference for the fast reader."""
    from pipeline.data.wds import _tarfile_members, group_samples

    with open(path, "rb") as fh:
        yield from group_samples(path, _tarfile_members(fh))


def _with_checksum(header: bytes) -> bytes:
    blank = header[:148] + b" " * 8 + header[156:]
    return blank[:148] + b"%06o\0 " % sum(blank) + blank[156:]


def _reader_test_tars() -> dict[str, bytes]:
    files = [("a.jpg", b"x" * 700), ("a.json", b"{}"), ("d/b.jpg", b"y" * 512), ("d/b.c.npy", b""),
             ("L" * 120 + ".jpg", b"z" * 30), ("\u00fc/\u00f1.jpg", b"w" * 10), ("p/" * 60 + "c.jpg", b"v" * 5),
             ("twice.jpg", b"1"), ("twice.jpg", b"2")]
    tars = {}
    for name, fmt, pax in (("ustar", tarfile.USTAR_FORMAT, None), ("gnu", tarfile.GNU_FORMAT, None),
                           ("pax", tarfile.PAX_FORMAT, None), ("pax-global", tarfile.PAX_FORMAT, {"comment": "g"})):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax) as tf:
            for i, (member, data) in enumerate(files):
                if fmt == tarfile.USTAR_FORMAT and (not member.isascii() or len(member.rpartition("/")[2]) > 100):
                    continue
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                if i == 2:  # members to skip, never follow: links, a device, a fifo, a folder, an unknown type
                    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE):
                        other = tarfile.TarInfo(f"special-{kind.decode()}.jpg")
                        other.type, other.linkname = kind, "../../etc/passwd"
                        tf.addfile(other)
                    other = tarfile.TarInfo("unknown.jpg")
                    other.type, other.size = b"Z", 600
                    tf.addfile(other, io.BytesIO(b"u" * 600))
                    other = tarfile.TarInfo("v7-folder/")  # a regular-file type, but a folder by its name
                    other.type = tarfile.AREGTYPE
                    tf.addfile(other)
        tars[name] = buf.getvalue()
    ours = b"".join(sample_fragment(k, [("jpg", b"j" * (300 * n)), ("mask.png", b"m" * 3)])
                    for n, k in enumerate(["photos/a", "ffhq/" + "z" * 120, "x.y/z", "celebahq/0"]))
    tars["ours"] = ours + END_OF_ARCHIVE
    return tars


def test_iter_tar_reads_what_tarfiles_stream_reader_reads_from_any_tar(tmp_path):
    """iter_tar parses plain headers itself: samples, and the error a damaged tar raises (and where), must
    be tarfile's, for every tar flavour, every cut and every header damage here."""
    path = tmp_path / "t.tar"
    cases = 0
    for name, data in _reader_test_tars().items():
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            headers = sorted({h for m in tf.getmembers() for h in (m.offset, m.offset_data - 512)})
        variants = [data, b"", data[:100], data[:-1024]] + [data[:c] for c in range(0, len(data), 331)]
        variants += [data[:h + d] for h in headers for d in (1, 511, 512, 513, 700)]
        for h in headers:
            header = data[h:h + 512]
            for edit in (header[:124] + b"00007777777\0" + header[136:],     # past the end
                         header[:124] + b"\x80" + (5).to_bytes(11, "big") + header[136:],   # base-256
                         header[:124] + b"\xff" + (256**11 - 1000).to_bytes(11, "big") + header[136:],  # negative
                         header[:124] + b" 12 \0".ljust(12, b"\0") + header[136:],   # spaces
                         header[:100] + b"0000x44\0" + header[108:],      # a bad mode field
                         header[:156] + b"5" + header[157:], header[:156] + b"x" + header[157:],  # type
                         header[:345] + b"pre" + header[348:]):          # a ustar prefix
                variants.append(data[:h] + _with_checksum(edit) + data[h + 512:])
            variants.append(data[:h] + header[:150] + b"9" + header[151:] + data[h + 512:])  # bad checksum
        for variant in variants:
            path.write_bytes(variant)
            assert _outcome(iter_tar, path) == _outcome(_tarfile_reader, path), (name, len(variant))
            cases += 1
    assert cases > 500


@pytest.mark.timeout(60)
def test_iter_tar_is_not_fooled_into_huge_reads_or_endless_seeks(tmp_path):
    """A header may claim any size: iter_tar allocates nothing for it and fails fast (tarfile's stream
    reader reads its way through an unknown member's claimed 2**62 bytes block by block, forever)."""
    path = tmp_path / "t.tar"
    member = sample_fragment("a", [("jpg", b"j" * 100)])
    for kind, size in ((b"0", b"77777777777\0"), (b"Z", b"\x80" + (2**62).to_bytes(11, "big"))):
        header = _with_checksum(member[:124] + size + member[136:156] + kind + member[157:512])
        path.write_bytes(sample_fragment("first", [("jpg", b"f")]) + header + member[512:] + END_OF_ARCHIVE)
        with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
            list(iter_tar(path))


def test_iter_tar_reads_a_pipe_through_tarfile(tmp_path):
    data = b"".join(sample_fragment(k, [("jpg", b"j" * 700), ("json", b"{}")]) for k in ("a", "b")) + END_OF_ARCHIVE
    (tmp_path / "t.tar").write_bytes(data)
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        assert list(iter_tar(fifo)) == list(iter_tar(tmp_path / "t.tar")) == [
            ("a", {"jpg": b"j" * 700, "json": b"{}"}), ("b", {"jpg": b"j" * 700, "json": b"{}"})]
    finally:
        writer.join()


@pytest.mark.ray
def test_ray_runner_writes_the_same_shards(sharded, encoded, tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    out = copy_run(encoded, tmp_path / "ray")
    from pipeline.core.run import run_stage_command

    try:
        run_stage_command(out, "shard", stage_settings(tiny_model)["shard"], runner="ray", console=QUIET)
    finally:
        ray.shutdown()
    assert (out / "shards" / "index.json").read_text() == (sharded / "shards" / "index.json").read_text()


def _reference_plans(rows, cfg):
    """The planning rule written plainly: split order, then seeded hash (or key) order, a new shard when
    the split changes or the next sample passes max_samples or max_bytes."""
    from pipeline.data.shard_assembly import SPLIT_ORDER
    from pipeline.data.wds import END_OF_ARCHIVE

    def order(r):
        k = r["key"] if cfg.order == "key" else hashlib.sha1(f"{cfg.order_seed}:{r['key']}".encode()).hexdigest()
        return SPLIT_ORDER.get(r["split"], 9), r["split"], k, r["key"]

    plans, size = [], 0
    for r in sorted(rows, key=order):
        if (not plans or plans[-1][1] != r["split"] or len(plans[-1][2]) >= cfg.max_samples
                or size + r["bytes"] + len(END_OF_ARCHIVE) > cfg.max_bytes):
            plans.append((f"{r['split']}-{sum(p[1] == r['split'] for p in plans):06d}.tar", r["split"], []))
            size = 0
        plans[-1][2].append(r["key"])
        size += r["bytes"]
    return plans


@pytest.mark.parametrize("order", ["hash", "key"])
def test_arrow_shard_plans_follow_the_planning_rule(order):
    import random
    from types import SimpleNamespace

    from pipeline.data.shard_assembly import plan_shards

    rng = random.Random(7)
    for trial in range(12):
        rows = [{"key": f"k{rng.randrange(10 ** 6)}/{i}", "split": rng.choice(["train", "val", "test", "extra", "train"]),
                 "staged": f"s{i}", "bytes": rng.randrange(1, 5000), "sha256": f"{i:064d}"}
                for i in range(rng.randrange(0, 1500))]
        cfg = SimpleNamespace(order=order, order_seed=rng.randrange(100), max_samples=rng.randrange(1, 200),
                              max_bytes=rng.randrange(5000, 100_000))
        got = [(p.name, p.split, p.table["key"].to_pylist()) for p in plan_shards(rows, cfg)]
        assert got == _reference_plans(rows, cfg), trial

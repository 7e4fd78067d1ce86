"""`facecurate publish`: a folder the Hub takes as it is, loadable, with complete card metadata, no path of
this machine in any file, idempotent, and never written over a folder it did not write."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import ConfigError
from pipeline.data.wds import iter_tar
from pipeline.ops import publish as publish_op
from pipeline.ops.publish import publish
from tests.shard_helpers import copy_run, ingest, run, stage_settings, write_upstream

ROOT = Path(__file__).resolve().parents[2]
HUB_FILES = {"README.md", "features.json", "index.json"}


@pytest.fixture(scope="module")
def sharded(demo_data, tiny_model, tmp_path_factory) -> Path:
    """A run with photos, CelebAMask-HQ and FFHQ sources, local tiny VAEs and shards (as test_shard's)."""
    out = tmp_path_factory.mktemp("publish") / "run"
    ingest(demo_data, out)
    write_upstream(out)
    settings = stage_settings(tiny_model)
    run(out, {"latents": settings["latents"], "shard": settings["shard"]})
    return out


@pytest.fixture(scope="module")
def published(sharded, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("publish") / "hub"
    result = CliRunner().invoke(app, ["publish", str(sharded), str(dest)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "hf upload <user>/shardtest " in result.output and "--repo-type dataset" in result.output
    return dest


def _index(dest: Path) -> dict:
    return json.loads((dest / "index.json").read_text())


def _state(dest: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in dest.iterdir()}


def test_the_folder_holds_only_the_shards_card_features_and_index(published, sharded):
    index = _index(published)
    names = {e["name"] for e in index["shards"]}
    assert {p.name for p in published.iterdir()} == HUB_FILES | names
    assert all(p.is_file() for p in published.iterdir())
    for e in index["shards"]:
        data = (published / e["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (e["bytes"], e["sha256"])
        assert os.path.samefile(published / e["name"], sharded / "shards" / e["name"])  # same disk: a hard link
    for n in ("README.md", "features.json"):
        assert hashlib.sha256((published / n).read_bytes()).hexdigest() == index["files"][n]
    assert (published / "index.json").read_bytes() == (sharded / "shards" / "index.json").read_bytes()


def test_datasets_loads_the_folder_and_its_tars(published, tmp_path):
    import datasets

    index = _index(published)
    ds = datasets.load_dataset(str(published), cache_dir=str(tmp_path / "hf"))  # the card's YAML: splits, features
    assert {s: len(d) for s, d in ds.items()} == {s: d["samples"] for s, d in index["splits"].items()}
    assert ds["train"][0]["mask.png"] is None or ds["train"][0]["mask.png"].mode == "L"
    features = datasets.Features.from_dict(json.loads((published / "features.json").read_text()))
    for split, d in index["splits"].items():
        tars = sorted(str(published / e["name"]) for e in index["shards"] if e["split"] == split)
        part = datasets.load_dataset("webdataset", data_files={split: tars}, split=split, features=features,
                                     cache_dir=str(tmp_path / "wds"))
        assert len(part) == d["samples"] and part.features == features


def test_the_card_has_every_hub_metadata_key(published):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(published / "README.md")
    head = card.data.to_dict()
    index = _index(published)
    assert head["pretty_name"] == "Shardtest"  # the manifest's name, not the stage's
    assert head["license"] == "other"  # the demo's FFHQ images are Public Domain Mark, the rest unrecorded
    assert (head["license_name"], head["license_link"]) == ("per-sample", "README.md#licenses")
    assert head["size_categories"] == ["n<1K"] and head["language"] == ["en"]
    assert head["annotations_creators"] == ["machine-generated"]
    assert head["source_datasets"] == ["CelebAMask-HQ", "FFHQ", "original"]
    assert head["task_categories"] == ["text-to-image"]
    assert {"faces", "webdataset", "face-parsing", "sketch", "vae-latents"} <= set(head["tags"])
    info = head["dataset_info"]
    assert {f["name"] for f in info["features"]} >= {"jpg", "mask.png", "json", "flux.latent.npy"}
    assert info["splits"] == [{"name": s, "num_examples": d["samples"]} for s, d in index["splits"].items()]
    assert head["configs"] == [{"config_name": "default", "data_files": [
        {"split": s, "path": f"{s}-*.tar"} for s in index["splits"]]}]
    body = card.text
    section = body[body.index("## Personal and biometric data"):body.index("## Statistics")]
    for needle in ("biometric", "consent", "no_cv", "researchinquiries@nvidia.com", "non-commercial research",
                   "**Removal.**", "machine-generated", "biases"):
        assert needle in section, needle
    assert "vae-flux (local)" in body and "## Licenses" in body


def test_no_path_of_this_machine_in_any_published_file(published, sharded):
    forbidden = {str(sharded), str(sharded.resolve()), str(ROOT)}
    home = os.path.expanduser("~")
    if len(home) > 1:
        forbidden.add(home)
    for p in published.iterdir():
        data = p.read_bytes()  # tars too: every sample's json and captions are in them as plain bytes
        for f in forbidden:
            assert f.encode() not in data, f"{f} in {p.name}"
    index = _index(published)
    assert {v: (m["id"], m["local"]) for v, m in index["vaes"].items()} == {"flux": ("vae-flux", True),
                                                                            "sd": ("vae-sd", True)}
    _, fields = next(iter_tar(published / index["shards"][0]["name"]))
    meta = json.loads(fields["json"])
    assert {v: m["id"] for v, m in meta["vae"].items()} == {"flux": "vae-flux", "sd": "vae-sd"}


def test_publishing_again_changes_nothing_and_drops_what_the_index_no_longer_names(published, sharded):
    before = _state(published)
    result = publish(sharded, published)
    assert _state(published) == before
    assert (result.linked, result.copied, result.rewritten) == (0, 0, [])
    assert result.unchanged == len(result.index["shards"])

    stale = published / "train-000099.tar"  # a shard an earlier, larger plan had
    stale.write_bytes(b"x")
    assert publish(sharded, published).removed == ["train-000099.tar"] and not stale.exists()
    assert _state(published) == before


def test_a_foreign_folder_is_refused_with_one_line_and_exit_2(sharded, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "publish", str(sharded), str(foreign)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "not empty and not a publish of this run" in proc.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    other = tmp_path / "other"  # another dataset's Hub folder: the same kinds of files, another card
    other.mkdir()
    (other / "README.md").write_text('---\npretty_name: "Someone Else"\n---\n# x\n')
    (other / "train-000000.tar").write_bytes(b"theirs")
    with pytest.raises(ConfigError, match="holds the dataset 'Someone Else'"):
        publish(sharded, other)
    assert (other / "train-000000.tar").read_bytes() == b"theirs"
    with pytest.raises(ConfigError, match="a folder of its own"):
        publish(sharded, sharded / "shards")


def test_copies_across_disks_are_checked_against_the_index(sharded, tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(publish_op.os, "link", no_link)
    dest = tmp_path / "hub"
    result = publish(sharded, dest)
    assert result.copied == len(result.index["shards"]) and result.linked == 0
    assert not any(os.path.samefile(p, sharded / "shards" / p.name) for p in dest.glob("*.tar"))

    damaged = copy_run(sharded, tmp_path / "damaged")
    name = result.index["shards"][-1]["name"]
    data = bytearray((damaged / "shards" / name).read_bytes())
    data[700] ^= 1  # a flipped bit inside the first member, size unchanged
    (damaged / "shards" / name).write_bytes(bytes(data))
    dest2 = tmp_path / "hub2"
    with pytest.raises(ConfigError, match="does not match index.json"):
        publish(damaged, dest2)
    assert not (dest2 / name).exists() and not (dest2 / "index.json").exists()  # nothing half-published
    assert not [p for p in dest2.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_help_teaches_with_examples():
    result = CliRunner().invoke(app, ["publish", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "hf upload" in result.output

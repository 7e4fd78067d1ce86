"""Export to MMFace-DiT's layout, and the commands a user runs: latents, shard, export, inspect --sheet."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from tests.shard_helpers import (
    FAILED_PARSE,
    NO_CAPTIONS,
    NO_SKETCH,
    RESOLUTION,
    all_samples,
    captions_for,
    ingest,
    write_upstream,
)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def sharded(demo_data, tiny_model, tmp_path_factory) -> Path:
    """Made through the CLI, as a user would (after upstream stages we fake per their contracts)."""
    out = tmp_path_factory.mktemp("export") / "run"
    ingest(demo_data, out)
    write_upstream(out)
    r = invoke("latents", str(out), "--vae", f"flux={tiny_model('vae-flux')}", "--vae", f"sd={tiny_model('vae-sd')}",
               "--resolution", str(RESOLUTION))
    assert r.exit_code == 0, r.output
    assert "latents by VAE" in r.output and "image 18" in r.output
    r = invoke("shard", str(out), "--max-samples", "5", "--max-size", "200KB")
    assert r.exit_code == 0, r.output
    assert "shards in" in r.output
    return out


class MMFaceLoader:
    """The public MMFace-DiT loader's file logic (its utils/utils_final.py): a sample counts when all four files exist;
    each .pt is torch.load-ed, squeezed, cast to float32; one caption line is picked at random."""

    def __init__(self, root: Path, dataset: str):
        base = root / dataset
        ids = [p.stem for p in (base / "image_latents").glob("*.pt")]
        self.base = base
        self.ids = sorted(i for i in ids if all((base / f"{k}_latents" / f"{i}.pt").exists() for k in ("mask", "sketch"))
                          and (base / "text" / f"{i}.txt").exists())

    def __getitem__(self, i: int) -> dict:
        sid = self.ids[i]
        load = lambda k: torch.load(self.base / f"{k}_latents" / f"{sid}.pt", weights_only=True).squeeze().float()  # noqa: E731
        lines = [x for x in (self.base / "text" / f"{sid}.txt").read_text().splitlines() if x.strip()]
        return {"image": load("image"), "mask": load("mask"), "sketch": load("sketch"), "text": random.choice(lines)}


def test_export_writes_what_the_mmface_dit_loader_reads(sharded, tmp_path):
    r = invoke("export", str(sharded), "--format", "mmface-dit", "--to", str(tmp_path / "root"), "--split", "train",
               "--split", "val", "--split", "test")
    assert r.exit_code == 0, r.output
    samples = {k: f for k, (_, f) in all_samples(sharded).items()}
    complete = {k for k, f in samples.items() if "captions.json" in f and "sketch.png" in f and "mask.png" in f}
    loader = MMFaceLoader(tmp_path / "root", "shardtest")
    assert len(loader.ids) == len(complete) == 15 and not {NO_SKETCH, NO_CAPTIONS, FAILED_PARSE} & complete
    for i, sid in enumerate(loader.ids):
        key = next(k for k in complete if sid == k.replace("/", "%2F").replace(".", "%2E"))
        item = loader[i]
        f = samples[key]
        for kind, field in (("image", "latent"), ("mask", "mask_latent"), ("sketch", "sketch_latent")):
            z = np.load(io.BytesIO(f[f"flux.{field}.npy"]), allow_pickle=False)
            want = torch.from_numpy(z.astype(np.float32) * np.float32(0.3611))  # scaled, never shifted
            assert item[kind].shape == (16, RESOLUTION // 8, RESOLUTION // 8) and torch.equal(item[kind], want)
        assert item["text"] in captions_for(key)
        lines = (tmp_path / "root" / "shardtest" / "text" / f"{sid}.txt").read_text().splitlines()
        assert lines == captions_for(key)
    summary = json.loads((tmp_path / "root" / "shardtest" / "export.json").read_text())
    assert summary["skipped"] == {"no_captions": 1, "no_mask": 1, "no_sketch": 1} and summary["vae"] == "flux"
    assert (tmp_path / "root" / "shardtest" / summary["source"]).resolve() == sharded.resolve()  # relative
    assert str(tmp_path) not in json.dumps(summary)  # no absolute local path


def test_export_zero_fills_a_missing_condition_when_asked(sharded, tmp_path):
    r = invoke("export", str(sharded), "--to", str(tmp_path), "--vae", "sd", "--missing", "zeros", "--dtype",
               "float16", "--dataset", "faces", "--split", "train", "--split", "val")
    assert r.exit_code == 0, r.output
    sid = "photos%2Fgrace_hopper"
    z = torch.load(tmp_path / "faces" / "sketch_latents" / f"{sid}.pt", weights_only=True)
    assert z.dtype == torch.float16 and z.shape == (4, RESOLUTION // 8, RESOLUTION // 8) and not z.any()
    assert (tmp_path / "faces" / "image_latents" / f"{sid}.pt").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--vae", "nope"], "--vae nope: the shards have flux, sd"),
    (["--split", "holdout"], "--split holdout"),
    (["--format", "parquet"], "the only format is mmface-dit"),
])
def test_export_errors_are_one_line(sharded, tmp_path, args, message):
    from pipeline.core.config import ConfigError

    r = invoke("export", str(sharded), "--to", str(tmp_path), *args)
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError) and message in str(r.exception)


def test_contact_sheet_and_help(sharded, tmp_path):
    sheet = tmp_path / "sheet.png"
    r = invoke("inspect", str(sharded), "--sheet", str(sheet), "--n", "3")
    assert r.exit_code == 0, r.output
    img = Image.open(sheet)
    assert img.size == (4 * 192 + 460, 22 + 3 * 200)
    pixels = np.asarray(img)
    first_photo = pixels[22:22 + 192, :192]
    assert first_photo.std() > 10  # the photo is drawn, not a blank tile
    r = invoke("inspect", str(sharded), NO_SKETCH, "--sheet", str(tmp_path / "one.png"))
    assert r.exit_code == 0 and Image.open(tmp_path / "one.png").size[1] == 22 + 200
    for command in ("latents", "shard", "export"):
        r = invoke(command, "--help")
        assert r.exit_code == 0 and "Examples" in r.output and f"facecurate {command}" in r.output


def test_shard_command_keeps_recorded_settings_and_parses_sizes(sharded):
    from pipeline.commands.shard import parse_size, parse_vae
    from pipeline.core.run import load_resolved

    m = load_resolved(sharded)
    assert m.stages["shard"].max_samples == 5 and m.stages["shard"].max_bytes == 200_000
    assert m.stages["latents"].resolution == RESOLUTION  # recorded by the latents command, kept by shard
    assert (parse_size("1GB"), parse_size("2GiB"), parse_size("500mb")) == (10**9, 2 * 2**30, 5 * 10**8)
    assert parse_vae("flux=black-forest-labs/FLUX.1-schnell:vae@main") == (
        "flux", {"model": "black-forest-labs/FLUX.1-schnell", "subfolder": "vae", "revision": "main"})

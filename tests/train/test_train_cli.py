"""`facecurate train` and `facecurate sample` as a user meets them: help, one-line errors, a run, a grid."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from train.cli import register

app = typer.Typer(rich_markup_mode="markdown", add_completion=False)
register(app)
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", ["train", "sample"])
def test_help_teaches_with_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Examples" in result.output and f"facecurate {command} " in result.output


def write_config(path, shards, clip, out, **train):
    path.write_text(yaml.safe_dump({
        "model": {"size": "tiny"},
        "data": {"shards": str(shards), "text_encoder": str(clip), "batch_size": 4, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 5, "eight_bit": False},
        "train": {"out_dir": str(out), "max_steps": 12, "log_every": 6, "ckpt_every": 6, "device": "cpu", **train},
    }))
    return path


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.betas=1"], "unknown key 'optim.betas'; valid keys in optim: lr, min_lr"),
    (["--set", "objective.kind=gan"], "'gan' is not valid; choose one of rf, ddpm"),
    (["--set", "data.shards=/nowhere"], "no 'train' shards with samples found at /nowhere"),
    (["--set", "data.text_encoder=/no/clip"], "data.text_encoder: cannot load '/no/clip'"),
])
def test_config_errors_are_one_line_not_a_traceback(tmp_path, shards, tiny_train_models, args, message):
    cfg = write_config(tmp_path / "c.yaml", shards, tiny_train_models["clip-text"], tmp_path / "run")
    result = runner.invoke(app, ["train", str(cfg), *args])
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and message in flat and "Traceback" not in result.output


def test_train_then_sample_a_grid(tmp_path, shards, tiny_train_models):
    from train.sample import grid_tiles

    cfg = write_config(tmp_path / "c.yaml", shards, tiny_train_models["clip-text"], tmp_path / "run")
    result = invoke("train", str(cfg))
    assert result.exit_code == 0, result.output
    assert "step     12/12 | loss" in result.output and "samples/s | MFU" in result.output and "done: 12 steps" in result.output
    again = invoke("train", str(cfg), "--set", "train.max_steps=14")  # resumes: only two more steps
    assert "resuming from step_000012" in again.output and "done: 2 steps" in again.output

    label = np.zeros((64, 64), np.uint8)
    label[16:48, 16:48] = 1  # a square face of skin
    label[24:28, 22:30] = 4
    Image.fromarray(label).save(tmp_path / "mask.png")
    Image.fromarray(np.where(label > 0, 0, 255).astype(np.uint8)).save(tmp_path / "sketch.png")
    common = ["--caption", "a smiling woman", "--vae", str(tiny_train_models["vae-flux"]), "--steps", "4", "--n", "3"]
    grids = {}
    for name, cond in [("a", ["--mask", "mask.png"]), ("b", ["--mask", "mask.png"]), ("c", ["--sketch", "sketch.png"]),
                       ("d", ["--mask", "mask.png", "--seed", "1"])]:
        cond[1] = str(tmp_path / cond[1])
        out = tmp_path / f"{name}.png"
        result = invoke("sample", str(tmp_path / "run"), *common, *cond, "--out", str(out))
        assert result.exit_code == 0, result.output
        grids[name] = np.stack(grid_tiles(np.asarray(Image.open(out).convert("RGB")), 4, 64))
    assert grids["a"].shape == (4, 64, 64, 3)  # the condition, then three samples
    assert np.array_equal(grids["a"], grids["b"])  # same seed, same images
    assert not np.array_equal(grids["a"][1:], grids["d"][1:])  # another seed
    assert not np.array_equal(grids["a"][0], grids["c"][0])  # the sketch preview differs
    assert tuple(grids["a"][0][20, 20]) == (204, 0, 0)  # the label map was colour-coded (skin) for the VAE
    page = np.asarray(Image.open(tmp_path / "a.png").convert("L"))
    assert page.shape[1] == 4 * 192 and page.shape[0] > 22 + 192  # tiles enlarged x3, labels above, prompt below
    assert (page[:22] < 128).any() and (page[22 + 192:] < 128).any()  # text drawn in the label row and footer

    bad = runner.invoke(app, ["sample", str(tmp_path / "run"), "--caption", "x"])
    assert bad.exit_code == 2 and "exactly one of --mask or --sketch" in bad.output
    bad = runner.invoke(app, ["sample", str(tmp_path / "run"), "-c", "x", "--mask", str(tmp_path / "mask.png")])
    assert bad.exit_code == 2 and "cannot load the text encoder or VAE" in bad.output  # the shards' VAE id is fake


def test_sample_from_a_ddpm_checkpoint(tmp_path, shards, tiny_train_models):
    cfg = write_config(tmp_path / "c.yaml", shards, tiny_train_models["clip-text"], tmp_path / "run", max_steps=2)
    data = yaml.safe_load(cfg.read_text())
    data["objective"] = {"kind": "ddpm"}
    data["data"]["vae"] = "sd"
    cfg.write_text(yaml.safe_dump(data))
    assert invoke("train", str(cfg)).exit_code == 0
    state = json.loads((tmp_path / "run" / "ckpt" / "step_000002" / "state.json").read_text())
    assert state["config"]["objective"]["kind"] == "ddpm"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "s.png")
    result = invoke("sample", str(tmp_path / "run" / "ckpt" / "step_000002"), "-c", "a face", "--sketch",
                    str(tmp_path / "s.png"), "--vae", str(tiny_train_models["vae-sd"]), "--steps", "3", "--n", "2",
                    "--weights", "model", "--out", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output
    from train.sample import grid_tiles

    grid = np.asarray(Image.open(io.BytesIO((tmp_path / "g.png").read_bytes())).convert("RGB"))
    assert [t.shape for t in grid_tiles(grid, 3, 64)] == [(64, 64, 3)] * 3

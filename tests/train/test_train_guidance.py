"""`facecurate train` pointed where a new user points it: a run folder is read as its shards (said in the
log), a folder without shards and shards without the VAE's latents are one line that says what to run."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.cli import run_cli
from tests.train.conftest import write_shards


def config(path: Path, shards: Path, clip: Path, out: Path, **data) -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"size": "tiny"},
        "data": {"shards": str(shards), "text_encoder": str(clip), "batch_size": 4, "num_workers": 0, **data},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "eight_bit": False},
        "train": {"out_dir": str(out), "max_steps": 2, "log_every": 1, "ckpt_every": 2, "device": "cpu"},
    }))
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    code = run_cli([str(a) for a in args])
    got = capsys.readouterr()
    return code, got.out, got.err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_a_run_folder_trains_on_its_shards_and_says_so(tmp_path, tiny_train_models, capsys):
    run = tmp_path / "run"
    write_shards(run / "shards", n_shards=1, per_shard=4)
    cfg = config(tmp_path / "c.yaml", run, tiny_train_models["clip-text"], tmp_path / "ckpts")
    code, shown, err = cli(capsys, "train", cfg)
    assert code == 0, err
    assert f"{run} is a run folder: reading its shards, {run / 'shards'}" in shown.splitlines()
    assert "done: 2 steps" in shown


def test_a_folder_without_shards_says_what_a_shard_folder_is(tmp_path, tiny_train_models, capsys):
    (tmp_path / "empty").mkdir()
    cfg = config(tmp_path / "c.yaml", tmp_path / "empty", tiny_train_models["clip-text"], tmp_path / "ckpts")
    code, _, err = cli(capsys, "train", cfg)
    line = error_line(err)
    assert code == 2 and line.startswith(f"error: {tmp_path / 'empty'} holds no shards: a shard folder has "
                                         "index.json and <split>-NNNNNN.tar files")
    assert "`facecurate shard OUT`" in line


def test_shards_without_the_vae_say_how_to_make_it_or_which_to_use(tmp_path, tiny_train_models, capsys):
    run = tmp_path / "run"
    write_shards(run / "shards", n_shards=1, per_shard=4)
    (run / "index.parquet").touch()  # a pipeline run folder: the commands name it
    cfg = config(tmp_path / "c.yaml", run / "shards", tiny_train_models["clip-text"], tmp_path / "ckpts", vae="sdxl")
    code, _, err = cli(capsys, "train", cfg)
    assert code == 2 and error_line(err) == (
        "error: data.vae: the shards have no 'sdxl' latents; they have: flux, sd (set data.vae to one of them), or "
        f"run `facecurate latents {run}` (stages.latents.models must include sdxl), then `facecurate shard {run}`")

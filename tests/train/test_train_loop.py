"""The training loop on real shards and real (tiny) models: learning, exact resume, config errors, options."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from train.config import ConfigError, build_config, load_config
from train.model import MMFaceDiT, MMFaceDiTConfig, count_params
from train.train import latest_checkpoint, lr_at, train

QUIET = {"log": lambda *a: None}


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("kind", ["rf", "ddpm"])
def test_a_tiny_model_learns(tiny_cfg, tmp_path, kind):
    cfg = tiny_cfg(tmp_path / kind, objective={"kind": kind}, optim={"lr": 3e-3},
                   train={"max_steps": 300, "log_every": 100})
    summary = train(cfg, **QUIET)
    curve = np.array(list(losses(tmp_path / kind).values()))
    first, last = curve[:20].mean(), curve[-50:].mean()
    print(f"{kind}: smoothed loss {first:.3f} -> {last:.3f} (ratio {last / first:.2f}) in {summary['seconds']} s")
    assert len(curve) == 300 and np.isfinite(curve).all()
    assert last / first < 0.5, f"{kind}: smoothed loss {first:.3f} -> {last:.3f}"


def test_resume_reproduces_the_uninterrupted_run(tiny_cfg, tmp_path):
    # 2 workers, 2 micro-batches a step (positions count batches, not steps), 6 batches an epoch: the
    # checkpoint at step 3 sits mid-epoch and the run crosses epochs
    settings = dict(data={"batch_size": 2, "num_workers": 2, "shuffle_buffer": 4},
                    train={"max_steps": 9, "ckpt_every": 3, "log_every": 2, "grad_accum": 2})
    whole = tiny_cfg(tmp_path / "whole", **settings)
    train(whole, **QUIET)
    broken = tiny_cfg(tmp_path / "broken", **settings)
    train(broken, stop_after=5, **QUIET)  # "crashes" after step 5; the last checkpoint is step 3
    assert latest_checkpoint(tmp_path / "broken").name == "step_000003"
    train(broken, **QUIET)  # resumes from step 3
    a, b = losses(tmp_path / "whole"), losses(tmp_path / "broken")
    assert sorted(b) == list(range(1, 10))  # the crashed run's steps 4-5 were replaced, not doubled
    assert [b[s] for s in range(4, 10)] == [a[s] for s in range(4, 10)]  # exactly, not approximately
    for name in ("model", "ema"):
        wa = load_file(tmp_path / "whole" / "ckpt" / "step_000009" / f"{name}.safetensors")
        wb = load_file(tmp_path / "broken" / "ckpt" / "step_000009" / f"{name}.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_layout_and_resume_policy(tiny_cfg, tmp_path):
    cfg = tiny_cfg(tmp_path / "run", train={"max_steps": 4, "ckpt_every": 2, "keep_last": 1})
    train(cfg, **QUIET)
    ckpt = tmp_path / "run" / "ckpt"
    assert (ckpt / "latest").read_text() == "step_000004"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_000004"]  # keep_last 1
    files = sorted(p.name for p in (ckpt / "step_000004").iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "optim.safetensors", "state.json"]
    state = json.loads((ckpt / "step_000004" / "state.json").read_text())
    assert state["step"] == 4 and state["model_args"]["depth"] == 2 and state["model_args"]["latent_channels"] == 16
    assert state["data"]["vae"]["scaling_factor"] == 0.3611 and state["optimizer"]["param_groups"]
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(cfg, resume=False, **QUIET)
    # the architecture comes from the checkpoint, whatever the config says now (nanoGPT)
    bigger = tiny_cfg(tmp_path / "run", model={"depth": 3}, train={"max_steps": 5})
    assert train(bigger, **QUIET)["params"] == count_params(MMFaceDiT(MMFaceDiTConfig(**state["model_args"])))


def test_longtail_text_cache_and_epochs(tiny_cfg, tmp_path):
    cfg = tiny_cfg(tmp_path / "run", objective={"kind": "ddpm", "longtail": True},
                   data={"text_cache": str(tmp_path / "text"), "vae": "sd"}, train={"max_steps": None, "epochs": 2})
    summary = train(cfg, **QUIET)
    assert summary["steps"] == 6  # 12 samples / batch 4 = 3 batches an epoch
    assert (tmp_path / "text" / "train-000000.safetensors").is_file()
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["model_args"]["latent_channels"] == 4 and np.isfinite(summary["last_loss"])


def test_warmup_then_cosine(tiny_cfg):
    cfg = tiny_cfg(optim={"lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 10})
    lrs = [lr_at(s, cfg, 110) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx((1e-3 + 1e-5) / 2) and lrs[110] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key 'optim.lrr'; valid keys in optim: lr, min_lr, warmup_steps"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("objective.kind=gan", "objective.kind: 'gan' is not valid; choose one of rf, ddpm"),
    ("model.size=XXL", "model.size: 'XXL' is not valid; choose one of XL, L, B, S, tiny"),
    ("train.grad_ckpt=maybe", "train.grad_ckpt: expected true or false, got 'maybe'"),
    ("data.text_dropout=1.5", "data.text_dropout: a probability in [0, 1], got 1.5"),
    ("nonsense", "--set expects KEY=VALUE"),
])
def test_config_errors_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"max_steps": 1}}, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_files_resolve_paths_and_parse_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {shards: shards, text_encoder: org/model}\noptim: {lr: 1e-4}\n"
                                     "train: {max_steps: 3, out_dir: ../runs/x}\n")
    cfg = load_config(tmp_path / "c.yaml", ["optim.warmup_steps=5"])
    assert cfg.data.shards == str(tmp_path / "shards") and cfg.data.text_encoder == "org/model"  # a hub id
    assert cfg.train.out_dir == str((tmp_path / "../runs/x").resolve()) and cfg.optim.lr == 1e-4
    for manifest in ("tiny", "xl-256"):
        load_config(f"manifests/train/{manifest}.yaml")


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tiny_train_models, shards, tmp_path):
    """torchrun with 2 CPU processes (gloo): DDP with accumulation and the unused last text MLP trains."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(json.dumps({
        "model": {"size": "tiny"},
        "data": {"shards": str(shards), "text_encoder": str(tiny_train_models["clip-text"]), "batch_size": 2,
                 "num_workers": 0},
        "optim": {"eight_bit": False}, "train": {"out_dir": str(tmp_path / "run"), "max_steps": 3,
                                                 "grad_accum": 2, "device": "cpu", "log_every": 1}}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                           "-m", "train.train", str(cfg)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2" in proc.stdout and "step      3/3" in proc.stdout
    state = json.loads((tmp_path / "run" / "ckpt" / "step_000003" / "state.json").read_text())
    assert state["world"] == 2 and state["samples_seen"] == 3 * 2 * 2 * 2

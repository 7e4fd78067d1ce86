"""The trainer's files survive kills: a cut metrics line, a checkpoint that fails half-way, killed temporaries."""

from __future__ import annotations

import json

import pytest
import torch

from train.train import latest_checkpoint, save_checkpoint, train


def test_resume_after_a_kill_mid_metrics_append(tiny_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, train={"max_steps": 6, "ckpt_every": 3, "log_every": 2})
    train(cfg, stop_after=4, log=lambda *a: None)  # "crashes" after step 4; the last checkpoint is step 3
    metrics = out / "metrics.jsonl"
    with open(metrics, "a") as f:  # the kill came in the middle of step 5's line
        f.write('{"step": 5, "loss": 0.41')
    killed = out / "ckpt" / ".step_000006.tmp-99999"  # and of a checkpoint save
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    logs: list[str] = []
    summary = train(cfg, log=logs.append)
    assert summary["steps"] == 6 and summary["steps_this_run"] == 3
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line whole
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # the crashed run's step 4 replaced, not doubled
    assert [line for line in logs if "dropped" in line] == [f"{metrics}: dropped 1 line(s) a killed run left unfinished"]
    assert not killed.exists() and latest_checkpoint(out).name == "step_000006"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


class _FailingOptimizer:
    """An optimizer whose state cannot be read: the save fails after the weights are written."""

    def state_dict(self):
        raise RuntimeError("optimizer state unreadable")


def test_a_failed_checkpoint_save_leaves_the_previous_one(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    first = save_checkpoint(tmp_path, 1, model, model, opt, {"step": 1})
    with pytest.raises(RuntimeError, match="optimizer state unreadable"):
        save_checkpoint(tmp_path, 2, model, model, _FailingOptimizer(), {"step": 2})
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_000001"]  # no temp, no half step 2
    assert (ckpt / "latest").read_text() == "step_000001" and latest_checkpoint(tmp_path) == first
    files = sorted(p.name for p in first.iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "optim.safetensors", "state.json"]
    assert json.loads((first / "state.json").read_text())["step"] == 1

"""`facecurate models`: what a run needs, where from, present or not, and the command that fetches it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.manifest import build_manifest
from pipeline.ops.models import needed_models


def _fake_cache(root, repo: str, files: list[str]) -> None:
    """A Hugging Face hub cache entry as huggingface_hub lays it out (refs/main -> a snapshot)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    for f in files:
        p = folder / "snapshots" / "abc123" / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")


def test_defaults_list_every_stages_model_and_find_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_cache(tmp_path / "hub", "Qwen/Qwen3-1.7B", ["config.json"])
    _fake_cache(tmp_path / "hub", "black-forest-labs/FLUX.1-schnell", ["vae/config.json"])
    rows = {r.setting: r for r in needed_models()}
    assert {"stages.caption.model", "stages.refine.model", "stages.parse.segformer_model", "stages.sketch.model",
            "stages.latents.models.flux", "stages.latents.models.sd", "stages.faces.models_dir"} <= set(rows)
    assert rows["stages.refine.model"].present and rows["stages.refine.model"].licence == "Apache-2.0"
    assert rows["stages.latents.models.flux"].present  # its vae/ folder is cached
    cap = rows["stages.caption.model"]
    assert not cap.present and cap.how == "huggingface-cli download OpenGVLab/InternVL3-1B-hf"
    assert rows["stages.latents.models.sd"].how == "huggingface-cli download stabilityai/sd-vae-ft-mse"
    sketch = rows["stages.sketch.model"]
    assert not sketch.present and "u2net_portrait.pth" in sketch.how and "stages.sketch.model" in sketch.how
    assert rows["stages.faces.models_dir"].present  # dlib's models come from PyPI


def test_a_manifests_local_paths_and_chosen_parsers(tmp_model_paths):
    vae, u2net, farl = tmp_model_paths
    m = build_manifest({"stages": {
        "parse": {"parsers": ["farl"], "farl_model": str(farl)},
        "sketch": {"model": str(u2net)},
        "latents": {"models": {"flux": {"model": str(vae)}}}}}, None)
    rows = {r.setting: r for r in needed_models(m.stages)}
    assert "stages.parse.segformer_model" not in rows  # only the parsers the manifest runs
    assert rows["stages.parse.farl_model"].present and rows["stages.sketch.model"].present
    assert rows["stages.sketch.model"].licence == "Apache-2.0"  # known by its file name
    det = rows["stages.parse.farl_detector"]
    assert det.model == "(not set: mobilenet0.25_Final.pth)" and "releases/download" in det.how
    assert rows["stages.latents.models.flux"].present


def test_cli_json_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty"))
    res = CliRunner().invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert any(r["setting"] == "stages.caption.model" and r["present"] is False for r in rows)
    res = CliRunner().invoke(app, ["models"], env={"COLUMNS": "240"})
    flat = " ".join(res.output.split())
    assert res.exit_code == 0 and "1 of 7 models are here" in flat and "huggingface-cli download Qwen/Qwen3-1.7B" in flat


import pytest  # noqa: E402


@pytest.fixture
def tmp_model_paths(tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    u2net = tmp_path / "u2net_portrait.pth"
    u2net.write_bytes(b"x")
    farl = tmp_path / "face_parsing.farl.celebm.main_ema_181500_jit.pt"
    farl.write_bytes(b"x")
    return vae, u2net, farl

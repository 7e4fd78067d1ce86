"""Errors as a new user meets them: one line on stderr that names the setting and the fix, exit code 2 for
wrong input (an option, a path, a model of the wrong kind), 1 for a stage whose every key failed for one
reason (nothing recorded, so the next run retries), and a traceback only for a bug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline import __version__
from pipeline.cli import explain, run_cli
from pipeline.core.crashes import StageFailed
from pipeline.core.ledger import Ledger
from pipeline.core.run import previous_settings
from pipeline.core.runner import FailureStreak
from pipeline.core.stage import StageContext
from pipeline.stages.caption import CaptionStage
from pipeline.text.prompts import DEFAULT_PROMPTS
from tests.captions_data import ingested

ROOT = Path(__file__).resolve().parent.parent
PORTRAITS = ["astronaut.png", "grace_hopper.jpg"]


@pytest.fixture
def out(demo_data, tmp_path) -> Path:
    """An ingested output folder with two real portraits."""
    return ingested(demo_data, tmp_path, PORTRAITS)


def cli(capsys, *args) -> tuple[int, str, str]:
    """`facecurate ARGS` in this process, through the same handler as the console script."""
    code = run_cli([str(a) for a in args])
    got = capsys.readouterr()
    return code, got.out, got.err


def shell(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def one_line(err: str) -> str:
    """The error, one line, after at most the progress lines a run prints without a terminal."""
    lines = [line for line in err.splitlines() if line.strip()]
    progress = [line for line in lines[:-1] if line.split(":")[0].isidentifier() and " pending; " in line]
    assert len(lines) == 1 + len(progress) and lines[-1].startswith("error: "), err
    lines = lines[-1:]
    assert "Traceback" not in err and "╭" not in err, err
    return lines[0]


def two_prompts(path: Path) -> Path:
    data = yaml.safe_load(DEFAULT_PROMPTS.read_text())
    data["prompts"] = [{**p, "max_tokens": 4} for p in data["prompts"][:2]]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_version():
    proc = shell("--version", timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"facecurate {__version__}", proc.stderr


def test_a_text_only_caption_model_stops_the_stage_and_a_vlm_then_does_those_keys(out, tiny_model, tmp_path, capsys):
    prompts = two_prompts(tmp_path / "p.yaml")
    code, _, err = cli(capsys, "caption", out, "--model", tiny_model("qwen3"), "--prompts", prompts)
    line = one_line(err)
    assert code == 1
    assert "caption: 2 keys in a row failed the same way (engine_error: " in line and "text-only model" in line
    assert "none of them was recorded" in line and "check stages.caption.model (an image+text model" in line
    assert StageContext(out).ledger("caption").read().num_rows == 0  # not cached: nothing counts as done
    assert previous_settings(out, "caption") == {}  # nor recorded as what the folder ran with

    code, _, err = cli(capsys, "caption", out, "--model", tiny_model("internvl3"), "--prompts", prompts)
    assert code == 0, err
    rows = StageContext(out).ledger("caption").read(["key", "status"]).to_pylist()
    assert sorted({r["key"] for r in rows}) == ["photos/astronaut", "photos/grace_hopper"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert "4 caption(s) generated" in err


def test_failed_captions_of_one_key_are_recorded_and_never_served_from_the_cache(demo_data, tmp_path, tiny_model,
                                                                                    capsys, monkeypatch):
    from pipeline.engines.base import error_result
    from pipeline.engines.transformers_engine import TransformersEngine

    out = ingested(demo_data, tmp_path, PORTRAITS[:1])
    prompts, model = two_prompts(tmp_path / "p.yaml"), tiny_model("internvl3")
    real = TransformersEngine.generate
    monkeypatch.setattr(TransformersEngine, "generate", lambda self, requests: [error_result("CUDA error")] * len(requests))
    code, _, err = cli(capsys, "caption", out, "--model", model, "--prompts", prompts)
    assert code == 0 and "2 row(s) failed (engine_error)" in err and "--retry-failed" in err  # one key: its own rows
    monkeypatch.setattr(TransformersEngine, "generate", real)
    code, _, err = cli(capsys, "caption", out, "--model", model, "--prompts", prompts, "--retry-failed")
    assert code == 0 and "2 caption(s) generated" in err, err  # same cache keys: the failures were not reused
    assert {r["status"] for r in StageContext(out).ledger("caption").read(["status"]).to_pylist()} == {"ok"}


def rows(keys: list[str], status: str, error: str = "") -> pa.Table:
    return pa.table({"key": keys, "status": [status] * len(keys), "error": [error] * len(keys)})


def test_only_a_stage_wide_identical_failure_is_held_back():
    streak = FailureStreak("caption", CaptionStage, pending_keys=100, batch_size=4)
    assert streak.add(rows(["a", "b"], "decode_error", "cannot decode")) != []  # per-key: written at once
    assert streak.add(rows(["c", "d"], "engine_error", "boom")) == []  # held
    released = streak.add(rows(["e"], "ok"))  # an ok row: the held rows were per-key failures after all
    assert [t["key"].to_pylist() for t in released] == [["c", "d"], ["e"]]
    assert streak.add(rows(["f", "g"], "engine_error", "boom")) == []
    assert len(streak.add(rows(["h", "i"], "engine_error", "another"))) == 1  # another reason: a new streak
    with pytest.raises(StageFailed, match=r"caption: 4 keys in a row failed the same way \(engine_error: another\)"):
        streak.add(rows(["j", "k"], "engine_error", "another"))
    refine_like = FailureStreak("x", object, pending_keys=2, batch_size=4)  # engine_error is not stage-wide there
    assert refine_like.add(rows(["a", "b"], "engine_error", "boom")) != [] and refine_like.finish() == []
    alone = FailureStreak("x", object, pending_keys=1, batch_size=4)  # one key cannot tell the stage from the key
    assert alone.add(rows(["a"], "stage_error", "boom")) == [] and len(alone.finish()) == 1


def test_a_wrong_sketch_model_is_one_line(out, tiny_model, capsys):
    code, _, err = cli(capsys, "sketch", out, "--model", tiny_model("qwen3"))
    line = one_line(err)
    assert code == 2 and line.startswith("error: stages.sketch.model: cannot load ")
    assert "holds no .pth checkpoint" in line and "set it to u2net_portrait.pth" in line
    assert not Ledger(out, "sketch").parts()
    assert previous_settings(out, "sketch") == {}  # not recorded: a bare `sketch OUT` does not repeat it
    code, _, err = cli(capsys, "sketch", out, "--model", tiny_model("u2net-portrait-tiny"))
    assert code == 0, err
    good = previous_settings(out, "sketch")["model"]
    code, _, err = cli(capsys, "sketch", out, "--model", tiny_model("qwen3"))
    assert code == 2 and previous_settings(out, "sketch")["model"] == good  # what the folder ran with stays


@pytest.mark.ray
def test_a_wrong_model_on_ray_is_the_same_line_without_ray_s_tracebacks(out, tiny_model):
    pytest.importorskip("ray")
    proc = shell("sketch", out, "--model", tiny_model("qwen3"), "--runner", "ray")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error: stages.sketch.model: cannot load "), proc.stderr
    assert "Traceback" not in proc.stderr and "ActorDiedError" not in proc.stderr, proc.stderr
    assert len(lines) <= 4, proc.stderr  # the progress line, Ray's start-up notice, the error (was 231 lines)
    assert not Ledger(out, "sketch").parts()


def test_a_vae_folder_as_the_segformer_model_is_one_line(out, tiny_model, capsys):
    code, _, err = cli(capsys, "parse", out, "--segformer-model", tiny_model("vae-flux"))
    line = one_line(err)
    assert code == 2 and line.startswith("error: stages.parse.segformer_model: cannot load ")
    assert "it must be a 19-class face-parsing Segformer" in line
    code, _, err = cli(capsys, "parse", out, "--segformer-model", tiny_model("qwen3"))
    assert code == 2 and "holds a 'qwen3' model, not a Segformer" in one_line(err)


def test_sample_with_a_missing_mask_and_train_errors_are_one_line(tmp_path, tiny_model, capsys):
    from tests.train.conftest import write_shards

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"size": "tiny"},
        "data": {"shards": str(write_shards(tmp_path / "shards")), "text_encoder": str(tiny_model("clip-text")),
                 "batch_size": 4, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "eight_bit": False},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 1, "log_every": 1, "device": "cpu"},
    }))
    code, _, err = cli(capsys, "train", cfg)
    assert code == 0, err
    code, _, err = cli(capsys, "sample", tmp_path / "run", "-c", "a face", "--mask", tmp_path / "missing.png",
                       "--vae", tiny_model("vae-flux"), "--steps", "1", "--n", "1", "--device", "cpu")
    assert code == 2 and one_line(err) == f"error: --mask {tmp_path / 'missing.png'} does not exist " \
                                          "(No such file or directory); check the path"
    code, _, err = cli(capsys, "train", tmp_path / "nope.yaml")  # was a boxed usage panel
    assert code == 2 and one_line(err) == f"error: config file {tmp_path / 'nope.yaml'} does not exist"


def test_usage_errors_are_click_messages_on_one_line(tmp_path, capsys):
    code, _, err = cli(capsys, "ingest", tmp_path)
    assert code == 2 and one_line(err) == "error: Missing option '--out' / '-o'; see `facecurate ingest -h`"
    code, _, err = cli(capsys, "ingset", tmp_path)
    assert code == 2 and "No such command 'ingset'. Did you mean 'ingest'" in one_line(err)


def test_an_unknown_status_suggests_the_right_one(out, capsys):
    code, _, err = cli(capsys, "inspect", out, "--status", "trunkated")
    line = one_line(err)
    assert code == 2 and "--status: 'trunkated' is not a status (did you mean 'truncated'?)" in line
    assert f"{out} has ok" in line
    code, shown, err = cli(capsys, "inspect", out, "--status", "truncated")  # known, none here: an empty list
    assert code == 0 and "0 row(s) with status truncated" in " ".join(shown.split()), err


def test_a_bug_keeps_its_traceback(out, monkeypatch):
    import pipeline.ops.inspect

    def bug(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(pipeline.ops.inspect, "show_overview", bug)
    with pytest.raises(KeyError, match="a bug"):
        run_cli(["inspect", str(out)])
    inner = FileNotFoundError(2, "No such file or directory", str(out / "ledger" / "part.parquet"))
    assert explain(inner, ["inspect", str(out)]) is None  # a file the user did not name: a bug, not their input
    given = FileNotFoundError(2, "No such file or directory", str(out / "m.png"))
    assert explain(given, ["sample", "run", "--mask", str(out / "m.png")]) == \
        (f"--mask {out / 'm.png'} does not exist (No such file or directory); check the path", 2)


def test_a_hub_model_that_is_not_here_points_to_facecurate_models(tmp_path, monkeypatch):
    from pipeline.core.config import ConfigError, loading_model, models_hint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as got, loading_model("stages.caption.model", "OpenGVLab/InternVL3-1B-hf"):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    msg = str(got.value)
    assert msg.startswith("stages.caption.model: cannot load 'OpenGVLab/InternVL3-1B-hf' (OSError: We couldn't")
    assert msg.endswith("`facecurate models MANIFEST` says where each model comes from and how to fetch it")
    assert models_hint(str(tmp_path)) == "" and models_hint("./here") == ""  # a local path: no such hint

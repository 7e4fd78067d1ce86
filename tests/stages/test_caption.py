"""The caption stage on the tiny InternVL3: ten rows per image, the ledger as cache, failures as rows."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import ConfigError, RunnerConfig, from_dict
from pipeline.core.manifest import load_manifest
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from pipeline.engines.transformers_engine import TransformersEngine
from pipeline.stages.caption import CaptionConfig
from pipeline.text.prompts import DEFAULT_PROMPTS, load_prompt_set
from tests.captions_data import ingested

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ["astronaut.png", "grace_hopper.jpg", "variants/hopper_cmyk.jpg"]


@pytest.fixture
def out(demo_data, tmp_path) -> Path:
    """An ingested output folder with three real portraits (copied, so a test may break one)."""
    return ingested(demo_data, tmp_path, IMAGES)


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Requests per engine call: what actually reached the model."""
    seen: list[int] = []
    real = TransformersEngine.generate

    def counting(self, requests):
        seen.append(len(requests))
        return real(self, requests)

    monkeypatch.setattr(TransformersEngine, "generate", counting)
    return seen


def short_prompts(path: Path, edit: str | None = None) -> Path:
    """The face-v1 set with small max_tokens (fast); `edit` changes that one prompt's text."""
    data = yaml.safe_load(DEFAULT_PROMPTS.read_text())
    for p in data["prompts"]:
        p["max_tokens"] = 4
        if p["id"] == edit:
            p["text"] += " Be concise."
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def caption(out: Path, tiny: Path, retry: bool = False, **settings):
    cfg = from_dict(CaptionConfig, {"model": str(tiny), **settings}, "stages.caption")
    return run_stage("caption", cfg, StageContext(out), RunnerConfig(retry_failed=retry))


def rows(out: Path) -> list[dict]:
    return StageContext(out).ledger("caption").read().to_pylist()


def test_ten_rows_per_image_with_the_contract_columns(out, tiny_model, calls):
    result = caption(out, tiny_model("internvl3"))
    got = rows(out)
    ids = [p.id for p in load_prompt_set().prompts]
    assert result.ok == 30 and not result.failed and sum(calls) == 30
    by_key = Counter(r["key"] for r in got)
    assert set(by_key.values()) == {10} and len(by_key) == 3
    for key in by_key:
        assert [r["prompt_id"] for r in got if r["key"] == key] == ids  # prompt order kept
    schema = StageContext(out).ledger("caption").read().schema
    for name, tp in [("prompt_tokens", pa.int32()), ("output_tokens", pa.int32()), ("text", pa.string()),
                     ("prompt_kind", pa.string()), ("prompt_hash", pa.string()), ("revision", pa.string()),
                     ("finish_reason", pa.string()), ("cache_key", pa.string()), ("model", pa.string())]:
        assert schema.field(name).type == tp
    assert all(r["revision"].startswith("local:") and r["prompt_tokens"] > 256 and r["text"] for r in got)
    assert len({r["cache_key"] for r in got}) == 30
    kinds = {r["prompt_kind"] for r in got}
    assert kinds == {"few_shot", "template", "keywords", "detail"}
    written = json.loads((out / "captions" / "prompt_set.json").read_text())
    assert written["version"] == "face-v1" and [p["id"] for p in written["prompts"]] == ids


def test_rerun_is_free_and_an_edited_prompt_regenerates_only_itself(out, tiny_model, calls, tmp_path):
    tiny = tiny_model("internvl3")
    first = caption(out, tiny, prompts=str(short_prompts(tmp_path / "p.yaml")))
    assert first.ok == 30 and sum(calls) == 30
    before = {(r["key"], r["prompt_id"]): r for r in rows(out)}

    calls.clear()
    again = caption(out, tiny, prompts=str(short_prompts(tmp_path / "p.yaml")), batch_size=2, engine_batch=3)
    assert again.pending == 0 and sum(calls) == 0  # volatile settings change nothing

    edited = caption(out, tiny, prompts=str(short_prompts(tmp_path / "p.yaml", edit="detail_hair")))
    assert edited.pending == 3 and sum(calls) == 3  # every key re-run, one request per image reached the model
    after = {(r["key"], r["prompt_id"]): r for r in rows(out)}
    assert len(after) == 30
    for k, r in after.items():
        if k[1] == "detail_hair":
            assert not r["cached"] and r["prompt_hash"] != before[k]["prompt_hash"]
        else:
            assert r["cached"] and r["text"] == before[k]["text"] and r["cache_key"] == before[k]["cache_key"]


def test_the_cache_is_keyed_by_content_not_by_key(out, tiny_model, calls, tmp_path):
    """A copy of an image under another key (a re-ingest, a second source) is answered from the ledger."""
    from pipeline.stages.caption import CaptionStage

    tiny = tiny_model("internvl3")
    prompts = str(short_prompts(tmp_path / "p.yaml"))
    caption(out, tiny, prompts=prompts)
    calls.clear()
    cfg = from_dict(CaptionConfig, {"model": str(tiny), "prompts": prompts}, "stages.caption")
    stage = CaptionStage(cfg, StageContext(out))
    index = StageContext(out).index(["key", "sha256", "path"]).to_pylist()[0]
    got = stage({"key": ["copies/same-bytes"], "sha256": [index["sha256"]], "path": [index["path"]]})
    assert sum(calls) == 0 and set(got["status"]) == {"ok"} and all(got["cached"])
    assert got["text"] == [r["text"] for r in rows(out) if r["key"] == index["key"]]


def test_corrupt_image_and_engine_error_become_rows(out, tiny_model, calls, tmp_path, monkeypatch):
    tiny = tiny_model("internvl3")
    prompts = str(short_prompts(tmp_path / "p.yaml"))
    path = out.parent / "src" / "grace_hopper.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is no longer a JPEG")  # broken after ingest
    result = caption(out, tiny, prompts=prompts)
    bad = [r for r in rows(out) if r["key"] == "photos/grace_hopper"]
    assert len(bad) == 10 and {r["status"] for r in bad} == {"decode_error"}
    assert all(r["error"].startswith(f"cannot decode {path}: OSError") for r in bad)
    assert result.ok == 20 and sum(calls) == 20

    def boom(self, requests):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(TransformersEngine, "generate", boom)
    shutil.copy(ROOT / ".cache" / "demo" / "photos" / "grace_hopper.jpg", path)
    failed = caption(out, tiny, prompts=prompts, retry=True)  # the key is retried: the engine now fails
    bad = [r for r in rows(out) if r["key"] == "photos/grace_hopper"]
    assert failed.failed == {"engine_error": 10} and failed.ok == 20
    assert all(r["error"] == "RuntimeError: CUDA error: device-side assert triggered" for r in bad)


def test_prompt_files_are_validated_in_one_line(tmp_path):
    cases = {
        "prompts: []\nversion: x": "prompts:` is empty",
        "version: x\nprompts: [{id: a, kind: poem, text: hi, max_tokens: 5}]": "kind 'poem' is not one of",
        "version: x\nprompts: [{id: a, kind: detail, text: hi, max_tokens: 5}, {id: a, kind: detail, text: b, max_tokens: 5}]": "duplicate id 'a'",
        "version: x\nprompts: [{id: a, kind: detail, text: '  ', max_tokens: 5}]": "text must be a non-empty string",
        "version: x\nprompts: [{id: a, kind: detail, text: hi, max_tokens: 0}]": "max_tokens must be an integer",
        "version: x\nprompts: [{id: a, kind: detail, text: hi}]": "missing max_tokens",
        "version: x\nprompts: [{id: A b, kind: detail, text: hi, max_tokens: 3}]": "id must be lowercase",
        "prompts: [{id: a, kind: detail, text: hi, max_tokens: 3}]": "`version:` is required",
        "version: x\nprompts: [{id: a, kind: detail, text: hi, max_tokens: 3, temp: 1}]": "unknown key(s) temp",
        "version: x\nprompts: [oops": "not valid YAML",
    }
    for i, (text, message) in enumerate(cases.items()):
        f = tmp_path / f"p{i}.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError, match=None) as e:
            from_dict(CaptionConfig, {"model": str(tmp_path), "prompts": str(f)}, "stages.caption")
        assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("stages.caption")
    assert len({p.hash for p in load_prompt_set().prompts}) == 10


def test_settings_errors_and_demo_manifest(tmp_path):
    with pytest.raises(ConfigError, match="local model folder .* does not exist"):
        from_dict(CaptionConfig, {"model": "./missing-model"}, "stages.caption", tmp_path)
    with pytest.raises(ConfigError, match="max_tiles must be from 1 to 40"):
        from_dict(CaptionConfig, {"max_tiles": 0}, "stages.caption")
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        from_dict(CaptionConfig, {"temperature": -1}, "stages.caption")
    assert from_dict(CaptionConfig, {"model": "OpenGVLab/InternVL3-2B-hf"}, "x", tmp_path).model == \
        "OpenGVLab/InternVL3-2B-hf"  # a hub id stays a hub id
    demo = load_manifest(ROOT / "manifests" / "demo.yaml").stages["caption"]
    assert demo.model == str(ROOT / ".cache" / "tiny-models" / "internvl3") and demo.engine == "transformers"


def test_cli_caption_summary_and_one_line_errors(out, tiny_model, tmp_path):
    cli = CliRunner()
    prompts = str(short_prompts(tmp_path / "p.yaml"))
    res = cli.invoke(app, ["caption", str(out), "--model", str(tiny_model("internvl3")), "--prompts", prompts],
                     catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "captions by prompt" in res.output and "detail_hair" in res.output and "30 caption(s) generated" in res.output
    again = cli.invoke(app, ["caption", str(out), "--model", str(tiny_model("internvl3")), "--prompts", prompts])
    assert again.exit_code == 0 and "every caption was already in the cache" in again.output
    assert "Examples" in cli.invoke(app, ["caption", "--help"]).output
    shown = cli.invoke(app, ["prompts"])
    assert shown.exit_code == 0 and "face-v1" in shown.output and "fewshot_portrait" in shown.output

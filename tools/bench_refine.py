"""Refinement throughput: images/s through the refine stage, batched against one image at a time.

Runs the pipeline's own `RefineStage` (prompt building, the engine, output parsing, the fact guard and
the fallback) on synthetic images, each with ten cleaned captions in the caption prompts' styles (see
tools/bench_tokens.py). Every answer generates exactly `--new-tokens` tokens (end-of-sequence is
suppressed until then: random weights would otherwise stop at arbitrary points), and `--retries 0`
makes one generation per image, so images/s is one refinement pass. With random weights every answer
is unparseable and every image takes the fallback path; the time is the same as for real answers of
that length.

Models:
- default: the tiny random-weight Qwen3 (CPU is fine; measures the stage and engine overhead);
- `--real-size 1.7b`: Qwen3-1.7B at its real size (28 layers, hidden 2048, 16 heads, 8 KV heads, head
  dim 128, MLP 6144, vocab 151,936, tied embeddings) with random weights from config, no download,
  on CUDA in bf16. The tokenizer is the tiny model's BPE padded to the real vocabulary, which splits
  the prompt into more tokens than Qwen's own would (the prompt token count is printed).
- `--model ID_OR_FOLDER`: any real Qwen3 checkpoint you have locally.
Compare with the first-principles ceiling (Qwen3-1.7B decode, memory-bound on one H100): ~32 images/s on one H100 for
Qwen3-1.7B at 700 prompt + 700 generated tokens per image.

Needs torch, transformers, tokenizers, numpy, pyarrow, pyyaml and open_clip (only for its CLIP vocabulary
file: `pip install --no-deps open_clip_torch`); the repo on `sys.path` (run it from the repo root).

Usage:
    python tools/bench_refine.py                                          # tiny model, CPU
    python tools/bench_refine.py --real-size 1.7b --images 256 --batch 128 --new-tokens 600   # H100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REAL = {"1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128)}
VOCAB = 151_936
PROMPT_IDS = ["fewshot_portrait", "fewshot_features", "template_demographic", "template_expression",
              "keywords_appearance", "keywords_photo", "detail_accessories", "detail_makeup", "detail_hair",
              "detail_expression"]


def tiny_model() -> Path:
    from tools.make_tiny_models import build

    return build("qwen3")


def real_size_model(size: str, out: Path, device: str) -> Path:
    """Qwen3 at its real size with random weights, saved once in bf16 for the engine to load."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model())
    spec = json.loads(tok.backend_tokenizer.to_str())
    for i in range(len(tok), VOCAB):
        spec["model"]["vocab"][f"w{i}"] = i  # plain ASCII pieces, so every id decodes
    tok._tokenizer = Tokenizer.from_str(json.dumps(spec))
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    config = Qwen3Config(vocab_size=VOCAB, max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], **REAL[size])
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out


def fixed_length_stage(cls):
    """The refine stage with end-of-sequence suppressed, so every answer has `max_new_tokens` tokens."""

    class FixedLength(cls):
        def _request(self, s, attempt):
            r = super()._request(s, attempt)
            r.sampling = dataclasses.replace(r.sampling, min_tokens=r.sampling.max_tokens)
            return r

    return FixedLength


def batch_of(n: int) -> dict:
    import numpy as np

    from tools.bench_tokens import synthetic_captions

    keys, blobs = [], []
    for i, caps in enumerate(synthetic_captions(n, seed=7)):
        # ASCII only: the few accented captions would need ftfy, which GPU machines here do not carry
        caps = [c.encode("ascii", "ignore").decode() for c in caps]
        keys.append(f"bench/{i}")
        blobs.append(json.dumps({"captions": [[p, c] for p, c in zip(PROMPT_IDS, caps, strict=True)],
                                 "evidence": {"eyeglasses": "absent", "hat": "absent", "earrings": "unknown",
                                              "necklace": "absent"}}))
    return {"key": np.array(keys, object), "inputs": np.array(blobs, object),
            "_fp": np.array([f"fp{i}" for i in range(n)], object)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-size", choices=sorted(REAL), help="Qwen3 at real size, random weights (GPU)")
    ap.add_argument("--model", help="a real model id or folder instead")
    ap.add_argument("--images", type=int, default=16, help="images in the batched run")
    ap.add_argument("--single-images", type=int, default=2, help="images in the one-at-a-time baseline")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per answer (forced)")
    ap.add_argument("--batch", type=int, default=16, help="images per generate call (transformers engine)")
    ap.add_argument("--retries", type=int, default=0, help="extra rounds per image (each one more generation)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from pipeline.core.config import from_dict
    from pipeline.core.stage import StageContext
    from pipeline.stages.refine import RefineConfig, RefineStage
    from pipeline.text.judge import KeyState

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tmp = tempfile.TemporaryDirectory(prefix="bench_refine_")
    t0 = time.perf_counter()
    if args.real_size:
        if device == "cpu" and args.device == "auto":
            raise SystemExit("--real-size needs a CUDA GPU (pass --device cpu only if you mean to wait)")
        model, label = str(real_size_model(args.real_size, Path(tmp.name) / "model", device)), \
            f"Qwen3-{args.real_size.upper()} size, random"
    elif args.model:
        model, label = args.model, args.model
    else:
        model, label = str(tiny_model()), "tiny Qwen3 (random)"
    build_s = time.perf_counter() - t0
    stage_cls = fixed_length_stage(RefineStage)

    cfg = from_dict(RefineConfig, {"model": model, "max_new_tokens": args.new_tokens, "device": device,
                                   "max_retries": args.retries, "engine_batch": args.batch}, "bench")
    stage = stage_cls(cfg, StageContext(Path(tmp.name) / "out"))  # loads the model once
    engine = stage.engine
    stage(batch_of(2))  # warm-up: kernels, allocator, lazy imports
    probe = stage._request(KeyState("k", [tuple(c) for c in json.loads(batch_of(1)["inputs"][0])["captions"]], {}), 0)
    prompt_tokens = len(engine.tokenizer(engine.render(probe))["input_ids"])

    def run(n_images: int, engine_batch: int) -> tuple[float, dict]:
        engine.batch_size = engine_batch
        before = dict(engine.stats)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = stage(batch_of(n_images))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        assert len(out["key"]) == n_images and all(len(c) for c in out["captions"])
        stats = {k: engine.stats[k] - before.get(k, 0) for k in ("requests", "output_tokens")}
        stats["flags"] = sorted({f for fl in out["flags"] for f in fl if f.startswith("fallback")})
        return seconds, stats

    single_s, single = run(args.single_images, 1)
    batched_s, batched = run(args.images, args.batch)
    params = sum(p.numel() for p in engine.model.parameters())
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    print(f"model: {label}; {params / 1e6:,.1f} M params; build {build_s:.1f} s")
    print(f"engine: transformers on {device} ({gpu}), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"work: 10 cleaned captions per image, {prompt_tokens} prompt tokens and {args.new_tokens} new tokens "
          f"per answer, {1 + args.retries} round(s); outcome {batched['flags'] or 'parsed'}")
    print()
    head = f"{'metric':<24}{'one image at a time':>22}{f'batched ({args.batch}/call)':>22}{'ratio':>9}"
    print(head)
    print("-" * len(head))
    rows = [("images/s", args.single_images / single_s, args.images / batched_s),
            ("generated tokens/s", single["output_tokens"] / single_s, batched["output_tokens"] / batched_s)]
    for name, base, fast in rows:
        print(f"{name:<24}{base:>22,.3f}{fast:>22,.3f}{fast / base:>8.2f}x")
    if args.real_size:
        print(f"\nceiling (first principles, H100, 700 in / 700 out): ~32 images/s; "
              f"measured {args.images / batched_s:.1f} images/s at {args.new_tokens} out")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

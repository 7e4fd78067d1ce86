"""Caption throughput: images/s and generated tokens/s, batched against one request at a time.

Runs the pipeline's own engine (`pipeline.engines`) on real portraits with the ten face-v1 prompts per
image. Every request generates exactly `--new-tokens` tokens (end-of-sequence is suppressed until then:
random weights would otherwise stop at arbitrary points and make the figures meaningless).

Models:
- default: the tiny random-weight InternVL3 (CPU is fine; measures the engine's overhead, not a GPU);
- `--real-size 1b` / `2b`: InternVL3-1B / -2B at their real sizes (InternViT-300M + Qwen2.5-0.5B / 1.5B)
  with random weights built from config, no download, on CUDA in bf16;
- `--model ID_OR_FOLDER`: any real checkpoint you have locally.

Needs only torch, transformers, tokenizers, pillow, pyyaml and scikit-image (for the portrait); the repo
on `sys.path` (run it from the repo root), not an installed package.

`--compare`: both engines in one run on the same requests (run it with the python of `.venv-vllm`, which
has both): requests/s, generated tokens/s, vLLM over transformers, and vLLM's own prefix-cache hit rate
and images encoded per image. The transformers engine batches `--batch` requests per call (its best
setting, the fair baseline); vLLM schedules all of them itself.

Usage:
    python tools/bench_caption.py                                  # tiny model, CPU
    python tools/bench_caption.py --real-size 1b --images 64       # H100: InternVL3-1B size, bf16
    python tools/bench_caption.py --real-size 1b --engine vllm     # where vLLM is installed
    .venv-vllm/bin/python tools/bench_caption.py --compare --images 8   # vLLM beside transformers, this CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real dimensions (the models' configs). Vision: InternViT-300M-448px (qkv with bias).
VISION_300M = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=[448, 448], patch_size=[14, 14], attention_bias=True, norm_type="layer_norm",
                   layer_norm_eps=1e-6, use_qk_norm=False, hidden_act="gelu")
TEXT = {
    "1b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
               num_key_value_heads=2),
    "2b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
               num_key_value_heads=2),
}
VOCAB = 151_674  # InternVL3's LM head is untied: 938 M parameters for 1B, 2.09 B for 2B (the model cards)


def padded_tokenizer(n: int):
    """The tiny model's trained BPE with its vocabulary padded to `n` ids, so every id decodes."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tiny = AutoTokenizer.from_pretrained(tiny_model())
    spec = json.loads(tiny.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(len(tiny), n):
        vocab[f"w{i}"] = i  # plain ASCII pieces: byte-level decoding maps them to themselves
    tiny._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return tiny


def tiny_model() -> Path:
    from tools.make_tiny_models import build

    return build("internvl3")


def real_size_model(size: str, out: Path, device: str) -> Path:
    """InternVL3 at its real size with random weights (built on the GPU, saved once, loaded by the engine)."""
    import torch
    from transformers import (
        AutoProcessor,
        GenerationConfig,
        InternVLConfig,
        InternVLForConditionalGeneration,
        Qwen2Config,
    )

    processor = AutoProcessor.from_pretrained(tiny_model())
    processor.tokenizer = tok = padded_tokenizer(VOCAB)
    text = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, **TEXT[size])
    config = InternVLConfig(text_config=text.to_dict(), vision_config=VISION_300M,
                            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=256,
                            downsample_ratio=0.5, projector_hidden_act="gelu", tie_word_embeddings=False)
    with torch.device(device):
        model = InternVLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                                               pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out


def portraits(n: int):
    """`n` distinct 1024px portraits (crops and flips of scikit-image's astronaut photograph)."""
    from PIL import Image, ImageOps
    from skimage import data

    base = Image.fromarray(data.astronaut())
    out = []
    for i in range(n):
        d = 4 * (i % 16)
        img = base.crop((d, d // 2, 512 - d // 2, 512 - d)).resize((1024, 1024), Image.Resampling.BICUBIC)
        out.append(ImageOps.mirror(img) if (i // 16) % 2 else img)
    return out


def run(engine, requests, batch: int) -> tuple[float, int, int]:
    if hasattr(engine, "batch_size"):
        engine.batch_size = batch
    t0 = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - t0
    bad = [r.error for r in results if r.finish_reason == "error"]
    if bad:
        raise SystemExit(f"{len(bad)} request(s) failed: {bad[0]}")
    return seconds, sum(r.output_tokens for r in results), sum(r.prompt_tokens for r in results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-size", choices=sorted(TEXT), help="InternVL3 at real size, random weights (GPU)")
    ap.add_argument("--model", help="a real model id or folder instead")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--images", type=int, default=4, help="images in the batched run (x10 prompts)")
    ap.add_argument("--single-images", type=int, default=1, help="images in the one-at-a-time baseline")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per request (forced)")
    ap.add_argument("--batch", type=int, default=64, help="requests per generate call (transformers)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--compare", action="store_true", help="vLLM beside the transformers engine, same requests")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args)

    import torch
    import transformers

    from pipeline.engines import Request, SamplingParams, make_engine
    from pipeline.text.prompts import load_prompt_set

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tmp = tempfile.TemporaryDirectory(prefix="bench_caption_")
    t0 = time.perf_counter()
    if args.real_size:
        if device == "cpu":
            raise SystemExit("--real-size needs a CUDA GPU (pass --device cpu only if you mean to wait)")
        model, label = str(real_size_model(args.real_size, Path(tmp.name), device)), f"InternVL3-{args.real_size.upper()} size, random"
    elif args.model:
        model, label = args.model, args.model
    else:
        model, label = str(tiny_model()), "tiny InternVL3 (random)"
    build_s = time.perf_counter() - t0
    options = dict(device=device, dtype=args.dtype, batch_size=args.batch) if args.engine == "transformers" else {}
    engine = make_engine(args.engine, model, **options)
    params = sum(p.numel() for p in engine.model.parameters()) if hasattr(engine, "model") else None

    prompts = load_prompt_set().prompts
    sp = SamplingParams(max_tokens=args.new_tokens, min_tokens=args.new_tokens)
    images = portraits(max(args.images, args.single_images))

    def requests(n: int) -> list[Request]:  # an image's ten prompts side by side, as the caption stage sends them
        return [Request([{"role": "user", "content": p.text}], img, sp) for img in images[:n] for p in prompts]

    run(engine, requests(1)[:2], 2)  # warm-up: kernels, allocator, lazy imports
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    single = run(engine, requests(args.single_images), 1)
    batched = run(engine, requests(args.images), args.batch)

    def rates(r, n_images):
        s, out_tok, _ = r
        return n_images / s, out_tok / s, s / (n_images * len(prompts))

    base, fast = rates(single, args.single_images), rates(batched, args.images)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    print(f"model: {label}; {params / 1e6:,.1f} M params" if params else f"model: {label}")
    print(f"engine: {args.engine} on {device} ({gpu}), dtype {getattr(engine, 'dtype', args.dtype)}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} CPU threads; build {build_s:.1f} s")
    print(f"work: {len(prompts)} prompts per image, {args.new_tokens} new tokens each, "
          f"{batched[2] / (args.images * len(prompts)):.0f} prompt tokens per request (one 448px tile)")
    print()
    head = f"{'metric':<26}{'one at a time (baseline)':>26}{f'batched ({args.batch}/call)':>22}{'ratio':>9}"
    print(head)
    print("-" * len(head))
    for name, i, fmt in [("images/s", 0, "{:,.3f}"), ("generated tokens/s", 1, "{:,.1f}"),
                         ("seconds per request", 2, "{:,.4f}")]:
        ratio = fast[i] / base[i] if i < 2 else base[i] / fast[i]
        print(f"{name:<26}{fmt.format(base[i]):>26}{fmt.format(fast[i]):>22}{ratio:>8.2f}x")
    print(f"\nbaseline: {args.single_images} image(s) x {len(prompts)} prompts, batch 1; "
          f"batched: {args.images} image(s) x {len(prompts)} prompts")
    tmp.cleanup()
    return 0


def compare(args) -> int:
    """Both engines, batched, on the same requests; float32 on a CPU (vLLM's CPU default), greedy, forced length."""
    import torch

    from pipeline.engines import Request, SamplingParams, make_engine
    from pipeline.text.prompts import load_prompt_set

    if args.real_size and not torch.cuda.is_available():
        raise SystemExit("--real-size needs a CUDA GPU")
    tmp = tempfile.TemporaryDirectory(prefix="bench_caption_")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    model = (str(real_size_model(args.real_size, Path(tmp.name), "cuda")) if args.real_size
             else args.model or str(tiny_model()))
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32")
    prompts = load_prompt_set().prompts
    sp = SamplingParams(max_tokens=args.new_tokens, min_tokens=args.new_tokens)
    images = portraits(args.images)
    reqs = [Request([{"role": "user", "content": p.text}], img, sp) for img in images for p in prompts]
    rows = {}
    for kind in ("transformers", "vllm"):
        t0 = time.perf_counter()
        opts = (dict(device="cuda" if cuda else "cpu", dtype=dtype, batch_size=args.batch) if kind == "transformers"
                else dict(dtype=dtype, max_model_len=2048))
        engine = make_engine(kind, model, **opts)
        start = time.perf_counter() - t0
        warm = [Request(r.messages, portraits(args.images + 1)[-1], sp) for r in reqs[:2]]  # an image not timed
        run(engine, warm, 2)  # warm-up: kernels, allocator, lazy imports
        before = engine.summary() if hasattr(engine, "summary") else {}
        seconds, out_tok, _ = run(engine, reqs, args.batch)
        after = engine.summary() if hasattr(engine, "summary") else {}
        summary = {k: after[k] - before[k] for k in ("prefix_cache_hits", "prefix_cache_queries", "images_encoded",
                                                      "images_submitted")} if after else {}
        rows[kind] = dict(start=start, rps=len(reqs) / seconds, tps=out_tok / seconds, seconds=seconds,
                          summary=summary)
        del engine
    t, v = rows["transformers"], rows["vllm"]
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"model: {args.real_size and f'InternVL3-{args.real_size.upper()} size, random' or model}; {where}; "
          f"dtype {dtype}; {args.images} images x {len(prompts)} prompts = {len(reqs)} requests, "
          f"{args.new_tokens} new tokens each")
    head = f"{'metric':<28}{f'transformers ({args.batch}/call)':>26}{'vLLM':>14}{'ratio':>9}"
    print(head)
    print("-" * len(head))
    print(f"{'requests/s':<28}{t['rps']:>26,.2f}{v['rps']:>14,.2f}{v['rps'] / t['rps']:>8.2f}x")
    print(f"{'generated tokens/s':<28}{t['tps']:>26,.1f}{v['tps']:>14,.1f}{v['tps'] / t['tps']:>8.2f}x")
    print(f"{'engine start (s)':<28}{t['start']:>26,.1f}{v['start']:>14,.1f}")
    s = v["summary"]
    if s:
        rate = s["prefix_cache_hits"] / max(s["prefix_cache_queries"], 1)
        print(f"\nvLLM's counters (timed run): prefix-cache hit rate {100 * rate:.1f}% "
              f"({s['prefix_cache_hits']:,} of {s['prefix_cache_queries']:,} prompt tokens); "
              f"{s['images_encoded']} images encoded for {s['images_submitted']} images submitted")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

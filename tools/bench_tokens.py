"""CLIP token counting throughput: the batched counter against open_clip's reference tokenizer.

Counts `--n` captions (default 100,000; ten per synthetic face, the styles the caption prompts ask for,
about 3% with non-ASCII punctuation or accents) with:
  reference     open_clip's `SimpleTokenizer.encode`, one caption at a time (what CLIP training uses)
  hf batched    transformers' `CLIPTokenizer` (the `tokenizers` Rust backend) on the whole list
  counter cold  `pipeline.text.tokens.ClipCounter`, a fresh instance (its chunk cache starts empty)
  counter warm  the same instance again (a long run's steady state)
and checks that every method gives the same count for every caption, then prints captions/s and the
ratio to the reference (target: at least 10x).

Needs open_clip (reference and vocabulary), tokenizers and transformers; run from the repo root.
Usage: python tools/bench_tokens.py [--n 100000] [--no-hf] [--rare 0.2]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AGES = ["young", "middle-aged", "elderly", "teenage", "young adult", "older"]
GENDERS = [("woman", "she", "her", "female"), ("man", "he", "his", "male")]
HAIR_COLORS = ["black", "dark brown", "light brown", "blonde", "auburn", "red", "gray", "white", "platinum blonde"]
HAIR_STYLES = ["long wavy", "short straight", "shoulder-length curly", "cropped", "long straight", "short curly",
               "slicked-back", "braided", "messy"]
EYES = ["brown", "blue", "green", "hazel", "gray", "dark"]
EXPRESSIONS = ["a soft smile", "a broad smile showing teeth", "a neutral expression", "a serious look",
               "a surprised expression", "a slight smirk", "a warm laugh"]
ACCESSORIES = ["small gold earrings", "silver hoop earrings", "rectangular glasses", "round sunglasses",
               "a pearl necklace", "a red baseball cap", "a black beanie", "a thin chain necklace", "no accessories"]
CLOTHES = ["a white shirt", "a navy blazer", "a red sweater", "a black turtleneck", "a striped t-shirt",
           "a denim jacket", "a green hoodie", "a beige coat"]
SHOTS = ["close-up portrait", "studio headshot", "candid photo", "portrait photograph", "high-resolution headshot"]
LIGHT = ["soft window light", "studio lighting", "natural daylight", "warm indoor light", "harsh sunlight"]
ODD = ["’s", "café", "—", "naïve", "“", "…"]


def synthetic_captions(n_images: int, seed: int = 0, rare: float = 0.0) -> list[list[str]]:
    """Ten captions per synthetic face in the caption prompts' styles, facts consistent within a face.

    `rare`: share of captions that get one made-up word (a typo, a name, a rare term): the worst case for
    a chunk cache, since every such word is new.
    """
    rng = random.Random(seed)
    images = []
    for _ in range(n_images):
        age, (noun, she, her, sex) = rng.choice(AGES), rng.choice(GENDERS)
        hair = f"{rng.choice(HAIR_STYLES)} {rng.choice(HAIR_COLORS)} hair"
        eyes, expr, acc = rng.choice(EYES), rng.choice(EXPRESSIONS), rng.choice(ACCESSORIES)
        cloth, shot, light = rng.choice(CLOTHES), rng.choice(SHOTS), rng.choice(LIGHT)
        caps = [
            f"A {shot} of a {age} {noun} with {hair}, {eyes} eyes and {expr}, wearing {acc}.",
            f"The {noun} has an oval face, thin arched eyebrows, {eyes} eyes, a straight nose and full lips.",
            f"A {shot} of a {age} {noun} with {hair}, wearing {cloth} and {acc}.",
            f"A photo of a {age} {noun} with {expr}, looking at the camera under {light}.",
            f"{age}, {sex}, {hair}, {eyes} eyes, {expr.split(' ', 1)[1]}, {acc}, {cloth.split(' ', 1)[1]}",
            f"{shot}, frontal pose, looking at camera, {light}, plain background, color, high quality",
            f"{she.capitalize()} wears {acc} and {cloth}.",
            f"{she.capitalize()} has no visible makeup; {her} eyebrows are natural and {her} skin is smooth.",
            f"{her.capitalize()} hair is {hair.replace(' hair', '')}, with a side part and no bangs.",
            f"{she.capitalize()} shows {expr}, mouth closed, eyes relaxed, head tilted slightly to the left.",
        ]
        if rng.random() < 0.3:
            i = rng.randrange(10)
            caps[i] = caps[i].replace(" ", f" {rng.choice(ODD)} ", 1)
        for i in range(10):
            if rng.random() < rare:
                word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 12)))
                caps[i] = caps[i].replace(" with ", f" with {word} ", 1).replace(", ", f", {word} ", 1)
        images.append(caps)
    return images


def timed(fn, *args) -> tuple[float, object]:
    """Wall time of fn(*args) with the cyclic GC paused, as timeit does, for every method alike: the
    results this script keeps alive (100k token lists) would otherwise bill GC scans to whoever runs next."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn(*args)
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="captions to count")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' CLIPTokenizer")
    ap.add_argument("--rare", type=float, default=0.0,
                    help="share of captions with one made-up word (0.2: ~20k never-seen words per 100k)")
    args = ap.parse_args(argv)

    from open_clip.tokenizer import SimpleTokenizer

    # open_clip sets TOKENIZERS_PARALLELISM=false on import; the pipeline never imports open_clip, so
    # give the Rust tokenizers their threads back for a fair comparison.
    os.environ.pop("TOKENIZERS_PARALLELISM", None)
    from pipeline.text.tokens import ClipCounter, load_clip_bpe

    texts = [c for caps in synthetic_captions((args.n + 9) // 10, rare=args.rare) for c in caps][: args.n]
    reference = SimpleTokenizer()
    rows = []
    secs, ref = timed(lambda: [len(reference.encode(t)) + 2 for t in texts])
    rows.append(("reference: open_clip, one by one", secs))
    if not args.no_hf:
        from transformers import CLIPTokenizer

        vocab, merges = load_clip_bpe()
        hf = CLIPTokenizer(vocab=vocab, merges=list(merges))
        secs, enc = timed(lambda: hf(texts)["input_ids"])
        rows.append(("transformers CLIPTokenizer, batched", secs))
        hf_counts = [len(e) for e in enc]
        mismatch = sum(a != b for a, b in zip(hf_counts, ref, strict=True))
        print(f"CLIPTokenizer differs from open_clip on {mismatch} caption(s) (no ftfy/HTML unescape there)")
    # Warm the process on a throwaway instance (lazy imports, first-touch allocations), as running the
    # reference first warms it for open_clip; then a fresh instance times an empty chunk cache.
    ClipCounter().count(texts[:1000])
    counter = ClipCounter()
    secs, cold = timed(counter.count, texts)
    rows.append(("ClipCounter, batched, cold cache", secs))
    secs, warm = timed(counter.count, texts)
    rows.append(("ClipCounter, batched, warm cache", secs))
    exact = list(cold) == ref and list(warm) == ref
    print(f"\nCLIP token counting: {len(texts):,} captions ({sum(not t.isascii() for t in texts):,} non-ASCII), "
          f"{len(counter._chunks):,} distinct chunks; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"counts equal to open_clip for every caption: {'yes' if exact else 'NO'}")
    base = rows[0][1]
    print(f"{'method':40s} {'captions/s':>12s} {'vs reference':>13s}")
    for name, secs in rows:
        print(f"{name:40s} {len(texts) / secs:12,.0f} {base / secs:12.1f}x")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())

"""Tiny InternVL3: the real `InternVLForConditionalGeneration` and `InternVLProcessor` at toy width.

The architecture is the released one (InternViT vision tower, pixel-shuffle 0.5 projector, Qwen2 text
decoder) with 2 layers of width 64 in each tower; the processor is the real one (GotOcr2 image
processor at 448 px, 256 image tokens per tile, left padding, the InternVL3-hf chat template); the
tokenizer is a byte-level BPE trained in-process on a small caption corpus, with the special tokens
the real model uses. Weights are random (seeded), so the generated text is gibberish, but every code
path (chat template, image token expansion, batched generate, decoding) is the real one.

`train_tokenizer()` is reusable by other tiny chat models (Qwen3 uses the same special tokens).
"""

from __future__ import annotations

from pathlib import Path

VERSION = "4"  # 4: head size 32 (vLLM's CPU attention takes 32, 64, 80, ..., not 16)
IMAGE_SIZE = 448
PATCH = 14
WEIGHT_SCALE = 15.0
# Qwen2.5's chat tokens plus InternVL's image tokens and Qwen3's thinking tags.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                  "<video>", "<think>", "</think>"]

# The chat template InternVL3-*-hf ships: no default system prompt; an image item renders as
# `<IMG_CONTEXT>\n` where it stands (our requests put it first), which the processor expands to
# `<img>` + 256 x tiles `<IMG_CONTEXT>` + `</img>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "A close-up photo of a young woman with long brown hair, smiling, wearing small gold earrings.",
    "A portrait of a middle-aged man with short gray hair, a trimmed beard and rectangular glasses.",
    "A studio photograph of an elderly woman with white curly hair and a warm, gentle expression.",
    "smiling, young adult, male, short black hair, brown eyes, clean-shaven, outdoor lighting",
    "female, blonde, wavy hair, red lipstick, eyeliner, pearl necklace, neutral expression",
    "The person wears a blue cap, silver hoop earrings and a striped shirt; the mouth is slightly open.",
    "Makeup: light foundation, pink blush, mascara and nude lipstick. Eyebrows are thin and arched.",
    "Hair: shoulder-length, straight, dark brown with a side part and bangs covering the forehead.",
    "Expression: a broad smile showing teeth, eyes slightly narrowed, head tilted to the left.",
    "A high-resolution headshot of a teenage boy with freckles, red hair and a surprised look.",
    "A black and white photograph of a bald man in his sixties with a mustache and a serious face.",
    "An astronaut in a white spacesuit holding a helmet, with an American flag in the background.",
    "Accessories: none visible. No hat, no glasses, no jewelry. Plain background, soft light.",
]


def train_tokenizer(special_tokens: list[str] = SPECIAL_TOKENS, vocab_size: int = 600):
    """A byte-level BPE (like Qwen2's) trained on `CORPUS`: a `tokenizers.Tokenizer` to wrap in
    `PreTrainedTokenizerFast(tokenizer_object=...)`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def build(out: Path) -> None:
    """InternVL3 (InternViT + Qwen2), 2 layers of width 64 per tower, real processor and chat template."""
    import torch
    from transformers import (
        GenerationConfig,
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        padding_side="left", model_max_length=4096,
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    image_processor = GotOcr2ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_to_patches=True, min_patches=1,
        max_patches=12, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3,
    )
    video_processor = InternVLVideoProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=video_processor, image_seq_length=256,
                                  chat_template=CHAT_TEMPLATE)

    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, rope_theta=1e6,
        tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[PATCH, PATCH])
    config = InternVLConfig(text_config=text.to_dict(), vision_config=vision,
                            image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=256,
                            downsample_ratio=0.5, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():  # at the default init scale every prompt decodes to one repeated token;
        for p in model.parameters():  # larger weights make the text depend on the image and prompt
            if p.dim() >= 2:
                p.mul_(WEIGHT_SCALE)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


MODELS = {"internvl3": (VERSION, build)}

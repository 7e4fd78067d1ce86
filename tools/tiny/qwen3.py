"""Tiny Qwen3: the real `Qwen3ForCausalLM` at toy width, with a real tokenizer and Qwen3's chat template.

The architecture is the released one (grouped-query attention with q/k RMS norm, SwiGLU MLP, RoPE,
tied embeddings) with 2 layers of width 64. The tokenizer is a byte-level BPE with Qwen2/Qwen3's
pre-tokenizer regex and NFC normaliser, trained in-process on caption and JSON text, with Qwen3's
special tokens. The chat template is Qwen3's, reduced to what the pipeline sends (system, user and
assistant turns; no tools) and keeping its thinking switch: `enable_thinking=False` renders the empty
`<think>\\n\\n</think>\\n\\n` block after the assistant header, exactly as the released template does.

Weights are random (seeded), so the model writes gibberish: that is what exercises the refine stage's
unparseable-output fallback end to end.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "2"  # 2: head size 32 (vLLM's CPU attention takes 32, 64, 80, ..., not 16)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>",
                  "</tool_call>"]
# Qwen2/Qwen3 pre-tokenization (tokenizer.json of Qwen/Qwen3-1.7B).
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen3's template for the cases we use (the released one also handles tools and reasoning_content).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

CORPUS = [
    "A close-up photo of a young woman with long brown hair, smiling, wearing small gold earrings.",
    "A portrait of a middle-aged man with short gray hair, a trimmed beard and rectangular glasses.",
    "An elderly woman with curly white hair and a warm expression, wearing a pearl necklace.",
    "smiling, young adult, male, short black hair, brown eyes, clean-shaven, soft lighting",
    "female, blonde, wavy hair, red lipstick, eyeliner, neutral expression, plain background",
    "The person wears a blue cap, silver hoop earrings and a striped shirt; the mouth is slightly open.",
    "Hair: shoulder-length, straight, dark brown with a side part and bangs.",
    "Expression: a broad smile showing teeth, eyes slightly narrowed, head tilted to the left.",
    "A headshot of a bald man with a mustache, looking serious, in a black and white photograph.",
    "She wears no visible accessories and no makeup; her eyebrows are thin and arched.",
    '{"captions": [{"text": "A smiling young woman with long brown hair.", "source": "fewshot_portrait"}, '
    '{"text": "A woman with brown hair and earrings.", "source": "new"}]}',
    "Captions written for one face photograph. Mask evidence: eyeglasses absent, hat absent, earrings "
    "present, necklace unknown. Write exactly 10 unique captions as JSON. Use only facts stated above.",
]


def train_tokenizer(vocab_size: int = 800):
    """A byte-level BPE with Qwen3's normaliser, pre-tokenizer and special tokens, trained on `CORPUS`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def build(out: Path) -> None:
    """Qwen3ForCausalLM, 2 layers of width 64, GQA 4/2 heads of size 32, Qwen3 chat template with enable_thinking."""
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        padding_side="left", model_max_length=8192, clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=8192,
        rope_theta=1e6, tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    # Qwen3 stops at either end token; greedy unless a caller samples.
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


MODELS = {"qwen3": (VERSION, build)}

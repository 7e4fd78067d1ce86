"""Tiny CLIP with both towers: the real `CLIPModel` (text + vision + projections), tokenizer and processor.

What the trainer's EC²Face consistency loss loads (`objective.consistency.clip`): image-text cosine needs
the vision tower and both projections, which `clip-text` (the text encoder alone) lacks. Text tower as
`clip-text` (width 32, 2 layers, 77 positions, CLIP's 49,408 ids, the real BPE tokenizer); vision tower
ViT at 32 px with 8 px patches (16 patches), width 32, 2 layers; projections to 16. The real
CLIP-ViT-H/14 is 32 layers at 224 px. Random, seeded weights; a `CLIPImageProcessor` at 32 px with CLIP's
mean/std, so the loss's preprocessing reads the size from the folder as it would for a real model.
"""

from __future__ import annotations

from pathlib import Path


def build_clip(out: Path) -> None:
    """CLIPModel (text 32 wide, ViT 32 px / patch 8), projections 16, tokenizer and image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from tools.tiny_train_models import build_clip_tokenizer

    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, hidden_act="gelu")
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    CLIPModel(config).eval().save_pretrained(out)
    build_clip_tokenizer().save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)


MODELS = {"clip-tiny": ("1", build_clip)}

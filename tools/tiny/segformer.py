"""Tiny Segformer face parser: the real `SegformerForSemanticSegmentation` with 19 CelebAMask-HQ labels.

MiT with one block per stage and widths 8/16/32/64 (the real MiT-b5 is 3/6/40/3 blocks, 64..512
wide), random weights, and a `SegformerImageProcessor` like jonathandinu/face-parsing's (ImageNet
mean/std, no label reduction) at 128x128 instead of 512x512 so tests run fast on a CPU.
"""

from __future__ import annotations

from pathlib import Path


def build_segformer(out: Path) -> None:
    """Segformer, 19 labels, 4 tiny MiT stages, processor at 128 px."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    from pipeline.data.labels import NAMES

    torch.manual_seed(0)
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=32, num_labels=len(NAMES),
        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
    )
    SegformerForSemanticSegmentation(config).eval().save_pretrained(out)
    SegformerImageProcessor(
        size={"height": 128, "width": 128}, do_reduce_labels=False,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)


MODELS = {"segformer-face-tiny": ("1", build_segformer)}

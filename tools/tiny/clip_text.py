"""Tiny CLIP text encoder (the SD2.1-base architecture at toy width) with the real CLIP tokenizer."""

from __future__ import annotations

from pathlib import Path


def _build(out: Path) -> None:
    """Tiny CLIPTextModel + CLIPTokenizer built from open_clip's bundled vocabulary."""
    from tools.tiny_train_models import build_clip_text

    build_clip_text(out)


MODELS = {"clip-text": ("1", _build)}

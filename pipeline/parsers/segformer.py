"""Segformer face parsing with transformers (`jonathandinu/face-parsing`, MiT-b5, or any 19-class copy).

The model's own image processor resizes (512x512 bilinear for the real model), rescales by 1/255 and
normalises with ImageNet statistics; background is a real class (`do_reduce_labels` false). Logits come
at 1/4 of the processor size and are upsampled bilinearly to each image's own size before the argmax,
exactly what `post_process_semantic_segmentation(outputs, target_sizes)` does.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.core.devices import batch_independent, torch_dtype
from pipeline.parsers.base import Parsed, Parser, check_label_space, logits_to_label

log = logging.getLogger(__name__)


class SegformerParser(Parser):
    """Batched Segformer inference.

    Args:
        model: hub id or local folder (config, weights and `preprocessor_config.json`).
        device: torch device string.
        dtype: `float32`, `bfloat16` or `float16` weights and activations.
        revision: hub revision (commit, tag or branch) for a hub id.
    """

    name = "segformer"

    def __init__(self, model: str, device: str, dtype: str = "float32", revision: str | None = None):
        super().__init__(device)
        import torch
        from transformers import AutoConfig, AutoImageProcessor, SegformerForSemanticSegmentation

        kw = {"revision": revision} if revision else {}
        config = AutoConfig.from_pretrained(model, **kw)
        if config.model_type != "segformer":  # said before loading its weights (and transformers' warnings)
            raise ValueError(f"{model} holds a {config.model_type!r} model, not a Segformer")
        net = SegformerForSemanticSegmentation.from_pretrained(model, config=config, **kw)
        self.warning = check_label_space(net.config.id2label, model)
        if self.warning:
            log.warning(self.warning)
        self.net = net.to(device=device, dtype=torch_dtype(dtype)).eval()
        self.dtype = torch_dtype(dtype)
        self.processor = AutoImageProcessor.from_pretrained(model, **kw)
        if getattr(self.processor, "do_reduce_labels", False):
            raise ValueError(f"{model}: its image processor reduces labels (drops background); "
                             "face parsing needs background as class 0")
        self._torch = torch

    def __call__(self, images: list[np.ndarray], aligned: list[bool]) -> list[Parsed]:
        if not images:
            return []
        torch = self._torch
        # said outright: the processor guesses channels-first for any image 1 or 3 pixels high
        pixels = self.processor(images=images, return_tensors="pt",
                                input_data_format="channels_last")["pixel_values"]
        with torch.inference_mode():
            logits = batch_independent(lambda p: self.net(pixel_values=p).logits,  # (N, 19, h/4, w/4)
                                       pixels.to(self.device, self.dtype), self.forward_batch)
            return [Parsed(logits_to_label(lg, img.shape[:2])) for lg, img in zip(logits, images, strict=True)]

"""Face parsers behind one interface: Segformer (transformers), FaRL (facer) and smp models we train.

`load_parser(name, cfg, device)` builds one from the parse stage's config; each returns CelebAMask-HQ
label maps (uint8 ids 0..18) at the image's own size. Heavy libraries are imported only by the parser
that needs them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from pipeline.parsers.base import (
    FARL_CELEBM_NAMES,
    FARL_TO_CELEBAMASK,
    Parsed,
    Parser,
    check_label_space,
    confusion,
    iou_per_class,
    mean_iou,
)

PARSER_NAMES = ("segformer", "farl", "smp")

__all__ = ["FARL_CELEBM_NAMES", "FARL_TO_CELEBAMASK", "PARSER_NAMES", "Parsed", "Parser", "check_label_space",
           "confusion", "iou_per_class", "load_parser", "mean_iou"]


def load_parser(name: str, cfg: Any, device: str) -> Parser:
    """Build parser `name` (`segformer`, `farl` or `smp`) from a `ParseConfig`; its forward passes
    always take `cfg.batch_size` images (see `core.devices.batch_independent`)."""
    parser = _build(name, cfg, device)
    parser.forward_batch = max(1, int(getattr(cfg, "batch_size", 8)))
    return parser


def _build(name: str, cfg: Any, device: str) -> Parser:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load and timm deprecations inside facer
        _quiet_transformers()
        if name == "segformer":
            from pipeline.parsers.segformer import SegformerParser

            return SegformerParser(cfg.segformer_model, device, cfg.dtype, cfg.segformer_revision)
        if name == "farl":
            from pipeline.parsers.farl import FarlParser

            return FarlParser(cfg.farl_model, cfg.farl_detector, device, cfg.detector_threshold, cfg.detector_size)
        if name == "smp":
            from pipeline.parsers.smp_parser import SmpParser

            return SmpParser(cfg.smp_model, device, cfg.dtype)
    raise ValueError(f"unknown parser {name!r}; choose one of {', '.join(PARSER_NAMES)}")


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the per-load 'Loading weights' bars drown the stage's own
    except ImportError:  # transformers is optional for the farl and smp parsers
        logging.getLogger(__name__).debug("transformers not installed")

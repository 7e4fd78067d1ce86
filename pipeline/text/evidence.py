"""Mask evidence for the judge: what a face's label map says about eyeglasses, hat, earrings and necklace.

Per item a state (present, absent, unknown from the item's pixel share against written thresholds)
and a grade saying how far to trust it: `ground_truth` where the source ships its own mask
(CelebAMask-HQ, merged by ingest into `gt_masks/`; any pixel of the item beyond noise counts),
`parsers_agree` where the primary and a second parser reach the same state, `parsers_disagree` (the
state becomes unknown) where they do not, and `single_parser` with one parser. The judge trusts only
ground_truth and parsers_agree (`pipeline.text.judge.CONFIDENT`): one parser's miss of a small stud
earring must not delete the captions that saw it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline.core.ledger import OK, Ledger

# class id of each item in the CelebAMask-HQ label space
ITEM_CLASSES = {"eyeglasses": 3, "hat": 14, "earrings": 15, "necklace": 16}
# Pixel share of the image above which a mask item counts as present, per item, and below which it
# counts as absent (between the two: unknown, no evidence either way). At 512x512 (262,144 px) a
# visible stud earring covers roughly 50-300 px (0.02-0.1%), a necklace chain 0.1-1%, eyeglass frames
# 1-3% and a hat 5-20%; parser noise on a face without the item is a scatter of a few pixels. The
# present thresholds sit well under the smallest real item of each kind and far above that noise.
PRESENT_SHARE = {"eyeglasses": 0.002, "hat": 0.005, "earrings": 0.0002, "necklace": 0.0005}
ABSENT_SHARE = 0.00002  # about 5 px at 512x512


def item_state(pixels: list[int] | None, item: str, present: dict[str, float], absent: float) -> tuple[str, float]:
    """(present/absent/unknown, pixel share) of a mask item from a label map's 19 class pixel counts."""
    total = sum(pixels or []) or 1
    share = (pixels[ITEM_CLASSES[item]] if pixels else 0) / total
    return ("present" if share >= present[item] else "absent" if share <= absent else "unknown"), share


def label_pixels(path: Path) -> list[int] | None:
    """19 class pixel counts of a label-map PNG (values 0..18); None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.bincount(np.asarray(im.convert("L")).ravel(), minlength=19)[:19].tolist()
    except (OSError, ValueError):
        return None


def ground_truth(pixels: list[int], absent: float = ABSENT_SHARE) -> dict[str, dict[str, Any]]:
    """Evidence from a source's own label map: every item present or absent, grade ground_truth."""
    total = sum(pixels) or 1
    return {item: {"state": "present" if pixels[cid] / total > absent else "absent", "grade": "ground_truth",
                   "share": round(pixels[cid] / total, 6)} for item, cid in ITEM_CLASSES.items()}


PARSE_COLUMNS = ["status", "parser", "primary", "class_pixels"]  # what evidence reads of the parse ledger


def parse_evidence(found: list[tuple[bool, str, list[int]]], present: dict[str, float],
                   absent: float = ABSENT_SHARE) -> dict[str, dict] | None:
    """One key's evidence from its ok parse rows, each `(not primary, parser, class_pixels)`; None when
    it has no primary row (its parser failed). `present` is complete (PRESENT_SHARE and overrides)."""
    found = sorted(found)
    if not found or found[0][0]:
        return None
    ev = {}
    for item in ITEM_CLASSES:
        state, share = item_state(found[0][2], item, present, absent)
        if len(found) == 1:
            ev[item] = {"state": state, "grade": "single_parser", "share": round(share, 6)}
            continue
        other, _ = item_state(found[1][2], item, present, absent)
        agree = state == other and state != "unknown"
        ev[item] = {"state": state if agree else "unknown",
                    "grade": "parsers_agree" if agree else "parsers_disagree", "share": round(share, 6)}
    return ev


def grade_evidence(out: Any, present: dict[str, float] | None = None, absent: float = ABSENT_SHARE,
                   gt_masks: dict[str, str] | None = None) -> dict[str, dict] | None:
    """key -> {item: {"state", "grade", "share"}} from a run's parse ledger and its ground-truth masks.

    None when the run has neither. `gt_masks` maps keys to label maps relative to `out`.
    """
    out = Path(out)
    present = {**PRESENT_SHARE, **(present or {})}
    evidence: dict[str, dict] = {}
    ledger = Ledger(out, "parse")
    if ledger.parts():
        t = ledger.read(["key", "status", "parser", "primary", "class_pixels"])
        t = t.filter(pc.equal(t["status"], OK))
        rows: dict[str, list[tuple[bool, str, list[int]]]] = {}
        for key, parser, primary, pixels in zip(*(t[c].to_pylist() for c in ("key", "parser", "primary",
                                                                              "class_pixels")), strict=True):
            rows.setdefault(key, []).append((not primary, parser or "", pixels))
        for key, found in rows.items():
            if (ev := parse_evidence(found, present, absent)) is not None:
                evidence[key] = ev
    for key, rel in (gt_masks or {}).items():
        pixels = label_pixels(out / rel)
        if pixels is not None:
            evidence[key] = ground_truth(pixels, absent)
    return evidence or None

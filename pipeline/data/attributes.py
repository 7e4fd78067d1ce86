"""Attribute statistics of 19-class face masks: mergeable counts, EC²Face weights and groups, one document.

`Counts` holds sums only (pixels and occurrences per class, an agreement histogram, sketch facts), so
partial results from any number of ledger parts or workers add up with `merge`. `attributes` turns the
counts per split into the `stats/attributes.json` document that the stats report renders and a trainer
reads.

EC²Face Eq. 10: with T_c the pixels of class c summed over the reference split and n_c = 19 classes,
the weight of class c is w_c = sum(T) / (n_c * T_c + 1); a pixel's weight is its class's weight.
`ec2face_weights` is the project's one implementation of it: the stats stage writes its result into
attributes.json and the trainer (`train.objectives.longtail_class_weights`) calls it on the counts it
reads back with `document_counts`, so both give the same weights for the same counts.

Groups (EC²Face Appendix A names them; the membership is computed here, never assumed), from each
class's mean pixel share s (over images) and occurrence o (share of images where the class covers at
least `min_share` of the pixels), on the reference split:
  HFA (head):   s >= hfa_share and o >= hfa_occurrence      (defaults 3% and 90%)
  RFA (rare):   s <  rfa_share and o <  rfa_occurrence      (defaults 0.1% and 30%)
  NFA (normal): every other class.
Why these defaults: in face crops the head classes (background, skin, hair, neck) each cover several
percent of every image, while the largest facial part (the nose) stays under about 2%, so 3% separates
them with a margin; earrings and necklaces occur in a minority of faces and cover well under 0.1% on
average. The thresholds are settings of the stats stage; the report and attributes.json print the rule
that was used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.labels import NAMES, NUM_CLASSES

AGREEMENT_BINS = 20


def ec2face_weights(totals: np.ndarray) -> np.ndarray:
    """EC²Face Eq. 10: w_c = sum(T) / (n_c * T_c + 1) for class pixel totals T (n_c = len(T))."""
    t = np.asarray(totals, np.float64)
    return t.sum() / (len(t) * t + 1.0)


def document_counts(doc: dict[str, Any], split: str | None = None) -> tuple[list[int], str]:
    """(T, split) from an attributes document: the per-class pixels of `split` when the document has them,
    else the EC²Face reference split's T (what `ec2face_weights` turns into the document's weights).

    A trainer passes its training split, so Eq. 10 counts the pixels it trains on; with the default stats
    settings (reference split ``train``) both give the same T.
    """
    classes = doc.get("classes") or []
    if split and len(classes) == NUM_CLASSES and all(split in c.get("pixels", {}) for c in classes):
        return [int(c["pixels"][split]) for c in classes], split
    ec = doc.get("ec2face") or {}
    totals = ec.get("T")
    if not isinstance(totals, list) or len(totals) != NUM_CLASSES:
        raise ValueError(f"not an attributes document: no {NUM_CLASSES} class pixel counts under ec2face.T")
    return [int(x) for x in totals], str(ec.get("reference_split", "all"))


def weight_map(label: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-pixel loss weights: each pixel gets its class's weight (float32, the label map's shape)."""
    return np.asarray(weights, np.float32)[np.asarray(label, np.int64)]


def groups(share: np.ndarray, occurrence: np.ndarray, rule: dict[str, float]) -> list[str]:
    """HFA / NFA / RFA per class by the thresholds in `rule` (see the module docstring)."""
    out = []
    for s, o in zip(share, occurrence, strict=True):
        if s >= rule["hfa_share"] and o >= rule["hfa_occurrence"]:
            out.append("HFA")
        elif s < rule["rfa_share"] and o < rule["rfa_occurrence"]:
            out.append("RFA")
        else:
            out.append("NFA")
    return out


@dataclass
class Counts:
    """Mergeable sums for one split: add rows with `add`, combine partial results with `merge`."""

    images: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    present: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    agreement_hist: np.ndarray = field(default_factory=lambda: np.zeros(AGREEMENT_BINS, np.int64))
    sketches: int = 0
    no_face: int = 0
    ink_sum: float = 0.0
    parsers: Counter = field(default_factory=Counter)

    def add(self, class_pixels: np.ndarray, min_share: float, parser: str, agreement: float | None,
            ink: float | None, flags: list[str]) -> None:
        self.images += 1
        self.pixels += class_pixels
        self.present += class_pixels >= max(1.0, min_share * class_pixels.sum())
        self.parsers[parser] += 1
        if agreement is not None:
            self.agreement_hist[min(int(agreement * AGREEMENT_BINS), AGREEMENT_BINS - 1)] += 1
        if ink is not None:
            self.sketches += 1
            self.ink_sum += ink
            self.no_face += "no_face" in flags

    def merge(self, other: Counts) -> Counts:
        return Counts(self.images + other.images, self.pixels + other.pixels, self.present + other.present,
                      self.agreement_hist + other.agreement_hist, self.sketches + other.sketches,
                      self.no_face + other.no_face, self.ink_sum + other.ink_sum, self.parsers + other.parsers)

    def share(self) -> np.ndarray:
        """Mean pixel share per class (every mask counts at the same resolution, so pixels / total)."""
        return self.pixels / max(1, self.pixels.sum())

    def occurrence(self) -> np.ndarray:
        return self.present / max(1, self.images)


def reference_counts(per_split: dict[str, Counts], split: str) -> tuple[str, Counts]:
    """(name, counts) of the split that defines weights and groups: `split` if it has images, else all."""
    if per_split.get(split) and per_split[split].images:
        return split, per_split[split]
    total = Counts()
    for c in per_split.values():
        total = total.merge(c)
    return "all", total


SPLIT_ORDER = ("train", "val", "test")


def ordered_splits(per_split: dict[str, Counts]) -> list[str]:
    return sorted(per_split, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 9, s))


def attributes(per_split: dict[str, Counts], low: list[tuple[float, str]], *, resolution: int, min_share: float,
               reference_split: str, rule: dict[str, float], low_threshold: float) -> dict[str, Any]:
    """The JSON document: per-class shares, occurrence, EC²Face weights and groups, agreement, sketches.

    Args:
        per_split: merged counts per split.
        low: (agreement, key) of the keys whose parser agreement is below `low_threshold`, lowest first.
        resolution: side of the square the masks were counted at.
        min_share: share of an image a class must cover to occur in it.
        reference_split: split whose counts define the weights and groups (all data when it is empty).
        rule: the group thresholds (`hfa_share`, `hfa_occurrence`, `rfa_share`, `rfa_occurrence`).
        low_threshold: the agreement below which keys are listed.
    """
    splits = ordered_splits(per_split)
    total = Counts()
    for c in per_split.values():
        total = total.merge(c)
    ref_name, ref = reference_counts(per_split, reference_split)
    weights = ec2face_weights(ref.pixels)
    group = groups(ref.share(), ref.occurrence(), rule)
    views = {"all": total, **{s: per_split[s] for s in splits}}
    return {
        "version": 1,
        "resolution": resolution,
        "min_share": min_share,
        "images": {k: v.images for k, v in views.items()},
        "classes": [{
            "id": i, "name": NAMES[i], "group": group[i], "ec2face_weight": float(weights[i]),
            "pixel_share": {k: float(v.share()[i]) for k, v in views.items()},
            "occurrence": {k: float(v.occurrence()[i]) for k, v in views.items()},
            "pixels": {k: int(v.pixels[i]) for k, v in views.items()},
        } for i in range(len(NAMES))],
        "ec2face": {"reference_split": ref_name, "n_classes": len(NAMES),
                    "formula": "w_c = sum(T) / (n_c * T_c + 1)", "T": ref.pixels.tolist(),
                    "weights": weights.tolist()},
        "groups": {"reference_split": ref_name, "rule": rule, "text": rule_text(rule),
                   **{g: [NAMES[i] for i in range(len(NAMES)) if group[i] == g] for g in ("HFA", "NFA", "RFA")}},
        "parsers": dict(total.parsers),
        "agreement": {"bins": AGREEMENT_BINS, "histogram": total.agreement_hist.tolist(),
                      "low_threshold": low_threshold, "low_count": len(low),
                      "low_keys": [{"key": k, "agreement": a} for a, k in low[:100]]},
        "sketch": {"images": total.sketches, "no_face": total.no_face,
                   "ink_mean": total.ink_sum / total.sketches if total.sketches else None},
    }


def rule_text(rule: dict[str, float]) -> str:
    return (f"HFA: mean pixel share >= {rule['hfa_share']:.2%} and occurrence >= {rule['hfa_occurrence']:.0%}; "
            f"RFA: mean pixel share < {rule['rfa_share']:.2%} and occurrence < {rule['rfa_occurrence']:.0%}; "
            "NFA: every other class.")

"""Score sets of generated faces against the real ones: every metric of ``train.metrics``, per set and pooled.

``Scorer`` loads the metric models once (a missing one fails here, before any sampling) and ``score`` takes
the conditions, the generated faces of each condition type and the EC²Face groups. The face parser is not
imported here: the caller passes ``masker(images, masks) -> confusion matrices`` (``train.evaluate`` builds
it from ``pipeline.parsers``), which keeps this file on the data contracts like the rest of the trainer.

Scores of a set: FID (the set against all the split's real images), means over its faces of LPIPS and
MS-SSIM (each face against the real face of its condition), CLIP score / distance / image distance and
NIQE, and mask pixel accuracy / mIoU from the confusion matrix summed over its faces (overall and per
EC²Face group). ``reference`` scores the real images the same way: the parser's agreement with the
condition masks (the ceiling of the mask scores), the real faces' CLIP score and NIQE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from train.config import ConfigError
from train.metrics import (
    Clip,
    FrechetReference,
    Lpips,
    MetricOptions,
    clip_scores,
    gaussian,
    load_fid,
    mask_scores,
    ms_ssim,
)
from train.niqe import MIN_SIDE, load_params, pristine_model

Masker = Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]


def _mean(x) -> float | None:
    x = np.asarray(x, np.float64)
    return float(x.mean()) if x.size else None


class Scorer:
    """The metric models, loaded once.

    Args:
        options: which weights (``MetricOptions``); ``skip`` leaves metrics out.
        masker: images + condition masks -> one 19x19 confusion matrix per image; required unless ``mask`` is skipped.
        device: where the networks run.
    """

    def __init__(self, options: MetricOptions, masker: Masker | None, device: torch.device):
        self.o, self.masker, self.device, self.models = options, masker, device, {}
        self.fid = self.lpips = self.clip = None
        if options.wants("fid"):
            self.fid, self.models["fid"] = load_fid(options.fid_weights, options.fid_size, device)
        if options.wants("lpips"):
            self.lpips = Lpips(options.lpips_net, options.lpips_weights, device)
            self.models["lpips"] = self.lpips.info
        if options.wants("clip"):
            if not options.clip:
                raise ConfigError("--clip: give a CLIPModel folder or hub id, or --skip clip")
            self.clip = Clip(options.clip, device)
            self.models["clip"] = self.clip.info
        if options.wants("niqe") and options.niqe_params:
            try:
                load_params(options.niqe_params)
            except (OSError, KeyError, ValueError) as e:
                raise ConfigError(f"--niqe-params: {e}") from None
        if options.wants("mask") and masker is None:
            raise ConfigError("mask metrics need the face parser (or --skip mask)")

    def _fid(self, fake: np.ndarray) -> float | None:
        if len(fake) < 2:
            return None
        self.fid.reset()  # keeps the real features (reset_real_features=False)
        for i in range(0, len(fake), 32):
            self.fid.update(torch.from_numpy(fake[i : i + 32]).permute(0, 3, 1, 2).to(self.device), real=False)
        return self.fid_real.distance(*gaussian(self.fid, real=False))

    def _per_image(self, images: np.ndarray, index: np.ndarray, real: np.ndarray, masks: list, text_emb, real_emb,
                   niqe) -> dict[str, np.ndarray]:
        """Per-face scores of one set of faces (`index`: the condition of each)."""
        out: dict[str, np.ndarray] = {}
        if self.lpips is not None:
            out["lpips"] = self.lpips(images, real[index])
        if self.o.wants("ms_ssim"):
            out["ms_ssim"], self.models["ms_ssim"] = ms_ssim(images, real[index])
        if self.clip is not None:
            out.update(clip_scores(self.clip.images(images), text_emb[index], real_emb[index]))
        if niqe is not None:
            out["niqe"] = np.array([niqe.score(im) for im in images])
        if self.masker is not None and self.o.wants("mask"):
            has = np.array([masks[i] is not None for i in index])
            full = np.zeros((len(images), 19, 19), np.int64)  # faces of conditions without a mask add nothing
            if has.any():
                full[has] = np.stack(self.masker(images[has], [masks[i] for i in index[has]]))
            out["confusion"] = full
        return out

    def _summary(self, per: dict[str, np.ndarray], images: np.ndarray, groups: dict, n_conditions: int) -> dict:
        s: dict = {"images": len(images), "conditions": n_conditions}
        if self.fid is not None:
            s["fid"] = self._fid(images)
        for k, v in per.items():
            if k == "confusion":
                m = mask_scores(v.sum(0), {g: groups[g] for g in ("HFA", "NFA", "RFA")})
                s.update({"mask_pixel_accuracy": m["pixel_accuracy"], "mask_miou": m["miou"],
                          "mask_groups": m["groups"], "mask_per_class_iou": m["per_class_iou"]})
            else:
                s[k] = _mean(v)
        return s

    def score(self, conditions, generated: dict, groups: dict) -> tuple[dict, dict]:
        """(report, per-face scores per set): ``metrics`` per condition type and ``overall``, ``reference``,
        ``models`` and ``notes``; the per-face scores feed the sample page."""
        real = np.stack([c.image for c in conditions])
        size = next(iter(generated.values())).images.shape[1:3] if generated else real.shape[1:3]
        if real.shape[1:3] != size:
            raise ConfigError(f"real images are {real.shape[1:3]}, generated {size}: the shards' resolution differs")
        masks = [c.mask for c in conditions]
        text_emb = real_emb = niqe = None
        notes = []
        if self.clip is not None:
            text_emb, real_emb = self.clip.texts([c.caption for c in conditions]), self.clip.images(real)
        if self.o.wants("niqe"):
            niqe = pristine_model(self.o.niqe_params, list(real))
            self.models["niqe"] = {"pristine_model": niqe.source, "standard": niqe.standard, "block": 96,
                                   "upscaled_from": int(min(size)) if min(size) < MIN_SIDE else None}
            if not niqe.standard:
                notes.append("NIQE: no standard pristine model (pass --niqe-params, or install basicsr --no-deps for "
                             "the MATLAB release's): fitted on this split's real images, so it measures distance from "
                             "their statistics and is not comparable with published NIQE")
        if self.fid is not None:
            self.fid.reset_real_features = True
            self.fid.reset()
            self.fid.reset_real_features = False
            for i in range(0, len(real), 32):
                self.fid.update(torch.from_numpy(real[i : i + 32]).permute(0, 3, 1, 2).to(self.device), real=True)
            self.fid_real = FrechetReference(*gaussian(self.fid, real=True))
            if not self.models["fid"]["standard"]:
                notes.append("FID: not the standard FID Inception; compare only with runs scored by the same network")
            notes.append(f"FID from {len(real)} real images; it is biased upward for small sets: compare sets of equal size")
        per = {k: self._per_image(g.images, g.index, real, masks, text_emb, real_emb, niqe) for k, g in generated.items()}
        metrics = {k: self._summary(per[k], g.images, groups, len(set(g.index.tolist()))) for k, g in generated.items()}
        if len(generated) == 1:  # one set: overall is that set (no second FID of the same images)
            metrics = {"overall": dict(next(iter(metrics.values()))), **metrics}
        elif generated:
            pooled = {m: np.concatenate([per[k][m] for k in per]) for m in per[next(iter(per))]}
            fake = np.concatenate([g.images for g in generated.values()])
            metrics = {"overall": self._summary(pooled, fake, groups, len(conditions)), **metrics}
        reference = {"images": len(real)}
        if self.masker is not None and self.o.wants("mask"):
            has = [i for i, m in enumerate(masks) if m is not None]
            conf = np.sum(self.masker(real[has], [masks[i] for i in has]), axis=0) if has else np.zeros((19, 19), np.int64)
            m = mask_scores(conf, {g: groups[g] for g in ("HFA", "NFA", "RFA")})
            reference.update({"mask_pixel_accuracy": m["pixel_accuracy"], "mask_miou": m["miou"], "mask_groups": m["groups"]})
        if self.clip is not None:
            reference["clip_score"] = _mean((100 * (real_emb * text_emb).sum(-1).clamp(min=0)).cpu().numpy())
        if niqe is not None:
            reference["niqe"] = _mean([niqe.score(im) for im in real])
        return {"metrics": metrics, "reference": reference, "models": self.models, "notes": notes}, per


def real_as_generated(conditions) -> dict:
    """The real faces posing as one set of generated faces (a sanity check: FID 0, LPIPS 0, MS-SSIM 1)."""
    from train.generation import Generated

    return {"mask": Generated("mask", np.stack([c.image for c in conditions]), np.arange(len(conditions)),
                              [0] * len(conditions))}


"""Training objectives and samplers for MMFace-DiT, kept apart from the network (minRF style).

- ``RectifiedFlow``: x0 = noise, x1 = data, z_t = (1 - t) x0 + t x1, target v = x1 - x0, t ~ U(0, 1) or
  logit-normal; the network sees t * 999 (the public code's scale). Sampling: Euler from t = 0 to 1.
- ``DDPM``: the diffusers ``DDPMScheduler`` schedule of SD2.1-base (scaled_linear 0.00085..0.012, 1000 steps,
  epsilon), Min-SNR-gamma loss weights min(SNR, gamma) / SNR; sampling with ``DPMSolverMultistepScheduler``.
- Classifier-free guidance over text only: the unconditional branch gets the empty caption and the null
  pooled vector while the mask/sketch latent stays in both branches (as the public code does).
- EC²Face long-tail weights: Eq. 10 per class (``pipeline.data.attributes.ec2face_weights``, the one
  implementation), clamped, area-averaged to the latent grid, and applied as Eq. 11 puts them: inside the
  squared norm, || w ⊙ (target − prediction) ||², so a position counts w² (``weighted_mse``).
- ``loss(..., extra=fn)`` adds ``fn(x̂, noise_level)`` to the loss, with x̂ the clean latent the objective
  reverse-estimates from the prediction (EC²Face's explicit conditional consistency, ``train.consistency``).

Randomness comes from an explicit ``torch.Generator`` so a training step is a pure function of its seed,
which is what makes resume exact. diffusers is imported lazily: the network and the rectified-flow objective
need only torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

T_SCALE = 999.0  # rectified-flow t in [0, 1] is embedded on the DDPM 0..999 scale
Cond = dict[str, torch.Tensor]  # cond, modality, text, pooled, drop_text: the network's keyword inputs


LONGTAIL_MODES = ("eq11", "linear")


def weighted_mse(pred, target, weight=None, sample_weight=None, longtail_mode: str = "eq11") -> torch.Tensor:
    """Mean squared error over (C, H, W), weighted per latent position by `weight` (B, H, W) and per sample (B,).

    ``eq11`` (EC²Face Eq. 11, the default): mean of (w ⊙ (pred − target))², the weight inside the squared
    norm, so a position's error counts w². The paper's norm is a sum; the mean differs by the constant C·H·W.
    ``linear``: mean of w ⊙ (pred − target)², the weight outside (a position counts w). Kept for two reasons:
    runs trained before Eq. 11 was followed used it, and resuming one must not change its objective; and
    its dataset-average weight is Eq. 10's ≤ 1 (Σ_c T_c w_c / ΣT = Σ_c T_c / (n_c T_c + 1)), so the
    unweighted loss's learning rate and gradient clip carry over unchanged, which w² does not promise.
    """
    if longtail_mode not in LONGTAIL_MODES:
        raise ValueError(f"longtail_mode must be one of {', '.join(LONGTAIL_MODES)}, got {longtail_mode!r}")
    diff = pred.float() - target.float()  # (B, C, H, W)
    if weight is not None and longtail_mode == "eq11":
        diff = weight[:, None].float() * diff  # w ⊙ (ε − ε_θ), then the square
        weight = None
    err = diff.pow(2).mean(dim=1)  # (B, H, W)
    if weight is not None:
        err = err * weight
    per_sample = err.mean(dim=(1, 2))
    if sample_weight is not None:
        per_sample = per_sample * sample_weight
    return per_sample.mean()


def guided(model: Callable, z, t, c: Cond, uc: Cond | None, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: u + s * (c - u), both branches in one batch; plain prediction when s == 1."""
    if uc is None or cfg_scale == 1.0:
        return model(z, t, **c)
    both = {k: torch.cat([c[k], uc[k]]) for k in c}
    cond, uncond = model(torch.cat([z, z]), torch.cat([t, t]), **both).chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def uncond_like(c: Cond, empty_text: torch.Tensor, empty_pooled: torch.Tensor) -> Cond:
    """The unconditional branch: empty-caption hidden states, null pooled vector, same mask/sketch latent."""
    b = c["text"].shape[0]
    return {**c, "text": empty_text.expand(b, -1, -1).to(c["text"]),
            "pooled": empty_pooled.expand(b, -1).to(c["pooled"]),
            "drop_text": torch.ones(b, dtype=torch.bool, device=c["text"].device)}


class RectifiedFlow:
    """Rectified flow (minRF): straight paths from noise (t = 0) to data (t = 1).

    Args:
        t_sampling: ``uniform`` (the paper) or ``logit_normal`` (SD3's sigmoid of a normal).
        logit_mean: mean of the normal before the sigmoid.
        logit_std: standard deviation of the normal before the sigmoid.
        longtail_mode: how per-position weights enter the loss: ``eq11`` (w²) or ``linear`` (w); see ``weighted_mse``.
    """

    def __init__(self, t_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 longtail_mode: str = "eq11"):
        if t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"t_sampling must be uniform or logit_normal, got {t_sampling!r}")
        self.t_sampling, self.logit_mean, self.logit_std = t_sampling, logit_mean, logit_std
        self.longtail_mode = longtail_mode

    def sample_t(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        if self.t_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, device=device))

    @staticmethod
    def estimate_data(z, t, v) -> torch.Tensor:
        """x̂1 = z + (1 − t) v̂: the straight path extrapolated to t = 1 from the predicted velocity."""
        return z.float() + (1 - t.float()).view(-1, 1, 1, 1) * v.float()

    @staticmethod
    def noise_level(t) -> torch.Tensor:
        """1 at pure noise (t = 0), 0 at the data (t = 1)."""
        return 1 - t.float()

    def loss(self, model, x1, c: Cond, weight=None, generator=None, extra: Callable | None = None) -> torch.Tensor:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        t = self.sample_t(x1.shape[0], generator, x1.device)
        te = t.view(-1, 1, 1, 1)
        z = (1 - te) * x0 + te * x1
        v = model(z, t * T_SCALE, **c)
        loss = weighted_mse(v, x1 - x0, weight, None, self.longtail_mode)
        if extra is not None:
            loss = loss + extra(self.estimate_data(z, t, v), self.noise_level(t))
        return loss

    @torch.no_grad()
    def sample(self, model, noise, c: Cond, uc: Cond | None = None, steps: int = 50, cfg_scale: float = 7.5):
        z, dt = noise, 1.0 / steps
        for i in range(steps):
            t = torch.full((z.shape[0],), i * dt * T_SCALE, device=z.device)
            z = z + dt * guided(model, z, t, c, uc, cfg_scale).float()
        return z


class DDPM:
    """DDPM with Min-SNR-gamma weighting on SD2.1-base's schedule; DPM-Solver++ sampling.

    Args:
        min_snr_gamma: gamma of min(SNR, gamma) / SNR (5, the Min-SNR paper's default); None: unweighted.
        prediction_type: ``epsilon`` (SD2.1-base) or ``v_prediction`` (weight min(SNR, gamma) / (SNR + 1)).
        longtail_mode: how per-position weights enter the loss: ``eq11`` (w²) or ``linear`` (w); see ``weighted_mse``.
    """

    def __init__(self, min_snr_gamma: float | None = 5.0, prediction_type: str = "epsilon",
                 longtail_mode: str = "eq11"):
        from diffusers import DDPMScheduler

        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
        self.min_snr_gamma, self.prediction_type, self.longtail_mode = min_snr_gamma, prediction_type, longtail_mode
        self.scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type=prediction_type, clip_sample=False, steps_offset=1,
        )
        self.num_timesteps = self.scheduler.config.num_train_timesteps

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        ac = self.scheduler.alphas_cumprod.to(t.device)[t]
        return ac / (1 - ac)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor | None:
        if self.min_snr_gamma is None:
            return None
        snr = self.snr(t)
        clipped = torch.clamp(snr, max=self.min_snr_gamma)
        return clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)

    def estimate_data(self, z, t, pred) -> torch.Tensor:
        """x̂0 from the prediction: (z − √(1−ᾱ) ε̂) / √ᾱ for epsilon, √ᾱ z − √(1−ᾱ) v̂ for v-prediction."""
        ac = self.scheduler.alphas_cumprod.to(z.device)[t].float().view(-1, 1, 1, 1)
        z, pred = z.float(), pred.float()
        if self.prediction_type == "epsilon":
            return (z - (1 - ac).sqrt() * pred) / ac.sqrt()
        return ac.sqrt() * z - (1 - ac).sqrt() * pred

    def noise_level(self, t) -> torch.Tensor:
        """t / (T − 1): 0 at the first step (nearly clean), 1 at the last (nearly pure noise)."""
        return t.float() / (self.num_timesteps - 1)

    def loss(self, model, x0, c: Cond, weight=None, generator=None, extra: Callable | None = None) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        z = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        pred = model(z, t.float(), **c)
        loss = weighted_mse(pred, target, weight, self.loss_weight(t), self.longtail_mode)
        if extra is not None:
            loss = loss + extra(self.estimate_data(z, t, pred), self.noise_level(t))
        return loss

    @torch.no_grad()
    def sample(self, model, noise, c: Cond, uc: Cond | None = None, steps: int = 50, cfg_scale: float = 7.5):
        from diffusers import DPMSolverMultistepScheduler

        solver = DPMSolverMultistepScheduler.from_config(self.scheduler.config)
        solver.set_timesteps(steps, device=noise.device)
        z = noise * solver.init_noise_sigma
        for t in solver.timesteps:
            tt = t.expand(z.shape[0]).float()
            z = solver.step(guided(model, z, tt, c, uc, cfg_scale).float(), t, z).prev_sample
        return z


def make_objective(kind: str, **kw) -> RectifiedFlow | DDPM:
    mode = kw.get("longtail_mode", "eq11")
    if kind == "rf":
        return RectifiedFlow(kw.get("t_sampling", "uniform"), kw.get("logit_mean", 0.0), kw.get("logit_std", 1.0), mode)
    if kind == "ddpm":
        return DDPM(kw.get("min_snr_gamma", 5.0), kw.get("prediction_type", "epsilon"), mode)
    raise ValueError(f"objective must be rf or ddpm, got {kind!r}")


DEFAULT_CLAMP = (0.0, 10.0)


def longtail_class_weights(class_counts, clamp: tuple[float, float] | list[float] | None = DEFAULT_CLAMP,
                           normalize: int | None = None) -> np.ndarray:
    """EC²Face Eq. 10 per class (``pipeline.data.attributes.ec2face_weights``), clamped: clip(s · w, min, max).

    ``normalize = p`` picks the one factor s that makes the dataset-average position weight w^p exactly 1
    (p = 2 under Eq. 11, 1 under ``linear``; the trainer's default); without it s = 1. Either way every
    final weight lies in ``clamp``.

    Why a clamp: Eq. 10 is unbounded. A class seen in one stray pixel of the whole dataset (T_c = 1) gets
    ΣT / (n_c + 1), about 10⁹ for 100K masks at 512², and Eq. 11 squares it: that one latent position would
    outweigh every other position of the run. Why max 10: w = 1 is a class of average share (1/n_c of the
    pixels); 10 saturates every class under a tenth of that (share < 0.53%: earrings, necklaces, eyes,
    brows, lips on face crops) at one weight, so under Eq. 11 no position counts more than 10² = 100 times
    an average one. The min stays 0: the paper lets frequent classes weigh little. ``None``: no clamp.

    Why normalise: Eq. 10 keeps the dataset average of w near 1, but not of w²: on CelebAMask-HQ-like
    shares the average w² is ~29 unclamped and ~3 clamped. One constant factor, fitted on the dataset's own
    counts, brings it to 1, so the gradient clip, learning rate and the consistency loss's λ keep the scale
    of the unweighted loss. Not per image: that would make a class's weight depend on what else is in the
    image (an earring would lower its face's skin), which Eq. 10 does not do.
    """
    from pipeline.data.attributes import ec2face_weights

    counts = np.asarray(class_counts, np.float64)
    w = ec2face_weights(counts)
    lo, hi = clamp if clamp is not None else (0.0, np.inf)
    if lo > hi:
        raise ValueError(f"clamp must be [min, max] with min <= max, got {list(clamp)}")
    scale = 1.0
    if normalize and counts.sum() > 0:
        def mean_w(s: float) -> float:  # dataset-average clip(s w)^p over pixels; non-decreasing in s
            return float((counts * np.clip(s * w, lo, hi) ** normalize).sum() / counts.sum())

        a, b = -30.0, 30.0  # bisection on log s
        for _ in range(200):
            m = (a + b) / 2
            a, b = (m, b) if mean_w(np.exp(m)) < 1.0 else (a, m)
        scale = float(np.exp((a + b) / 2))
    return np.clip(scale * w, lo, hi).astype(np.float32)


def longtail_weight_map(label: np.ndarray, class_weights: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """Per-pixel Eq. 10 weights of a (H, W) label map, area-averaged to the latent grid (h, w)."""
    label = np.asarray(label)
    if label.max(initial=0) >= len(class_weights):
        raise ValueError(f"label map has id {int(label.max())}, beyond the {len(class_weights)} classes")
    pixels = torch.from_numpy(class_weights[label.astype(np.int64)])[None, None]  # (1, 1, H, W)
    return F.adaptive_avg_pool2d(pixels, latent_hw)[0, 0].numpy()

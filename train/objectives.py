"""Training objectives and samplers for MMFace-DiT, kept apart from the network (minRF style).

- ``RectifiedFlow``: x0 = noise, x1 = data, z_t = (1 - t) x0 + t x1, target v = x1 - x0, t ~ U(0, 1) or
  logit-normal; the network sees t * 999 (the public code's scale). Sampling: Euler from t = 0 to 1.
- ``DDPM``: the diffusers ``DDPMScheduler`` schedule of SD2.1-base (scaled_linear 0.00085..0.012, 1000 steps,
  epsilon), Min-SNR-gamma loss weights min(SNR, gamma) / SNR; sampling with ``DPMSolverMultistepScheduler``.
- Classifier-free guidance over text only: the unconditional branch gets the empty caption and the null
  pooled vector while the mask/sketch latent stays in both branches (as the public code does).
- EC²Face long-tail weights (its Eq. 10) per latent position from a label map and the dataset's class counts.

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


def weighted_mse(pred, target, weight=None, sample_weight=None) -> torch.Tensor:
    """Mean squared error, averaged over channels, weighted per latent position (B, H, W) and per sample (B,)."""
    err = (pred.float() - target.float()).pow(2).mean(dim=1)  # (B, H, W)
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
    """

    def __init__(self, t_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0):
        if t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"t_sampling must be uniform or logit_normal, got {t_sampling!r}")
        self.t_sampling, self.logit_mean, self.logit_std = t_sampling, logit_mean, logit_std

    def sample_t(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        if self.t_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, device=device))

    def loss(self, model, x1, c: Cond, weight=None, generator=None) -> torch.Tensor:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        t = self.sample_t(x1.shape[0], generator, x1.device)
        te = t.view(-1, 1, 1, 1)
        z = (1 - te) * x0 + te * x1
        return weighted_mse(model(z, t * T_SCALE, **c), x1 - x0, weight)

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
    """

    def __init__(self, min_snr_gamma: float | None = 5.0, prediction_type: str = "epsilon"):
        from diffusers import DDPMScheduler

        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
        self.min_snr_gamma, self.prediction_type = min_snr_gamma, prediction_type
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

    def loss(self, model, x0, c: Cond, weight=None, generator=None) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        z = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        return weighted_mse(model(z, t.float(), **c), target, weight, self.loss_weight(t))

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
    if kind == "rf":
        return RectifiedFlow(kw.get("t_sampling", "uniform"), kw.get("logit_mean", 0.0), kw.get("logit_std", 1.0))
    if kind == "ddpm":
        return DDPM(kw.get("min_snr_gamma", 5.0), kw.get("prediction_type", "epsilon"))
    raise ValueError(f"objective must be rf or ddpm, got {kind!r}")


def longtail_class_weights(class_counts) -> np.ndarray:
    """EC²Face Eq. 10 per class: w_c = (sum_k T_k) / (n_c * T_c + 1), n_c = number of classes.

    Averaged over the dataset's pixels this is ~1 (each present class contributes T_c / (n_c T_c + 1)), so the
    weighted loss keeps the unweighted loss's scale and learning rate.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    return (counts.sum() / (len(counts) * counts + 1.0)).astype(np.float32)


def longtail_weight_map(label: np.ndarray, class_weights: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """Per-pixel Eq. 10 weights of a (H, W) label map, area-averaged to the latent grid (h, w)."""
    label = np.asarray(label)
    if label.max(initial=0) >= len(class_weights):
        raise ValueError(f"label map has id {int(label.max())}, beyond the {len(class_weights)} classes")
    pixels = torch.from_numpy(class_weights[label.astype(np.int64)])[None, None]  # (1, 1, H, W)
    return F.adaptive_avg_pool2d(pixels, latent_hw)[0, 0].numpy()

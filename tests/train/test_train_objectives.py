"""Objectives apart from the network: noising conventions, samplers, CFG, Min-SNR weights, EC²Face weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.objectives import (
    DDPM,
    RectifiedFlow,
    guided,
    longtail_class_weights,
    longtail_weight_map,
    uncond_like,
)


class RFOracle(torch.nn.Module):
    """The exact velocity towards one data point x*: v = (x* - z) / (1 - t), with t given on the 0..999 scale."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, z, t, **c):
        return (self.target - z) / (1 - t / 999.0).view(-1, 1, 1, 1)


class EpsOracle(torch.nn.Module):
    """The exact noise for one data point x*: eps = (z - sqrt(a) x*) / sqrt(1 - a)."""

    def __init__(self, target, alphas_cumprod):
        super().__init__()
        self.target, self.ac = target, alphas_cumprod

    def forward(self, z, t, **c):
        a = self.ac[t.round().long()].view(-1, 1, 1, 1).to(z)
        return (z - a.sqrt() * self.target) / (1 - a).sqrt()


def cond(b=4, c=4, hw=8):
    return {"cond": torch.zeros(b, c, hw, hw), "modality": torch.zeros(b, dtype=torch.long),
            "text": torch.zeros(b, 3, 8), "pooled": torch.zeros(b, 8), "drop_text": torch.zeros(b, dtype=torch.bool)}


@pytest.mark.parametrize("t_sampling", ["uniform", "logit_normal"])
def test_rectified_flow_oracle_has_zero_loss_and_euler_lands_on_the_data(t_sampling):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, 4, 8, 8, generator=g).double()
    rf = RectifiedFlow(t_sampling)
    loss = rf.loss(RFOracle(x1), x1, cond(), generator=g)  # z = (1 - t) x0 + t x1, v = x1 - x0
    assert loss.item() < 1e-12
    wrong = rf.loss(RFOracle(-x1), x1, cond(), generator=g)
    assert wrong.item() > 0.1
    out = rf.sample(RFOracle(x1), torch.randn(4, 4, 8, 8, generator=g).double(), cond(), steps=10, cfg_scale=1.0)
    torch.testing.assert_close(out, x1)


def test_logit_normal_concentrates_t_in_the_middle():
    g = torch.Generator().manual_seed(0)
    t_u = RectifiedFlow("uniform").sample_t(20_000, g, "cpu")
    t_ln = RectifiedFlow("logit_normal").sample_t(20_000, g, "cpu")
    assert t_ln.min() > 0 and t_ln.max() < 1
    middle = lambda t: ((t > 0.25) & (t < 0.75)).float().mean().item()  # noqa: E731
    assert middle(t_u) == pytest.approx(0.5, abs=0.02) and middle(t_ln) > 0.65


def test_ddpm_uses_sd21_base_schedule_and_min_snr_weights():
    ddpm = DDPM(min_snr_gamma=5.0)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(ddpm.scheduler.alphas_cumprod.double(), ac, atol=1e-6, rtol=1e-5)
    t = torch.tensor([0, 50, 100, 500, 999])
    snr = ac[t] / (1 - ac[t])
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr
    torch.testing.assert_close(ddpm.loss_weight(t).double(), expected, atol=1e-5, rtol=1e-4)
    assert ddpm.loss_weight(torch.tensor([999])).item() == pytest.approx(1.0)  # noisy steps keep full weight
    assert DDPM(min_snr_gamma=None).loss_weight(t) is None


def test_ddpm_oracle_has_zero_loss_and_dpm_solver_lands_on_the_data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    ddpm = DDPM()
    oracle = EpsOracle(x0, ddpm.scheduler.alphas_cumprod)
    assert ddpm.loss(oracle, x0, cond(), generator=g).item() < 1e-6
    assert ddpm.loss(EpsOracle(-x0, ddpm.scheduler.alphas_cumprod), x0, cond(), generator=g).item() > 0.01
    out = ddpm.sample(oracle, torch.randn(4, 4, 8, 8, generator=g), cond(), steps=20, cfg_scale=1.0)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def test_cfg_guides_text_and_keeps_the_condition_in_both_branches():
    seen = []

    def model(z, t, cond, modality, text, pooled, drop_text):
        seen.append(cond.clone())
        # "conditional" prediction 3, "unconditional" 1, plus the condition latent, so both are visible
        return torch.where(drop_text.view(-1, 1, 1, 1), 1.0, 3.0) + cond

    c = cond(b=2)
    c["cond"] = torch.full_like(c["cond"], 0.5)
    uc = uncond_like(c, torch.zeros(1, 3, 8), torch.zeros(1, 8))
    assert uc["drop_text"].all() and torch.equal(uc["cond"], c["cond"])
    out = guided(model, torch.zeros(2, 4, 8, 8), torch.zeros(2), c, uc, cfg_scale=7.5)
    torch.testing.assert_close(out, torch.full_like(out, 1.5 + 7.5 * (3.5 - 1.5)))
    assert torch.equal(seen[-1], torch.full((4, 4, 8, 8), 0.5))  # one batch: cond and uncond, same latent
    torch.testing.assert_close(guided(model, torch.zeros(2, 4, 8, 8), torch.zeros(2), c, uc, 1.0),
                               torch.full((2, 4, 8, 8), 3.5))


def test_longtail_weights_follow_eq10_and_average_one():
    counts = np.array([4000, 2000, 1000, 10] + [100] * 15, np.int64)
    w = longtail_class_weights(counts, clamp=None)  # Eq. 10 itself: no clamp, no normalisation
    np.testing.assert_allclose(w, counts.sum() / (19 * counts + 1), rtol=1e-6)
    assert w[3] > w[0]  # the rare class weighs more
    assert float((counts * w).sum() / counts.sum()) == pytest.approx(1.0, abs=0.01)  # dataset average ~1


def test_longtail_map_is_area_averaged_to_the_latent_grid():
    w = np.arange(1, 20, dtype=np.float32)  # weight of class c = c + 1
    label = np.zeros((16, 16), np.uint8)
    label[:8, :8] = 3  # top-left latent cell all class 3
    label[8:, 8:12] = 5  # bottom-right cell: half class 5, half class 0
    m = longtail_weight_map(label, w, (2, 2))
    np.testing.assert_allclose(m, [[4.0, 1.0], [1.0, (6.0 + 1.0) / 2]])
    with pytest.raises(ValueError, match="beyond the 19 classes"):
        longtail_weight_map(np.full((8, 8), 19, np.uint8), w, (1, 1))


def test_weighted_loss_counts_heavier_positions_more():
    from train.objectives import weighted_mse

    pred, target = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    target[..., 0, 0] = 1.0  # error only at one position
    weight = torch.ones(1, 2, 2)
    assert weighted_mse(pred, target).item() == pytest.approx(0.25)
    weight[0, 0, 0] = 4.0
    assert weighted_mse(pred, target, weight, longtail_mode="linear").item() == pytest.approx(1.0)  # w
    assert weighted_mse(pred, target, weight).item() == pytest.approx(4.0)  # Eq. 11: w² = 16 at one of 4
    assert weighted_mse(pred, target, None, torch.tensor([0.5])).item() == pytest.approx(0.125)

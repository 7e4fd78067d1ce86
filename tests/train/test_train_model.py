"""MMFace-DiT network: XL matches the paper's size, adaLN-zero, conditioning paths, RoPE modes, checkpointing."""

from __future__ import annotations

import pytest
import torch

from train.model import MMFaceDiT, MMFaceDiT_models, MMFaceDiTConfig, count_params

PAPER_XL = 1_345_000_000
PUBLIC_CODE_XL = 1_345_298_624


def test_xl_parameter_count_matches_the_paper():
    with torch.device("meta"):
        model = MMFaceDiT(MMFaceDiTConfig.from_size("XL"))
    n = count_params(model)
    print(f"MMFace-DiT-XL: {n:,} parameters (paper 1.345B, public code {PUBLIC_CODE_XL:,})")
    assert abs(n - PAPER_XL) / PAPER_XL < 0.01, f"XL has {n:,} parameters, paper 1.345B"
    assert n == PUBLIC_CODE_XL, f"XL has {n:,} parameters, the public code {PUBLIC_CODE_XL:,}"


def test_training_flops_match_models_md():
    cfg = MMFaceDiTConfig.from_size("XL")
    assert cfg.train_flops(32, 32) == pytest.approx(0.94e12, rel=0.01)  # 256 px
    assert cfg.train_flops(64, 64) == pytest.approx(3.4e12, rel=0.01)  # 512 px


def test_size_registry_is_ordered_by_size():
    counts = []
    for size in ("tiny", "S", "B", "L", "XL"):
        with torch.device("meta"):
            counts.append(count_params(MMFaceDiT(MMFaceDiTConfig.from_size(size))))
    assert counts == sorted(counts) and set(MMFaceDiT_models) == {"tiny", "S", "B", "L", "XL"}


def inputs(b=2, c=16, hw=8, n_text=7, text_dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(b, c, hw, hw, generator=g), t=torch.rand(b, generator=g) * 999,
                cond=torch.randn(b, c, hw, hw, generator=g), modality=torch.tensor([0, 1] * (b // 2)),
                text=torch.randn(b, n_text, text_dim, generator=g), pooled=torch.randn(b, text_dim, generator=g),
                drop_text=torch.zeros(b, dtype=torch.bool))


def randomized(cfg: MMFaceDiTConfig, seed=0) -> MMFaceDiT:
    """A model with every parameter random (adaLN-zero makes a fresh model's output identically zero)."""
    torch.manual_seed(seed)
    model = MMFaceDiT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def tiny(**kw) -> MMFaceDiTConfig:
    return MMFaceDiTConfig.from_size("tiny", text_dim=32, **kw)


def test_adaln_zero_init_predicts_zero_and_blocks_are_identity():
    model = MMFaceDiT(tiny())
    inp = inputs()
    out = model(**inp)
    assert out.shape == inp["x"].shape and torch.count_nonzero(out) == 0
    img, txt, c = torch.randn(2, 16, 64), torch.randn(2, 7, 64), torch.randn(2, 64)
    from train.rope import joint_rope

    cos, sin = joint_rope(4, 4, 7, 16)
    img2, txt2 = model.blocks[0](img, txt, c, cos, sin)
    torch.testing.assert_close(img2, img)
    torch.testing.assert_close(txt2, txt)


def test_every_condition_reaches_the_output():
    model = randomized(tiny())
    base = inputs()
    out = model(**base)
    for key, change in [("cond", lambda v: v + 1), ("modality", lambda v: 1 - v), ("text", lambda v: v + 1),
                        ("pooled", lambda v: v + 1), ("t", lambda v: v * 0.5)]:
        changed = model(**{**base, key: change(base[key])})
        assert not torch.allclose(changed, out), f"{key} does not change the prediction"


def test_dropped_text_uses_the_learnable_null_pooled_vector():
    model = randomized(tiny())
    inp = {**inputs(), "drop_text": torch.tensor([True, True])}
    a = model(**inp)
    b = model(**{**inp, "pooled": inp["pooled"] + 5.0})  # ignored when dropped
    torch.testing.assert_close(a, b)
    with torch.no_grad():
        model.y_embedder.null.add_(1.0)
    assert not torch.allclose(model(**inp), a)


def test_rope_modes_public_ignores_text_order_paper_does_not():
    inp = inputs()
    perm = torch.randperm(inp["text"].shape[1], generator=torch.Generator().manual_seed(1))
    shuffled = {**inp, "text": inp["text"][:, perm]}
    public = randomized(tiny(rope="public"))
    torch.testing.assert_close(public(**shuffled), public(**inp), atol=1e-5, rtol=1e-5)  # text has no positions
    paper = randomized(tiny(rope="paper"))
    assert not torch.allclose(paper(**shuffled), paper(**inp), atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    inp = inputs()
    grads = []
    for ckpt in (False, True):
        model = randomized(tiny()).train()
        model.grad_ckpt = ckpt
        model(**inp).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        if g is None:  # only the last block's text stream after attention never reaches the image output
            assert grads[1][name] is None and name.startswith(f"blocks.{len(model.blocks) - 1}.txt_")
            assert "txt_qkv" not in name  # its keys and values do reach the image tokens
        else:
            torch.testing.assert_close(grads[1][name], g)


def test_any_latent_size_divisible_by_the_patch():
    model = randomized(tiny(latent_channels=4))
    assert model(**inputs(c=4, hw=12)).shape == (2, 4, 12, 12)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        model(**inputs(c=4, hw=7))


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        MMFaceDiTConfig(hidden_size=60, num_heads=6)
    with pytest.raises(ValueError, match="unknown model size 'XXL'"):
        MMFaceDiTConfig.from_size("XXL")
    with pytest.raises(ValueError, match="paper, public"):
        tiny(rope="flux")

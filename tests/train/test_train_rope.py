"""RoPE: scores depend only on position offsets (1D and 2D axial), and the joint image/text layout."""

from __future__ import annotations

import pytest
import torch

from train.rope import apply_rope, axial_angles, image_positions, joint_rope, rope_freqs


def scores(q, k, pos_q, pos_k, axes_dim):
    """q_i . k_j after rotating q at pos_q and k at pos_k: (Nq, Nk)."""
    aq, ak = axial_angles(pos_q, axes_dim, 10_000.0), axial_angles(pos_k, axes_dim, 10_000.0)
    rq = apply_rope(q.double(), aq.cos(), aq.sin())
    rk = apply_rope(k.double(), ak.cos(), ak.sin())
    return rq @ rk.T


@pytest.mark.parametrize("axes_dim, shift", [((16,), (7,)), ((8, 8), (3, -5)), ((36, 36), (11, 4))])
def test_scores_depend_only_on_offsets(axes_dim, shift):
    g = torch.Generator().manual_seed(0)
    n, d = 12, sum(axes_dim)
    q, k = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    pos = torch.randint(0, 40, (n, len(axes_dim)), generator=g)
    base = scores(q, k, pos, pos, axes_dim)
    moved = scores(q, k, pos + torch.tensor(shift), pos + torch.tensor(shift), axes_dim)
    torch.testing.assert_close(moved, base, atol=1e-9, rtol=1e-9)
    # and they do depend on the offsets: scaling positions changes every offset
    assert not torch.allclose(scores(q, k, 2 * pos, 2 * pos, axes_dim), base, atol=1e-3)


def test_rotation_keeps_norms_and_zero_position_is_identity():
    x = torch.randn(5, 3, 16)
    a = axial_angles(torch.randint(0, 9, (3, 2)), (8, 8), 10_000.0)
    torch.testing.assert_close(apply_rope(x, a.cos().float(), a.sin().float()).norm(dim=-1), x.norm(dim=-1))
    zero = axial_angles(torch.zeros(3, 2, dtype=torch.long), (8, 8), 10_000.0)
    torch.testing.assert_close(apply_rope(x, zero.cos().float(), zero.sin().float()), x)


def test_joint_layout_paper_and_public():
    h, w, n_text, hd = 3, 4, 5, 16
    cos, sin = joint_rope(h, w, n_text, hd, "paper")
    assert cos.shape == sin.shape == (h * w + n_text, hd // 2)
    angles = torch.atan2(sin.double(), cos.double())
    half = rope_freqs(hd // 2, 10_000.0)  # 4 frequencies per axis
    full = rope_freqs(hd, 10_000.0)  # 8 frequencies for 1D text
    wrap = lambda a: torch.atan2(torch.sin(a), torch.cos(a))  # noqa: E731
    for r in range(h):
        for c in range(w):
            tok = r * w + c  # row-major, the patch embedder's flattening order
            torch.testing.assert_close(angles[tok, :4], wrap(r * half), atol=1e-6, rtol=0)  # first half: row
            torch.testing.assert_close(angles[tok, 4:], wrap(c * half), atol=1e-6, rtol=0)  # second half: column
    for j in range(n_text):
        torch.testing.assert_close(angles[h * w + j], wrap(j * full), atol=1e-6, rtol=0)  # 1D over the whole head
    cos_p, sin_p = joint_rope(h, w, n_text, hd, "public")
    torch.testing.assert_close(cos_p[: h * w], cos[: h * w])  # image tokens: same in both modes
    torch.testing.assert_close(cos_p[h * w :], torch.ones(n_text, hd // 2))  # text: position 0, no rotation
    torch.testing.assert_close(sin_p[h * w :], torch.zeros(n_text, hd // 2))


def test_image_positions_are_row_col():
    assert image_positions(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_bad_head_dim_and_mode():
    with pytest.raises(ValueError, match="multiple of 4"):
        joint_rope(2, 2, 3, 18)
    with pytest.raises(ValueError, match="paper, public"):
        joint_rope(2, 2, 3, 16, "nope")

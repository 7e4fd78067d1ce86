"""Rotary position embeddings for the joint image + text sequence of MMFace-DiT.

Image tokens get 2D axial RoPE: the first half of each head's channels rotates with the token's row, the
second half with its column (head dim 72 -> 36 + 36 in XL). Text tokens get one of two layouts:

- ``paper``: 1D RoPE over the whole head dim at positions 0..L-1, as the paper describes.
- ``public``: every text token at position 0, i.e. no rotation, as the public code does (it builds 2D ids
  and leaves the text rows at zero).

Channels are rotated in adjacent pairs (2i, 2i+1) like flux's ``math.py``, so weights trained with the
public code see the same rotation in ``public`` mode. The tables are plain cos/sin in float32; applying
them is four multiplies, which ``torch.compile`` fuses.
"""

from __future__ import annotations

import torch

ROPE_MODES = ("paper", "public")


def rope_freqs(dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """The dim/2 rotation frequencies theta^(-2i/dim) of one axis, float64 for exact angles."""
    if dim % 2:
        raise ValueError(f"a RoPE axis needs an even number of channels, got {dim}")
    return theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def axial_angles(pos: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> torch.Tensor:
    """Angles (N, sum(axes_dim)/2) for integer or real positions (N, n_axes); axis a uses axes_dim[a] channels."""
    if pos.shape[-1] != len(axes_dim):
        raise ValueError(f"positions have {pos.shape[-1]} axes, axes_dim has {len(axes_dim)}")
    parts = [pos[:, a, None].double() * rope_freqs(d, theta, pos.device) for a, d in enumerate(axes_dim)]
    return torch.cat(parts, dim=-1)


def image_positions(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w, 2) (row, col) of each patch token in row-major order (the order the patch embedder flattens)."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)


def text_positions(n: int, mode: str, device: torch.device | None = None) -> torch.Tensor:
    """(n, 1) 1D positions of the text tokens: 0..n-1 (paper) or all 0 (public)."""
    if mode not in ROPE_MODES:
        raise ValueError(f"rope mode {mode!r} is not one of {', '.join(ROPE_MODES)}")
    pos = torch.arange(n, device=device) if mode == "paper" else torch.zeros(n, dtype=torch.long, device=device)
    return pos[:, None]


def joint_rope(
    h: int, w: int, n_text: int, head_dim: int, mode: str = "paper", theta: float = 10_000.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (h*w + n_text, head_dim/2), image tokens first, then text tokens."""
    if head_dim % 4:
        raise ValueError(f"2D axial RoPE splits the head dim in two even halves: {head_dim} is not a multiple of 4")
    img = axial_angles(image_positions(h, w, device), (head_dim // 2, head_dim // 2), theta)  # (h*w, hd/2)
    txt = axial_angles(text_positions(n_text, mode, device), (head_dim,), theta)  # (n_text, hd/2)
    angles = torch.cat([img, txt], dim=0)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., N, head_dim) by the angles whose cos/sin are (N, head_dim/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (..., N, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)

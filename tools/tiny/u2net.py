"""Tiny U2Net portrait model: the real U2NET(3,1) key layout at widths (mid 4, out 8), random weights.

Saved like the public `u2net_portrait.pth`: a plain state dict written with `torch.save`, which
`pipeline.models.u2net.load_u2net` reads back with `weights_only=True` and sizes from the shapes.
The full model has 44M parameters; this one 37K (its cost is the full-resolution convolutions of the
first stage, about a second per 512x512 image on a CPU).
"""

from __future__ import annotations

from pathlib import Path


def build_u2net(out: Path) -> None:
    """U2NET(3,1) at the `tiny` widths, seeded random weights, as u2net_portrait.pth."""
    import torch

    from pipeline.models.u2net import U2NET

    torch.manual_seed(0)
    net = U2NET(3, 1, "tiny").eval()
    torch.save(net.state_dict(), out / "u2net_portrait.pth")


MODELS = {"u2net-portrait-tiny": ("1", build_u2net)}

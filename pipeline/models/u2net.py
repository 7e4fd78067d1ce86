"""U^2-Net (Qin et al. 2020), the architecture of `u2net_portrait.pth`, in the reference key layout.

The reference code (xuebinqin/U-2-Net, `model/u2net.py`) writes RSU7, RSU6, RSU5 and RSU4 out by hand;
here one `RSU` class builds any height with the same attribute names (`rebnconvin`, `rebnconv1..L`,
`rebnconv{L-1}d..1d`), so the public state dicts load with `strict=True`. Channel widths come from a
config (`U2NET_CONFIGS`: the full model, U2NETP, and a tiny one for tests) or are read off a state
dict's shapes (`U2NET.from_state_dict`), which is how a checkpoint of any width loads.

Upsampling uses the target's size instead of a fixed scale factor (identical at 512x512, and it also
runs at sizes that are not multiples of 32). `forward` returns the reference's seven sigmoid maps:
the fused map d0 first, then the side outputs d1..d6.

This module imports only torch, so benchmarks can load it on a machine without the pipeline installed.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Encoder stages then decoder stages: (name, RSU height, dilated-only "F" variant).
STAGES: tuple[tuple[str, int, bool], ...] = (
    ("stage1", 7, False), ("stage2", 6, False), ("stage3", 5, False), ("stage4", 4, False),
    ("stage5", 4, True), ("stage6", 4, True),
    ("stage5d", 4, True), ("stage4d", 4, False), ("stage3d", 5, False), ("stage2d", 6, False),
    ("stage1d", 7, False),
)
# (mid, out) channels per stage, in STAGES order; input channels follow from the wiring.
U2NET_CONFIGS: dict[str, tuple[tuple[int, int], ...]] = {
    "u2net": ((32, 64), (32, 128), (64, 256), (128, 512), (256, 512), (256, 512),
              (256, 512), (128, 256), (64, 128), (32, 64), (16, 64)),
    "u2netp": ((16, 64),) * 11,
    "tiny": ((4, 8),) * 11,
}


def _upsample_like(src: torch.Tensor, tar: torch.Tensor) -> torch.Tensor:
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 conv (dilated) + batch norm + ReLU.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        dirate: dilation (and padding).
    """

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block of height L (RSU-L), or RSU-4F (dilations instead of pooling) when `dilated`.

    Args:
        height: L, the number of encoder convs after the input conv (7 for RSU7 ... 4 for RSU4).
        in_ch: input channels.
        mid_ch: channels inside the U.
        out_ch: output channels (the residual's width).
        dilated: the RSU-4F variant used at the lowest resolutions.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False):
        super().__init__()
        self.height, self.dilated = height, dilated
        self.rebnconvin = REBNCONV(in_ch, out_ch, 1)
        # Encoder dilations: RSU-L keeps 1 and dilates only the bottom conv by 2; RSU-4F uses 1, 2, 4, 8.
        enc = [2 ** i for i in range(height)] if dilated else [1] * (height - 1) + [2]
        for i in range(1, height + 1):
            setattr(self, f"rebnconv{i}", REBNCONV(out_ch if i == 1 else mid_ch, mid_ch, enc[i - 1]))
        for i in range(height - 1, 0, -1):
            setattr(self, f"rebnconv{i}d",
                    REBNCONV(mid_ch * 2, out_ch if i == 1 else mid_ch, enc[i - 1] if dilated else 1))
        if not dilated:
            for i in range(1, height - 1):
                setattr(self, f"pool{i}", nn.MaxPool2d(2, stride=2, ceil_mode=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = []
        hx = hxin
        for i in range(1, self.height):
            hx = getattr(self, f"rebnconv{i}")(hx)
            skips.append(hx)
            if not self.dilated and i < self.height - 1:
                hx = getattr(self, f"pool{i}")(hx)
        hx = getattr(self, f"rebnconv{self.height}")(hx)  # the bottom of the U (dilated)
        for i in range(self.height - 1, 0, -1):
            skip = skips[i - 1]
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skip), 1))
            if not self.dilated and i > 1:
                hx = _upsample_like(hx, skips[i - 2])
        return hx + hxin


class U2NET(nn.Module):
    """U^2-Net: six RSU encoder stages, five decoder stages, six side outputs fused by a 1x1 conv.

    Args:
        in_ch: input channels (3).
        out_ch: output channels per side output (1 for portrait sketches and saliency).
        widths: (mid, out) per stage in `STAGES` order, or a name in `U2NET_CONFIGS`.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1,
                 widths: str | tuple[tuple[int, int], ...] = "u2net"):
        super().__init__()
        if isinstance(widths, str):
            if widths not in U2NET_CONFIGS:
                raise ValueError(f"unknown U2NET config {widths!r}; choose one of {', '.join(U2NET_CONFIGS)}")
            widths = U2NET_CONFIGS[widths]
        if len(widths) != len(STAGES):
            raise ValueError(f"widths: expected {len(STAGES)} (mid, out) pairs, got {len(widths)}")
        self.widths = tuple(tuple(w) for w in widths)
        outs = {name: w[1] for (name, _, _), w in zip(STAGES, widths, strict=True)}
        ins = {"stage1": in_ch, "stage2": outs["stage1"], "stage3": outs["stage2"], "stage4": outs["stage3"],
               "stage5": outs["stage4"], "stage6": outs["stage5"],
               "stage5d": outs["stage6"] + outs["stage5"], "stage4d": outs["stage5d"] + outs["stage4"],
               "stage3d": outs["stage4d"] + outs["stage3"], "stage2d": outs["stage3d"] + outs["stage2"],
               "stage1d": outs["stage2d"] + outs["stage1"]}
        for (name, height, dilated), (mid, out) in zip(STAGES, widths, strict=True):
            setattr(self, name, RSU(height, ins[name], mid, out, dilated))
        for i in range(1, 6):
            setattr(self, f"pool{i}{i + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        side_in = [outs["stage1d"], outs["stage2d"], outs["stage3d"], outs["stage4d"], outs["stage5d"], outs["stage6"]]
        for i, c in enumerate(side_in, 1):
            setattr(self, f"side{i}", nn.Conv2d(c, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hx1 = self.stage1(x)  # (N, C1, H, W)
        hx2 = self.stage2(self.pool12(hx1))  # H/2
        hx3 = self.stage3(self.pool23(hx2))  # H/4
        hx4 = self.stage4(self.pool34(hx3))  # H/8
        hx5 = self.stage5(self.pool45(hx4))  # H/16
        hx6 = self.stage6(self.pool56(hx5))  # H/32
        hx5d = self.stage5d(torch.cat((_upsample_like(hx6, hx5), hx5), 1))
        hx4d = self.stage4d(torch.cat((_upsample_like(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((_upsample_like(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((_upsample_like(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((_upsample_like(hx2d, hx1), hx1), 1))
        d1 = self.side1(hx1d)
        sides = [d1] + [_upsample_like(getattr(self, f"side{i}")(h), d1)
                        for i, h in zip(range(2, 7), (hx2d, hx3d, hx4d, hx5d, hx6), strict=True)]
        d0 = self.outconv(torch.cat(sides, 1))  # (N, out_ch, H, W), the fused map
        return tuple(torch.sigmoid(d) for d in (d0, *sides))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> U2NET:
        """A U2NET whose widths are read off `state`'s weight shapes, with the weights loaded (strict)."""
        state = strip_prefix(state)
        try:
            widths = tuple((int(state[f"{n}.rebnconv1.conv_s1.weight"].shape[0]),
                            int(state[f"{n}.rebnconvin.conv_s1.weight"].shape[0])) for n, _, _ in STAGES)
            in_ch = int(state["stage1.rebnconvin.conv_s1.weight"].shape[1])
            out_ch = int(state["side1.weight"].shape[0])
        except KeyError as e:
            raise ValueError(f"not a U2NET state dict: key {e.args[0]} is missing") from None
        model = cls(in_ch, out_ch, widths)
        model.load_state_dict(state, strict=True)
        return model


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Checkpoints saved from `nn.DataParallel` prefix every key with `module.`."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_u2net(path: str | Path, map_location: str | torch.device = "cpu") -> U2NET:
    """Load a U2NET checkpoint (`u2net_portrait.pth` or a folder holding it), in eval mode.

    Plain state dicts only: `weights_only=True` refuses pickled code.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        if not found:
            raise FileNotFoundError(f"{path} holds no .pth checkpoint (expected u2net_portrait.pth)")
        path = next((p for p in found if p.name == "u2net_portrait.pth"), found[0])
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # torch's own text is a page on weights_only
        if "out of memory" in str(e).lower():
            raise
        raise ValueError(f"{path} is not a PyTorch checkpoint that holds only tensors ({type(e).__name__})") from e
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return U2NET.from_state_dict(state).eval()

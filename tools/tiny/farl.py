"""Tiny stand-ins for facer's FaRL celebm parser (TorchScript) and its RetinaFace detector (state dict).

`farl-celebm-tiny`: a TorchScript module with FaRL's call signature, what facer's `FaRLFaceParser`
loads with `torch.jit.load(model_path)` and calls as `seg_logits, _ = net(images)`: images (N, 3, H, W)
float in [0, 1], logits (N, 19, H, W) at the input size, channels in FaRL's celebm order. Inside: CLIP
normalisation (FaRL's backbone is CLIP-initialised), a strided conv stack, bilinear upsampling;
random weights. The real file is `face_parsing.farl.celebm.main_ema_181500_jit.pt`.

`retinaface-tiny`: facer's own RetinaFace (MobileNet-0.25) architecture, which is already tiny, saved as
a plain state dict like `mobilenet0.25_Final.pth`. Random backbone; the heads are set so that every
largest anchor reports a face (score about 0.9, varying slightly with the image) whose five landmarks sit where
eyes, nose and mouth corners sit in a face box: with random weights the unaligned path (detect, warp,
parse, warp back) would otherwise find nothing, or landmarks too degenerate to warp.
"""

from __future__ import annotations

from pathlib import Path

FARL_FILE = "face_parsing.farl.celebm.tiny_jit.pt"
DETECTOR_FILE = "mobilenet0.25_Final.pth"
# Five landmarks (left eye, right eye, nose, left and right mouth corner) relative to the box centre, in
# units of the box size.
LANDMARKS = ((-0.17, -0.08), (0.17, -0.08), (0.0, 0.06), (-0.13, 0.2), (0.13, 0.2))


def _farl_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinyFarlCelebM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1))
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.GELU(),
            )
            self.head = nn.Conv2d(16, 19, 1)
            with torch.no_grad():  # larger weights: a label map that varies with the image, not one class
                self.head.weight.mul_(20.0)

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = (images - self.mean) / self.std
            feats = self.body(x)
            logits = F.interpolate(self.head(feats), size=images.shape[2:], mode="bilinear", align_corners=False)
            return logits, feats

    return TinyFarlCelebM()


def build_farl(out: Path) -> None:
    """TorchScript FaRL celebm stand-in: (N,3,H,W) [0,1] -> ((N,19,H,W) logits, features)."""
    import torch

    torch.manual_seed(0)
    scripted = torch.jit.script(_farl_module().eval())
    scripted.save(str(out / FARL_FILE))


def build_retinaface(out: Path) -> None:
    """facer's RetinaFace MobileNet-0.25 with random backbone and heads that always report a face."""
    import math
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from facer.face_detection.retinaface import RetinaFace, cfg_mnet

    torch.manual_seed(0)
    net = RetinaFace(cfg=cfg_mnet, phase="test")
    variance = cfg_mnet["variance"][0]
    with torch.no_grad():
        for level, head in enumerate(net.ClassHead):
            torch.nn.init.normal_(head.conv1x1.weight, std=1e-3)
            # Only the largest anchors (512 px, stride 32) fire, with log-odds log(9) (score about 0.9);
            # the tiny random weights make the score, and so the winning box, depend on the image.
            big = math.log(9) if level == len(net.ClassHead) - 1 else -3.0
            head.conv1x1.bias.copy_(torch.tensor([0.0, -3.0, 0.0, big]))
        for head in net.BboxHead:
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.zero_()  # the box is the anchor itself
        offsets = torch.tensor([c / variance for pt in LANDMARKS for c in pt])
        for head in net.LandmarkHead:
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.copy_(offsets.repeat(2))
    torch.save(net.state_dict(), out / DETECTOR_FILE)


MODELS = {
    "farl-celebm-tiny": ("2", build_farl),
    "retinaface-tiny": ("1", build_retinaface),
}

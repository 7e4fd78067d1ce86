"""FaRL face parsing (celebm/448) through facer (PyPI `pyfacer`), mapped to CelebAMask-HQ ids.

Aligned crops (FFHQ, CelebA-HQ) skip the detector: the whole image is resized to 448x448 and passed to
`forward_warped`. Unaligned photos go through facer's RetinaFace detector; the largest face's five
landmarks drive facer's warp into the 448 frame and back (`FaRLFaceParser.forward`), so logits come at
the image's own size and pixels outside the warped face are background. An image where the detector
finds no face above its threshold is a `no_face` row.

Images are handed to facer as float in [0, 1]: facer decides between uint8 and float by the batch's
maximum value, and an all-black uint8 image would trip its dtype assertion.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pipeline.core.devices import batch_independent
from pipeline.parsers.base import FARL_CELEBM_NAMES, FARL_TO_CELEBAMASK, Parsed, Parser, logits_to_label

FARL_SIZE = 448
FARL_DEFAULT_FILE = "face_parsing.farl.celebm.main_ema_181500_jit.pt"
DETECTOR_DEFAULT_FILE = "mobilenet0.25_Final.pth"


def _import_facer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # facer imports deprecated timm paths
        import facer
    return facer


def default_checkpoint(name: str) -> Path:
    """Where facer itself caches a download: `$TORCH_HOME/hub/checkpoints/<name>`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / name


class FarlParser(Parser):
    """FaRL celebm parser with an optional RetinaFace detector for unaligned photos.

    Args:
        model: the TorchScript file; None uses facer's cache (`$TORCH_HOME/hub/checkpoints`).
        detector: RetinaFace MobileNet-0.25 state dict; None uses facer's cache. Loaded on first use,
            so a run of aligned crops never needs it.
        device: torch device string.
        threshold: detector score threshold (facer's default 0.8).
        detector_size: photos whose longer side exceeds this are downscaled for detection only (boxes
            and landmarks are scaled back; parsing uses the full image); 0 detects at full size.
    """

    name = "farl"

    def __init__(self, model: Path | None, detector: Path | None, device: str, threshold: float = 0.8,
                 detector_size: int = 640):
        super().__init__(device)
        import torch

        self._torch = torch
        facer = _import_facer()
        model = Path(model) if model else default_checkpoint(FARL_DEFAULT_FILE)
        if not model.exists():
            raise FileNotFoundError(f"FaRL weights not found at {model}: set farl_model to the TorchScript file "
                                    f"({FARL_DEFAULT_FILE}) or place it there")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # facer loads with torch.jit.load, deprecated upstream
            self.net = facer.face_parser("farl/celebm/448", device=torch.device(device), model_path=str(model))
        if tuple(self.net.label_names) != FARL_CELEBM_NAMES:
            raise ValueError(f"facer's celebm label order changed ({self.net.label_names}); update FARL_TO_CELEBAMASK")
        self.detector_path = Path(detector) if detector else default_checkpoint(DETECTOR_DEFAULT_FILE)
        self.threshold = threshold
        self.detector_size = detector_size
        self._detector = None
        self._detector_error: str | None = None

    def detector(self):
        """The RetinaFace detector, loaded once; raises with the first load error on every later call."""
        if self._detector is None and self._detector_error is None:
            try:
                if not self.detector_path.exists():
                    raise FileNotFoundError(f"RetinaFace weights not found at {self.detector_path}; set farl_detector "
                                            "or list the source in aligned_sources")
                facer = _import_facer()
                self._detector = facer.face_detector("retinaface/mobilenet", device=self._torch.device(self.device),
                                                     model_path=str(self.detector_path), threshold=self.threshold)
            except Exception as e:  # noqa: BLE001 - every unaligned row reports it; aligned rows still run
                self._detector_error = f"{type(e).__name__}: {e}"
        if self._detector is None:
            raise RuntimeError(f"face detector unavailable: {self._detector_error}")
        return self._detector

    def __call__(self, images: list[np.ndarray], aligned: list[bool]) -> list[Parsed]:
        torch = self._torch
        out: list[Parsed | None] = [None] * len(images)
        with torch.inference_mode():
            todo = [i for i, a in enumerate(aligned) if a]
            if todo:
                batch = torch.cat([self._tensor(images[i], FARL_SIZE) for i in todo])
                logits = batch_independent(lambda b: self.net.forward_warped(b)[0], batch,  # (N, 19, 448, 448)
                                           self.forward_batch)  # in FaRL's label order
                for i, lg in zip(todo, logits, strict=True):
                    out[i] = Parsed(logits_to_label(lg, images[i].shape[:2], FARL_TO_CELEBAMASK))
            for i in (i for i, a in enumerate(aligned) if not a):
                out[i] = self._unaligned(images[i])
        return out  # type: ignore[return-value]

    def _tensor(self, img: np.ndarray, size: int | None = None):
        torch = self._torch
        x = torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1)[None].to(self.device).float() / 255.0
        if size is not None:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False).clamp_(0, 1)
        return x

    def _unaligned(self, img: np.ndarray) -> Parsed:
        try:
            detector = self.detector()
        except RuntimeError as e:
            return Parsed(None, "no_detector", str(e))
        x = self._tensor(img)
        h, w = img.shape[:2]
        small = x
        if self.detector_size and max(h, w) > self.detector_size:
            # RetinaFace trains on 640 px crops: a subject's face is found as well at that size, for a
            # fraction of the cost of a multi-megapixel photo. A 1 x 30000 strip would round its short
            # side to 0 px, so each side keeps at least 1 px and gets its own scale back.
            scale = max(h, w) / self.detector_size
            size = (max(1, round(h / scale)), max(1, round(w / scale)))
            small = self._torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
        faces = detector(small * 255.0)  # 0..255 RGB, as facer's own examples pass it
        if faces["rects"].numel() == 0:
            return Parsed(None, "no_face", f"RetinaFace found no face with score >= {self.threshold}")
        sy, sx = h / small.shape[2], w / small.shape[3]
        faces["rects"] = faces["rects"] * faces["rects"].new_tensor([sx, sy, sx, sy])
        faces["points"] = faces["points"] * faces["points"].new_tensor([sx, sy])
        rects = faces["rects"]
        areas = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
        j = int(areas.argmax())  # the largest face is the subject; ties go to the first (highest score)
        data = {"rects": rects[j:j + 1], "points": faces["points"][j:j + 1], "scores": faces["scores"][j:j + 1],
                "image_ids": self._torch.zeros(1, dtype=self._torch.long, device=x.device)}
        logits = self.net(x, data)["seg"]["logits"][0]  # (19, H, W), warped back to the image
        return Parsed(logits_to_label(logits, img.shape[:2], FARL_TO_CELEBAMASK))

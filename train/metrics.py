"""The metric models of ``facecurate evaluate``: FID, LPIPS, MS-SSIM, CLIP, NIQE and mask scores from confusions.

Every model comes from a real library and local weights; a metric whose weights are not found is an error
that names its option (or leave the metric out with ``--skip``), never a silent gap:

- FID: torchmetrics ``FrechetInceptionDistance`` extracts and accumulates the features; the distance is taken
  from its statistics with the real set factored once (``FrechetReference``). With the standard FID Inception (torch-fidelity's
  ``pt_inception-2015-12-05-6726825d.pth``, recognised by its 1008-class head) scores are the published kind;
  a torchvision ``inception_v3`` state dict, or ``random`` (torchvision's architecture, seeded random weights,
  for tests), gives the 2048-d pool features of that network instead (recorded, not comparable).
- LPIPS: the ``lpips`` package (its linear layers ship inside it) over a torchvision backbone whose weights
  come from a local state dict (``alexnet-owt-7be5be79.pth`` for ``alex``), or ``random`` (``pnet_rand``).
- MS-SSIM: torchmetrics, Gaussian 11x11, the five standard scales where the image allows (176 px and up),
  fewer on small images with the first betas renormalised (recorded).
- CLIP: a transformers ``CLIPModel`` (folder or cached hub id). CLIP score = 100 * max(cos(image, caption), 0)
  (Hessel et al., torchmetrics' definition); CLIP distance = 1 - cos(image, caption); CLIP image distance
  = 1 - cos(generated, real).
- NIQE: ``train.niqe`` (its docstring says where the pristine model comes from).
- Masks: pixel accuracy and mIoU from a confusion matrix (rows: condition mask, columns: parse of the
  generated face), and the same per EC²Face group (HFA / NFA / RFA).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.labels import NAMES
from train.config import ConfigError

METRICS = ("fid", "lpips", "ms_ssim", "mask", "clip", "niqe")
FIDELITY_FILE = "pt_inception-2015-12-05-6726825d.pth"
LPIPS_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class MetricOptions:
    """Which weights each metric uses.

    Args:
        fid_weights: FID Inception weights file, or ``random``; null: torch-fidelity's file in the torch hub cache.
        fid_size: Inception input size for torchvision-layout networks (the standard FID network always takes 299).
        lpips_net: ``alex`` (the LPIPS default), ``vgg`` or ``squeeze``.
        lpips_weights: torchvision backbone state dict, or ``random``; null: torchvision's file in the hub cache.
        clip: ``CLIPModel`` folder or hub id (offline: a cached one).
        niqe_params: NIQE pristine model file; null: basicsr's when installed, else fitted on the real images.
        skip: metrics left out on purpose (names from ``METRICS``).
    """

    fid_weights: str | None = None
    fid_size: int = 299
    lpips_net: str = "alex"
    lpips_weights: str | None = None
    clip: str | None = "openai/clip-vit-large-patch14"
    niqe_params: str | None = None
    skip: tuple[str, ...] = ()

    def wants(self, metric: str) -> bool:
        return metric not in self.skip


def _hub_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _state_dict(path: Path, what: str) -> dict:
    """A plain tensor state dict, refusing anything that needs unpickling code (``weights_only=True``)."""
    if not path.is_file():
        raise ConfigError(f"{what}: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise ConfigError(f"{what}: {path} is not a plain state dict ({str(e).splitlines()[0][:120]})") from None
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


class TorchvisionInception(torch.nn.Module):
    """torchvision's Inception-v3 as an FID feature extractor: uint8 images in, 2048-d pool features out.

    Args:
        state_dict: torchvision ``inception_v3`` weights; None: seeded random weights.
        size: input size (bilinear resize, ImageNet normalisation as torchvision's weights expect).
    """

    num_features = 2048

    def __init__(self, state_dict: dict | None, size: int = 299):
        super().__init__()
        from torchvision.models import inception_v3

        aux = state_dict is not None and any(k.startswith("AuxLogits.") for k in state_dict)
        with torch.random.fork_rng(devices=[]):  # its default init draws from the global generator
            self.net = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
        if state_dict is not None:
            self.net.load_state_dict(state_dict)
        else:  # He init keeps activations O(1) through the 48 layers (torchvision's std 0.1 makes them explode)
            gen = torch.Generator().manual_seed(0)
            for m in self.net.modules():
                if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                    fan_in = m.weight[0].numel()
                    with torch.no_grad():
                        m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
        self.net.fc = torch.nn.Identity()
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET[1]).view(1, 3, 1, 1))
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # torchmetrics may call train(); BatchNorm must keep its statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


def load_fid(weights: str | None, size: int, device: torch.device):
    """(torchmetrics FID keeping its real features across resets, description) from `weights` (see module doc)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if weights == "random":
        feature, info = TorchvisionInception(None, size), {"network": "torchvision inception_v3", "weights": "random",
                                                           "input": size, "standard": False}
    else:
        path = Path(weights) if weights else _hub_file(FIDELITY_FILE)
        if not weights and not path.is_file():
            raise ConfigError(f"--fid-weights: no FID Inception weights ({path} is absent): give the torch-fidelity "
                              f"{FIDELITY_FILE} or a torchvision inception_v3 state dict, or --skip fid")
        sd = _state_dict(path, "--fid-weights")
        fc = sd.get("fc.weight")
        if fc is not None and fc.shape[0] == 1008:  # torch-fidelity's TF-ported network: the standard FID
            # torch-fidelity reloads the file itself; it was just read as plain tensors, so nothing else runs
            feature = 2048
            info = {"network": "torch-fidelity FID Inception (pt_inception-2015-12-05)", "weights": str(path),
                    "input": 299, "standard": True}
            fid = FrechetInceptionDistance(feature=feature, feature_extractor_weights_path=str(path),
                                           reset_real_features=False)
            return fid.to(device), info
        try:
            feature = TorchvisionInception(sd, size)
        except RuntimeError as e:
            raise ConfigError(f"--fid-weights: {path} is neither torch-fidelity's FID Inception nor a torchvision "
                              f"inception_v3 ({str(e).splitlines()[0][:120]})") from None
        info = {"network": "torchvision inception_v3", "weights": str(path), "input": size, "standard": False}
    return FrechetInceptionDistance(feature=feature, reset_real_features=False).to(device), info


def gaussian(fid, real: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of a torchmetrics FID's accumulated features, exactly as its ``compute``."""
    side = "real" if real else "fake"
    n = getattr(fid, f"{side}_features_num_samples")
    mean = getattr(fid, f"{side}_features_sum") / n
    cov = (getattr(fid, f"{side}_features_cov_sum") - n * torch.outer(mean, mean)) / (n - 1)
    return mean, cov


class FrechetReference:
    """The real set's Gaussian, factored once so each generated set's FID costs little.

    tr sqrt(C_r C_g) is the sum of the square roots of the eigenvalues of U^T C_g U with C_r = U U^T (U from
    one symmetric eigendecomposition of C_r, its numerically-zero directions dropped): the same number as
    torchmetrics' ``eigvals(C_r @ C_g)``, from a k x k symmetric matrix (k = rank of C_r) instead of a
    general 2048 x 2048 eigenproblem per set (a test checks both agree).

    Args:
        mean: real mean.
        cov: real covariance.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        w, v = torch.linalg.eigh(cov)
        keep = w > w.max().clamp(min=0) * len(w) * torch.finfo(w.dtype).eps
        self.mean, self.cov, self.u = mean, cov, v[:, keep] * w[keep].sqrt()

    def distance(self, mean: torch.Tensor, cov: torch.Tensor) -> float:
        """||mu_r - mu_g||^2 + tr(C_r) + tr(C_g) - 2 tr sqrt(C_r C_g)."""
        root = torch.linalg.eigvalsh(self.u.T @ cov @ self.u).clamp(min=0).sqrt().sum()
        return float((self.mean - mean).square().sum() + self.cov.trace() + cov.trace() - 2 * root)


class Lpips:
    """LPIPS distances between image pairs (the ``lpips`` package; backbone weights from a local file).

    Args:
        net: ``alex``, ``vgg`` or ``squeeze``.
        weights: torchvision backbone state dict (full or ``features.*`` only), ``random``, or None for the
            torch hub cache's torchvision file.
        device: where it runs.
    """

    def __init__(self, net: str, weights: str | None, device: torch.device):
        import lpips

        if net not in LPIPS_FILES:
            raise ConfigError(f"--lpips-net must be one of {', '.join(LPIPS_FILES)}, got {net!r}")
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation inside lpips
            torch.manual_seed(0)  # a `random` backbone is the same one every run
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        self.info = {"net": net, "linear_layers": "lpips package v0.1", "backbone": "random"}
        if weights != "random":
            path = Path(weights) if weights else _hub_file(LPIPS_FILES[net])
            if not weights and not path.is_file():
                raise ConfigError(f"--lpips-weights: no {net} backbone weights ({path} is absent): give torchvision's "
                                  f"{LPIPS_FILES[net]}, or random, or --skip lpips")
            sd = _state_dict(path, "--lpips-weights")
            # the lpips slices hold torchvision's `features` modules under their own indices: sliceK.N.* = features.N.*
            mapped = {k: sd.get("features." + k.split(".", 1)[1]) for k in self.model.net.state_dict()}
            missing = [k for k, v in mapped.items() if v is None]
            if missing:
                raise ConfigError(f"--lpips-weights: {path} is not a torchvision {net} state dict (no features.* "
                                  f"for {missing[0]})")
            self.model.net.load_state_dict(mapped)
            self.info["backbone"] = str(path)
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray, batch: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(a), batch):
            x, y = (to_tensor(v[i : i + batch], self.device) * 2 - 1 for v in (a, b))
            out.append(self.model(x, y).flatten().float().cpu())
        return torch.cat(out).numpy()


def to_tensor(images: np.ndarray, device=None) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0).to(device)


def ms_ssim_scales(size: int, kernel: int = 11) -> int:
    """How many of the five MS-SSIM scales an image of this side allows (torchmetrics' size checks)."""
    for k in range(len(MS_SSIM_BETAS), 0, -1):
        if size >= 2**k and size // max(1, (k - 1)) ** 2 > kernel - 1:
            return k
    raise ConfigError(f"images of {size} px are too small for MS-SSIM")


def ms_ssim(a: np.ndarray, b: np.ndarray, batch: int = 32) -> tuple[np.ndarray, dict]:
    """MS-SSIM per pair (data range 1) and what was used (scales, betas)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    k = ms_ssim_scales(min(a.shape[1:3]))
    betas = tuple(float(x) for x in np.asarray(MS_SSIM_BETAS[:k]) / sum(MS_SSIM_BETAS[:k]))
    out = [msssim(to_tensor(a[i : i + batch]), to_tensor(b[i : i + batch]), data_range=1.0, betas=betas,
                  reduction="none") for i in range(0, len(a), batch)]
    return torch.cat(out).float().numpy(), {"scales": k, "betas": betas, "kernel": 11, "sigma": 1.5}


class Clip:
    """CLIP image and text embeddings (transformers ``CLIPModel``), unit-normalised.

    Args:
        source: model folder or hub id.
        device: where it runs.
    """

    def __init__(self, source: str, device: torch.device):
        from transformers import AutoProcessor, CLIPModel

        if source.startswith((".", "/", "~")) and not Path(source).expanduser().is_dir():
            raise ConfigError(f"--clip: {source} is not a folder (a CLIPModel folder or a hub id)")
        source = str(Path(source).expanduser()) if source.startswith("~") else source
        try:
            self.model = CLIPModel.from_pretrained(source).to(device).eval().requires_grad_(False)
            self.processor = AutoProcessor.from_pretrained(source)
        except OSError as e:
            raise ConfigError(f"--clip: cannot load a CLIPModel from {source!r}: {str(e).splitlines()[0]}") from None
        self.device, self.info = device, {"model": source}

    @torch.no_grad()
    def images(self, images: np.ndarray, batch: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            pixels = self.processor(images=list(images[i : i + batch]), return_tensors="pt")["pixel_values"]
            feats = self.model.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            out.append(F.normalize(self.model.visual_projection(feats).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def texts(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            tok = self.processor(text=texts[i : i + batch], return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.model.config.text_config.max_position_embeddings)
            feats = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                          attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            out.append(F.normalize(self.model.text_projection(feats).float(), dim=-1))
        return torch.cat(out)


def clip_scores(gen: torch.Tensor, text: torch.Tensor, real: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: CLIP score, CLIP distance to the caption and CLIP image distance to the real face."""
    cos_text = (gen * text).sum(-1)
    return {"clip_score": (100 * cos_text.clamp(min=0)).cpu().numpy(),
            "clip_distance": (1 - cos_text).cpu().numpy(),
            "clip_image_distance": (1 - (gen * real).sum(-1)).cpu().numpy()}


def _iou(conf: np.ndarray) -> np.ndarray:
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def _nanmean(x: np.ndarray) -> float | None:
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def mask_scores(conf: np.ndarray, groups: dict[str, list[str]]) -> dict:
    """Pixel accuracy and mIoU (classes in either map) overall and per EC²Face group, from one confusion matrix.

    A group's pixel accuracy is the share of the condition's pixels of that group's classes that the parse of
    the generated face labels the same; its mIoU averages the IoU of its classes.
    """
    iou, total = _iou(conf), conf.sum()
    out = {"pixel_accuracy": float(np.trace(conf) / total) if total else None, "miou": _nanmean(iou),
           "per_class_iou": {NAMES[i]: (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)}, "groups": {}}
    for name, members in groups.items():
        ids = [NAMES.index(m) for m in members]
        pixels = conf[ids].sum()
        out["groups"][name] = {"pixel_accuracy": float(np.diag(conf)[ids].sum() / pixels) if pixels else None,
                               "miou": _nanmean(iou[ids]) if ids else None, "pixels": int(pixels)}
    return out

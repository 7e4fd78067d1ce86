"""NIQE written from its definition: it matches the MATLAB release (through basicsr's port and model), and a
fitted model ranks distorted images below clean ones."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from skimage import data

from train import niqe

# basicsr 1.4.2's calculate_niqe (which reproduces MATLAB's niqe.m, baboon 5.7296) on these images' rgb2gray,
# with its bundled niqe_pris_params.npz (MATLAB's modelparameters.mat)
BASICSR = {"astronaut": 3.068074542406995, "chelsea": 2.572084171566674, "coffee": 4.066042916776372}


def standard_model() -> niqe.NiqeModel:
    path = niqe.basicsr_params()
    if path is None:
        pytest.skip("basicsr is not installed (make setup installs it with --no-deps for its NIQE model)")
    return niqe.load_params(path)


@pytest.mark.parametrize("name", sorted(BASICSR))
def test_scores_match_the_matlab_release(name):
    model = standard_model()
    assert model.score(getattr(data, name)()) == pytest.approx(BASICSR[name], rel=1e-4)
    assert niqe.pristine_model(None).source.startswith("basicsr:")


def test_halving_is_matlabs_imresize():
    standard_model()
    spec = importlib.util.find_spec("basicsr")
    path = f"{spec.submodule_search_locations[0]}/utils/matlab_functions.py"
    module_spec = importlib.util.spec_from_file_location("basicsr_matlab_functions", path)
    mf = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mf)  # torch and numpy only: basicsr's own __init__ is never run
    img = niqe.gray(data.astronaut())[:192, :288]
    ref = mf.imresize(img / 255.0, scale=0.5, antialiasing=True) * 255.0
    assert np.abs(niqe.halve(img) - ref).max() < 1e-3  # basicsr computes in float32


def test_a_fitted_model_ranks_distortions_lower_and_says_it_is_not_standard():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    pristine = [data.astronaut(), data.coffee(), data.rocket(), data.chelsea()]
    model = niqe.fit(pristine)
    assert model.source == "fitted:4 images" and not model.standard
    clean = data.astronaut()[:256, :256]
    noisy = np.clip(clean + rng.normal(0, 40, clean.shape), 0, 255).astype(np.uint8)
    blurred = gaussian_filter(clean, sigma=(3, 3, 0))
    assert model.score(clean) < model.score(blurred) and model.score(clean) < model.score(noisy)


def test_small_images_are_upscaled_and_parameter_files_are_checked(tmp_path):
    from scipy.io import savemat

    img = data.astronaut()[::8, ::8]  # 64 x 64
    prepared, upscaled_from = niqe.prepare(img)
    assert prepared.shape == (192, 192) and upscaled_from == 64
    assert niqe.features(img)[0].shape == (4, 36)

    mu, cov = np.arange(36.0), np.eye(36)
    savemat(tmp_path / "modelparameters.mat", {"mu_prisparam": mu[None], "cov_prisparam": cov})
    np.savez(tmp_path / "p.npz", mu_pris_param=mu[None], cov_pris_param=cov)
    for name in ("modelparameters.mat", "p.npz"):
        m = niqe.load_params(tmp_path / name)
        assert np.array_equal(m.mu, mu) and np.array_equal(m.cov, cov) and m.standard
    np.savez(tmp_path / "bad.npz", mu_pris_param=mu[:18], cov_pris_param=cov)
    with pytest.raises(ValueError, match="expected a 36-feature NIQE model"):
        niqe.load_params(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", mu_pris_param=np.array([object()]), cov_pris_param=cov)
    with pytest.raises(ValueError, match="pickle"):
        niqe.load_params(tmp_path / "obj.npz")

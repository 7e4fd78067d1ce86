"""Latents: the stored arrays are the VAE means of exactly the shard's views; factors recorded, not applied."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.core.config import ConfigError
from pipeline.core.ledger import Ledger
from pipeline.core.manifest import build_manifest
from pipeline.core.stage import StageContext
from pipeline.data.labels import colorize
from tests.shard_helpers import (
    FAILED_PARSE,
    NO_SKETCH,
    RESOLUTION,
    copy_run,
    ingest,
    reference_view,
    run,
    stage_settings,
    write_upstream,
)


@pytest.fixture(scope="module")
def upstream_run(demo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "run"
    ingest(demo_data, out)
    write_upstream(out)
    return out


@pytest.fixture(scope="module")
def encoded(upstream_run, tiny_model, tmp_path_factory) -> Path:
    out = copy_run(upstream_run, tmp_path_factory.mktemp("encoded") / "run")
    run(out, {"latents": stage_settings(tiny_model)["latents"]})
    return out


def rows(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["key"], r["vae"]): r for r in Ledger(out, "latents").read().to_pylist()}


def encode_mean(folder: Path, x: np.ndarray) -> np.ndarray:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder).eval()
    t = torch.from_numpy(x.astype(np.float32) / 127.5 - 1)
    t = t[None].permute(0, 3, 1, 2) if t.ndim == 3 else t[None, None].repeat(1, 3, 1, 1)
    with torch.inference_mode():
        return vae.encode(t).latent_dist.mean[0].numpy()


def load(out: Path, row: dict) -> dict[str, np.ndarray]:
    with np.load(out / row["file"], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_latents_are_the_vae_means_of_the_shard_views(encoded, tiny_model):
    out = encoded
    got = rows(out)
    keys = StageContext(out).index(["key"])["key"].to_pylist()
    assert {k for k, _ in got} == set(keys) and {v for _, v in got} == {"flux", "sd"}
    assert all(r["status"] == "ok" for r in got.values())
    flux, sd = got[("celebahq/1", "flux")], got[("celebahq/1", "sd")]
    assert (flux["channels"], flux["scaling_factor"], flux["shift_factor"]) == (16, 0.3611, 0.1159)
    assert (sd["channels"], sd["scaling_factor"], sd["shift_factor"]) == (4, 0.18215, None)
    assert flux["dtype"] == "float32" and flux["resolution"] == RESOLUTION  # fp32 on a CPU
    assert flux["mask_source"] == "gt"  # CelebAMask-HQ ground truth wins over the parse mask

    arrays = load(out, flux)
    assert set(arrays) == {"image", "mask", "sketch"}
    for a in arrays.values():
        assert a.dtype == np.float16 and a.shape == (16, RESOLUTION // 8, RESOLUTION // 8)
    index = {r["key"]: r for r in StageContext(out).index(["key", "path", "gt_mask"]).to_pylist()}
    photo = reference_view(Path(index["celebahq/1"]["path"]), RESOLUTION, Image.Resampling.LANCZOS)
    label = reference_view(out / index["celebahq/1"]["gt_mask"], RESOLUTION, Image.Resampling.NEAREST, "L")
    sketch = reference_view(out / "sketches/celebahq/1.png", RESOLUTION, Image.Resampling.LANCZOS, "L")
    for kind, x in (("image", photo), ("mask", colorize(label)), ("sketch", sketch)):
        want = encode_mean(tiny_model("vae-flux"), x)  # the mean, unscaled and unshifted
        np.testing.assert_allclose(arrays[kind].astype(np.float32), want, atol=2e-3, rtol=2e-3, err_msg=kind)
    assert load(out, sd)["image"].shape == (4, RESOLUTION // 8, RESOLUTION // 8)

    # Missing upstream outputs are not encoded, never an error; the npz opens without pickle.
    assert got[(NO_SKETCH, "flux")]["kinds"] == ["image", "mask"]
    assert got[(FAILED_PARSE, "flux")]["kinds"] == ["image", "sketch"]
    with zipfile.ZipFile(out / flux["file"]) as z:
        assert sorted(z.namelist()) == ["image.npy", "mask.npy", "sketch.npy"]


def test_rerun_is_free_and_changes_reencode_only_what_changed(encoded, tiny_model, tmp_path):
    out = copy_run(encoded, tmp_path / "run")
    settings = stage_settings(tiny_model)["latents"]
    before = rows(out)
    (again,) = run(out, {"latents": {**settings, "batch_size": 3, "device": "cpu"}})  # volatile settings
    assert again.pending == 0
    # A rebuilt model (same path, new weights) makes every row pending: weights are fingerprinted.
    vae = shutil.copytree(tiny_model("vae-sd"), tmp_path / "vae-sd")
    models = {"flux": settings["models"]["flux"], "sd": {"model": str(vae)}}
    (first,) = run(out, {"latents": {**settings, "models": models}})
    assert first.pending == len(before) // 2
    from diffusers import AutoencoderKL

    torch.manual_seed(7)
    AutoencoderKL.from_pretrained(vae).apply(lambda m: [p.data.normal_() for p in m.parameters(recurse=False)]) \
        .save_pretrained(vae)
    (changed,) = run(out, {"latents": {**settings, "models": models}})
    assert changed.pending == len(before) // 2 and changed.ok == len(before)
    # Superseded arrays are deleted; every current row's file exists.
    files = {str(p.relative_to(out)) for p in (out / "latents").rglob("*.npz")}
    assert files == {r["file"] for r in rows(out).values()}
    assert all(r["weights"] for r in rows(out).values())


def test_a_broken_input_is_a_row_or_a_flag(upstream_run, tiny_model, tmp_path):
    out = copy_run(upstream_run, tmp_path / "run")
    (out / "masks" / "photos" / "variants" / "hopper.png").write_bytes(b"not a png")  # corrupt mask: a flag
    t = pq.read_table(out / "index.parquet")  # an image deleted after ingest: a row with a reason
    gone = tmp_path / "gone.jpg"
    paths = [str(gone) if k == "photos/grace_hopper" else p
             for k, p in zip(t["key"].to_pylist(), t["path"].to_pylist(), strict=True)]
    pq.write_table(t.set_column(t.schema.get_field_index("path"), "path", pa.array(paths)), out / "index.parquet")
    (result,) = run(out, {"latents": stage_settings(tiny_model)["latents"]})
    got = rows(out)
    assert got[("photos/grace_hopper", "flux")]["status"] == "missing_image"
    assert "no longer exists" in got[("photos/grace_hopper", "sd")]["error"]
    hopper = got[("photos/variants/hopper", "flux")]
    assert hopper["status"] == "ok" and hopper["kinds"] == ["image", "sketch"]
    assert "mask_unreadable" in hopper["flags"]
    assert result.failed == {"missing_image": 2}


@pytest.mark.parametrize(("settings", "message"), [
    ({"models": {"flux.v1": {"model": "x/y"}}}, "no dots"),
    ({"resolution": 100}, "multiple of 8"),
    ({"models": {}}, "name at least one VAE"),
    ({"models": {"flux": {"model": "./nowhere"}}}, "does not exist"),
    ({"dtype": "fp8"}, "not a valid choice"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_manifest({"stages": {"ingest": {"sources": [{"path": "."}]}, "latents": settings}}, Path.cwd())
    assert "\n" not in str(e.value) and "stages.latents" in str(e.value)


def test_npz_members_are_plain_npy(encoded):
    row = next(r for r in rows(encoded).values() if r["status"] == "ok")
    with zipfile.ZipFile(encoded / row["file"]) as z:
        for name in z.namelist():
            a = np.load(io.BytesIO(z.read(name)), allow_pickle=False)
            assert a.dtype == np.float16 and a.flags.c_contiguous

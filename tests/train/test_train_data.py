"""Reading shards: deterministic order, exact mid-epoch positions, per-sample choices, no pickles, text cache."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch

from train.data import (
    ShardStream,
    TextEncoder,
    count_samples,
    dataset_class_counts,
    find_shards,
    latent_to_model,
    make_loader,
    model_to_latent,
    precompute_text,
    probe,
    shuffle_order,
)

ALL_KEYS = {f"demo/{i:05d}" for i in range(12)}


@pytest.fixture(scope="module")
def encoder(tiny_train_models):
    return TextEncoder(tiny_train_models["clip-text"])


def stream(shards, encoder, **kw):
    args = dict(vae="flux", batch_size=2, num_workers=0, seed=0, shuffle_buffer=4, tokenizer=encoder.tokenizer)
    args.update(kw)
    return ShardStream(find_shards(shards), **args)


def keys_of(ds, epoch=0, start=0):
    ds.set_position(epoch, start)
    return [list(b["key"]) for b in make_loader(ds, ds.workers if ds.workers > 1 else 0)]


def test_find_probe_and_count(shards, tmp_path):
    found = find_shards(shards)
    assert [s.path.name for s in found] == ["train-000000.tar", "train-000001.tar"]
    assert [s.samples for s in found] == [6, 6] and count_samples(found[0].path) == 6
    globbed = find_shards(str(shards / "train-*.tar"))  # no index.json needed
    assert [s.samples for s in globbed] == [6, 6]
    meta = probe(found, "flux")
    assert meta["latent_shape"] == [16, 8, 8] and meta["resolution"] == 64
    assert meta["vae"]["scaling_factor"] == 0.3611 and probe(found, "sd")["latent_shape"] == [4, 8, 8]
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="no 'flux2' latents; they have: flux, sd"):
        probe(found, "flux2")
    with pytest.raises(ConfigError, match="no 'val' shards"):
        find_shards(shards, "val")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_reads_each_sample_once_in_a_seeded_order(shards, encoder, workers):
    ds = stream(shards, encoder, num_workers=workers)
    first = keys_of(ds)
    flat = [k for b in first for k in b]
    assert len(flat) == len(set(flat)) == 12 and set(flat) == ALL_KEYS
    assert keys_of(ds) == first  # deterministic
    assert keys_of(ds, epoch=1) != first  # reshuffled each epoch
    assert keys_of(stream(shards, encoder, num_workers=workers, seed=1)) != first


@pytest.mark.parametrize("workers, start", [(0, 1), (0, 4), (2, 1), (2, 3), (2, 6)])
def test_a_position_resumes_exactly_where_the_epoch_was(shards, encoder, workers, start):
    ds = stream(shards, encoder, num_workers=workers)
    full = keys_of(ds, epoch=2)
    assert keys_of(ds, epoch=2, start=start) == full[start:]
    ds.set_position(2, 0)
    whole = list(make_loader(ds, workers))
    ds.set_position(2, start)
    tail = list(make_loader(ds, workers))
    for a, b in zip(whole[start:], tail, strict=True):  # the same samples, decoded the same way
        for k in ("latent", "cond", "modality", "drop_text", "input_ids"):
            assert torch.equal(a[k], b[k])


def test_ranks_read_disjoint_samples(shards, encoder):
    seen = [set(k for b in keys_of(stream(shards, encoder, rank=r, world=2)) for k in b) for r in range(2)]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 6


def test_shuffle_order_is_a_buffered_permutation():
    rng = np.random.default_rng(0)
    order = shuffle_order(100, 10, rng)
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert all(i <= pos + 10 for pos, i in enumerate(order))  # emitted only once read: at most a buffer ahead
    assert shuffle_order(5, 1, rng) == [0, 1, 2, 3, 4]


def test_latent_conventions():
    z = np.full((16, 2, 2), 2.0, np.float16)
    flux = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
    np.testing.assert_allclose(latent_to_model(z, flux, "diffusers"), (2.0 - 0.1159) * 0.3611, rtol=1e-6)
    np.testing.assert_allclose(latent_to_model(z, flux, "mmface"), 2.0 * 0.3611, rtol=1e-6)
    sd = {"scaling_factor": 0.18215, "shift_factor": None}
    np.testing.assert_allclose(latent_to_model(z, sd, "diffusers"), 2.0 * 0.18215, rtol=1e-6)
    for conv in ("diffusers", "mmface"):
        back = model_to_latent(torch.from_numpy(latent_to_model(z, flux, conv)), flux, conv)
        torch.testing.assert_close(back, torch.full((16, 2, 2), 2.0), atol=1e-5, rtol=1e-5)


def decoded(shards, encoder, epochs=range(40), **kw):
    """Every sample decoded in many epochs: key -> list of decoded dicts."""
    ds = stream(shards, encoder, **kw)
    out: dict[str, list[dict]] = {}
    for epoch in epochs:
        ds.set_position(epoch, 0)
        for s in ds:
            out.setdefault(s["key"], []).append(s)
    return out


def test_modality_choice_fallback_and_zero_condition(shards, encoder):
    meta = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
    got = decoded(shards, encoder, mask_dropout=0.0, sketch_dropout=0.0)
    for s in got["demo/00000"]:  # both conditions present: the one chosen, as a function of the image latent
        z = s["latent"] / 0.3611 + 0.1159
        expect = 0.8 * z + 0.1 if s["modality"] == 0 else -0.6 * z[::-1] + 0.2
        np.testing.assert_allclose(s["cond"], latent_to_model(expect, meta, "diffusers"), atol=3e-3)
    mods = [s["modality"] for s in got["demo/00000"]]
    assert 0.25 < np.mean(mods) < 0.75  # about 50/50
    assert all(s["modality"] == 0 and s["cond"].any() for s in got["demo/00003"])  # no sketch: the mask
    assert all(s["modality"] == 1 and s["cond"].any() for s in got["demo/00005"])  # no mask: the sketch
    assert all(not s["cond"].any() for s in got["demo/00008"])  # neither: a zero latent


def test_dropout_rates(shards, encoder):
    got = decoded(shards, encoder, epochs=range(120))
    samples = [s for v in got.values() for s in v]
    assert 0.03 < np.mean([s["drop_text"] for s in samples]) < 0.07  # 5%
    with_both = [s for k, v in got.items() if k not in ("demo/00003", "demo/00005", "demo/00008") for s in v]
    assert 0.03 < np.mean([not s["cond"].any() for s in with_both]) < 0.07  # 5% mask / sketch dropout
    empty = encoder.tokenize([""])[0].numpy()
    assert all(np.array_equal(s["input_ids"], empty) for s in samples if s["drop_text"])
    always = decoded(shards, encoder, epochs=range(2), text_dropout=1.0, mask_dropout=1.0, sketch_dropout=1.0)
    assert all(s["drop_text"] and not s["cond"].any() for v in always.values() for s in v)
    never = decoded(shards, encoder, epochs=range(2), text_dropout=0.0, mask_dropout=0.0, sketch_dropout=0.0)
    assert not any(s["drop_text"] for v in never.values() for s in v)


def test_caption_is_one_of_the_ten(shards, encoder):
    with tarfile.open(find_shards(shards)[0].path) as tar:
        captions = json.loads(tar.extractfile("demo/00000.captions.json").read())
    ids = {tuple(encoder.tokenize([c])[0].tolist()) for c in captions}
    seen = {tuple(s["input_ids"].tolist()) for s in decoded(shards, encoder, text_dropout=0.0)["demo/00000"]}
    assert seen <= ids and len(seen) >= 5  # drawn from the sample's own captions, several of them


def test_pickled_arrays_are_refused_never_loaded(shard_writer, encoder, tmp_path):
    root = shard_writer(tmp_path / "evil", n_shards=1, per_shard=2, missing={})
    path = root / "train-000000.tar"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    np.save(buf, np.array([Payload()], dtype=object), allow_pickle=True)
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            if m.name == "demo/00001.flux.latent.npy":
                data = buf.getvalue()
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    ds = stream(root, encoder, shuffle_buffer=1)
    with pytest.raises(ValueError, match="sample demo/00001: latent: not a plain numeric .npy"):
        list(ds)
    assert not marker.exists()
    assert pickle.dumps(1)  # (pickle itself is fine; the shard's payload just never reaches it)


def test_text_cache_matches_the_encoder(shards, encoder, tmp_path):
    cache = tmp_path / "text"
    precompute_text(find_shards(shards), encoder, cache, batch_size=7)
    online = decoded(shards, encoder, epochs=[0])
    cached = decoded(shards, encoder, epochs=[0], tokenizer=None, text_cache=cache)
    for key, [s] in cached.items():
        [o] = online[key]
        assert s["drop_text"] == o["drop_text"]
        hidden, pooled = encoder.encode_ids(torch.from_numpy(o["input_ids"])[None])
        np.testing.assert_allclose(s["text"], hidden[0].numpy(), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(s["pooled"], pooled[0].numpy(), atol=2e-3, rtol=2e-3)
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("train-*.safetensors")}
    precompute_text(find_shards(shards), encoder, cache)  # done shards are not recomputed
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("train-*.safetensors")} == before


def test_longtail_maps_and_class_counts(shards, encoder):
    counts = dataset_class_counts(find_shards(shards))
    assert len(counts) == 19 and sum(counts) == 10 * 64 * 64  # every sample but the two without a mask
    weights = 1.0 / (np.arange(19) + 1)
    got = decoded(shards, encoder, epochs=[0], class_weights=weights.astype(np.float32))
    assert got["demo/00000"][0]["weight"].shape == (8, 8)
    assert np.all(got["demo/00005"][0]["weight"] == 1.0)  # no mask.png: unweighted
    assert got["demo/00000"][0]["weight"].min() < 1.0  # hair (13) and skin (1) weigh less than background


def test_tiny_tokenizer_matches_open_clip_and_reloads(encoder, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from transformers import AutoTokenizer, CLIPTokenizer

    reference = open_clip.get_tokenizer("ViT-H-14")
    captions = ["A smiling young woman with long wavy brown hair, wearing gold earrings.",
                "portrait of an elderly man; grey beard & round glasses", "", "naïve café 1234 x-ray"]
    ours = encoder.tokenize(captions)
    assert torch.equal(ours, reference(captions).long())  # same BPE ids, EOT, and zero padding
    encoder.tokenizer.save_pretrained(tmp_path / "tok")
    for cls in (CLIPTokenizer, AutoTokenizer):
        again = cls.from_pretrained(tmp_path / "tok")
        assert again(captions, padding="max_length", max_length=77, return_tensors="pt")["input_ids"].equal(ours)


def test_reads_shards_written_by_the_pipelines_writer(sample_maker, encoder, tmp_path):
    wds = pytest.importorskip("pipeline.data.wds")
    from urllib.parse import unquote

    rng = np.random.default_rng(0)
    keys = ["photos/img.v2 copy", "celebahq/0", "_under"]  # slashes, dots, spaces, a leading underscore
    data = b"".join(wds.sample_fragment(k, list(sample_maker(k, i, 64, rng).items())) for i, k in enumerate(keys))
    (tmp_path / "train-000000.tar").write_bytes(data + wds.END_OF_ARCHIVE)
    ds = stream(tmp_path, encoder, batch_size=1, shuffle_buffer=1)
    got = list(ds)
    assert sorted(unquote(s["key"]) for s in got) == sorted(keys)
    assert all(s["latent"].shape == (16, 8, 8) and s["input_ids"].shape == (77,) for s in got)

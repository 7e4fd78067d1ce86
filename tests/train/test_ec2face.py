"""EC²Face done right: Eq. 11 by hand, the clamp, Eq. 10 in one place, attributes.json, the consistency loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.data.attributes import Counts, attributes, document_counts, ec2face_weights
from train import data as D
from train.consistency import ConsistencyLoss, beta, dice_loss
from train.model import MMFaceDiT, MMFaceDiTConfig
from train.objectives import DDPM, RectifiedFlow, longtail_class_weights, longtail_weight_map, weighted_mse
from train.train import latest_checkpoint, train

RULE = {"hfa_share": 0.03, "hfa_occurrence": 0.9, "rfa_share": 0.001, "rfa_occurrence": 0.3}


def stats_document(pixels: np.ndarray, split: str = "train") -> dict:
    """What the stats stage writes for one split with these class pixel counts (its own function)."""
    c = Counts()
    c.add(np.asarray(pixels, np.int64), 1e-4, "segformer", None, None, [])
    return attributes({split: c}, [], resolution=512, min_share=1e-4, reference_split="train", rule=RULE,
                      low_threshold=0.5)


# ---- Eq. 11 ------------------------------------------------------------------------------------------------
def test_eq11_puts_the_weight_inside_the_squared_norm_on_a_2x2_example_by_hand():
    # one sample, two channels, a 2x2 latent grid
    eps = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]], [[0.0, 1.0], [-1.0, 2.0]]]])
    eps_hat = torch.tensor([[[[0.0, 0.0], [0.5, 1.0]], [[1.0, 1.0], [0.0, 0.0]]]])
    w = torch.tensor([[[2.0, 1.0], [4.0, 0.5]]])
    # || w ⊙ (ε − ε_θ) ||² / (C·H·W), written out position by position: w_ij² · Σ_c (ε − ε_θ)²_cij
    by_hand = (2.0**2 * (1.0**2 + 1.0**2)      # (0,0): errors 1, -1
               + 1.0**2 * (2.0**2 + 0.0**2)    # (0,1): errors -2, 0
               + 4.0**2 * (0.0**2 + 1.0**2)    # (1,0): errors 0, -1
               + 0.5**2 * (2.0**2 + 2.0**2)) / 8  # (1,1): errors 2, 2
    assert by_hand == pytest.approx(3.75)  # (8 + 4 + 16 + 2) / 8
    assert weighted_mse(eps_hat, eps, w).item() == pytest.approx(by_hand)
    linear = (2.0 * 2 + 1.0 * 4 + 4.0 * 1 + 0.5 * 8) / 8  # the old form: w outside the square
    assert weighted_mse(eps_hat, eps, w, longtail_mode="linear").item() == pytest.approx(linear)
    with pytest.raises(ValueError, match="longtail_mode"):
        weighted_mse(eps_hat, eps, w, longtail_mode="squared")


def test_the_objectives_apply_eq11():
    """DDPM (no Min-SNR) with a network that predicts 0: the loss is mean((w ε)²) for the drawn ε."""
    x0, w = torch.randn(2, 2, 2, 2), torch.tensor([[[2.0, 1.0], [4.0, 0.5]]]).expand(2, 2, 2)
    zero = lambda z, t, **c: torch.zeros_like(z)  # noqa: E731
    for mode, expect in (("eq11", lambda e: (w[:, None] * e).pow(2).mean()),
                         ("linear", lambda e: (w[:, None] * e.pow(2)).mean())):
        loss = DDPM(min_snr_gamma=None, longtail_mode=mode).loss(zero, x0, {}, w, torch.Generator().manual_seed(3))
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))  # the same first draw
        assert loss.item() == pytest.approx(expect(eps).item(), rel=1e-6)


# ---- the clamp and Eq. 10 in one place -------------------------------------------------------------------
def test_the_clamp_holds_for_one_stray_pixel():
    counts = np.full(19, 5_000_000, np.int64)
    counts[15] = 1  # one earring pixel in the whole dataset
    raw = ec2face_weights(counts)
    assert raw[15] == pytest.approx(counts.sum() / 20)  # ΣT / (19·1 + 1): ~4.5 million
    for normalize in (None, 1, 2):
        w = longtail_class_weights(counts, [0.0, 10.0], normalize)
        assert w.max() <= 10.0 and w[15] == pytest.approx(10.0)
    label = np.zeros((16, 16), np.uint8)
    label[3, 7] = 15  # the stray pixel in a mask
    m = longtail_weight_map(label, longtail_class_weights(counts, [0.0, 10.0], 2), (2, 2))
    assert m.max() <= 10.0
    assert longtail_class_weights(counts, None)[15] == pytest.approx(raw[15], rel=1e-6)  # null: no clamp


def test_normalisation_makes_the_dataset_average_position_weight_one():
    share = np.array([.27, .33, .023, .004, .0017, .0017, .002, .002, .004, .004, .001, .002, .003, .18, .01,
                      .0003, .0004, .06, .06])  # CelebAMask-HQ-like shares
    counts = (share / share.sum() * 1e9).astype(np.int64)
    p = counts / counts.sum()
    for power in (1, 2):
        w = longtail_class_weights(counts, [0.0, 10.0], power)
        assert float((p * w.astype(np.float64) ** power).sum()) == pytest.approx(1.0, abs=1e-4)
        assert w.max() <= 10.0
    unnormalised = longtail_class_weights(counts, [0.0, 10.0])
    assert float((p * unnormalised.astype(np.float64) ** 2).sum()) > 2  # why normalise under Eq. 11


def test_eq10_lives_in_one_place(monkeypatch):
    """The stats stage's attributes.json weights and the trainer's weights are one function's output."""
    pixels = np.array([400_000, 300_000, 9_000, 0, 1_500, 1_500, 900, 900, 2_000, 2_000, 700, 1_200, 1_400,
                       180_000, 0, 30, 0, 50_000, 40_000], np.int64)
    doc = stats_document(pixels)
    counts, split = document_counts(doc, "train")
    assert counts == pixels.tolist() and split == "train"
    trainer = longtail_class_weights(counts, clamp=None)
    np.testing.assert_allclose(trainer, doc["ec2face"]["weights"], rtol=1e-6)  # identical for the same counts
    import pipeline.data.attributes as A

    monkeypatch.setattr(A, "ec2face_weights", lambda t: np.full(len(t), 0.5))  # the one implementation
    assert (longtail_class_weights(counts, clamp=None) == 0.5).all()


def test_document_counts_prefers_the_training_split():
    train_px, val_px = np.arange(1, 20) * 100, np.arange(1, 20)[::-1] * 7
    a, b = Counts(), Counts()
    a.add(train_px, 1e-4, "p", None, None, [])
    b.add(val_px, 1e-4, "p", None, None, [])
    doc = attributes({"train": a, "val": b}, [], resolution=512, min_share=1e-4, reference_split="train",
                     rule=RULE, low_threshold=0.5)
    assert document_counts(doc, "val") == (val_px.tolist(), "val")
    assert document_counts(doc, "test") == (train_px.tolist(), "train")  # no such split: the reference T
    with pytest.raises(ValueError, match="not an attributes document"):
        document_counts({"version": 1})


# ---- the trainer reads stats/attributes.json ---------------------------------------------------------------
def test_the_trainer_takes_its_weights_from_attributes_json(tiny_cfg, shard_writer, tmp_path):
    shards = shard_writer(tmp_path / "out" / "shards", n_shards=1, per_shard=4, missing={})
    stats = tmp_path / "out" / "stats" / "attributes.json"
    stats.parent.mkdir(parents=True)

    def run(name: str) -> tuple[dict, list[str]]:
        lines: list[str] = []
        cfg = tiny_cfg(tmp_path / name, shard_dir=shards, objective={"longtail": True},
                       data={"batch_size": 2}, train={"max_steps": 1})
        train(cfg, log=lines.append)
        state = json.loads((latest_checkpoint(tmp_path / name) / "state.json").read_text())
        return state, lines

    first = np.array([500_000, 300_000] + [2_000] * 17, np.int64)
    stats.write_text(json.dumps(stats_document(first)))
    state, lines = run("a")
    assert any(str(stats) in line and "EC²Face weights" in line for line in lines)
    assert state["class_counts"] == first.tolist()
    np.testing.assert_allclose(state["class_weights"], longtail_class_weights(first, [0.0, 10.0], 2), rtol=1e-6)

    second = first.copy()
    second[[0, 15]] = [50_000, 20]  # the file changes: the weights the trainer uses change
    stats.write_text(json.dumps(stats_document(second)))
    state2, _ = run("b")
    assert state2["class_counts"] == second.tolist()
    np.testing.assert_allclose(state2["class_weights"], longtail_class_weights(second, [0.0, 10.0], 2), rtol=1e-6)
    assert not np.allclose(state["class_weights"], state2["class_weights"])

    stats.unlink()  # no attributes.json: the shards' own counts, and the log says so
    state3, lines3 = run("c")
    assert state3["class_counts"] == D.dataset_class_counts(D.find_shards(shards))
    assert any("the shards' class_pixels (no stats/attributes.json" in line for line in lines3)


def test_longtail_weights_path_and_shards_options(shard_writer, tmp_path):
    shards = shard_writer(tmp_path / "s", n_shards=1, per_shard=2, missing={})
    found = D.find_shards(shards)
    doc = tmp_path / "elsewhere.json"
    doc.write_text(json.dumps(stats_document(np.arange(19) + 1)))
    assert D.longtail_counts(str(doc), shards, found, "train")[0] == list(range(1, 20))
    assert D.longtail_counts("shards", shards, found, "train")[0] == D.dataset_class_counts(found)
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="cannot read class counts"):
        D.longtail_counts(str(tmp_path / "missing.json"), shards, found, "train")


# ---- the consistency loss -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def consistency_models(tiny_model) -> dict:
    """clip-tiny (both towers), segformer-face-tiny and vae-flux from the tiny-model registry (tools/tiny/)."""
    return {"clip": str(tiny_model("clip-tiny")), "parser": str(tiny_model("segformer-face-tiny")),
            "vae": str(tiny_model("vae-flux"))}


def make_loss(models, **cfg) -> ConsistencyLoss:
    from tests.train.conftest import VAES
    from train.config import ConsistencyConfig

    return ConsistencyLoss(ConsistencyConfig(clip=models["clip"], parser=models["parser"], vae=models["vae"], **cfg),
                           VAES["flux"], "diffusers", "cpu")


def tiny_dit() -> MMFaceDiT:
    torch.manual_seed(0)
    model = MMFaceDiT(MMFaceDiTConfig.from_size("tiny", latent_channels=16, text_dim=32))
    for p in model.parameters():  # adaLN-zero makes the network output 0 at init: give it real blocks
        torch.nn.init.normal_(p, std=0.02)
    return model


def batch_inputs(b: int = 2, hw: int = 4):
    g = torch.Generator().manual_seed(1)
    c = {"cond": torch.randn(b, 16, hw, hw, generator=g), "modality": torch.zeros(b, dtype=torch.long),
         "text": torch.randn(b, 77, 32, generator=g), "pooled": torch.randn(b, 32, generator=g),
         "drop_text": torch.zeros(b, dtype=torch.bool)}
    label = torch.zeros(b, 8 * hw, 8 * hw, dtype=torch.long)
    label[:, 8:24, 8:24] = 1  # skin
    label[:, 12:14, 10:13] = 4  # an eye
    label[:, 20:22, 14:18] = 11  # a lip
    return torch.randn(b, 16, hw, hw, generator=g), c, label


def test_beta_is_high_at_low_noise():
    tau = torch.tensor([0.0, 0.4, 1.0])
    torch.testing.assert_close(beta(tau, 10.0, 0.4), torch.sigmoid(torch.tensor([4.0, 0.0, -6.0])))
    assert beta(tau, 10.0, 0.4)[0] > 0.98 and beta(tau, 10.0, 0.4)[2] < 0.003


def test_clean_estimates_are_exact_for_oracle_predictions():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    z = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * x
    torch.testing.assert_close(RectifiedFlow.estimate_data(z, t, x - noise), x)
    torch.testing.assert_close(RectifiedFlow.noise_level(t), 1 - t)
    for kind in ("epsilon", "v_prediction"):
        ddpm = DDPM(prediction_type=kind)
        steps = torch.tensor([10, 400, 900])
        zt = ddpm.scheduler.add_noise(x, noise, steps)
        pred = noise if kind == "epsilon" else ddpm.scheduler.get_velocity(x, noise, steps)
        torch.testing.assert_close(ddpm.estimate_data(zt, steps, pred), x, atol=1e-4, rtol=1e-4)
    assert DDPM().noise_level(torch.tensor([0, 999])).tolist() == [0.0, 1.0]


def test_dice_is_zero_for_a_perfect_prediction():
    label = torch.randint(0, 19, (2, 8, 8))
    perfect = 1e4 * torch.nn.functional.one_hot(label, 19).permute(0, 3, 1, 2).float()
    assert dice_loss(perfect, label).abs().max().item() < 1e-4
    assert (dice_loss(torch.zeros(2, 19, 8, 8), label) > 0.5).all()


def test_consistency_has_zero_gradient_at_beta_zero(consistency_models):
    loss_fn, model = make_loss(consistency_models), tiny_dit()
    x1, c, label = batch_inputs()
    caps, yes = ["a smiling woman with long hair", "an old man with glasses"], torch.ones(2, dtype=torch.bool)

    def grads(weight):
        model.zero_grad(set_to_none=True)
        extra = lambda x0, tau: loss_fn(x0, tau, caps, label, yes, yes, weight=weight)  # noqa: E731
        RectifiedFlow().loss(model, x1, c, generator=torch.Generator().manual_seed(0), extra=extra).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads(torch.zeros(2))
    model.zero_grad(set_to_none=True)
    RectifiedFlow().loss(model, x1, c, generator=torch.Generator().manual_seed(0)).backward()
    without = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(plain, without, strict=True))  # β = 0: exactly the plain loss
    with_term = grads(torch.ones(2))
    assert any(not torch.equal(a, b) for a, b in zip(with_term, without, strict=True))  # β = 1: it acts
    for frozen in (loss_fn.vae, loss_fn.clip, loss_fn.parser):  # only the DiT gets gradients
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("term", ["clip", "parser"])
def test_consistency_lowers_its_own_term_in_a_few_steps(consistency_models, term):
    loss_fn = make_loss(consistency_models, lambda_clip=float(term == "clip"), lambda_parser=float(term == "parser"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # transformers' init (std 0.02) at widths 8-64 gives near-constant logits (std 1e-3),
        for p in loss_fn.parser.parameters():  # which no image can move; a trained parser responds to its input
            if p.dim() > 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model = tiny_dit()
    x1, c, label = batch_inputs()
    caps, yes = ["a smiling woman with long hair", "an old man with glasses"], torch.ones(2, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(2))
    t = torch.full((2,), 0.8)  # noise level 0.2: β ≈ 0.88
    z = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * x1
    terms = []
    for _ in range(15):  # the DiT is the only thing that learns: x̂ = z + (1 - t) v̂ moves through it
        x0 = RectifiedFlow.estimate_data(z, t, model(z, t * 999, **c))
        loss = loss_fn(x0, RectifiedFlow.noise_level(t), caps, label, yes, yes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        terms.append(loss_fn.last[term].item())
    print(f"{term} term:", " ".join(f"{v:.4f}" for v in terms))
    assert terms[-1] < 0.9 * terms[0]


def test_dropped_conditions_get_no_term(consistency_models):
    loss_fn = make_loss(consistency_models)
    x0 = torch.randn(2, 16, 4, 4, requires_grad=True)
    no = torch.zeros(2, dtype=torch.bool)
    out = loss_fn(x0, torch.zeros(2), ["", ""], torch.zeros(2, 32, 32, dtype=torch.long), no, no)
    assert out.item() == 0.0 and "clip" not in loss_fn.last  # nothing decoded
    bound = loss_fn.bind({"caption": ["a face", ""], "drop_text": torch.tensor([False, False]),
                         "has_label": torch.tensor([True, True]), "has_cond": torch.tensor([False, True]),
                         "label": torch.zeros(2, 32, 32, dtype=torch.uint8)})
    bound(x0, torch.zeros(2)).backward()
    assert x0.grad.abs().sum() > 0  # sample 0: CLIP only; sample 1: parser only


def test_the_trainer_runs_with_the_consistency_loss(tiny_cfg, consistency_models, tmp_path):
    cfg = tiny_cfg(tmp_path / "run", objective={"longtail": True, "longtail_weights": "shards",
                                                "consistency": dict(consistency_models)},
                   data={"batch_size": 2}, train={"max_steps": 2})
    summary = train(cfg, log=lambda *a: None)
    assert summary["steps"] == 2 and np.isfinite(summary["last_loss"])


def test_shard_stream_hands_the_consistency_loss_its_conditions(shards):
    import io

    from PIL import Image

    from tools.tiny_train_models import build_clip_tokenizer

    found = D.find_shards(shards)
    ds = D.ShardStream(found, "flux", 4, tokenizer=build_clip_tokenizer(), consistency=True,
                       mask_dropout=0.5, sketch_dropout=0.5)
    samples = {s["key"]: s for s in ds}
    assert samples and all({"caption", "label", "has_label", "has_cond"} <= set(s) for s in samples.values())
    assert {s["has_cond"] for s in samples.values()} == {True, False}  # 50% dropout: both occur
    masks = {k: np.asarray(Image.open(io.BytesIO(f["mask.png"]))) for shard in found
             for _, k, f in D.iter_samples(shard.path, fields=frozenset({"mask.png"})) if "mask.png" in f}
    for key, s in samples.items():
        assert (s["caption"] == "") == s["drop_text"]
        assert s["has_cond"] == bool(np.abs(s["cond"]).sum() > 0)  # a given condition latent is never zero
        assert s["has_label"] == (key in masks)
        assert np.array_equal(s["label"], masks[key]) if key in masks else not s["label"].any()


def test_bench_consistency_prints_the_ratio(consistency_models, tmp_path, capsys):
    from tools import bench_consistency

    out = tmp_path / "bench.json"
    assert bench_consistency.main(["--batch", "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
                                   "--json", str(out)]) == 0
    assert "vs none" in capsys.readouterr().out
    rows = {r["consistency"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"none", "clip", "parser", "clip+parser"} and rows["none"]["ratio"] == 1.0
    assert all(r["step_ms"] > 0 for r in rows.values())


def test_consistency_config_checks(tmp_path):
    from train.config import ConfigError, build_config, load_config

    base = {"train": {"max_steps": 1}}
    with pytest.raises(ConfigError, match="set clip, parser or both"):
        build_config({**base, "objective": {"consistency": {"lambda_clip": 1.0}}})
    with pytest.raises(ConfigError, match="t_c"):
        build_config({**base, "objective": {"consistency": {"clip": "x", "t_c": 2.0}}})
    with pytest.raises(ConfigError, match="longtail_clamp"):
        build_config({**base, "objective": {"longtail_clamp": [5.0, 1.0]}})
    assert build_config(base).objective.consistency is None  # off by default
    (tmp_path / "clip").mkdir()
    (tmp_path / "c.yaml").write_text("train: {max_steps: 1}\nobjective:\n  longtail_weights: stats/a.json\n"
                                     "  consistency: {clip: clip, parser: org/face-parser}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.objective.consistency.clip == str(tmp_path / "clip")  # a folder beside the file
    assert cfg.objective.consistency.parser == "org/face-parser"  # a hub id stays one
    assert cfg.objective.longtail_weights == str(tmp_path / "stats" / "a.json")

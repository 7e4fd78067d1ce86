"""`facecurate evaluate`: every metric on a tiny trained model, perfect scores for real faces, a page that renders.

One tiny MMFace-DiT is trained for a few steps on eight contract samples (one without a sketch, one without a
mask, one caption with markup in it) and evaluated once for the module; the metric models are tiny
random-weight copies of the real architectures: torchvision's Inception-v3 and AlexNet (``random``), the tiny
CLIPModel and the tiny Segformer face parser.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from train.cli import register
from train.config import ConfigError

HOSTILE = 'a <b>bold</b> & "quoted" <script>alert(1)</script> smile'
SETS = ("overall", "mask", "sketch", "text")
FIGURES = ("fid", "lpips", "ms_ssim", "mask_pixel_accuracy", "mask_miou", "clip_score", "clip_distance",
           "clip_image_distance", "niqe")


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    """The module's shared run and report are built before the per-test one_torch_thread fixture runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def eval_shards(tmp_path_factory, sample_maker):
    from tests.train.conftest import write_tar

    root = tmp_path_factory.mktemp("eval-shards")
    rng = np.random.default_rng(7)
    samples = []
    for i in range(8):
        s = sample_maker(f"demo/{i:05d}", i, 64, rng, has_mask=i != 5, has_sketch=i != 2)
        if i == 0:
            s["captions.json"] = json.dumps([HOSTILE, "unused second caption"]).encode()
        samples.append((f"demo/{i:05d}", s))
    path = root / "test-000000.tar"
    write_tar(path, samples)
    data = path.read_bytes()
    (root / "index.json").write_text(json.dumps({"shards": [{"name": path.name, "split": "test", "samples": 8,
                                                             "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shards, tiny_train_models):
    from tests.train.conftest import tiny_config
    from train.train import train

    out = tmp_path_factory.mktemp("eval-run") / "run"
    train(tiny_config(shards, tiny_train_models["clip-text"], out), log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def models(tiny_model, tiny_train_models):
    return {"vae": str(tiny_train_models["vae-flux"]), "parser": str(tiny_model("segformer-face-tiny")),
            "clip": str(tiny_model("clip-tiny"))}


def options(models, **kw):
    from train.evaluate import EvalOptions
    from train.metrics import MetricOptions

    metrics = MetricOptions(fid_weights="random", fid_size=75, lpips_weights="random", clip=models["clip"],
                            **kw.pop("metrics", {}))
    return EvalOptions(per_condition=kw.pop("per_condition", 1), steps=3, vae=models["vae"], parser_model=models["parser"], device="cpu",
                       metrics=metrics, **kw)


@pytest.fixture(scope="module")
def report(trained, eval_shards, models):
    from train.evaluate import evaluate

    return evaluate(trained, eval_shards, options(models), log=lambda *_: None)


def test_evaluate_reports_every_metric_overall_and_per_condition_type(report, trained):
    out = Path(report["out"])
    assert out == trained / "eval"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["metrics"] == json.loads(json.dumps(report["metrics"]))
    assert list(report["metrics"]) == list(SETS)
    for name in SETS:
        block = report["metrics"][name]
        for key in FIGURES:
            assert isinstance(block[key], float) and math.isfinite(block[key]), (name, key, block[key])
        assert set(block["mask_groups"]) == {"HFA", "NFA", "RFA"}
    counts = {k: report["metrics"][k]["images"] for k in SETS}
    # 8 conditions x 1 face; sample 5 has no mask (nor its latent), sample 2 no sketch
    assert counts == {"overall": 7 + 7 + 8, "mask": 7, "sketch": 7, "text": 8}
    p = report["protocol"]
    assert (p["per_condition"], p["steps"], p["cfg_scale"], p["seed"], p["sampler"]) == (1, 3, 7.5, 0, "euler")
    assert p["conditions"] == {"mask": 7, "sketch": 7, "text": 8}
    groups = report["groups"]
    assert "computed from the 7 condition masks" in groups["source"] and "HFA: mean pixel share" in groups["rule"]
    assert sorted(groups["HFA"] + groups["NFA"] + groups["RFA"]) == sorted(report["metrics"]["overall"]["mask_per_class_iou"])
    assert "skin" in groups["HFA"] and "ear_r" not in groups["HFA"]
    ref = report["reference"]
    assert ref["images"] == 8 and 0 <= ref["mask_miou"] <= 1 and math.isfinite(ref["niqe"])
    models = report["models"]
    assert models["fid"]["weights"] == "random" and models["lpips"]["backbone"] == "random"
    assert models["ms_ssim"]["scales"] == 3 and models["niqe"]["upscaled_from"] == 64
    assert report["parser"]["parser"] == "segformer" and any("FID" in n for n in report["notes"])


def test_real_faces_scored_as_generated_are_perfect(eval_shards, models):
    """FID ~ 0, LPIPS 0, MS-SSIM 1, and the mask scores are the parser's own agreement with the masks."""
    from pipeline.data.labels import NUM_CLASSES
    from pipeline.ops.eval_parse import scores
    from pipeline.parsers.base import confusion
    from pipeline.parsers.segformer import SegformerParser
    from train.data import find_shards
    from train.evaluate import ec2face_groups, face_masker
    from train.generation import load_conditions
    from train.scoring import Scorer, real_as_generated

    o = options(models)
    conditions = load_conditions(find_shards(eval_shards, "test"), "flux", "diffusers")
    masker, _ = face_masker(eval_shards, o, torch.device("cpu"))
    scorer = Scorer(o.metrics, masker, torch.device("cpu"))
    report, per_face = scorer.score(conditions, real_as_generated(conditions), ec2face_groups(eval_shards, conditions))
    m = report["metrics"]["mask"]
    assert abs(m["fid"]) < 1e-6, m["fid"]
    assert m["lpips"] == 0.0 and np.all(per_face["mask"]["lpips"] == 0.0)
    assert m["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["clip_image_distance"] == pytest.approx(0.0, abs=1e-6)
    assert m["clip_score"] == pytest.approx(report["reference"]["clip_score"])
    assert m["niqe"] == pytest.approx(report["reference"]["niqe"])
    assert m["mask_miou"] == report["reference"]["mask_miou"]

    # the parser's own evaluation (pipeline/ops/eval_parse) of its maps against the same masks
    parser = SegformerParser(models["parser"], "cpu")
    labels = [r.label for r in parser([c.image for c in conditions], [True] * len(conditions))]
    conf = sum(confusion(lab, c.mask) for lab, c in zip(labels, conditions, strict=True) if c.mask is not None)
    own = scores(np.asarray(conf).reshape(NUM_CLASSES, NUM_CLASSES))
    assert m["mask_miou"] == pytest.approx(own["miou"]) and m["mask_pixel_accuracy"] == pytest.approx(own["pixel_accuracy"])
    # and a parse compared with itself agrees fully
    images = np.stack([c.image for c in conditions])
    self_conf = np.sum(masker(images, labels), axis=0)
    assert np.trace(self_conf) == self_conf.sum()


def test_the_page_renders_in_headless_chromium(report):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    page = Path(report["out"]) / "index.html"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<script>alert(1)</script>" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # escaped
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; \"quoted\"" in dom
    for c in ("mask", "sketch", "text"):
        assert f"<b>{c}</b>" in dom
    srcs = [s.split('"')[0] for s in dom.split('<img src="')[1:]]
    # 8 conditions: 7 mask rows (condition, face, real), 7 sketch rows, 8 caption-only rows (no condition image)
    assert len(srcs) == 7 * 3 + 7 * 3 + 8 * 2
    assert all((page.parent / s).is_file() for s in srcs) and "images/0000_mask_condition.png" in srcs
    assert "caption only" in dom and "FID" in dom and "NIQE" in dom


app = typer.Typer(rich_markup_mode="markdown", add_completion=False)
register(app)


def test_cli_evaluate_prints_the_table_and_refuses_bad_input(trained, eval_shards, models, tmp_path):
    runner = CliRunner()
    common = [str(trained), "--shards", str(eval_shards), "--vae", models["vae"], "--parser-model", models["parser"],
              "--clip", models["clip"], "--lpips-weights", "random", "--fid-size", "75", "--device", "cpu"]
    result = runner.invoke(app, ["evaluate", *common, "--per-condition", "1", "--steps", "2", "--kinds", "mask,text",
                                 "--limit", "3", "--skip", "fid,niqe", "--out", str(tmp_path / "ev")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and "mask mIoU" in result.output and "next: open" in result.output
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(saved["metrics"]) == ["overall", "mask", "text"] and saved["metrics"]["overall"]["images"] == 6
    assert "fid" not in saved["metrics"]["overall"] and "niqe" not in saved["metrics"]["overall"]

    help_text = runner.invoke(app, ["evaluate", "--help"]).output
    assert "Examples" in help_text and "facecurate evaluate " in help_text
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for args, message in [
        (["--skip", "fidd"], "'fidd' is not a metric"),
        (["--kinds", "photo"], "'photo' is not a condition type"),
        (["--split", "val"], "no 'val' shards with samples"),
        (["--fid-weights", str(tmp_path / "none.pth")], "does not exist"),
        (["--fid-weights", "random", "--out", str(tmp_path / "busy")], "is not an evaluation folder"),
    ]:
        bad = runner.invoke(app, ["evaluate", *common, *args])
        flat = " ".join(bad.output.replace("│", " ").split())
        assert bad.exit_code == 2 and message in flat and "Traceback" not in bad.output, (args, bad.output)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_metric_weights_load_from_local_state_dicts(tmp_path):
    """FID and LPIPS take torchvision state dicts from files (as the real weights arrive), never unpickling code."""
    from torchvision.models import alexnet, inception_v3

    from train.metrics import Lpips, load_fid

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    fid, info = load_fid(str(tmp_path / "inception.pth"), 75, torch.device("cpu"))
    assert info == {"network": "torchvision inception_v3", "weights": str(tmp_path / "inception.pth"), "input": 75,
                    "standard": False}
    assert torch.equal(fid.inception.net.Conv2d_1a_3x3.conv.weight, net.Conv2d_1a_3x3.conv.weight)

    alex = alexnet(weights=None)
    torch.save({k: v for k, v in alex.state_dict().items() if k.startswith("features.")}, tmp_path / "alex.pth")
    lp = Lpips("alex", str(tmp_path / "alex.pth"), torch.device("cpu"))
    assert torch.equal(getattr(lp.model.net.slice2, "3").weight, alex.features[3].weight) and lp.info["backbone"].endswith("alex.pth")

    (tmp_path / "evil.pth").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would call os.system
    with pytest.raises(ConfigError, match="not a plain state dict"):
        load_fid(str(tmp_path / "evil.pth"), 75, torch.device("cpu"))
    with pytest.raises(ConfigError, match="is not a torchvision alex state dict"):
        Lpips("alex", str(tmp_path / "inception.pth"), torch.device("cpu"))


def test_training_scores_fixed_conditions_every_n_steps_without_changing_the_losses(tiny_cfg, tmp_path, models,
                                                                                  eval_shards):
    from train.train import train

    extra = {"vae": models["vae"], "parser_model": models["parser"], "clip": models["clip"], "fid_weights": "random",
             "fid_size": 75, "lpips_weights": "random", "steps": 2, "per_condition": 1, "kinds": ["mask"],
             "skip": ["fid", "niqe"]}
    lines = []
    cfg = tiny_cfg(out=tmp_path / "with", train={"max_steps": 8, "eval_every": 4, "eval_conditions": 3,
                                                 "eval_options": extra})
    train(cfg, log=lines.append)
    plain = tiny_cfg(out=tmp_path / "without", train={"max_steps": 8})
    train(plain, log=lambda *_: None)

    def records(run):
        return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]

    evals = [r for r in records(tmp_path / "with") if "eval" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert set(evals[0]["eval"]) == {"overall", "mask"} and {"lpips", "ms_ssim", "mask_miou", "clip_score"} <= set(
        evals[0]["eval"]["overall"])
    assert (tmp_path / "with" / "eval_steps" / "step_000008" / "index.html").is_file()
    assert any(line.startswith("eval: the shards have no 'test' split") for line in lines)
    assert any(line.startswith("eval step 4: ") for line in lines)
    losses = {r["step"]: r["loss"] for r in records(tmp_path / "with") if "loss" in r}
    assert losses == {r["step"]: r["loss"] for r in records(tmp_path / "without")}  # scoring moved no random stream

    with pytest.raises(ConfigError, match="train.eval_options: unknown key 'fid_weight'"):
        tiny_cfg(train={"eval_every": 5, "eval_options": {"fid_weight": "x"}})


@pytest.mark.parametrize("n_real, n_fake", [(6, 9), (80, 70)])  # rank-deficient and full-rank real covariance
def test_fid_from_the_factored_real_set_equals_torchmetrics(n_real, n_fake):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from train.metrics import FrechetReference, gaussian

    class Features(torch.nn.Module):
        num_features = 32

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3 * 8 * 8, 32)

        def forward(self, x):
            return self.proj(x.float().flatten(1) / 255)

    torch.manual_seed(0)
    fid = FrechetInceptionDistance(feature=Features(), reset_real_features=False)
    fid.update((torch.rand(n_real, 3, 8, 8) * 255).byte(), real=True)
    fid.update((torch.rand(n_fake, 3, 8, 8) * 200).byte(), real=False)
    ours = FrechetReference(*gaussian(fid, real=True)).distance(*gaussian(fid, real=False))
    assert ours == pytest.approx(float(fid.compute()), rel=1e-5)

"""Public MMFace-DiT checkpoints: the key mapping, strict loading, init_from, convert-checkpoint, sampling.

The public layout is described here from the public code's structure (``UnifiedDualStreamDiT``: module names
and shapes), and ``public_forward`` is an independent functional re-implementation of its eval forward
(separate q/k/v per stream, text at RoPE position 0, t in [0, 1] scaled by 999 inside the flow variant).
Our model loaded from converted weights must give its outputs: that is what interoperability means.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from train.cli import register
from train.config import ConfigError
from train.convert import convert, infer_config, load_model, size_name, to_ours, to_public
from train.model import MMFaceDiT, MMFaceDiTConfig, count_params

PUBLIC_CODE_XL = 1_345_298_624
ROOT = Path(__file__).resolve().parents[2]


def public_table(depth: int, hidden: int, in_ch: int, text_dim: int = 1024, mlp_ratio: float = 4.0,
                 patch: int = 2) -> dict[str, tuple[int, ...]]:
    """Every tensor of the public UnifiedDualStreamDiT (learn_sigma false), name -> shape.

    From its modules: PatchEmbed ``x_embedder.proj`` (Conv2d), TimestepEmbedder ``t_embedder.mlp`` (256 -> D ->
    D), CaptionEmbedder ``c_embedder`` (``proj`` + ``null_feature_pooled``), ``clip_seq_proj``,
    ``modality_embedder`` (2 rows); per block a DualStreamAttention ``attn`` with to_q/to_k/to_v/to_out and
    the ``_t`` copies for text (no bias), ``mlp_i`` / ``mlp_t`` (Linear, GELU, Linear), ``adaLN_modulation``
    (SiLU, Linear D -> 12D); FinalLayer ``linear`` and ``adaLN_modulation`` (D -> 2D). Its LayerNorms have no
    affine parameters and its RoPE embedder no buffers.
    """
    d, w, out = hidden, int(hidden * mlp_ratio), patch * patch * (in_ch // 2)
    t = {"x_embedder.proj.weight": (d, in_ch, patch, patch), "x_embedder.proj.bias": (d,),
         "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
         "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
         "c_embedder.proj.weight": (d, text_dim), "c_embedder.proj.bias": (d,),
         "c_embedder.null_feature_pooled": (text_dim,),
         "clip_seq_proj.weight": (d, text_dim), "clip_seq_proj.bias": (d,), "modality_embedder.weight": (2, d)}
    for i in range(depth):
        b = f"blocks.{i}."
        for name in ("to_q", "to_k", "to_v", "to_out", "to_q_t", "to_k_t", "to_v_t", "to_out_t"):
            t[f"{b}attn.{name}.weight"] = (d, d)
        for s in ("i", "t"):
            t[f"{b}mlp_{s}.0.weight"], t[f"{b}mlp_{s}.0.bias"] = (w, d), (w,)
            t[f"{b}mlp_{s}.2.weight"], t[f"{b}mlp_{s}.2.bias"] = (d, w), (d,)
        t[f"{b}adaLN_modulation.1.weight"], t[f"{b}adaLN_modulation.1.bias"] = (12 * d, d), (12 * d,)
    t |= {"final_layer.linear.weight": (out, d), "final_layer.linear.bias": (out,),
          "final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,)}
    return t


def random_public(depth=2, hidden=64, in_ch=32, text_dim=32, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    table = public_table(depth, hidden, in_ch, text_dim)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in table.items()}


def public_forward(sd, x, t, pooled, modality, text, heads: int, flow: bool = True) -> torch.Tensor:
    """The public model's eval forward, functional: x is [noisy latent, condition] on channels."""
    d, p = sd["x_embedder.proj.weight"].shape[0], sd["x_embedder.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    hd = d // heads

    def lin(v, name):
        return F.linear(v, sd[f"{name}.weight"], sd.get(f"{name}.bias"))

    def norm(v):
        return F.layer_norm(v, (d,), eps=1e-6)

    img = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    b, _, g, _ = img.shape
    img = img.flatten(2).transpose(1, 2)
    if flow and t.max() <= 1.0:  # the flow variant takes t in [0, 1] and scales it itself
        t = t * 999.0
    freqs = torch.exp(-math.log(10_000) * torch.arange(128, dtype=torch.float32) / 128)
    temb = torch.cat([torch.cos(t[:, None].float() * freqs), torch.sin(t[:, None].float() * freqs)], dim=1)
    c = (lin(pooled, "c_embedder.proj") + lin(F.silu(lin(temb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
         + sd["modality_embedder.weight"][modality])
    txt = lin(text, "clip_seq_proj")
    # RoPE as complex rotations of channel pairs; ids (row, col) for image tokens, (0, 0) for every text token
    omega = 10_000.0 ** (-torch.arange(0, hd // 2, 2, dtype=torch.float64) / (hd // 2))
    ids = torch.stack([torch.arange(g).repeat_interleave(g), torch.arange(g).repeat(g)], dim=1)
    ids = torch.cat([ids, torch.zeros(txt.shape[1], 2, dtype=torch.long)])
    angle = torch.cat([ids[:, :1] * omega, ids[:, 1:] * omega], dim=1)
    rot = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)  # (N, hd / 2)

    def rope(v):
        pairs = torch.view_as_complex(v.reshape(*v.shape[:-1], hd // 2, 2))  # (B, N, H, hd / 2)
        return torch.view_as_real(pairs * rot[:, None]).flatten(-2)

    for i in range(depth):
        pre = f"blocks.{i}."
        m = lin(F.silu(c), pre + "adaLN_modulation.1")[:, None].chunk(12, dim=-1)
        mi, mt = norm(img) * (1 + m[1]) + m[0], norm(txt) * (1 + m[7]) + m[6]
        q, k, v = (torch.cat([lin(mi, f"{pre}attn.{n}"), lin(mt, f"{pre}attn.{n}_t")], dim=1)
                   .unflatten(-1, (heads, hd)) for n in ("to_q", "to_k", "to_v"))
        q, k = rope(q), rope(k)
        att = (torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(hd)).softmax(-1)
        o = torch.einsum("bhnm,bmhd->bnhd", att, v).flatten(2)
        n = img.shape[1]
        img = img + m[2] * lin(o[:, :n], pre + "attn.to_out")
        txt = txt + m[8] * lin(o[:, n:], pre + "attn.to_out_t")
        hi = F.gelu(lin(norm(img) * (1 + m[4]) + m[3], pre + "mlp_i.0"), approximate="tanh")
        ht = F.gelu(lin(norm(txt) * (1 + m[10]) + m[9], pre + "mlp_t.0"), approximate="tanh")
        img, txt = img + m[5] * lin(hi, pre + "mlp_i.2"), txt + m[11] * lin(ht, pre + "mlp_t.2")
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1")[:, None].chunk(2, dim=-1)
    out = lin(norm(img) * (1 + scale) + shift, "final_layer.linear")
    ch = out.shape[-1] // (p * p)
    return out.reshape(b, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, g * p, g * p)


def inputs(b=2, c=16, hw=8, n_text=7, text_dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(z=torch.randn(b, c, hw, hw, generator=g), cond=torch.randn(b, c, hw, hw, generator=g),
                modality=torch.tensor([0, 1] * (b // 2)), text=torch.randn(b, n_text, text_dim, generator=g),
                pooled=torch.randn(b, text_dim, generator=g))


def test_xl_converted_names_and_shapes_are_the_public_ones():
    with torch.device("meta"):
        ours = MMFaceDiT(MMFaceDiTConfig.from_size("XL"))
    public = {k: tuple(v.shape) for k, v in to_public(ours.state_dict()).items()}
    table = public_table(28, 1152, 32, 1024)
    assert public == table  # same names, same shapes, nothing left over
    assert sum(math.prod(s) for s in table.values()) == count_params(ours) == PUBLIC_CODE_XL
    with torch.device("meta"):
        back = to_ours({k: torch.empty(s) for k, s in table.items()})
    cfg = infer_config(back, rope="public")
    assert cfg == MMFaceDiTConfig.from_size("XL") and size_name(cfg) == "XL" and cfg.rope == "public"


def test_round_trips_are_exact():
    torch.manual_seed(0)
    model = MMFaceDiT(MMFaceDiTConfig.from_size("tiny", text_dim=32))
    for p in model.parameters():
        torch.nn.init.normal_(p)
    ours = model.state_dict()
    again = to_ours(to_public(ours))
    assert again.keys() == ours.keys() and all(torch.equal(again[k], ours[k]) for k in ours)
    public = random_public()
    back = to_public(to_ours(public))
    assert back.keys() == public.keys() and all(torch.equal(back[k], public[k]) for k in public)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("flow", [True, False], ids=["flow", "ddpm"])
def test_public_weights_load_strictly_and_give_the_public_outputs(tmp_path, suffix, flow):
    from train.sample import load_weights_file

    public = random_public()
    path = tmp_path / f"dit_model_weights_ema{suffix}"
    save_file(public, str(path)) if suffix == ".safetensors" else torch.save(public, path)
    model, state, origin = load_weights_file(path, None, None, torch.device("cpu"))  # what `sample` uses
    got = (origin, model.cfg.rope, state["latent_convention"], model.cfg.num_heads)
    assert got == ("public", "public", "mmface", 4)
    inp = inputs()
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, generator=g) if flow else torch.randint(1, 1000, (2,), generator=g).float()
    t_ours = t * 999 if flow else t  # RectifiedFlow passes t * 999; DDPM the scheduler's step, as public
    with torch.no_grad():
        ref = public_forward(public, torch.cat([inp["z"], inp["cond"]], 1), t, inp["pooled"], inp["modality"],
                             inp["text"], heads=4, flow=flow)
        ours = model(inp["z"], t_ours, inp["cond"], inp["modality"], inp["text"], inp["pooled"])
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        paper = MMFaceDiT(MMFaceDiTConfig(**{**model.cfg.to_dict(), "rope": "paper"}))
        paper.load_state_dict(model.state_dict())  # the comparison is sharp: the paper's RoPE is another model
        other = paper(inp["z"], t_ours, inp["cond"], inp["modality"], inp["text"], inp["pooled"])
        assert not torch.allclose(other, ref, atol=1e-3)


def test_strict_loading_names_the_offending_keys(tmp_path):
    public = random_public()
    public.pop("blocks.1.attn.to_v_t.weight")
    public["blocks.0.attn.norm_q.weight"] = torch.ones(16)
    save_file(public, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError) as e:
        load_model(tmp_path / "w.safetensors")
    msg = str(e.value)
    assert "\n" not in msg and "missing blocks.1.txt_qkv.weight" in msg
    assert "unexpected blocks.0.attn.norm_q.weight" in msg and "blocks.1.attn.to_q_t.weight" in msg
    save_file({"encoder.weight": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="is not an MMFace-DiT state dict"):
        load_model(tmp_path / "other.safetensors")
    save_file(random_public(hidden=48), str(tmp_path / "odd.safetensors"))  # 2 x 48 is no registered size
    with pytest.raises(ConfigError, match="pass --num-heads"):
        load_model(tmp_path / "odd.safetensors")
    assert load_model(tmp_path / "odd.safetensors", num_heads=3)[0].cfg.num_heads == 3


def test_init_from_public_weights_then_resume_ignores_it(tiny_cfg, tmp_path):
    from train.train import train

    public = random_public()
    save_file(public, str(tmp_path / "public.safetensors"))
    run = tmp_path / "run"
    zero_lr = {"lr": 0.0, "warmup_steps": 1, "eight_bit": False, "weight_decay": 0.0}
    cfg = tiny_cfg(out=run, model={"size": "tiny", "init_from": str(tmp_path / "public.safetensors")},
                   optim=zero_lr, train={"max_steps": 1})
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert any(line.startswith(f"initialised the weights from {tmp_path / 'public.safetensors'} (public layout")
               for line in lines), lines
    expected = to_ours(public)
    for name in ("model", "ema"):  # lr 0: what was loaded before step 0 is what the checkpoint holds
        saved = load_file(str(run / "ckpt" / "step_000001" / f"{name}.safetensors"))
        assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)

    lines.clear()
    train(tiny_cfg(out=run, model={"size": "tiny", "init_from": "/nowhere.safetensors"}, optim=zero_lr,
                   train={"max_steps": 2}), log=lines.append)
    assert "resuming from step_000001: model.init_from (/nowhere.safetensors) is ignored" in lines

    info = convert(run, tmp_path / "back.safetensors")  # our run's EMA, back to the public layout
    back = load_file(str(tmp_path / "back.safetensors"))
    assert info["layout"] == "public" and back.keys() == public.keys()
    assert all(torch.equal(back[k], public[k]) for k in public)


def test_init_from_a_wrong_size_is_one_line(tiny_cfg, tmp_path):
    from train.train import train

    save_file(random_public(depth=3), str(tmp_path / "deep.safetensors"))
    deep = tmp_path / "deep.safetensors"
    cfg = tiny_cfg(out=tmp_path / "run", model={"size": "tiny", "init_from": str(deep)})
    with pytest.raises(ConfigError) as e:
        train(cfg, log=lambda _: None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"model.init_from {deep} does not fit the model")
    assert "unexpected blocks.2." in msg


def test_init_from_resolves_against_the_config_file_and_defaults_are_public(tmp_path):
    from train.config import TrainConfig, load_config

    (tmp_path / "c.yaml").write_text("model: {init_from: w/public.safetensors}\ntrain: {max_steps: 1}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.init_from == str((tmp_path / "w" / "public.safetensors").resolve())
    defaults = TrainConfig()  # the public code's conventions by default, the paper's as named options
    assert (defaults.model.rope, defaults.data.latent_convention, MMFaceDiTConfig().rope) == (
        "public", "mmface", "public")


app = typer.Typer(rich_markup_mode="markdown", add_completion=False)
register(app)
runner = CliRunner()


def flat(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


def convert_cli(*args):
    return runner.invoke(app, ["convert-checkpoint", *map(str, args)])


def test_convert_checkpoint_command_both_ways(tmp_path):
    help_ = runner.invoke(app, ["convert-checkpoint", "--help"])
    assert help_.exit_code == 0 and "Examples" in help_.output
    assert "facecurate convert-checkpoint " in help_.output
    public = random_public()
    save_file(public, str(tmp_path / "public.safetensors"))
    r = convert_cli(tmp_path / "public.safetensors", tmp_path / "ours.safetensors")
    assert r.exit_code == 0, r.output
    assert "(public layout) ->" in r.output and "(ours layout)" in r.output
    assert "next: facecurate sample" in r.output
    side = json.loads((tmp_path / "ours.json").read_text())
    got = (side["layout"], side["origin"], side["size"], side["model_args"]["rope"], side["latent_convention"])
    assert got == ("ours", "public", "tiny", "public", "mmface")
    ours = load_file(str(tmp_path / "ours.safetensors"))
    expected = to_ours(public)
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in ours)

    r = convert_cli(tmp_path / "ours.safetensors", tmp_path / "back.safetensors")
    assert r.exit_code == 0, r.output
    assert "(ours layout) ->" in r.output
    assert "next (public code): UnifiedDualStreamDiT(in_channels=32" in r.output
    back = load_file(str(tmp_path / "back.safetensors"))
    assert back.keys() == public.keys() and all(torch.equal(back[k], public[k]) for k in public)
    assert json.loads((tmp_path / "back.json").read_text())["layout"] == "public"

    (tmp_path / "bad.safetensors").write_text("not tensors")
    r = convert_cli(tmp_path / "bad.safetensors", tmp_path / "x.safetensors")
    assert r.exit_code == 2 and "is not a readable state dict" in flat(r.output) and "Traceback" not in r.output
    save_file({"encoder.weight": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    r = convert_cli(tmp_path / "other.safetensors", tmp_path / "x.safetensors")
    assert r.exit_code == 2 and "is not an MMFace-DiT state dict (its keys: encoder.weight)" in flat(r.output)
    assert not (tmp_path / "x.safetensors").exists()


def test_facecurate_convert_checkpoint_wrong_file_exits_2(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"\x00junk")
    exe = Path(sys.executable).with_name("facecurate")
    r = subprocess.run([str(exe), "convert-checkpoint", str(tmp_path / "w.pt"), str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)  # the installed entry point
    assert r.returncode == 2 and "is not a readable state dict" in flat(r.stdout + r.stderr)
    assert "Traceback" not in r.stdout + r.stderr


def test_sample_takes_a_public_checkpoint_directly(tmp_path, tiny_train_models):
    save_file(random_public(), str(tmp_path / "dit_model_weights_ema.safetensors"))
    label = np.zeros((64, 64), np.uint8)
    label[16:48, 16:48] = 1
    Image.fromarray(label).save(tmp_path / "mask.png")
    args = ["sample", str(tmp_path / "dit_model_weights_ema.safetensors"), "-c", "a smiling woman", "--mask",
            str(tmp_path / "mask.png"), "--text-encoder", str(tiny_train_models["clip-text"]), "--steps", "2",
            "--n", "2", "--resolution", "64", "--out", str(tmp_path / "grid.png")]
    r = runner.invoke(app, [*args, "--vae", str(tiny_train_models["vae-flux"])])
    assert r.exit_code == 0, r.output
    from train.sample import grid_tiles

    tiles = grid_tiles(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), 3, 64)
    assert [t.shape for t in tiles] == [(64, 64, 3)] * 3  # the condition and two samples
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "a weights file records no VAE: pass --vae" in flat(r.output)

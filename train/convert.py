"""Public MMFace-DiT checkpoints and ours: key mapping, size inference, conventions and strict loading.

The public code (Bharath-K3/MMFace-DiT, ``UnifiedDualStreamDiT`` in ``models/{flow,diffusion}/``) and
``train/model.py`` are the same network under other names; the flow and DDPM variants share one layout.
Its trainer saves plain safetensors state dicts (``dit_model_weights_ema.safetensors``, ``..._final``);
``.pt`` / ``.pth`` / ``.bin`` state dicts are read too, with ``torch.load(weights_only=True)``.

    ours                                     public
    x_embedder.{weight,bias}                 x_embedder.proj.{weight,bias}
    text_embedder.*                          clip_seq_proj.*
    y_embedder.proj.*  /  y_embedder.null    c_embedder.proj.*  /  c_embedder.null_feature_pooled
    blocks.N.img_qkv.weight (3D, D)          blocks.N.attn.to_q / to_k / to_v .weight (D, D), stacked
    blocks.N.txt_qkv.weight                  blocks.N.attn.to_q_t / to_k_t / to_v_t .weight
    blocks.N.img_proj / txt_proj             blocks.N.attn.to_out / to_out_t
    blocks.N.img_mlp / txt_mlp               blocks.N.mlp_i / mlp_t
    t_embedder.*, modality_embedder.*, blocks.N.adaLN_modulation.*, final_layer.*: the same names

The adaLN chunk order, the head-major q/k/v rows and the (p, q, c) patch order agree, so the mapping only
renames, splits and stacks: it is exact both ways. The head count is not in the weights: a size of
``MMFaceDiT_models`` is recognised by depth and width, anything else needs ``num_heads``.

Conventions of public weights: ``rope: public`` (text tokens at position 0), ``latent_convention: mmface``
(z * scale, no shift); the flow model takes t in [0, 1] and multiplies by 999 inside, ours takes the 0..999
scale (``RectifiedFlow`` passes t * 999), the DDPM variant takes the scheduler's 0..999 step in both. A JSON
sidecar beside a converted file (``OUT.json``) records the architecture and conventions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.data.files import atomic_write, atomic_write_text
from train.config import ConfigError
from train.model import MMFaceDiT, MMFaceDiT_models, MMFaceDiTConfig

PUBLIC = {"rope": "public", "latent_convention": "mmface"}  # what the public code trains with
_SAME = ["t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight",
         "t_embedder.mlp.2.bias",
         "modality_embedder.weight", "final_layer.linear.weight", "final_layer.linear.bias",
         "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"]
_TOP = [("x_embedder.weight", "x_embedder.proj.weight"), ("x_embedder.bias", "x_embedder.proj.bias"),
        ("text_embedder.weight", "clip_seq_proj.weight"), ("text_embedder.bias", "clip_seq_proj.bias"),
        ("y_embedder.proj.weight", "c_embedder.proj.weight"),
        ("y_embedder.proj.bias", "c_embedder.proj.bias"),
        ("y_embedder.null", "c_embedder.null_feature_pooled"), *[(k, k) for k in _SAME]]
_BLOCK = [("img_proj.weight", "attn.to_out.weight"), ("txt_proj.weight", "attn.to_out_t.weight"),
          ("adaLN_modulation.1.weight", "adaLN_modulation.1.weight"),
          ("adaLN_modulation.1.bias", "adaLN_modulation.1.bias"),
          *[(f"{s}_mlp.{j}.{w}", f"mlp_{s[0]}.{j}.{w}")
            for s in ("img", "txt") for j in (0, 2) for w in ("weight", "bias")]]
_QKV = [("img_qkv.weight", ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight")),
        ("txt_qkv.weight", ("attn.to_q_t.weight", "attn.to_k_t.weight", "attn.to_v_t.weight"))]


def _depth(sd: dict) -> int:
    return 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)


def _rename(sd: dict, to_public: bool) -> dict[str, torch.Tensor]:
    """Rename, split or stack each tensor the table knows; the rest passes through (strict loads name it)."""
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}
    pairs = [*_TOP, *[(f"blocks.{i}.{a}", f"blocks.{i}.{b}") for i in range(_depth(sd)) for a, b in _BLOCK]]
    for ours, public in pairs:
        a, b = (ours, public) if to_public else (public, ours)
        if a in src:
            out[b] = src.pop(a)
    for i in range(_depth(sd)):
        for fused, parts in _QKV:
            fused, parts = f"blocks.{i}.{fused}", [f"blocks.{i}.{p}" for p in parts]
            if to_public and fused in src:
                out.update(zip(parts, src.pop(fused).chunk(3, dim=0), strict=True))  # rows: q, then k, then v
            elif not to_public and all(p in src for p in parts):
                out[fused] = torch.cat([src.pop(p) for p in parts], dim=0)
    return {**out, **src}


def to_public(sd: dict) -> dict[str, torch.Tensor]:
    """Our state dict in the public ``UnifiedDualStreamDiT`` layout (fused q/k/v split in to_q/to_k/to_v)."""
    return _rename(sd, to_public=True)


def to_ours(sd: dict) -> dict[str, torch.Tensor]:
    """A public ``UnifiedDualStreamDiT`` state dict in our layout (to_q/to_k/to_v stacked into one qkv)."""
    return _rename(sd, to_public=False)


def detect_layout(sd: dict, where: str) -> str:
    """``public`` or ``ours`` from the key names; a ConfigError naming a few keys when it is neither."""
    if any(k.startswith(("c_embedder.", "clip_seq_proj.")) or ".attn.to_" in k for k in sd):
        return "public"
    if any(k.startswith(("y_embedder.", "text_embedder.")) or "_qkv." in k for k in sd):
        return "ours"
    raise ConfigError(f"{where} is not an MMFace-DiT state dict (its keys: {_few(sorted(sd)) or 'none'})")


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def infer_config(sd: dict, num_heads: int | None = None, **conventions) -> MMFaceDiTConfig:
    """The architecture of a state dict in our layout, from its shapes (and the size table for the heads)."""
    try:
        hidden, in_ch, p, _ = sd["x_embedder.weight"].shape
        text_dim = sd["text_embedder.weight"].shape[1]
        mlp_width = sd["blocks.0.img_mlp.0.weight"].shape[0]
        out = sd["final_layer.linear.weight"].shape[0]
    except KeyError as e:
        raise ConfigError(f"not a complete MMFace-DiT state dict: it has no {e.args[0]}") from None
    if out != p * p * in_ch // 2:
        raise ConfigError(f"the final layer predicts {out // (p * p)} channels for {in_ch // 2}-channel "
                          "latents: "
                          "learn_sigma checkpoints are not supported")
    depth = _depth(sd)
    if num_heads is None:
        sizes = [v for v in MMFaceDiT_models.values() if (v["depth"], v["hidden_size"]) == (depth, hidden)]
        if not sizes:
            sizes_known = ", ".join(MMFaceDiT_models)
            raise ConfigError(f"a {depth} x {hidden} model is none of the sizes {sizes_known} "
                              "and the weights do not say the head count: pass --num-heads")
        num_heads = sizes[0]["num_heads"]
    return MMFaceDiTConfig(depth=depth, hidden_size=hidden, num_heads=num_heads, mlp_ratio=mlp_width / hidden,
                           patch_size=p, latent_channels=in_ch // 2, text_dim=text_dim, **conventions)


def size_name(cfg: MMFaceDiTConfig) -> str | None:
    """The ``MMFaceDiT_models`` key of an architecture, or None."""
    base = MMFaceDiTConfig()
    for name, spec in MMFaceDiT_models.items():
        if all(getattr(cfg, k) == v for k, v in spec.items()) and (cfg.patch_size, cfg.mlp_ratio) == (
                base.patch_size, base.mlp_ratio):
            return name
    return None


def check_fit(model: torch.nn.Module, sd: dict, where: str) -> None:
    """Strict: the same keys and shapes as the model's, else one line naming a few offending keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} (model {tuple(own[k].shape)})" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = [f"{what} {_few(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        raise ConfigError(f"{where} does not fit the model: {'; '.join(problems)}")


def strict_load(model: torch.nn.Module, sd: dict, where: str) -> None:
    check_fit(model, sd, where)
    model.load_state_dict(sd, strict=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pt`` / ``.pth`` / ``.bin`` state dict (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix not in (".pt", ".pth", ".bin"):
            raise ConfigError(f"{path}: expected a .safetensors, .pt, .pth or .bin state dict")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as e:  # a torn file, another format, a pickle with code in it
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path} is not a readable state dict: {first}") from None
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(f"{path} holds a {type(obj).__name__} that is not a state dict of tensors")
    return obj


def sidecar_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def _meta(path: Path) -> dict:
    """What a sidecar beside the file, or the state.json of our checkpoint folder it is in, says of it."""
    side, state = sidecar_path(path), path.parent / "state.json"
    if side.is_file() and side != path:
        meta = json.loads(side.read_text())
        if isinstance(meta, dict) and meta.get("format") == "mmface-dit":
            return meta
    if state.is_file():
        s = json.loads(state.read_text())
        if isinstance(s, dict) and "model_args" in s:
            return {"model_args": s["model_args"], "latent_convention": s.get("latent_convention"),
                    "origin": "ours",
                    "objective": s.get("config", {}).get("objective", {}).get("kind"),
                    "resolution": s.get("data", {}).get("resolution")}
    return {}


@dataclass
class Weights:
    """A state dict in our layout with what is known about it.

    Args:
        state: tensors in our layout.
        layout: the layout the file was in (``ours`` or ``public``).
        origin: ``public`` for weights trained by the public code (its sampler's conventions apply).
        meta: sidecar / state.json facts: model_args, latent_convention, objective, resolution.
    """

    state: dict[str, torch.Tensor]
    layout: str
    origin: str
    meta: dict = field(default_factory=dict)

    def config(self, num_heads: int | None = None) -> MMFaceDiTConfig:
        args = self.meta.get("model_args")
        if args:
            return MMFaceDiTConfig(**{**args, **({"num_heads": num_heads} if num_heads else {})})
        return infer_config(self.state, num_heads, rope=PUBLIC["rope"])  # unknown: the public conventions

    @property
    def latent_convention(self) -> str:
        return self.meta.get("latent_convention") or PUBLIC["latent_convention"]


def read_weights(path: str | Path) -> Weights:
    """Read a weights file in either layout and convert it to ours."""
    path = Path(path)
    sd = read_state_dict(path)
    layout = detect_layout(sd, str(path))
    meta = _meta(path)
    origin = meta.get("origin") or ("public" if layout == "public" else "ours")
    return Weights(to_ours(sd) if layout == "public" else sd, layout, origin, meta)


def load_model(path: str | Path, num_heads: int | None = None) -> tuple[MMFaceDiT, Weights]:
    """A model built from a weights file's shapes (or its sidecar) and loaded strictly."""
    w = read_weights(path)
    model = MMFaceDiT(w.config(num_heads))
    strict_load(model, w.state, str(path))
    return model, w


def init_from(model: MMFaceDiT, path: str | Path, latent_convention: str) -> str:
    """Load a weights file (either layout) into a freshly built model, strictly; returns the log line."""
    w = read_weights(path)
    strict_load(model, w.state, f"model.init_from {path}")
    rope = (w.meta.get("model_args") or {}).get("rope") or (PUBLIC["rope"] if w.origin == "public" else None)
    conv = w.meta.get("latent_convention") or (PUBLIC["latent_convention"] if w.origin == "public" else None)
    line = f"initialised the weights from {path} ({w.layout} layout, {len(w.state)} tensors)"
    for key, theirs, mine in (("model.rope", rope, model.cfg.rope),
                              ("data.latent_convention", conv, latent_convention)):
        if theirs and theirs != mine:
            line += f"; warning: they were trained with {key} {theirs}, this run uses {mine}"
    return line


def convert(src: str | Path, dst: str | Path, to: str | None = None, weights: str = "ema",
            num_heads: int | None = None, objective: str | None = None) -> dict:
    """Write `src` (a weights file, our checkpoint or run folder) in the other layout (or `to`), + sidecar."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if src.is_dir():
        from train.train import resolve_checkpoint

        if weights not in ("ema", "model"):
            raise ConfigError(f"--weights must be ema or model, got {weights!r}")
        try:
            src = resolve_checkpoint(src) / f"{weights}.safetensors"
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if dst.suffix != ".safetensors" or dst.resolve() == src.resolve():
        raise ConfigError(f"OUT must be a new .safetensors file, got {dst}")
    w = read_weights(src)
    cfg = w.config(num_heads)
    with torch.device("meta"):  # keys and shapes of the architecture, no memory
        check_fit(MMFaceDiT(cfg), w.state, str(src))
    target = to or ("ours" if w.layout == "public" else "public")
    if target not in ("ours", "public"):
        raise ConfigError(f"--to must be ours or public, got {target!r}")
    tensors = {k: v.contiguous() for k, v in (to_public(w.state) if target == "public" else w.state).items()}
    atomic_write(dst, lambda f: save_file(tensors, f.name))  # safetensors writes by name: the temporary's
    side = {"format": "mmface-dit", "layout": target, "origin": w.origin, "size": size_name(cfg),
            "params": sum(v.numel() for v in w.state.values()), "model_args": cfg.to_dict(),
            "latent_convention": w.latent_convention, "objective": objective or w.meta.get("objective"),
            "resolution": w.meta.get("resolution"), "source": str(src),
            "public_args": {"in_channels": 2 * cfg.latent_channels, "hidden_size": cfg.hidden_size,
                            "depth": cfg.depth, "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio,
                            "patch_size": cfg.patch_size,
                            "text_embed_dim": cfg.text_dim, "learn_sigma": False},
            "t_input": "rf: ours t * 999 (0..999); the public flow model takes t in [0, 1] and scales it "
                       "by 999 itself; "
                       "ddpm: the 0..999 step in both"}
    atomic_write_text(sidecar_path(dst), json.dumps(side, indent=1))
    warnings = []
    if target == "public":
        for key, value in (("rope", cfg.rope), ("latent_convention", w.latent_convention)):
            if value != PUBLIC[key]:
                warnings.append(f"trained with {key} {value}; the public code only does {PUBLIC[key]}, "
                                "so its outputs will differ from ours")
    return {**side, "from_layout": w.layout, "dst": str(dst), "sidecar": str(sidecar_path(dst)),
            "warnings": warnings}

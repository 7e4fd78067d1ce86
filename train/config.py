"""The training config: frozen dataclasses filled from YAML plus ``--set key=value`` overrides.

A bad config fails before anything loads, with one line that names the key and the valid choices
(``ConfigError``, a ``ValueError``). Relative paths in a file resolve against the file's folder, like the
pipeline's manifests; ``--set`` values are taken as given (relative to the working directory). Defaults are the paper's 256 px setting except where a field says
otherwise; conventions (``model.rope``, ``data.latent_convention``) follow the public code, the paper's variants
stay as named options. ``manifests/train/*.yaml`` are complete examples.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


class ConfigError(ValueError):
    """A config value that cannot be used; the message is one line that names the key."""


@dataclass(frozen=True)
class ModelConfig:
    """Which MMFace-DiT to build (a checkpoint's own architecture always wins on resume).

    Args:
        size: a key of ``MMFaceDiT_models``: XL (the paper's 1.345B), L, B, S or tiny.
        rope: ``public`` (text tokens at position 0, as the public code; the default) or ``paper`` (1D RoPE on
            text tokens at positions 0..76, as the paper describes).
        patch_size: latent patch size.
        mlp_ratio: MLP width over hidden size.
        depth: override the size's depth.
        hidden_size: override the size's width.
        num_heads: override the size's head count.
        init_from: weights file (ours or the public code's layout, ``train.convert``) loaded strictly before
            step 0; a resumed run ignores it.
    """

    size: str = "XL"
    rope: Literal["paper", "public"] = "public"
    patch_size: int = 2
    mlp_ratio: float = 4.0
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    init_from: str | None = None


@dataclass(frozen=True)
class ConsistencyConfig:
    """EC²Face's explicit conditional consistency loss (``train.consistency``): off unless this section is set.

    x̂0 is reverse-estimated from the prediction at t, decoded by the VAE, and scored by a frozen CLIP
    (1 − cosine to the caption) and a frozen face parser (cross-entropy + Dice against ``mask.png``),
    weighted by β = sigmoid(gamma_s · (t_c − noise level)). Gradients reach only the DiT.

    Args:
        clip: ``CLIPModel`` with its tokenizer (and image processor): hub id or local folder; null: no CLIP term.
        parser: ``SegformerForSemanticSegmentation`` with 19 CelebAMask-HQ classes: hub id or folder; null: no
            parser term.
        vae: ``AutoencoderKL`` to decode with; null: the one the shards record (their ``json`` ``vae.id``).
        lambda_clip: weight of the CLIP term.
        lambda_parser: weight of the parser term (cross-entropy + Dice).
        gamma_s: steepness of β over the noise level.
        t_c: noise level (0 clean, 1 pure noise) where β = 1/2.
        min_beta: samples whose β is at most this are not decoded (0: only β = 0 is skipped).
    """

    clip: str | None = None
    parser: str | None = None
    vae: str | None = None
    lambda_clip: float = 1.0
    lambda_parser: float = 1.0
    gamma_s: float = 10.0
    t_c: float = 0.4
    min_beta: float = 0.0


@dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective.

    Args:
        kind: ``rf`` (rectified flow) or ``ddpm`` (epsilon prediction, SD2.1-base schedule).
        t_sampling: rectified flow's t: ``uniform`` or ``logit_normal``.
        logit_mean: logit-normal mean.
        logit_std: logit-normal standard deviation.
        min_snr_gamma: DDPM Min-SNR gamma; null turns the weighting off.
        prediction_type: DDPM target: ``epsilon`` or ``v_prediction``.
        longtail: weight the loss per latent position with EC²Face's Eq. 10 (needs ``mask.png`` in shards).
        class_counts: 19 pixel counts T_c for Eq. 10; null takes them from ``longtail_weights``.
        longtail_weights: where T_c comes from when ``class_counts`` is null: ``auto`` (``stats/attributes.json``
            in the shard folder or up to two folders above it, else the shards' ``class_pixels`` summed in a
            first pass, which the log says), a path to an ``attributes.json``, or ``shards`` (always count).
        longtail_mode: ``eq11`` (EC²Face Eq. 11: the weight inside the squared norm, w²) or ``linear`` (w, the
            form runs before this option used; resume those with it).
        longtail_clamp: [min, max] of the final class weights; null: unclamped (see
            ``train.objectives.longtail_class_weights`` for why 10).
        longtail_normalize: scale the weights so the dataset-average position weight (w² or w) is 1.
        consistency: EC²Face's explicit conditional consistency loss; null: off.
    """

    kind: Literal["rf", "ddpm"] = "rf"
    t_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    min_snr_gamma: float | None = 5.0
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    longtail: bool = False
    class_counts: list[int] | None = None
    longtail_weights: str = "auto"
    longtail_mode: Literal["eq11", "linear"] = "eq11"
    longtail_clamp: list[float] | None = field(default_factory=lambda: [0.0, 10.0])
    longtail_normalize: bool = True
    consistency: ConsistencyConfig | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how a sample becomes a training example.

    Args:
        shards: a shard folder (with ``index.json``), a run folder (its ``shards/``), one ``.tar`` or a glob.
        split: which split of ``index.json`` to train on.
        vae: short VAE name in the shards (``flux`` = 16 channels, ``sd`` = 4).
        latent_convention: ``mmface`` (z * scale, the public code's; the default) or ``diffusers``
            ((z - shift) * scale).
        text_encoder: CLIP text encoder + tokenizer: hub id (SD2.1-base) or a local folder.
        text_cache: folder of precomputed CLIP states, written on first use; null encodes on the fly.
        batch_size: samples per device per micro-step.
        num_workers: DataLoader worker processes (0 reads in the main process).
        shuffle_buffer: samples each worker shuffles over (plus a per-epoch shard permutation).
        text_dropout: probability of training on the empty caption and the null pooled vector.
        mask_dropout: probability of a zero condition latent when the mask is chosen.
        sketch_dropout: probability of a zero condition latent when the sketch is chosen.
        sketch_prob: probability of conditioning on the sketch rather than the mask.
    """

    shards: str = "out/shards"
    split: str = "train"
    vae: str = "flux"
    latent_convention: Literal["diffusers", "mmface"] = "mmface"
    text_encoder: str = "stabilityai/stable-diffusion-2-1-base"
    text_cache: str | None = None
    batch_size: int = 32
    num_workers: int = 4
    shuffle_buffer: int = 1000
    text_dropout: float = 0.05
    mask_dropout: float = 0.05
    sketch_dropout: float = 0.05
    sketch_prob: float = 0.5


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a cosine schedule.

    Args:
        lr: peak learning rate.
        min_lr: learning rate at the end of the cosine.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW decay on matrices and embeddings (not biases or the null vector).
        beta1: Adam beta1.
        beta2: Adam beta2.
        eps: Adam epsilon.
        grad_clip: global gradient-norm clip (0 turns it off).
        eight_bit: bitsandbytes AdamW8bit when it is importable on CUDA; torch AdamW (fused on CUDA) otherwise.
    """

    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 200
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.5
    eight_bit: bool = True


@dataclass(frozen=True)
class LoopConfig:
    """The loop: length, precision, memory, logging and checkpoints.

    Args:
        out_dir: run folder: ``ckpt/``, ``metrics.jsonl``, ``config.yaml``.
        max_steps: optimizer steps; or set ``epochs``.
        epochs: passes over the data (converted to steps from the shard sample counts).
        grad_accum: micro-batches per optimizer step.
        ema_decay: EMA of the weights (saved beside them; sampling uses it by default).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
        grad_ckpt: recompute blocks in backward (less memory, ~1/3 more compute).
        compile: ``torch.compile`` the network.
        attn: SDPA backend: ``auto``, ``flash``, ``efficient``, ``cudnn`` or ``math``.
        seed: seed of data order, per-sample choices, noise and timesteps.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (torchrun sets the local rank's GPU).
        log_every: steps between progress lines.
        ckpt_every: steps between checkpoints (one is always written at the end).
        keep_last: checkpoints kept (0 keeps all).
        peak_tflops: peak for MFU; null looks the GPU up (H100/H200 bf16 dense 989) or measures a CPU matmul.
        eval_every: steps between scoring the EMA weights on a few fixed conditions (``train.evaluate``): the
            figures go to ``metrics.jsonl``, the page to ``OUT/eval_steps/step_N/``; 0 (the default) turns it off.
        eval_conditions: how many conditions: the first samples of the eval split (``test``, else the training split).
        eval_options: ``facecurate evaluate``'s options by field name (``train.evaluate.EvalOptions`` and
            ``train.metrics.MetricOptions``: split, per_condition, steps, cfg_scale, vae, clip, fid_weights,
            lpips_weights, parser_model, niqe_params, skip, ...).
    """

    out_dir: str = "runs/mmface"
    max_steps: int | None = None
    epochs: float | None = None
    grad_accum: int = 1
    ema_decay: float = 0.9999
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    grad_ckpt: bool = False
    compile: bool = False
    attn: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 0
    peak_tflops: float | None = None
    eval_every: int = 0
    eval_conditions: int = 4
    eval_options: dict | None = None


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (``manifests/train/*.yaml``)."""

    name: str = "mmface"
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(key: str, value, tp):
    """Check `value` against the annotation `tp`; return it (ints widen to floats, '1e-4' strings parse)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0]) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return value


def _build(cls, data, prefix: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {full!r}; valid keys{' in ' + prefix if prefix else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(full, value, hints[key])
    return cls(**kwargs)


def _set(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


PATH_KEYS = (("data", "shards"), ("data", "text_cache"), ("train", "out_dir"), ("model", "init_from"))


def _resolve_paths(data: dict, base: Path) -> dict:
    """Relative paths in a config file are relative to its folder (as in pipeline manifests); a text encoder
    counts as a path when it starts with . or / or exists there, else it is a hub id."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, key in (*PATH_KEYS, ("data", "text_encoder")):
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        if key != "text_encoder" or value.startswith(".") or (base / value).exists():
            data[section][key] = str((base / value).resolve())
    objective = data.get("objective")
    if isinstance(objective, dict):
        weights = objective.get("longtail_weights")
        if isinstance(weights, str) and weights not in ("auto", "shards") and not Path(weights).is_absolute():
            objective["longtail_weights"] = str((base / weights).resolve())
        if isinstance(objective.get("consistency"), dict):  # model sources: paths like text_encoder, else hub ids
            cons = objective["consistency"] = dict(objective["consistency"])
            for key in ("clip", "parser", "vae"):
                value = cons.get(key)
                if isinstance(value, str) and not Path(value).is_absolute() and (
                        value.startswith(".") or (base / value).exists()):
                    cons[key] = str((base / value).resolve())
    return data


def build_config(data: dict | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A checked TrainConfig from a dict and ``key=value`` overrides (values parsed as YAML)."""
    data = dict(data or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. optim.lr=3e-4), got {item!r}")
        _set(data, key.strip(), yaml.safe_load(raw))
    cfg = _build(TrainConfig, data)
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, objective, data, optim, train)")
    return build_config(_resolve_paths(data or {}, path.resolve().parent), overrides)


def validate(cfg: TrainConfig) -> None:
    """Checks across fields that types alone cannot express."""
    from train.model import MMFaceDiT_models  # here, so the CLI starts without importing torch
    if cfg.model.size not in MMFaceDiT_models:
        raise ConfigError(f"model.size: {cfg.model.size!r} is not valid; choose one of {', '.join(MMFaceDiT_models)}")
    if (cfg.train.max_steps is None) == (cfg.train.epochs is None):
        raise ConfigError("train.max_steps or train.epochs: set exactly one of them")
    for key, value in [("data.batch_size", cfg.data.batch_size), ("train.grad_accum", cfg.train.grad_accum),
                       ("train.log_every", cfg.train.log_every), ("train.ckpt_every", cfg.train.ckpt_every)]:
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    for key in ("text_dropout", "mask_dropout", "sketch_dropout", "sketch_prob"):
        p = getattr(cfg.data, key)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"data.{key}: a probability in [0, 1], got {p}")
    if cfg.objective.class_counts is not None and len(cfg.objective.class_counts) != 19:
        raise ConfigError(f"objective.class_counts: 19 counts (CelebAMask-HQ ids 0..18), got {len(cfg.objective.class_counts)}")
    clamp = cfg.objective.longtail_clamp
    if clamp is not None and (len(clamp) != 2 or not 0.0 <= clamp[0] <= clamp[1] or clamp[1] <= 0):
        raise ConfigError(f"objective.longtail_clamp: [min, max] with 0 <= min <= max and max > 0, or null; got {clamp}")
    cons = cfg.objective.consistency
    if cons is not None:
        if cons.clip is None and cons.parser is None:
            raise ConfigError("objective.consistency: set clip, parser or both (or drop the section to turn it off)")
        for key in ("lambda_clip", "lambda_parser", "gamma_s", "min_beta"):
            if getattr(cons, key) < 0:
                raise ConfigError(f"objective.consistency.{key}: must be 0 or more, got {getattr(cons, key)}")
        if not 0.0 <= cons.t_c <= 1.0:
            raise ConfigError(f"objective.consistency.t_c: a noise level in [0, 1], got {cons.t_c}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be 0 or more, got {cfg.data.num_workers}")
    if cfg.train.eval_every < 0 or (cfg.train.eval_every and cfg.train.eval_conditions < 2):
        raise ConfigError(f"train.eval_every / eval_conditions: 0 or more steps and at least 2 conditions, got "
                          f"{cfg.train.eval_every} / {cfg.train.eval_conditions}")
    if cfg.train.eval_every:
        from train.evaluate import eval_options

        eval_options(cfg.train.eval_options)  # a misspelt option fails now, not at the first evaluation

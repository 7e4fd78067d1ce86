"""Evaluate generated faces: ``facecurate evaluate RUN_OR_CKPT --shards DIR --split test``.

The protocol (MMFace-DiT / EC²Face): every sample of the split is a condition; for each condition type,
mask + caption, sketch + caption and caption only, ``per_condition`` faces are sampled with fixed seeds (the
j-th face of key k starts from noise seeded by (seed, crc32(k), j), the same noise for the three types, so
they differ only by their condition), the caption being the sample's first. The condition latents are the
shards' own (what training saw), on the checkpoint's latent scale; caption-only is the zero latent, as a
dropped condition is in training. Sampler, steps and CFG scale are recorded.

Each set of generated faces is scored against the split's real images (``train.metrics``): FID, LPIPS and
MS-SSIM (paired with the real face of the condition), mask pixel accuracy and mIoU (the face parser's map
of the generated face against the condition mask, ``mask.png``), per EC²Face group, CLIP score / distance /
image distance, NIQE; overall and per condition type. The parser's own agreement on the real images (its map
of the real face against ``mask.png``) is reported beside as the ceiling of the mask scores, with the real
images' CLIP score and NIQE.

The face parser is the parse stage's (read from the pipeline run's ``manifest.resolved.yaml`` beside or
above the shards; ``--parser`` / ``--parser-model`` override), loaded through ``pipeline.parsers``: the one
place the trainer uses the pipeline beyond its data contracts (tests/test_layout.py allows this file only).
EC²Face groups come from the run's ``stats/attributes.json``, or are computed from the split's masks with
the stats stage's default rule. Output: ``metrics.json``, ``index.html`` and ``images/`` in one folder
written whole (``RUN/eval`` by default).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from train.config import ConfigError
from train.generation import Condition, Generator, generate, load_conditions, load_generator
from train.metrics import METRICS, MetricOptions

KINDS = ("mask", "sketch", "text")  # condition types; the model's modality flag: mask 0, sketch 1
GROUP_RULE = {"hfa_share": 0.03, "hfa_occurrence": 0.9, "rfa_share": 0.001, "rfa_occurrence": 0.3}  # stats defaults
MIN_SHARE = 0.001  # the stats stage's default share for a class to occur in an image


@dataclass(frozen=True)
class EvalOptions:
    """How ``evaluate`` samples and scores.

    Args:
        split: the shards' split whose samples are the conditions.
        per_condition: faces sampled per condition and type.
        limit: use only the split's first `limit` samples (shard order); null: all.
        kinds: condition types: ``mask``, ``sketch``, ``text`` (caption only).
        steps: sampler steps.
        cfg_scale: classifier-free guidance on the text.
        seed: base noise seed.
        weights: ``ema`` or ``model``.
        batch_size: faces per sampling batch.
        vae: VAE folder or hub id to decode with; null: the one the shards record.
        text_encoder: CLIP text encoder of the DiT; null: the checkpoint's.
        parser: ``segformer``, ``farl`` or ``smp``; null: the parse stage's primary.
        parser_model: that parser's weights (folder, hub id or file); null: the parse stage's.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        grid_rows: conditions shown in ``index.html``.
        metrics: the metric models (``train.metrics.MetricOptions``).
    """

    split: str = "test"
    per_condition: int = 4
    limit: int | None = None
    kinds: tuple[str, ...] = KINDS
    steps: int = 50
    cfg_scale: float = 7.5
    seed: int = 0
    weights: str = "ema"
    batch_size: int = 16
    vae: str | None = None
    text_encoder: str | None = None
    parser: str | None = None
    parser_model: str | None = None
    device: str = "auto"
    grid_rows: int = 24
    metrics: MetricOptions = field(default_factory=MetricOptions)


def eval_options(values: dict | None, where: str = "train.eval_options") -> EvalOptions:
    """EvalOptions from a flat mapping of its and MetricOptions' field names (a training config's section)."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of option names, got {values!r}")
    values = dict(values or {})
    own = {f.name for f in fields(EvalOptions)} - {"metrics"}
    metric = {f.name for f in fields(MetricOptions)}
    unknown = sorted(set(values) - own - metric)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(own | metric))}")
    for key in ("kinds", "skip"):
        if isinstance(values.get(key), list | str):
            values[key] = tuple([values[key]] if isinstance(values[key], str) else values[key])
    try:
        opts = EvalOptions(**{k: v for k, v in values.items() if k in own},
                           metrics=MetricOptions(**{k: v for k, v in values.items() if k in metric}))
        check(opts)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return opts


def check(o: EvalOptions) -> None:
    bad = sorted(set(o.kinds) - set(KINDS)) or ([] if o.kinds else ["(none)"])
    if bad:
        raise ConfigError(f"--kinds: {bad[0]!r} is not a condition type; choose from {', '.join(KINDS)}")
    bad = sorted(set(o.metrics.skip) - set(METRICS))
    if bad:
        raise ConfigError(f"--skip: {bad[0]!r} is not a metric; choose from {', '.join(METRICS)}")
    for name in ("per_condition", "steps", "batch_size"):
        if getattr(o, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(o, name)}")
    if o.limit is not None and o.limit < 2:
        raise ConfigError(f"--limit: FID needs at least 2 conditions, got {o.limit}")


# ---- the face parser and the EC²Face groups --------------------------------------------------------------
@dataclass(frozen=True)
class ParserSpec:
    """What ``pipeline.parsers.load_parser`` reads from a parse stage config, filled from the run's manifest."""

    segformer_model: str = "jonathandinu/face-parsing"
    segformer_revision: str | None = None
    farl_model: str | None = None
    farl_detector: str | None = None
    detector_threshold: float = 0.8
    detector_size: int = 640
    smp_model: str | None = None
    dtype: str = "float32"
    batch_size: int = 8


def _near(shards_dir: Path, name: str, depth: int = 2) -> Path | None:
    for folder in [shards_dir, *shards_dir.resolve().parents][: depth + 1]:
        if (folder / name).is_file():
            return folder / name
    return None


def load_face_parser(shards_dir: Path, o: EvalOptions, device: torch.device):
    """(parser, description): the parse stage's primary parser, or --parser / --parser-model."""
    import yaml

    from pipeline.parsers import PARSER_NAMES, load_parser

    manifest = _near(shards_dir, "manifest.resolved.yaml")
    stage = {}
    if manifest is not None:
        stage = ((yaml.safe_load(manifest.read_text()) or {}).get("manifest", {}).get("stages", {}) or {}).get("parse") or {}
    name = o.parser or stage.get("primary") or (stage.get("parsers") or ["segformer"])[0]
    name = "smp" if str(name).startswith("smp:") else name
    if name not in PARSER_NAMES:
        raise ConfigError(f"--parser must be one of {', '.join(PARSER_NAMES)}, got {name!r}")
    known = {f.name for f in fields(ParserSpec)}
    spec = ParserSpec(**{k: v for k, v in stage.items() if k in known and v is not None and k != "batch_size"})
    if o.parser_model:
        spec = replace(spec, **{f"{name}_model": o.parser_model})
    model = getattr(spec, f"{name}_model")
    try:
        parser = load_parser(name, spec, str(device))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--parser-model: cannot load the {name} parser from {model!r}: {str(e).splitlines()[0]}") from None
    return parser, {"parser": name, "model": str(model), "from": str(manifest) if manifest and not o.parser_model else "options"}


def face_masker(shards_dir: Path, o: EvalOptions, device: torch.device):
    """(masker, description): images + reference masks -> the parser's confusion matrix for each image."""
    from pipeline.parsers import confusion

    parser, info = load_face_parser(shards_dir, o, device)

    def masker(images: np.ndarray, masks: list[np.ndarray], batch: int = 32) -> list[np.ndarray]:
        out = []
        for i in range(0, len(images), batch):
            part = list(images[i : i + batch])
            for r, ref in zip(parser(part, [True] * len(part)), masks[i : i + batch], strict=True):  # aligned crops
                if r.label is None:
                    raise RuntimeError(f"the face parser failed: {r.status} {r.error}")
                out.append(confusion(r.label, ref))  # rows: the condition mask, columns: the parse
        return out

    return masker, info


def ec2face_groups(shards_dir: Path, conditions: list[Condition]) -> dict:
    """HFA / NFA / RFA members: the run's stats/attributes.json, else computed from the conditions' masks."""
    from pipeline.data.attributes import Counts, groups, rule_text
    from pipeline.data.labels import NAMES
    from train.data import find_attributes

    path = find_attributes(shards_dir)
    if path is not None:
        doc = json.loads(path.read_text()).get("groups") or {}
        if all(isinstance(doc.get(g), list) for g in ("HFA", "NFA", "RFA")):
            return {"source": str(path), "rule": doc.get("text"), **{g: doc[g] for g in ("HFA", "NFA", "RFA")}}
    counts = Counts()
    for c in conditions:
        if c.class_pixels is not None:
            counts.add(c.class_pixels, MIN_SHARE, "", None, None, [])
    member = groups(counts.share(), counts.occurrence(), GROUP_RULE)
    return {"source": f"computed from the {counts.images} condition masks evaluated (no stats/attributes.json found)",
            "rule": rule_text(GROUP_RULE), **{g: [NAMES[i] for i, m in enumerate(member) if m == g] for g in ("HFA", "NFA", "RFA")}}


def pick_device(spec: str) -> torch.device:
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec)
    return torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev


# ---- the command ---------------------------------------------------------------------------------------------
def evaluate(checkpoint: str | Path, shards: str | Path, o: EvalOptions, out: str | Path | None = None,
             log=print) -> dict:
    """Sample the split's conditions, score them, write ``metrics.json`` + ``index.html``; returns the report."""
    from train.data import find_shards, probe
    from train.eval_report import check_out, write_eval_dir
    from train.scoring import Scorer

    check(o)
    device = pick_device(o.device)
    found = find_shards(shards, o.split)
    meta = first_json(found)
    gen, info = load_generator(checkpoint, o, device, meta.get("vae", {}))
    dest = Path(out) if out else Path(info["run"] or Path(checkpoint).parent) / "eval"
    check_out(dest)
    shards_dir = Path(shards) if Path(shards).is_dir() else Path(shards).parent
    masker, parser_info = (None, None) if not o.metrics.wants("mask") else face_masker(shards_dir, o, device)
    scorer = Scorer(o.metrics, masker, device)  # every metric model loads before sampling: errors come first
    resolution = probe(found, info["vae"]).get("resolution")
    conditions = load_conditions(found, info["vae"], info["latent_convention"], o.limit)
    if len(conditions) < 2:
        raise ConfigError(f"split {o.split!r} has {len(conditions)} sample(s): FID needs at least 2")
    log(f"{len(conditions)} conditions from split {o.split!r}; {o.per_condition} faces per condition and type, "
        f"{o.steps} {gen.sampler} steps, CFG {o.cfg_scale}")
    generated = generate(gen, conditions, o, log)
    groups = ec2face_groups(shards_dir, conditions)
    report, per_face = scorer.score(conditions, generated, groups)
    report = {"checkpoint": info, "shards": str(shards), "split": o.split,
              "protocol": {"per_condition": o.per_condition, "seed": o.seed, "steps": o.steps, "cfg_scale": o.cfg_scale,
                           "sampler": gen.sampler, "caption": "the sample's first caption", "resolution": resolution,
                           "noise": "face j of key k: torch.randn from a Generator seeded with "
                                    "SeedSequence([seed, crc32(k), j]); the same noise for every condition type",
                           "text_condition": "zero condition latent (modality 0), as a dropped condition in training",
                           "conditions": {k: int(len(set(g.index.tolist()))) for k, g in generated.items()},
                           "limit": o.limit},
              "options": {**{k: v for k, v in asdict(o).items() if k != "metrics"}, **asdict(o.metrics)},
              "parser": parser_info, "groups": groups, **report}
    write_eval_dir(dest, report, conditions, generated, per_face, o.grid_rows)
    report["out"] = str(dest)
    return report


def first_json(shards) -> dict:
    """The first sample's json (it names the shards' VAEs and their factors)."""
    from train.data import iter_samples

    for _, _, f in iter_samples(shards[0].path, wanted=lambda i: i == 0, fields=frozenset({"json"})):
        if f is not None:
            return json.loads(f["json"])
    raise ConfigError(f"{shards[0].path} holds no samples")


# ---- during training: a few fixed conditions every train.eval_every steps ---------------------------------------
class TrainingEval:
    """Scores the EMA weights on the eval split's first ``train.eval_conditions`` samples (``train.eval_every``).

    Everything it needs loads here, before step 0 (a missing metric model fails the run at once, not at step
    N): the conditions, the VAE, the parser and the metric models. Each call samples with the same seeds,
    writes ``OUT/eval_steps/step_NNNNNN/`` (page and metrics.json) and returns the scalar figures.

    Args:
        cfg: the training config (``train.eval_options`` holds evaluate's options by name).
        encoder: the run's CLIP text encoder.
        device: the training device.
        log: where the one-line summary goes.
    """

    def __init__(self, cfg, encoder, device: torch.device, log=print):
        import importlib.util

        from diffusers import AutoencoderKL

        from train.data import find_shards, from_pretrained_any, probe
        from train.scoring import Scorer

        o = replace(eval_options(cfg.train.eval_options), device=str(device))
        try:
            found = find_shards(cfg.data.shards, o.split)
        except ConfigError:  # no held-out split in these shards: the training split, said out loud
            log(f"eval: the shards have no {o.split!r} split; evaluating on {cfg.data.split!r} samples")
            o = replace(o, split=cfg.data.split)
            found = find_shards(cfg.data.shards, o.split)
        self.o, self.cfg, self.encoder, self.log = o, cfg, encoder, log
        self.vae_meta = probe(found, cfg.data.vae)["vae"]
        self.conditions = load_conditions(found, cfg.data.vae, cfg.data.latent_convention, cfg.train.eval_conditions)
        if len(self.conditions) < 2:
            raise ConfigError(f"train.eval_conditions: split {o.split!r} has {len(self.conditions)} sample(s), FID needs 2")
        low_mem = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
        try:
            vae = (from_pretrained_any(AutoencoderKL, o.vae, "vae", **low_mem) if o.vae else
                   AutoencoderKL.from_pretrained(self.vae_meta["id"], subfolder=self.vae_meta.get("subfolder"),
                                                 revision=self.vae_meta.get("revision"), **low_mem))
        except OSError as e:
            raise ConfigError(f"train.eval_options.vae: cannot load the VAE: {str(e).splitlines()[0]}") from None
        self.autoencoder = vae.to(device).eval().requires_grad_(False)
        shards_dir = Path(cfg.data.shards) if Path(cfg.data.shards).is_dir() else Path(cfg.data.shards).parent
        masker, self.parser_info = (None, None) if not o.metrics.wants("mask") else face_masker(shards_dir, o, device)
        self.scorer = Scorer(o.metrics, masker, device)
        self.groups = ec2face_groups(shards_dir, self.conditions)

    def __call__(self, step: int, model, objective) -> dict:
        from train.eval_report import write_eval_dir

        gen = Generator(model, objective, self.autoencoder, self.encoder, self.vae_meta, self.cfg.data.latent_convention)
        generated = generate(gen, self.conditions, self.o, log=lambda *_: None)
        report, per_face = self.scorer.score(self.conditions, generated, self.groups)
        report = {"checkpoint": {"checkpoint": f"step {step} (EMA, in training)", "step": step}, "shards": self.cfg.data.shards,
                  "split": self.o.split, "protocol": {"per_condition": self.o.per_condition, "seed": self.o.seed,
                                                      "steps": self.o.steps, "cfg_scale": self.o.cfg_scale,
                                                      "sampler": gen.sampler}, "parser": self.parser_info,
                  "groups": self.groups, **report}
        write_eval_dir(Path(self.cfg.train.out_dir) / "eval_steps" / f"step_{step:06d}", report, self.conditions,
                       generated, per_face, self.o.grid_rows)
        figures = {name: {k: v for k, v in block.items() if isinstance(v, float | int) and k != "conditions"}
                   for name, block in report["metrics"].items()}
        overall = figures.get("overall", {})
        self.log(f"eval step {step}: " + " | ".join(f"{k} {v:.4g}" for k, v in overall.items() if k != "images"))
        return figures

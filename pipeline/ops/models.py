"""`facecurate models`: every model a manifest needs, where it comes from, and whether it is here.

For each model setting of each stage (a hub id or a local path, from the manifest or the stage's
default), one row: the setting, the model, its source and licence from the catalogue below, whether it
is present (a local path that exists; a hub id whose files are in the Hugging Face cache, which the
loaders read offline), and the command that fetches it on a machine with internet. Nothing here
downloads or loads a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.registry import REGISTRY

# Known models: id or file name -> (what, source, licence). Licences as their model cards or repositories
# state them; a user still has to read the terms of what they download.
CATALOGUE: dict[str, tuple[str, str, str]] = {
    "OpenGVLab/InternVL3-1B-hf": ("InternVL3 1B, captions", "https://huggingface.co/OpenGVLab/InternVL3-1B-hf",
                                  "MIT (its Qwen2.5 language model: Apache-2.0)"),
    "Qwen/Qwen3-1.7B": ("Qwen3 1.7B, caption refinement", "https://huggingface.co/Qwen/Qwen3-1.7B", "Apache-2.0"),
    "jonathandinu/face-parsing": ("Segformer MiT-b5, 19-class face parsing",
                                  "https://huggingface.co/jonathandinu/face-parsing", "see its model card"),
    "black-forest-labs/FLUX.1-schnell": ("FLUX.1 VAE (folder vae/)",
                                         "https://huggingface.co/black-forest-labs/FLUX.1-schnell", "Apache-2.0"),
    "stabilityai/sd-vae-ft-mse": ("Stable Diffusion VAE", "https://huggingface.co/stabilityai/sd-vae-ft-mse", "MIT"),
    "u2net_portrait.pth": ("U2Net portrait sketches",
                           "xuebinqin/U-2-Net: the Google Drive link for u2net_portrait.pth in its README",
                           "Apache-2.0"),
    "face_parsing.farl.celebm.main_ema_181500_jit.pt": (
        "FaRL celebm face parser (TorchScript)",
        "https://github.com/FacePerceiver/facer/releases/download/models-v1/"
        "face_parsing.farl.celebm.main_ema_181500_jit.pt", "MIT (facer, FaRL)"),
    "mobilenet0.25_Final.pth": ("RetinaFace MobileNet-0.25 face detector (FaRL, unaligned photos)",
                                "https://github.com/elliottzheng/face-detection/releases/download/0.0.1/"
                                "mobilenet0.25_Final.pth", "MIT"),
    "dlib": ("dlib face detector, 68 landmarks, identity embeddings", "PyPI: face_recognition_models "
             "(installed by make setup)", "CC0 1.0; the 68-landmark model's iBUG 300-W data excludes commercial use"),
}

# stage -> settings naming models: (setting, catalogue entry used when the value is empty, file name)
SETTINGS: dict[str, list[tuple[str, str | None]]] = {
    "faces": [("models_dir", "dlib")],
    "caption": [("model", None)],
    "refine": [("model", None)],
    "parse": [("segformer_model", None), ("farl_model", "face_parsing.farl.celebm.main_ema_181500_jit.pt"),
              ("farl_detector", "mobilenet0.25_Final.pth")],
    "sketch": [("model", "u2net_portrait.pth")],
}


@dataclass
class ModelRow:
    """One model a run needs."""

    setting: str
    model: str
    what: str
    source: str
    licence: str
    present: bool
    how: str  # the command (or step) that gets it


def _hub_cached(repo: str, subfolder: str | None = None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    name = f"{subfolder}/config.json" if subfolder else "config.json"
    got = try_to_load_from_cache(repo, name)
    return isinstance(got, str)


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or Path(value).exists()


def _row(setting: str, value: str | None, fallback: str | None, subfolder: str | None = None) -> ModelRow:
    if not value:  # an unset path: the file the stage needs, from facer's cache or the package
        what, source, licence = CATALOGUE[fallback or ""]
        if fallback == "dlib":
            from pipeline.models.dlib_faces import models_folder

            try:
                present = models_folder() is not None
            except FileNotFoundError:
                present = False
            return ModelRow(setting, "face_recognition_models", what, source, licence, present,
                            "pip install face_recognition_models")
        cached = Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / fallback
        present = fallback.endswith(".pt") and cached.exists() or False
        how = (f"curl -L -o {fallback} {source}" if source.startswith("https://") else f"download {fallback} from "
               f"{source}") + f", then set {setting}: <path to {fallback}>"
        return ModelRow(setting, f"(not set: {fallback})", what, source, licence, present, how)
    if _looks_local(value):
        p = Path(value).expanduser()
        name = p.name
        what, source, licence = CATALOGUE.get(name, ("a local model", "your folder or file", "its own"))
        return ModelRow(setting, value, what, source, licence, p.exists(), "present" if p.exists() else
                        f"put the model at {value} or point {setting} at it")
    what, source, licence = CATALOGUE.get(value, ("a hub model", f"https://huggingface.co/{value}", "see its model card"))
    include = f" --include '{subfolder}/*'" if subfolder else ""
    return ModelRow(setting, value + (f" ({subfolder}/)" if subfolder else ""), what, source, licence,
                    _hub_cached(value, subfolder), f"huggingface-cli download {value}{include}")


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def needed_models(stages: dict[str, Any] | None = None) -> list[ModelRow]:
    """The models of `stages` (stage name -> config; None: every stage with its defaults)."""
    if stages is None:
        stages = {name: _defaults(spec.config_cls()) for name, spec in REGISTRY.items()
                  if not spec.module.startswith("tests")}
    rows = []
    for stage, cfg in stages.items():
        get = cfg.get if isinstance(cfg, dict) else (lambda k, c=cfg: getattr(c, k, None))
        if stage == "parse":
            parsers = get("parsers") or ("segformer",)
            wanted = {"segformer": ["segformer_model"], "farl": ["farl_model", "farl_detector"]}
            keep = {s for p in parsers for s in wanted.get(str(p), [])}
        else:
            keep = None
        for setting, fallback in SETTINGS.get(stage, []):
            if keep is not None and setting not in keep:
                continue
            value = get(setting)
            rows.append(_row(f"stages.{stage}.{setting}", None if value is None else str(value), fallback))
        if stage == "latents":
            for name, spec in (get("models") or {}).items():
                model = spec.get("model") if isinstance(spec, dict) else spec.model
                sub = spec.get("subfolder") if isinstance(spec, dict) else spec.subfolder
                rows.append(_row(f"stages.latents.models.{name}", str(model), None, sub))
    return rows

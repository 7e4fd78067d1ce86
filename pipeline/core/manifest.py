"""Run manifests: which stages a run has, their settings and the runner, from YAML plus `--set` overrides.

Every stage has a config dataclass registered in `pipeline.core.registry`; a manifest names the stages it
runs under `stages:`, and each section is validated against its stage's config with
`pipeline.core.config.from_dict` (strict: one-line `ConfigError`s that name the key). Relative paths in a
manifest resolve against the manifest's own folder.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ConfigError, RunnerConfig, from_dict
from pipeline.core.registry import REGISTRY


@dataclass(frozen=True)
class Manifest:
    """A run: which stages, their settings, the runner, and the output folder.

    Args:
        name: a label for the run (shown in summaries and the dataset card).
        out: output folder; relative paths resolve against the manifest's folder; `--out` wins.
        runner: see `RunnerConfig`.
        stages: stage name -> that stage's config (see `facecurate stages`); run in dependency order.
    """

    name: str = "facecurate"
    out: Path | None = None
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    stages: dict[str, Any] = field(default_factory=dict)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`stages.ingest.min_size=128` -> (['stages', 'ingest', 'min_size'], 128); the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. stages.ingest.min_size=128")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted `--set` overrides to raw manifest data (before validation, so errors name the key)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {p} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def build_manifest(data: dict, base: Path | None) -> Manifest:
    """Validate raw manifest data; each entry under `stages` is checked against its stage's config."""
    if not isinstance(data, dict):
        raise ConfigError(f"manifest: expected a mapping at the top level, got {type(data).__name__}")
    raw_stages = data.get("stages") or {}
    if not isinstance(raw_stages, dict):
        raise ConfigError("stages: expected a mapping of stage name -> settings, e.g. {ingest: {sources: ...}}")
    top = {k: v for k, v in data.items() if k != "stages"}
    manifest = from_dict(Manifest, top, "", base)
    parsed = {}
    for name, section in raw_stages.items():
        spec = REGISTRY.get(name)
        if spec is None:
            hint = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"stages.{name}: unknown stage{extra}; valid stages: {', '.join(REGISTRY)}"
            )
        parsed[name] = from_dict(spec.config_cls(), section, f"stages.{name}", base)
    return dataclasses.replace(manifest, stages=parsed)


def load_manifest(path: str | Path, overrides: list[str] | None = None) -> Manifest:
    """Read a YAML manifest, apply `--set` overrides, validate everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "facecurate" in data and isinstance(data.get("manifest"), dict):
        data = data["manifest"]  # a run's record (OUT/manifest.resolved.yaml) re-runs as the manifest it holds
    data = apply_overrides(data, overrides or [])
    return build_manifest(data, path.resolve().parent)

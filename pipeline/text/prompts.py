"""Caption prompt sets: a versioned YAML list of prompts, each with an id, kind, max tokens and text.

A prompt's content hash (id, kind, text, max tokens) is computed here, never written by hand, and is
part of the cache key of every caption made with it: editing one prompt changes one hash, so only
that prompt's captions are generated again. The set's hash (version + prompt hashes) is part of the
caption stage's fingerprint. `manifests/prompts/face-v1.yaml` is the default set; users pass their own
with `--prompts FILE` or `prompts:` in a manifest.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ConfigError
from pipeline.core.identity import digest

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "manifests" / "prompts" / "face-v1.yaml"
KINDS = ("few_shot", "template", "keywords", "detail")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
FIELDS = ("id", "kind", "max_tokens", "text")


@dataclass(frozen=True)
class Prompt:
    """One caption prompt.

    Args:
        id: stable identifier (lowercase letters, digits, `_.-`); caption rows are keyed by it.
        kind: few_shot, template, keywords or detail.
        text: the instruction sent with the image.
        max_tokens: most tokens to generate for it.
    """

    id: str
    kind: str
    text: str
    max_tokens: int

    @property
    def hash(self) -> str:
        return digest({"id": self.id, "kind": self.kind, "text": self.text, "max_tokens": self.max_tokens})[:12]


@dataclass(frozen=True)
class PromptSet:
    """A versioned list of prompts (see module docstring).

    Args:
        version: a label such as `face-v1`, recorded beside the captions.
        prompts: the prompts, in caption order.
        source: the file it was read from.
    """

    version: str
    prompts: tuple[Prompt, ...]
    source: str = ""

    @property
    def hash(self) -> str:
        return digest(self.version, [p.hash for p in self.prompts])[:12]

    def to_json(self) -> dict[str, Any]:
        # the file's name, not its absolute path: the same prompts give the same bytes on every machine
        # (a Ray job's working_dir copy, another checkout); `hash` identifies the content
        return {"version": self.version, "hash": self.hash, "source": os.path.basename(self.source),
                "prompts": [{"id": p.id, "kind": p.kind, "hash": p.hash, "max_tokens": p.max_tokens,
                             "text": p.text} for p in self.prompts]}


def load_prompt_set(path: str | Path | None = None) -> PromptSet:
    """Read and validate a prompt-set YAML file (default: face-v1); errors are one line naming the entry."""
    path = Path(path) if path is not None else DEFAULT_PROMPTS
    if not path.is_file():
        raise ConfigError(f"prompt set {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    return parse_prompt_set(data, str(path))


def parse_prompt_set(data: Any, source: str = "<prompts>") -> PromptSet:
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise ConfigError(f"{source}: expected a mapping with `version:` and a `prompts:` list")
    extra = set(data) - {"version", "prompts"}
    if extra:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(map(str, extra)))}; valid: version, prompts")
    version = data.get("version")
    if not isinstance(version, (str, int, float)) or not str(version).strip():
        raise ConfigError(f"{source}: `version:` is required (a label such as face-v1)")
    if not data["prompts"]:
        raise ConfigError(f"{source}: `prompts:` is empty")
    prompts, seen = [], set()
    for i, p in enumerate(data["prompts"]):
        where = f"{source}: prompts[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: expected a mapping with {', '.join(FIELDS)}")
        if isinstance(p.get("id"), str):
            where += f" ({p['id']})"
        unknown = set(p) - set(FIELDS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; valid: {', '.join(FIELDS)}")
        missing = [f for f in FIELDS if f not in p]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        pid, kind, text, max_tokens = p["id"], p["kind"], p["text"], p["max_tokens"]
        if not isinstance(pid, str) or not ID_RE.match(pid):
            raise ConfigError(f"{where}: id must be lowercase letters, digits and _.- (got {pid!r})")
        if pid in seen:
            raise ConfigError(f"{where}: duplicate id {pid!r}")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: text must be a non-empty string")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 4096:
            raise ConfigError(f"{where}: max_tokens must be an integer from 1 to 4096 (got {max_tokens!r})")
        seen.add(pid)
        prompts.append(Prompt(pid, kind, text.strip(), max_tokens))
    return PromptSet(str(version).strip(), tuple(prompts), source)


def prompt_set_json(ps: PromptSet) -> bytes:
    return json.dumps(ps.to_json(), indent=2, ensure_ascii=False).encode()

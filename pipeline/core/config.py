"""Configuration: frozen dataclasses filled strictly from plain YAML data, and their fingerprints.

`from_dict` builds a config dataclass from plain data: an unknown key, a wrong type, a value outside a
`Literal`, or a missing input folder raises `ConfigError` with one line that names the key and the valid
choices. Relative paths resolve against a base folder (the manifest's), so a run does not depend on the
shell's working directory. `StageConfig` holds the fields every stage shares, `RunnerConfig` where stages
run; `fingerprint` hashes the fields that decide a stage's output. A run's manifest (which stages, with
which settings) is built on top of this in `pipeline.core.manifest`. `loading_model` makes a model that
does not load (a wrong folder, another kind of model) a ConfigError naming its setting too.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import hashlib
import json
import os
import pickle
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A manifest or override that cannot be used; the message is one line that names the key."""


def volatile(default: Any, **kw: Any) -> Any:
    """A field that changes how a stage runs but not what it produces (excluded from fingerprints)."""
    return field(default=default, metadata={"volatile": True}, **kw)


def must_exist(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A path field that must name an existing file or folder when the manifest is loaded."""
    if default is dataclasses.MISSING:
        return field(metadata={"exists": True}, **kw)
    return field(default=default, metadata={"exists": True}, **kw)


def model_ref(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A `str` field naming a model: a hub id (`org/name`) or a local folder.

    A value that looks like a path (starts with `.`, `/` or `~`), or names a folder that exists next to
    the manifest, resolves against the manifest's folder like a `Path` field and must exist; anything
    else is kept as a hub id.
    """
    if default is dataclasses.MISSING:
        return field(metadata={"model_ref": True}, **kw)
    return field(default=default, metadata={"model_ref": True}, **kw)


def resolve_model_ref(value: str, base: Path | None, where: str) -> str:
    p = Path(value).expanduser()
    looks_local = value.startswith((".", "/", "~"))
    if not p.is_absolute() and base is not None:
        candidate = Path(os.path.normpath(base / p))
        if looks_local or candidate.exists():
            p, looks_local = candidate, True
    if not looks_local:
        return value
    if not p.exists():
        raise ConfigError(f"{where}: local model folder {p} does not exist (hub ids look like org/name)")
    return str(p)


@dataclass(frozen=True)
class RunnerConfig:
    """Where and how stages run.

    Args:
        kind: `local` (in-process loop with a progress bar) or `ray` (Ray Data actor pools).
        address: Ray cluster address (`auto`, `ray://host:10001`); empty starts a local Ray.
        flush_rows: write a ledger part after this many output rows.
        flush_seconds: ...or after this many seconds, so a killed run loses little work.
        retry_failed: re-process keys whose last row failed (default: failures count as done).
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    flush_rows: int = 2048
    flush_seconds: float = 30.0
    retry_failed: bool = False


@dataclass(frozen=True)
class StageConfig:
    """Fields every stage shares: how it is batched and which resources one worker takes.

    Args:
        batch_size: rows per `__call__`.
        num_cpus: CPUs per Ray actor (fractions allowed; 2-core machines need < 1).
        num_gpus: GPUs per Ray actor.
        concurrency: Ray actor-pool size; empty sizes the pool from the cluster's resources.
    """

    batch_size: int = volatile(32)
    num_cpus: float = volatile(1.0)
    num_gpus: float = volatile(0.0)
    concurrency: int | None = volatile(None)


def fingerprint(cfg: Any) -> str:
    """A short hash of the fields of `cfg` that determine a stage's output (volatile fields excluded)."""

    def strip(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {
                f.name: strip(getattr(obj, f.name))
                for f in dataclasses.fields(obj)
                if not f.metadata.get("volatile")
            }
        if isinstance(obj, (list, tuple)):
            return [strip(x) for x in obj]
        if isinstance(obj, dict):
            return {str(k): strip(v) for k, v in obj.items()}
        if isinstance(obj, Path):
            return str(obj)
        return obj

    blob = json.dumps(strip(cfg), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def to_plain(obj: Any) -> Any:
    """Dataclasses to YAML-friendly dicts/lists/strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------------------
# Strict conversion of plain YAML data into typed dataclasses.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, base: Path | None, exists: bool = False) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where, base, exists)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{where}: {value!r} is not a valid choice{extra}; choose one of {', '.join(map(str, choices))}"
            )
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]  # a single item where a list is expected is a list of one
        (item,) = typing.get_args(tp)[:1]
        items = [_convert(v, item, f"{where}[{i}]", base, exists) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{where}.{k}", base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, base)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        p = Path(value).expanduser()
        if base is not None and not p.is_absolute():
            p = Path(os.path.normpath(base / p))
        if exists and not p.exists():
            raise ConfigError(f"{where}: {p} does not exist")
        return p
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # a bug in a config class, not the user's


def from_dict(cls: type, data: Any, where: str = "", base: Path | None = None) -> Any:
    """Build the frozen dataclass `cls` from plain data; raises ConfigError with the failing key path."""
    label = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            valid = sorted(fields)
            hint = difflib.get_close_matches(str(key), valid, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{_join(where, key)}: unknown key{extra}; valid keys: {', '.join(valid)}")
        f = fields[key]
        kwargs[key] = _convert(value, hints[key], _join(where, key), base, bool(f.metadata.get("exists")))
        if f.metadata.get("model_ref") and isinstance(kwargs[key], str):
            kwargs[key] = resolve_model_ref(kwargs[key], base, _join(where, key))
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{label}: {e}") from None


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


# What loading a model the user named raises when it is the wrong file or folder: missing weights (OSError),
# a config of another architecture or label set (ValueError, KeyError), weights of another shape or a file
# that is no checkpoint at all (RuntimeError, pickle's UnpicklingError); and whatever the loading libraries
# raise of their own (huggingface_hub's config validation errors, safetensors' header errors).
MODEL_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError,
                                                      pickle.UnpicklingError)
MODEL_LIBRARIES = ("huggingface_hub", "transformers", "safetensors", "safetensors_rust", "diffusers")


def _model_load_error(e: BaseException) -> bool:
    if isinstance(e, ConfigError) or "out of memory" in str(e).lower() or getattr(e, "errno", None) == errno.ENOSPC:
        return False  # already one line; or not the setting's fault (the runner and the CLI say those)
    return isinstance(e, MODEL_LOAD_ERRORS) or type(e).__module__.split(".")[0] in MODEL_LIBRARIES


@contextmanager
def loading_model(setting: str, model: Any, fix: str = "") -> Iterator[None]:
    """Turn a model that does not load into one line naming its setting:
    `SETTING: cannot load MODEL (Type: first line); FIX`.

    A ConfigError (already one line) passes through; so do out-of-memory and a full disk, which are not
    the setting's fault (the runner and the CLI have their own lines for those).
    """
    try:
        yield
    except Exception as e:
        if not _model_load_error(e):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        why = f"{type(e).__name__}: {first}" if first else type(e).__name__
        fix = fix or "check the path or hub id, and that it names this kind of model"
        raise ConfigError(f"{setting}: cannot load {str(model)!r} ({why}); {fix}{models_hint(model)}") from e


def models_hint(model: Any) -> str:
    """For a model that is not a local file or folder (a hub id not in the cache, offline): where to look."""
    text = str(model)
    if text.startswith((".", "/", "~")) or Path(text).expanduser().exists():
        return ""
    return "; offline? `facecurate models MANIFEST` says where each model comes from and how to fetch it"

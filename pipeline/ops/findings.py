"""What `verify` finds, in a form `repair` can act on; shared by the run checks and the shard checks."""

from __future__ import annotations

import io
from pathlib import Path

import yaml


class Problem(str):
    """One finding: the line to show (the str itself), plus what `repair` does about it.

    Attributes:
        fix: the command that repairs it (shown after the line).
        stage: the stage whose rows for `keys` must be redone (or whose folder holds `part`/`remove`).
        keys: ledger keys of `stage` to make pending again.
        part: a ledger part that does not read (moved aside by repair).
        remove: a derived file that is broken and that the next run writes again (deleted by repair).
    """

    fix: str
    stage: str | None
    keys: tuple[str, ...]
    part: Path | None
    remove: Path | None

    def __new__(cls, line: str, fix: str = "", stage: str | None = None, keys: tuple[str, ...] = (),
                part: Path | None = None, remove: Path | None = None) -> Problem:
        self = super().__new__(cls, line)
        self.fix, self.stage, self.keys, self.part, self.remove = fix, stage, tuple(keys), part, remove
        return self


def card_front_matter(text: str) -> dict | None:
    """The YAML front matter of a dataset card, or None when it has none that parses."""
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 4)
    if end < 0:
        return None
    try:
        doc = yaml.safe_load(io.StringIO(text[4:end]))
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None

"""Clean: raw VLM captions become tidy captions that fit CLIP's 77-token context.

For every row of `captions/raw` (one per key and prompt) the stage writes one row to `captions/clean`:
the text after the named rules of `pipeline.text.clean_rules`, the rules that changed it
(`rules_applied`), its exact CLIP token count, and whether it was trimmed. A caption over the budget is
cut at the last clause or sentence boundary that fits (rule `trim_clause`; `trim_word` or `trim_char`
when one clause alone is too long; `trimmed` is true).

Nothing is dropped silently. A caption that cleaning leaves empty is `empty`; one that says nothing
about a face ("N/A", "A photo of a person.", an unfilled template) is `meaningless`; a refusal or pure
meta-commentary is `refusal`; a row the caption stage failed is `caption_failed` with its reason. Those
rows keep their cleaned text so you can see why.

Inputs are grouped per key from the caption ledger, and a key's `_src` is a hash of its raw rows: a
key is cleaned again only when one of its captions changed, not when captioning merely re-ran. The
driver reads the caption ledger one part at a time to make those hashes and keeps only (key, `_src`,
`_part`) per key, about 60 bytes; each batch reads its keys' raw rows from the parts named
(`ledger.BatchRows`), so no caption text is held for every key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import StageConfig, volatile
from pipeline.core.ledger import OK, BatchRows, Ledger, rows_by_key, string_table
from pipeline.core.stage import Stage, StageContext
from pipeline.text.clean_rules import RULE_NAMES, clean_text, is_list
from pipeline.text.tokens import CONTEXT_LENGTH, count_tokens, trim_to_budget

RAW_LEDGER = "captions/raw"
RAW_COLUMNS = ("prompt_id", "prompt_kind", "text", "status", "error", "finish_reason")


@dataclass(frozen=True)
class CleanConfig(StageConfig):
    """Settings of the clean stage.

    Args:
        budget: CLIP tokens a caption may use, start and end tokens included (CLIP's context is 77).
        min_words: a caption with fewer words (of two letters or more) is `meaningless`.
        disable: rule names to skip (see `pipeline.text.clean_rules`), e.g. `[image_lead]`.
    """

    budget: int = CONTEXT_LENGTH
    min_words: int = 2
    disable: tuple[str, ...] = ()
    batch_size: int = volatile(512)

    def __post_init__(self) -> None:
        if not 8 <= self.budget <= CONTEXT_LENGTH:
            raise ValueError(f"budget must be from 8 to {CONTEXT_LENGTH} (CLIP's context), got {self.budget}")
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1, got {self.min_words}")
        unknown = sorted(set(self.disable) - set(RULE_NAMES))
        if unknown:
            raise ValueError(f"disable: unknown rule(s) {', '.join(unknown)}; rules: {', '.join(RULE_NAMES)}")


def raw_rows(rows: list[dict]) -> list[dict[str, str]]:
    """A key's caption ledger rows as the stage reads them (a missing value is "")."""
    return [{c: r.get(c) or "" for c in RAW_COLUMNS} for r in rows]


def raw_parts(out: Any, keys: pa.Array | pa.ChunkedArray):
    """(key, part number, its raw rows) for each of `keys` with caption rows, one ledger part at a time
    (so memory is one part), keys sorted within a part."""
    ledger = Ledger(out, RAW_LEDGER)
    for seq, t in ledger.iter_resolved(["key", *RAW_COLUMNS]):
        t = t.filter(pc.is_in(t["key"], value_set=keys))
        for c in RAW_COLUMNS:
            if c not in t.column_names:
                t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
        for key, rows in rows_by_key(t, pc.unique(t["key"]).sort(), chunk=4096):
            yield key, seq, raw_rows(rows)


class CleanStage(Stage):
    """One cleaned row per raw caption row; see the module docstring."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("prompt_id", pa.string()), ("prompt_kind", pa.string()), ("text", pa.string()),
        ("clip_tokens", pa.int32()), ("trimmed", pa.bool_()), ("rules_applied", pa.list_(pa.string())),
    ])
    version: ClassVar[str] = "1"

    def __init__(self, cfg: CleanConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        self.raw = BatchRows(ctx.out, RAW_LEDGER, list(RAW_COLUMNS))  # each batch's raw caption rows

    @classmethod
    def inputs(cls, cfg: CleanConfig, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        def records():
            for key, seq, raw in raw_parts(ctx.out, ctx.index(["key"])["key"]):
                text = json.dumps(raw, sort_keys=True, ensure_ascii=False)
                yield key, str(seq), hashlib.sha1(text.encode()).hexdigest()[:20]

        t = string_table(records(), ("key", "_part", "_src"))
        return t.set_column(1, "_part", pc.cast(t["_part"], pa.int32()))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {n: [] for n in ("key", "status", "error", *self.schema.names)}
        keys = [str(k) for k in batch["key"]]
        rows = self.raw.rows(keys, [int(p) for p in batch["_part"]])
        for key in keys:
            for row in raw_rows(rows[key]):
                self._clean_row(out, key, row)
        self._fit_budget(out)
        return out

    def _clean_row(self, out: dict[str, list], key: str, row: dict[str, str]) -> None:
        status, error = OK, ""
        if row["status"] != OK:
            text, rules = "", []
            status, error = "caption_failed", f"caption stage: {row['status']}: {row['error']}".strip(": ")
        else:
            text, rules, verdict = clean_text(row["text"], row["prompt_kind"], row["finish_reason"],
                                              self.cfg.disable, self.cfg.min_words)
            if verdict:
                status = verdict
                error = {"empty": "nothing left after cleaning", "refusal": "the model declined or only "
                         "commented on the task", "meaningless": "says nothing about the face"}[verdict]
                error += f" (raw: {row['text'].strip()[:120]!r})"
        for name, v in (("key", key), ("status", status), ("error", error), ("prompt_id", row["prompt_id"]),
                        ("prompt_kind", row["prompt_kind"]), ("text", text), ("clip_tokens", 0),
                        ("trimmed", False), ("rules_applied", rules)):
            out[name].append(v)

    def _fit_budget(self, out: dict[str, list]) -> None:
        """Count every caption in one batch; trim the few over budget at a clause boundary."""
        counts = count_tokens(out["text"])
        for i, n in enumerate(counts):
            if n > self.cfg.budget:
                kw = is_list(out["text"][i]) or "keyword" in out["prompt_kind"][i]
                text, n, how = trim_to_budget(out["text"][i], self.cfg.budget, end="" if kw else ".")
                out["text"][i], out["trimmed"][i] = text, True
                out["rules_applied"][i] = [*out["rules_applied"][i], f"trim_{how}"]
            out["clip_tokens"][i] = int(n)



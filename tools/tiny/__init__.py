"""Tiny random-weight model builders: each module defines `MODELS = {name: (version, build_fn)}`.

`build_fn(out_dir: Path) -> None` writes a model that `from_pretrained(out_dir)` (or the stage's own
loader) reloads offline: the real architecture and a working tokenizer/processor at toy size.
`tools/make_tiny_models.py` discovers every module here.
"""

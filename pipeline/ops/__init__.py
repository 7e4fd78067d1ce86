"""Operations on a finished or running output folder: `verify` (and its shard checks), `inspect`,
`export`, `eval-parse` and `train-parser`. Each is called by a CLI command; none is a stage.
"""

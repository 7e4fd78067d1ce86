"""The data contracts on disk that stages, reports and tools share.

Where images come from (`sources`: folder, FFHQ, CelebAMask-HQ, tar, parquet layouts) and how they
decode (`images`); the 19-class CelebAMask-HQ label map (`labels`) and the attribute statistics computed
from it (`attributes`); the aligned views of one key built from a run's outputs (`views`); arrays without
pickles (`arrays`); the WebDataset sample format (`wds`) and deterministic shard assembly
(`shard_assembly`). Modules here import `pipeline.core` and each other, never a stage.
"""

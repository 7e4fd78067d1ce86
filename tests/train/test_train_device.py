"""Device selection: a bare "cuda" gets an explicit index (CUDA memory APIs refuse an index-less device)."""

from __future__ import annotations

import torch

from train.train import pick_device


def test_bare_cuda_gets_the_local_rank_index(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert pick_device("cuda", 0) == torch.device("cuda", 0)
    assert pick_device("cuda", 3) == torch.device("cuda", 3)
    assert pick_device("cuda:1", 0) == torch.device("cuda", 1)
    assert pick_device("cpu", 0) == torch.device("cpu")

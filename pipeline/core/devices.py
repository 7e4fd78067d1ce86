"""Where a stage's models run: device names (`auto` is CUDA when present) and dtype names to torch dtypes.

torch is imported inside each function, so the CLI and the driver start without it.
"""

from __future__ import annotations


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def batch_independent(forward, x, size: int):
    """`forward(x)` whose rows do not depend on how many rows came with them: always `size` rows.

    On CPU, oneDNN picks its convolution kernel by batch size, so the same image gave a different mask
    or sketch (argmax or threshold over near-ties) when a resumed or repaired run redid it among fewer
    keys (measured here, torch 2.x on 2 x86 cores: a U2Net forward of 2 rows differs from one of 4;
    Segformer's of 1 from one of 2). So every forward runs exactly `size` rows: a short batch is padded
    with copies of its last row (their answers dropped), a long one is cut into `size`-row pieces.
    The cost is the padding of the last batch of a run. `forward` returns a tensor, batch first.
    """
    import torch

    n = x.shape[0]
    if n == 0:
        return forward(x)
    outs = []
    for i in range(0, n, size):
        piece = x[i:i + size]
        short = size - piece.shape[0]
        if short:
            piece = torch.cat([piece, piece[-1:].expand(short, *piece.shape[1:])])
        outs.append(forward(piece)[: size - short])
    return outs[0] if len(outs) == 1 else torch.cat(outs)

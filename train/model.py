"""MMFace-DiT: a dual-stream diffusion transformer for faces, conditioned on text and on a mask or sketch.

The noisy image latent and the condition latent (a face-parsing mask or a sketch, through the same VAE) are
concatenated on channels and patchified into image tokens; CLIP's penultimate hidden states become text
tokens. Every block gives each stream its own adaLN modulation, q/k/v/out projections and MLP, and runs one
joint attention over [image tokens, text tokens] (flux's double-stream block). A global vector
c = t_emb + pooled-text_emb + modality_emb drives all modulations. Only image tokens reach the final layer.

Sizes follow DiT (``MMFaceDiT_models``); XL is the paper's 1.345B model and counts exactly the public
code's 1,345,298,624 parameters. Layer names follow the paper and DiT (``adaLN_modulation``,
``x_embedder``, ``t_embedder``, ``y_embedder``), so reading this file next to the paper is easy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from train.rope import ROPE_MODES, apply_rope, joint_rope


@dataclass(frozen=True)
class MMFaceDiTConfig:
    """Architecture of one MMFace-DiT (everything a checkpoint needs to rebuild the network).

    Args:
        depth: number of dual-stream blocks (XL: 28).
        hidden_size: token width (XL: 1152).
        num_heads: attention heads; the head dim must be a multiple of 4 for 2D axial RoPE (XL: 72).
        mlp_ratio: MLP width over hidden size (4, GELU tanh).
        patch_size: latent patch size (2).
        latent_channels: VAE latent channels C; the input is 2C (noisy latent + condition), output C.
        text_dim: CLIP text width, for both the hidden states and the pooled vector (SD2.1: 1024).
        rope: ``public`` (text tokens at position 0, no rotation, as the public code; the default) or ``paper``
            (1D RoPE on text tokens, as the paper describes).
        rope_theta: RoPE base (10,000).
    """

    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 2
    latent_channels: int = 16
    text_dim: int = 1024
    rope: str = "public"
    rope_theta: float = 10_000.0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head dim {self.head_dim} must be a multiple of 4 (2D axial RoPE splits it in halves)")
        if self.rope not in ROPE_MODES:
            raise ValueError(f"rope must be one of {', '.join(ROPE_MODES)}, got {self.rope!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_size(cls, size: str, **overrides) -> MMFaceDiTConfig:
        if size not in MMFaceDiT_models:
            raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(MMFaceDiT_models)}")
        return cls(**{**MMFaceDiT_models[size], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    def train_flops(self, latent_h: int, latent_w: int, n_text: int = 77) -> float:
        """Model FLOPs of one training sample (forward + backward = 3x forward), counted analytically.

        forward = 2 * (tokens x per-token matmul params) + attention, where each image token passes
        depth * 12 h^2 stream weights (qkv 3h^2 + out h^2 + MLP 8h^2) plus the patch embedder and final
        layer, each text token the same 12 h^2 per block plus the 1024 -> h projection, and attention costs
        4 * N^2 * h per block (QK^T and AV over N = image + text tokens). adaLN and the embedders act once
        per sample (not per token) and are counted as such. This is the convention MFU uses: gradient
        checkpointing's recomputation is not counted, so it shows as lower MFU.
        """
        h, p, c = self.hidden_size, self.patch_size, self.latent_channels
        n_img = (latent_h // p) * (latent_w // p)
        n = n_img + n_text
        per_token = self.depth * 12 * h * h
        matmul = per_token * n + (2 * c * p * p * h + h * p * p * c) * n_img + self.text_dim * h * n_text
        per_sample = self.depth * 12 * h * h + (256 * h + h * h) + self.text_dim * h + 2 * h * h  # adaLN, t, y, final
        attention = self.depth * 4 * n * n * h
        return 3.0 * (2.0 * (matmul + per_sample) + attention)


MMFaceDiT_models = {
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "tiny": dict(depth=2, hidden_size=64, num_heads=4),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps (0..999 scale, may be fractional) -> vectors: 256-frequency sinusoid + MLP (DiT)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10_000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class PooledTextEmbedder(nn.Module):
    """Pooled CLIP vector -> hidden; dropped captions use a learnable null vector (zero-initialised)."""

    def __init__(self, text_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, hidden_size)
        self.null = nn.Parameter(torch.zeros(text_dim))

    def forward(self, pooled: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            pooled = torch.where(drop[:, None], self.null.to(pooled.dtype), pooled)
        return self.proj(pooled)


def mlp(hidden_size: int, mlp_ratio: float) -> nn.Sequential:
    width = int(hidden_size * mlp_ratio)
    return nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden_size))


class DualStreamBlock(nn.Module):
    """Image and text streams with their own modulation, projections and MLPs; one joint attention.

    Args:
        hidden_size: token width of both streams.
        num_heads: attention heads of the joint attention.
        mlp_ratio: MLP width over hidden size.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)  # no parameters: shared
        self.img_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.img_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.txt_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.txt_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.img_mlp = mlp(hidden_size, mlp_ratio)
        self.txt_mlp = mlp(hidden_size, mlp_ratio)
        # shift/scale/gate for attention and MLP of the image stream, then the same six for the text stream
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 12 * hidden_size))

    def forward(self, img, txt, c, cos, sin):
        (i_shift_msa, i_scale_msa, i_gate_msa, i_shift_mlp, i_scale_mlp, i_gate_mlp,
         t_shift_msa, t_scale_msa, t_gate_msa, t_shift_mlp, t_scale_mlp, t_gate_mlp) = (
            self.adaLN_modulation(c).chunk(12, dim=1))
        n_img = img.shape[1]
        qkv = torch.cat([
            self.img_qkv(modulate(self.norm(img), i_shift_msa, i_scale_msa)),
            self.txt_qkv(modulate(self.norm(txt), t_shift_msa, t_scale_msa)),
        ], dim=1)  # (B, N_img + N_txt, 3D)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        x = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        img = img + i_gate_msa.unsqueeze(1) * self.img_proj(x[:, :n_img])
        txt = txt + t_gate_msa.unsqueeze(1) * self.txt_proj(x[:, n_img:])
        img = img + i_gate_mlp.unsqueeze(1) * self.img_mlp(modulate(self.norm(img), i_shift_mlp, i_scale_mlp))
        txt = txt + t_gate_mlp.unsqueeze(1) * self.txt_mlp(modulate(self.norm(txt), t_shift_mlp, t_scale_mlp))
        return img, txt


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear to patch pixels, on image tokens only.

    Args:
        hidden_size: token width.
        patch_size: latent patch size.
        out_channels: latent channels predicted per position.
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MMFaceDiT(nn.Module):
    """The MMFace-DiT network; objectives (rectified flow, DDPM) live in ``train/objectives.py``.

    Args:
        cfg: the architecture (``MMFaceDiTConfig.from_size("XL")`` for the paper's model).
    """

    def __init__(self, cfg: MMFaceDiTConfig):
        super().__init__()
        self.cfg = cfg
        hs, p, c = cfg.hidden_size, cfg.patch_size, cfg.latent_channels
        self.x_embedder = nn.Conv2d(2 * c, hs, kernel_size=p, stride=p)  # noisy latent (+) condition latent
        self.text_embedder = nn.Linear(cfg.text_dim, hs)  # CLIP penultimate hidden states -> text tokens
        self.t_embedder = TimestepEmbedder(hs)
        self.y_embedder = PooledTextEmbedder(cfg.text_dim, hs)
        self.modality_embedder = nn.Embedding(2, hs)  # 0 = mask, 1 = sketch
        self.blocks = nn.ModuleList([DualStreamBlock(hs, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(hs, p, c)
        self.grad_ckpt = False  # recompute each block in backward: ~1/3 more FLOPs, far less activation memory
        self.initialize_weights()

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        w = self.x_embedder.weight.data  # like nn.Linear, as in DiT
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.y_embedder.proj.weight, std=0.02)
        nn.init.zeros_(self.y_embedder.null)
        nn.init.normal_(self.text_embedder.weight, std=0.02)
        nn.init.normal_(self.modality_embedder.weight, std=0.02)
        # adaLN-zero: every block starts as the identity, and the output starts at zero
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p = self.cfg.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=p, q=p)

    def forward(self, x, t, cond, modality, text, pooled, drop_text=None):
        """Predict the objective's target (velocity or noise) for a batch.

        Args:
            x: noisy latent (B, C, H, W).
            t: timesteps (B,) on the 0..999 scale (rectified flow passes t * 999).
            cond: condition latent (B, C, H, W): the mask's or sketch's latent, zeros when dropped.
            modality: (B,) long, 0 = mask, 1 = sketch.
            text: CLIP penultimate hidden states (B, L, text_dim).
            pooled: CLIP pooled output (B, text_dim).
            drop_text: (B,) bool; True replaces the pooled vector with the learnable null.
        """
        p = self.cfg.patch_size
        H, W = x.shape[-2:]
        if H % p or W % p:
            raise ValueError(f"latent size {H}x{W} is not divisible by the patch size {p}")
        h, w = H // p, W // p
        img = rearrange(self.x_embedder(torch.cat([x, cond], dim=1)), "b d h w -> b (h w) d")  # (B, h*w, D)
        txt = self.text_embedder(text)  # (B, L, D)
        c = self.t_embedder(t) + self.y_embedder(pooled, drop_text) + self.modality_embedder(modality)  # (B, D)
        cos, sin = joint_rope(h, w, txt.shape[1], self.cfg.head_dim, self.cfg.rope, self.cfg.rope_theta, x.device)
        for block in self.blocks:
            if self.grad_ckpt and torch.is_grad_enabled():
                img, txt = checkpoint(block, img, txt, c, cos, sin, use_reentrant=False)
            else:
                img, txt = block(img, txt, c, cos, sin)
        return self.unpatchify(self.final_layer(img, c), h, w)  # (B, C, H, W)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Peak dense bf16 throughput per GPU (TFLOP/s, from the vendors' data sheets), for MFU. Matched by substring
# of torch.cuda.get_device_name(); the practical H100 figure models.md uses is 790.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "4090": 165.2,
                   "A10G": 70.0, "L4": 121.0}


def peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) for MFU: the override, a GPU table entry, or a CPU matmul measured now."""
    if override:
        return override, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops, f"{name} bf16 dense spec"
        return None, f"{name} not in GPU_PEAK_TFLOPS"
    import time

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.3:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e12, "measured fp32 1024^2 matmul on this CPU"

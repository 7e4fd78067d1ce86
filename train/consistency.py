"""EC²Face's explicit conditional consistency loss: score the clean image the model implies, not only its noise.

At each step the objective reverse-estimates the clean latent x̂ from the prediction at t (rectified flow:
x̂ = z + (1 − t) v̂; DDPM: x̂0 = (z − √(1−ᾱ) ε̂) / √ᾱ, see ``train.objectives``); the VAE decodes it, and two
frozen models judge the image against the sample's own conditions:

    L_clip   = 1 − cos(CLIP_image(x̂), CLIP_text(caption))            where the caption was not dropped
    L_parser = CE(parser(x̂), mask) + Dice(softmax(parser(x̂)), mask)  where mask.png exists and a mask or
                                                                     sketch latent conditioned the sample
    L_cons   = mean over the batch of β(τ) · (λ_clip L_clip + λ_parser L_parser)
    β(τ)     = sigmoid(γ_s · (t_c − τ)),  τ = noise level in [0, 1] (0 clean, 1 pure noise)

β is our reading of the paper's temporal modulation (γ_s = 10, t_c = 0.4 as its symbols; we could not get
its exact formula): near 1 at low noise, where x̂ is a faithful image, 1/2 at τ = t_c, and ~0 near pure
noise, where x̂ is a blurred mean that no parser or CLIP can judge fairly. τ is 1 − t for rectified flow and
t / 999 for DDPM. A sample whose caption was dropped gets no CLIP term and one with a dropped (or absent)
spatial condition no parser term: the model was not told what to be consistent with.

The VAE, CLIP and parser are frozen (``requires_grad_(False)``, eval mode): gradients flow through them into
x̂ and so only into the DiT. Samples with β ≤ ``min_beta`` or no term are never decoded. Cost: a VAE decode,
a CLIP image pass and a parser pass per sample, forward and backward, which at 256 px is several times the
DiT's own step (README, EC²Face).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from train.config import ConfigError, ConsistencyConfig
from train.data import from_pretrained_any, model_to_latent

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NUM_CLASSES = 19


def beta(noise_level: torch.Tensor, gamma_s: float, t_c: float) -> torch.Tensor:
    """β(τ) = sigmoid(γ_s (t_c − τ)): ~1 at low noise, 1/2 at τ = t_c, ~0 at pure noise."""
    return torch.sigmoid(gamma_s * (t_c - noise_level.float()))


def dice_loss(logits: torch.Tensor, label: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice per sample: 1 − mean over classes of (2 Σ p g + eps) / (Σ p + Σ g + eps), (B,)."""
    p = logits.float().softmax(dim=1)  # (B, K, H, W)
    g = F.one_hot(label.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    inter, total = (p * g).sum(dim=(2, 3)), (p + g).sum(dim=(2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean(dim=1)


def parser_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + Dice per sample (B,), logits upsampled bilinearly to the label's size first."""
    logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, label.long(), reduction="none").mean(dim=(1, 2))
    return ce + dice_loss(logits, label)


def _normalise(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """[-1, 1] images -> the model's input: [0, 1], bilinear resize to size², (x - mean) / std. Not clamped:
    a clamp would cut the gradient at every saturated pixel."""
    x = F.interpolate((x + 1) / 2, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m, s = torch.tensor(mean, device=x.device).view(1, 3, 1, 1), torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _processor_stats(source: str, cls, default_size: int, default_mean, default_std):
    """(size, mean, std) from the model's saved image processor, or the model family's defaults."""
    try:
        proc = from_pretrained_any(cls, source, "image_processor")
    except (OSError, ValueError):
        return default_size, default_mean, default_std
    size = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
    if not isinstance(size, int):  # a dict, or transformers' SizeDict
        size = dict(size).get("height") or dict(size).get("shortest_edge") or default_size
    return int(size), tuple(proc.image_mean), tuple(proc.image_std)


class ConsistencyLoss:
    """The frozen VAE, CLIP and face parser, and the loss they give a batch of clean-latent estimates.

    Args:
        cfg: the ``objective.consistency`` section.
        vae_meta: the shards' VAE record (``id``, ``subfolder``, ``revision``, factors), used when ``cfg.vae``
            is null and to undo the latent scaling.
        convention: latent convention of the training scale (``diffusers`` or ``mmface``).
        device: where the frozen models run.
        grad_ckpt: recompute the VAE decoder in backward (its activations dominate the memory).
    """

    def __init__(self, cfg: ConsistencyConfig, vae_meta: dict, convention: str, device, grad_ckpt: bool = False):
        from diffusers import AutoencoderKL

        self.cfg, self.vae_meta, self.convention, self.device = cfg, vae_meta, convention, torch.device(device)
        try:
            if cfg.vae:
                self.vae = from_pretrained_any(AutoencoderKL, cfg.vae, "vae")
            else:
                self.vae = AutoencoderKL.from_pretrained(vae_meta["id"], subfolder=vae_meta.get("subfolder"),
                                                         revision=vae_meta.get("revision"))
            self.clip = self.tokenizer = self.parser = None
            if cfg.clip:
                from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

                self.clip = from_pretrained_any(CLIPModel, cfg.clip, "clip")
                self.tokenizer = from_pretrained_any(CLIPTokenizer, cfg.clip, "tokenizer")
                self.clip_stats = _processor_stats(cfg.clip, CLIPImageProcessor,
                                                   self.clip.config.vision_config.image_size, CLIP_MEAN, CLIP_STD)
            if cfg.parser:
                from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

                self.parser = from_pretrained_any(SegformerForSemanticSegmentation, cfg.parser, "parser")
                if self.parser.config.num_labels != NUM_CLASSES:
                    raise ConfigError(f"objective.consistency.parser: {cfg.parser} has {self.parser.config.num_labels} "
                                      f"classes, not the {NUM_CLASSES} CelebAMask-HQ ids the masks use")
                self.parser_stats = _processor_stats(cfg.parser, SegformerImageProcessor, 512, IMAGENET_MEAN,
                                                     IMAGENET_STD)
        except OSError as e:  # a folder that is not there, or a hub id while offline
            raise ConfigError(f"objective.consistency: cannot load a model: {str(e).splitlines()[0]}") from None
        for m in (self.vae, self.clip, self.parser):
            if m is not None:
                m.to(self.device).eval().requires_grad_(False)
        if grad_ckpt:
            self.vae.enable_gradient_checkpointing()
        self.last: dict[str, torch.Tensor] = {}  # the latest batch's terms (detached), for logging

    @torch.no_grad()
    def text_features(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.clip.config.text_config.max_position_embeddings)
        out = self.clip.text_model(input_ids=ids["input_ids"].to(self.device),
                                   attention_mask=ids["attention_mask"].to(self.device))
        return F.normalize(self.clip.text_projection(out.pooler_output).float(), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        size, mean, std = self.clip_stats
        out = self.clip.vision_model(pixel_values=_normalise(images, size, mean, std))
        return F.normalize(self.clip.visual_projection(out.pooler_output).float(), dim=-1)

    def parser_logits(self, images: torch.Tensor) -> torch.Tensor:
        size, mean, std = self.parser_stats
        return self.parser(pixel_values=_normalise(images, size, mean, std)).logits

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Training-scale latents -> images in about [-1, 1], differentiable in x."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(model_to_latent(x, self.vae_meta, self.convention).to(dtype)).sample

    def __call__(self, x0: torch.Tensor, noise_level: torch.Tensor, captions: list[str], label: torch.Tensor,
                 use_text: torch.Tensor, use_label: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's consistency loss: mean over all B samples of β (λ_clip L_clip + λ_parser L_parser).

        Args:
            x0: clean-latent estimates on the training scale (B, C, h, w), carrying the DiT's graph.
            noise_level: τ per sample in [0, 1] (B,).
            captions: the captions the samples were conditioned on.
            label: 19-class label maps at the image size (B, H, W).
            use_text: samples that get the CLIP term (B,) bool.
            use_label: samples that get the parser term (B,) bool.
            weight: β per sample instead of β(τ) (tests pass zeros).
        """
        cfg, b = self.cfg, x0.shape[0]
        w = beta(noise_level, cfg.gamma_s, cfg.t_c) if weight is None else weight.float()
        use_text = use_text.to(x0.device) & (self.clip is not None) & (cfg.lambda_clip > 0)
        use_label = use_label.to(x0.device) & (self.parser is not None) & (cfg.lambda_parser > 0)
        active = (w > cfg.min_beta) & (use_text | use_label)
        zero = x0.sum() * 0.0  # keeps the graph (DDP) and the dtype when nothing is active
        self.last = {"beta": w.mean().detach()}
        if not bool(active.any()):
            return zero
        idx = active.nonzero().squeeze(1)
        images = self.decode(x0[idx])
        per = torch.zeros(len(idx), device=x0.device)
        t_mask, l_mask = use_text[idx], use_label[idx]
        if bool(t_mask.any()):
            sel = t_mask.nonzero().squeeze(1)
            text = self.text_features([captions[int(i)] for i in idx[sel]])
            clip_term = 1 - (self.image_features(images[sel]) * text).sum(dim=-1)
            per = per.index_add(0, sel, cfg.lambda_clip * clip_term)
            self.last["clip"] = clip_term.mean().detach()
        if bool(l_mask.any()):
            sel = l_mask.nonzero().squeeze(1)
            parse_term = parser_loss(self.parser_logits(images[sel]), label.to(x0.device)[idx[sel]])
            per = per.index_add(0, sel, cfg.lambda_parser * parse_term)
            self.last["parser"] = parse_term.mean().detach()
        return zero + (w[idx] * per).sum() / b

    def bind(self, batch: dict) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The ``extra`` for ``objective.loss``: this batch's conditions, waiting for (x̂, τ)."""
        captions = list(batch["caption"])
        use_text = ~torch.as_tensor(batch["drop_text"]).bool() & torch.tensor([bool(c) for c in captions])
        use_label = torch.as_tensor(batch["has_label"]).bool() & torch.as_tensor(batch["has_cond"]).bool()
        label = torch.as_tensor(batch["label"])
        return lambda x0, tau: self(x0, tau, captions, label, use_text, use_label)

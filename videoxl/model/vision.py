"""Vision side: SigLIP tower (last layer dropped, no head, no post-norm), grid resize, DTS, projector, pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from .config import VideoXL2Config, VisionConfig
from .dts import DTS, group_frames


class VisionTower(nn.Module):
    """SigLIP encoder; returns the last remaining layer's hidden states as a (grid x grid) map per frame."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        # keys must read vision_tower.vision_model.* (the released layout), so the SigLIP model sits one level down
        self.vision_tower = nn.Module()
        self.vision_tower.vision_model = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            image_size=config.image_size, patch_size=config.patch_size, layer_norm_eps=config.layer_norm_eps,
            vision_use_head=False, attn_implementation="sdpa"))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalized frames -> (N, C, grid, grid)."""
        vm = self.vision_tower.vision_model
        x = vm.embeddings(pixels.to(vm.embeddings.patch_embedding.weight.dtype))
        x = vm.encoder(inputs_embeds=x).last_hidden_state  # (N, P*P, C), before the (unused) post-layernorm
        n, p2, c = x.shape
        p = self.config.patch_grid
        x = x.view(n, p, p, c).permute(0, 3, 1, 2)  # (N, C, P, P)
        g = self.config.grid
        if p != g:
            x = F.interpolate(x.float(), size=(g, g), mode="bilinear", align_corners=False).to(x.dtype)
        return x.contiguous()


class Projector(nn.Sequential):
    """mlp2x_gelu: Linear(vision -> llm), GELU, Linear(llm -> llm)."""

    def __init__(self, vision_hidden: int, llm_hidden: int):
        super().__init__(nn.Linear(vision_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))


class VisualEncoder(nn.Module):
    """Frames -> LLM-width visual tokens, one group of 4 frames at a time (tokens_per_group each)."""

    def __init__(self, config: VideoXL2Config):
        super().__init__()
        self.config = config
        self.vision_tower = VisionTower(config.vision)
        self.sae = DTS(config.vision.hidden_size, config.dts_max_relative)
        self.mm_projector = Projector(config.vision.hidden_size, config.llm.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(4G, 3, S, S) frames, 4 per group in order -> (G, tokens_per_group, llm_hidden)."""
        features = self.vision_tower(pixels)  # (4G, C, g, g)
        x = self.sae(group_frames(features)).squeeze(2)  # (G, C, g, g)
        g = self.config.vision.grid
        x = self.mm_projector(x.flatten(2).transpose(1, 2))  # (G, g*g, C) -> (G, g*g, D)
        s = self.config.pool_stride
        x = x.transpose(1, 2).reshape(x.shape[0], -1, g, g)  # (G, D, g, g)
        x = F.avg_pool2d(x, s)  # pooling after the projector, as the released code does
        return x.flatten(2).transpose(1, 2)  # (G, (g/s)^2, D), row-major

"""The training objective: next-token loss on the answer, with the chunk attention pattern in the forward pass."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..engine.pattern import chunk_mask
from ..model.videoxl2 import VideoXL2
from ..video.preprocess import preprocess
from .data import TrainSample


def answer_loss(model: VideoXL2, sample: TrainSample, chunk: int, window: int | None,
                rng: random.Random | None = None, random_positions: bool = False,
                caption_weight: float = 0.0) -> tuple[torch.Tensor, int]:
    """Cross-entropy of the answer (and its end token) given the video and question; returns (loss, tokens).

    With ``caption_weight``, every visual token also predicts what its group shows (``sample.group_targets``):
    a dense captioning loss that teaches the vision side and the LLM to read visual tokens long before the sparse
    answer signal alone would.
    """
    size = model.config.vision.image_size
    pixels = torch.stack([preprocess(f, size) for f in sample.frames]).to(model.device)
    visual = model.visual(pixels)  # (G, tokens_per_group, hidden)
    prompt = model.prompt_ids(sample.group_times, sample.question)
    answer = model._ids(sample.answer + "<|im_end|>")
    ids = torch.cat([prompt, answer])
    embeds = model.embed_prompt(ids, visual)
    prefix = model._prompt_prefix().numel()
    groups = [(model.timestamp_ids(t).numel(), model.config.tokens_per_group) for t in sample.group_times]
    tail = ids.numel() - prefix - sum(a + b for a, b in groups)
    mask = chunk_mask(prefix, groups, tail, chunk, window).to(model.device)
    n = ids.numel()
    if random_positions:
        # sorted distinct positions spread over up to 8x the length: long-range RoPE offsets from short clips
        rng = rng or random.Random()
        span = int(n * rng.uniform(1.0, 8.0))
        positions = torch.tensor(sorted(rng.sample(range(span), n)))
    else:
        positions = torch.arange(n)
    hidden = model.llm.model(inputs_embeds=embeds[None], attention_mask=mask[None, None],
                             position_ids=positions[None].to(model.device), use_cache=False).last_hidden_state[0]
    logits = model.llm.lm_head(hidden[n - answer.numel() - 1: n - 1])  # positions that predict the answer
    loss = F.cross_entropy(logits.float(), answer.to(model.device))
    if caption_weight and sample.group_targets:
        pad = model.tokenizer.convert_tokens_to_ids("<|vision_pad|>")
        slots = (ids == pad).nonzero().squeeze(1)
        targets = torch.tensor([model._ids(t)[0] for t in sample.group_targets])
        targets = targets.repeat_interleave(model.config.tokens_per_group)
        caption = F.cross_entropy(model.llm.lm_head(hidden[slots.to(model.device)]).float(), targets.to(model.device))
        loss = loss + caption_weight * caption
    return loss, n

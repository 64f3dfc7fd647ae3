"""Rotary position embedding applied to cached keys: moving keys to new (possibly fractional) positions.

Cached keys are stored already rotated at their own position. RoPE rotations compose, R(a) R(b) = R(a + b), so a
key rotated at p is moved to q by one rotation of (q - p). That serves both position modes of decoding (keep the
original positions, or re-index contiguously after compaction) and gives pooled sparse keys the mean position of
the tokens they summarize.
"""

from __future__ import annotations

import weakref

import torch

from ..errors import InputError


_of_model: "weakref.WeakKeyDictionary[torch.nn.Module, Rope]" = weakref.WeakKeyDictionary()


class Rope:
    """The rotation of one model (its inverse frequencies), in the half-split layout of Llama and Qwen2."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0):
        if attention_scaling != 1.0:
            raise InputError(
                f"RoPE variants that scale attention (attention_scaling={attention_scaling}) are not supported: "
                "cached keys could not be re-rotated exactly"
            )
        self.inv_freq = inv_freq.detach().double().cpu()
        self._identity = not bool(self.inv_freq.any())

    @classmethod
    def identity(cls) -> "Rope":
        """A rotation by zero angles: leaves keys and queries as they are."""
        return cls(torch.zeros(1))

    @classmethod
    def of(cls, model: torch.nn.Module) -> "Rope":
        """The model's rotation, read from its rotary embedding once per model (reading it back from a GPU waits
        for the device)."""
        rotary = model.model.rotary_emb
        rope = _of_model.get(rotary)
        if rope is None or rope.source is not rotary.inv_freq:
            rope = _of_model[rotary] = cls(rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0)))
            rope.source = rotary.inv_freq
        return rope

    @property
    def is_identity(self) -> bool:
        return self._identity

    def table(self, delta: torch.Tensor, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (T, D), of a rotation by ``delta`` (T,) positions; angles in float64 so large positions
        stay exact. Build it once and :meth:`apply` it to every layer."""
        if self.is_identity:
            t = delta.shape[0]
            return torch.ones(t, 1, device=device, dtype=dtype), torch.zeros(t, 1, device=device, dtype=dtype)
        angles = delta.detach().double().cpu()[:, None] * self.inv_freq[None, :]  # (T, D/2)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(device, dtype), angles.sin().to(device, dtype)

    @staticmethod
    def apply(x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate ``x`` (..., T, D) by a table from :meth:`table`."""
        cos, sin = table
        half = x.shape[-1] // 2
        rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated_half * sin

    def rotate(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (..., T, D) by ``delta`` (T,) positions (the identity returns ``x`` itself)."""
        if self.is_identity:
            return x
        return self.apply(x, self.table(delta, x.device, x.dtype))

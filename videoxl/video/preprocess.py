"""Frame preprocessing of the reference: plain bicubic resize to a square, scale 1/255, mean = std = 0.5."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = STD = 0.5


def preprocess(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """RGB image (PIL or H x W x 3 uint8 array) -> (3, size, size) float32 tensor, normalized."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frames must be H x W x 3 uint8 arrays, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (x - MEAN) / STD

"""Augmentation for small datasets (--augment): random flips, shifts and small rotations, one affine
map per image applied alike to the image and its mask, on whole batches (no per-image Python loop)."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def augment(x0: Tensor, mask: Tensor | None = None, max_shift: float = 0.0625, max_degrees: float = 10.0,
            flip: bool = True) -> tuple:
    """--augment: per image a random horizontal flip, shift (up to max_shift of the side) and rotation
    (up to max_degrees), one affine map applied alike to the image (bilinear, background -1 outside)
    and its mask (nearest, 0 outside). x0 (B, C, H, W) in [-1, 1], mask (B, 1, H, W) or None. Uses
    torch's global generator, which main.py seeds per epoch (so --resume draws the same)."""
    B = x0.shape[0]
    angle = (torch.rand(B) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(B, 2) * 2 - 1) * max_shift * 2  # affine_grid's coordinates span [-1, 1]: 2 per side
    sign = torch.where(torch.rand(B) < 0.5, -1.0, 1.0) if flip else torch.ones(B)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sign, -sin, shift[:, 0]], 1),
                         torch.stack([sin * sign, cos, shift[:, 1]], 1)], 1).to(x0)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x0.shape), align_corners=False)
    x = F.grid_sample(x0 + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    if mask is None:
        return x, None
    return x, F.grid_sample(mask, grid.to(mask.dtype), mode="nearest", padding_mode="zeros", align_corners=False)

"""What data.py and synthetic.py share, below both: the in-memory Dataset container and the pixel
mapping [0, 1] <-> [-1, 1] (Ho et al. Sec. 4: images are scaled to [-1, 1]). Every other room gets
its images in [-1, 1] from here and maps them back with unnormalize_to_zero_to_one."""
from typing import NamedTuple

from torch import Tensor


class Dataset(NamedTuple):
    images: Tensor              # (N, C, H, W) float in [-1, 1]; volumes (N, C, D, H, W)
    labels: Tensor | None       # (N,) long
    masks: Tensor | None        # (N, 1, H, W) float in {0, 1}; volumes (N, 1, D, H, W)


def normalize_to_neg_one_to_one(x: Tensor) -> Tensor:
    return x * 2 - 1


def unnormalize_to_zero_to_one(x: Tensor) -> Tensor:
    return ((x + 1) / 2).clamp(0, 1)

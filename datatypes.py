"""What data.py, synthetic.py, formats.py and the plumbing share, below them all: the in-memory Dataset container,
the pixel mapping [0, 1] <-> [-1, 1] (Ho et al. Sec. 4: images are scaled to [-1, 1]), and DataError, the one
exception for bad input (a missing, corrupt or inconsistent file, checkpoint or setting): the scripts report it
in one line (plumbing/errors.py)."""
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


class DataError(Exception):
    """A missing, corrupt or inconsistent input (file, checkpoint, setting); the message says how to fix it."""


def one_line(text: str, limit: int | None = None) -> str:
    """text on one line; if longer than limit, cut at a word boundary (never mid-word) with '...'."""
    text = " ".join(str(text).split())
    if limit is None or len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return cut.rstrip(",;:") + " ..."


def cause(e: BaseException) -> str:
    """A library exception's message, short (200 characters) and on one line, for a DataError's parentheses."""
    return one_line(str(e), 200) or type(e).__name__

"""Synthetic datasets, made in memory and deterministic given a seed, for offline runs and for
measuring what real data cannot: shapes (three labelled classes) and head phantoms with a lesion
mask: bright lesions (mask adherence can be scored), none (healthy) or hidden ones (anomaly.py)."""
import torch
from torch import Tensor

from datatypes import Dataset, normalize_to_neg_one_to_one


def grid_coordinates(size: int) -> tuple:
    """Pixel-centre coordinates in [0, 1], each (1, size, size)."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return xx[None], yy[None]


def ellipse(xx: Tensor, yy: Tensor, cx: Tensor, cy: Tensor, a: Tensor, b: Tensor, angle: Tensor) -> Tensor:
    """Boolean (N, H, W): inside the ellipse with centre (cx, cy), semi-axes a, b, rotated by angle."""
    cx, cy, a, b, angle = (v.view(-1, 1, 1) for v in (cx, cy, a, b, angle))
    u = (xx - cx) * angle.cos() + (yy - cy) * angle.sin()
    v = -(xx - cx) * angle.sin() + (yy - cy) * angle.cos()
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def make_shapes(n: int = 4096, size: int = 28, seed: int = 0) -> Dataset:
    """Synthetic offline dataset: one disc (label 0), square (1) or bar (2) per image, random
    position, size and brightness on black. Deterministic given the seed."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    xx, yy = grid_coordinates(size)
    labels = torch.randint(0, 3, (n,), generator=g)
    cx, cy, r = u(0.3, 0.7).view(-1, 1, 1), u(0.3, 0.7).view(-1, 1, 1), u(0.12, 0.25).view(-1, 1, 1)
    dx, dy = (xx - cx).abs(), (yy - cy).abs()
    vertical = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1)
    disc = dx ** 2 + dy ** 2 <= r ** 2
    square = torch.maximum(dx, dy) <= 0.85 * r
    bar = torch.where(vertical, (dx <= 0.3 * r) & (dy <= 1.4 * r), (dy <= 0.3 * r) & (dx <= 1.4 * r))
    inside = torch.where(labels.view(-1, 1, 1) == 0, disc, torch.where(labels.view(-1, 1, 1) == 1, square, bar))
    x01 = inside.float() * u(0.6, 1.0).view(-1, 1, 1)
    return Dataset(normalize_to_neg_one_to_one(x01[:, None]), labels, None)


PHANTOM_LESION, PHANTOM_SKULL, PHANTOM_BRAIN, PHANTOM_VENTRICLE = 1.0, 0.6, 0.35, 0.1


def make_phantom(n: int = 2048, size: int = 64, seed: int = 0, lesion: str = "bright") -> Dataset:
    """Synthetic head phantoms in the spirit of Shepp & Logan (1974): a skull ring, brain tissue,
    two dark ventricles and, unless lesion="none", one lesion inside the brain, whose binary mask
    is returned. Deterministic given the seed. lesion:
    - "bright": the lesion is the only region brighter than 0.8 in [0, 1] (COND's mask Dice);
    - "none": healthy anatomy only (--dataset phantom-healthy, the anomaly detector's training set);
    - "hidden": the lesion has an intensity healthy anatomy also has, skull-bright or ventricle-dark
      (half each), so no threshold finds it (--dataset phantom-anomaly). Its mask is the pixels that
      differ from the same head without it (a dark lesion over a ventricle changes nothing there)."""
    if lesion not in ("bright", "none", "hidden"):
        raise ValueError(f"lesion must be bright, none or hidden, got {lesion!r}")
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    xx, yy = grid_coordinates(size)
    cx, cy, a, b, tilt = u(0.47, 0.53), u(0.47, 0.53), u(0.36, 0.44), u(0.30, 0.36), u(-0.3, 0.3)
    head = ellipse(xx, yy, cx, cy, a, b, tilt)
    brain = ellipse(xx, yy, cx, cy, 0.88 * a, 0.86 * b, tilt)
    x01 = PHANTOM_SKULL * head.float()
    x01[brain] = PHANTOM_BRAIN
    for side in (-1, 1):  # ventricles, left and right of the centre
        v = ellipse(xx, yy, cx + side * u(0.05, 0.09), cy + u(-0.04, 0.04), u(0.03, 0.05), u(0.07, 0.11), tilt)
        x01[v] = PHANTOM_VENTRICLE
    if lesion == "none":
        return Dataset(normalize_to_neg_one_to_one(x01[:, None]), None, None)
    radius, angle = u(0.0, 0.5), u(0.0, 6.2832)  # lesion centre inside the brain's inner half
    lx, ly = cx + radius * 0.8 * a * angle.cos(), cy + radius * 0.8 * b * angle.sin()
    region = ellipse(xx, yy, lx, ly, u(0.05, 0.11), u(0.05, 0.11), u(0.0, 3.1416)) & brain
    if lesion == "bright":
        x01[region] = PHANTOM_LESION
        return Dataset(normalize_to_neg_one_to_one(x01[:, None]), None, region[:, None].float())
    value = torch.where(torch.rand(n, generator=g) < 0.5, PHANTOM_SKULL, PHANTOM_VENTRICLE).view(-1, 1, 1)
    scan = torch.where(region, value, x01)
    return Dataset(normalize_to_neg_one_to_one(scan[:, None]), None, (scan != x01)[:, None].float())


def ellipsoid(size: int, cx: Tensor, cy: Tensor, cz: Tensor, a: Tensor, b: Tensor, c: Tensor,
              tilt: Tensor) -> Tensor:
    """Boolean (N, D, H, W) on a size^3 grid of voxel centres in [0, 1]: inside the ellipsoid with centre
    (cx, cy, cz) and semi-axes a, b, c (x, y, z), turned by tilt about the z axis (the slice normal)."""
    g = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    zz, yy, xx = (v[None] for v in torch.meshgrid(g, g, g, indexing="ij"))
    cx, cy, cz, a, b, c, tilt = (v.view(-1, 1, 1, 1) for v in (cx, cy, cz, a, b, c, tilt))
    u = (xx - cx) * tilt.cos() + (yy - cy) * tilt.sin()
    v = -(xx - cx) * tilt.sin() + (yy - cy) * tilt.cos()
    return (u / a) ** 2 + (v / b) ** 2 + ((zz - cz) / c) ** 2 <= 1


def make_phantom3d(n: int = 512, size: int = 32, seed: int = 0, lesion: str = "bright") -> Dataset:
    """make_phantom in three dimensions: head volumes (N, 1, D, H, W) with an ellipsoidal skull shell,
    brain tissue, two dark ventricles and, unless lesion="none", one ellipsoidal lesion in the brain with
    its 3D mask. lesion "bright", "none" and "hidden" mean what they mean for make_phantom."""
    if lesion not in ("bright", "none", "hidden"):
        raise ValueError(f"lesion must be bright, none or hidden, got {lesion!r}")
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    cx, cy, cz, tilt = u(0.47, 0.53), u(0.47, 0.53), u(0.47, 0.53), u(-0.3, 0.3)
    a, b, c = u(0.36, 0.44), u(0.30, 0.36), u(0.32, 0.40)
    head = ellipsoid(size, cx, cy, cz, a, b, c, tilt)
    brain = ellipsoid(size, cx, cy, cz, 0.86 * a, 0.84 * b, 0.84 * c, tilt)
    x01 = PHANTOM_SKULL * head.float()
    x01[brain] = PHANTOM_BRAIN
    for side in (-1, 1):  # ventricles, left and right of the centre
        v = ellipsoid(size, cx + side * u(0.05, 0.09), cy + u(-0.04, 0.04), cz + u(-0.04, 0.04), u(0.04, 0.06),
                      u(0.08, 0.12), u(0.06, 0.09), tilt)
        x01[v] = PHANTOM_VENTRICLE
    if lesion == "none":
        return Dataset(normalize_to_neg_one_to_one(x01[:, None]), None, None)
    radius, angle, height = u(0.0, 0.5), u(0.0, 6.2832), u(-0.4, 0.4)  # centre in the brain's inner half
    lx, ly, lz = cx + radius * 0.8 * a * angle.cos(), cy + radius * 0.8 * b * angle.sin(), cz + height * c
    region = ellipsoid(size, lx, ly, lz, u(0.07, 0.13), u(0.07, 0.13), u(0.07, 0.13), u(0.0, 3.1416)) & brain
    if lesion == "bright":
        x01[region] = PHANTOM_LESION
        return Dataset(normalize_to_neg_one_to_one(x01[:, None]), None, region[:, None].float())
    value = torch.where(torch.rand(n, generator=g) < 0.5, PHANTOM_SKULL, PHANTOM_VENTRICLE).view(-1, 1, 1, 1)
    scan = torch.where(region, value, x01)
    return Dataset(normalize_to_neg_one_to_one(scan[:, None]), None, (scan != x01)[:, None].float())


def head_region(x: Tensor) -> Tensor:
    """Boolean: the pixels inside a phantom's head (the background is exactly -1, every tissue above it)."""
    return x > -1 + 0.05

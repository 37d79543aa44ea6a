"""The figures a run writes into contents_<MODEL>/: sample grids, the forward process made
visible, loss curves and mask-conditioned triplets. Inputs are tensors in [-1, 1] unless said."""
import csv
import json
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image

from data import unnormalize_to_zero_to_one


def save_atomic(write, path: str) -> None:
    """Run write(tmp_path), then rename onto path: an interrupted run never leaves half a file."""
    tmp = f"{path}.tmp{os.path.splitext(path)[1]}"
    write(tmp)
    os.replace(tmp, path)


def save_grid(x: Tensor, path: str, nrow: int = 8) -> None:
    """Images (N, C, H, W) in [-1, 1] as one PNG grid, mapped back to [0, 1]."""
    save_atomic(lambda p: save_image(unnormalize_to_zero_to_one(x.float().cpu()), p, nrow=nrow), path)


def class_grid_labels(num_classes: int, per_row: int = 8) -> Tensor:
    """Labels 0,0,..,1,1,.. so that a grid with nrow=per_row has one row per class."""
    return torch.arange(num_classes).repeat_interleave(per_row)


@torch.no_grad()
def forward_diffusion_grid(model, x0: Tensor, generator=None, columns: int = 11) -> Tensor:
    """Ho et al. eq. (4) made visible: (B, columns, C, H, W), image b at paper t = 0, T/10, ..., T
    (t = 0 is x0 itself), the noise from model.noise_like (Gaussian, or Gamma for DDGM)."""
    B, T = x0.shape[0], model.T
    cols = [x0]
    for j in range(1, columns):
        t = torch.full((B,), round(j * T / (columns - 1)) - 1, dtype=torch.long, device=x0.device)
        cols.append(model.q_sample(x0, t, model.noise_like(x0, t, generator)))
    return torch.stack(cols, dim=1)


def save_forward_diffusion(model, x0: Tensor, path: str, generator=None, columns: int = 11) -> None:
    """One row per training image x0 (B, C, H, W), one column per timestep."""
    save_grid(forward_diffusion_grid(model, x0, generator, columns).flatten(0, 1), path, nrow=columns)


def mask_triplets(x: Tensor, masks: Tensor) -> Tensor:
    """For samples x (N, C, H, W) in [-1, 1] and masks (N, 1, H, W) in {0, 1}: (3N, 3, H, W) in
    [-1, 1] ordered mask | generated image | image with the mask outline in red."""
    image = x.clamp(-1, 1).expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.clamp(-1, 1)
    eroded = -F.max_pool2d(-masks, 3, stride=1, padding=1)
    outline = (masks - eroded) > 0.5                             # (N, 1, H, W)
    red = torch.tensor([1.0, -1.0, -1.0], device=x.device).view(1, 3, 1, 1)
    overlay = torch.where(outline, red, image)
    return torch.stack([(masks * 2 - 1).expand(-1, 3, -1, -1), image, overlay], dim=1).flatten(0, 1)


def write_json(obj, path: str) -> None:
    def write(p):
        with open(p, "w") as f:
            json.dump(obj, f, indent=2)
    save_atomic(write, path)


def write_loss_csv(losses: list, path: str) -> None:
    """losses: [(step, epoch, loss)] as step,epoch,loss rows."""
    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "epoch", "loss"])
            w.writerows(losses)
    save_atomic(write, path)


def write_metrics_csv(rows: list, path: str) -> None:
    """rows: list of dicts, one per epoch, written with the union of their keys as header."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    save_atomic(write, path)


def save_loss_curve(losses: list, path: str, ylabel: str = "loss") -> None:
    """Per-step loss (thin) and per-epoch mean (dots), log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps, _, values = zip(*losses)
    ends, sums, counts = {}, {}, {}                               # per epoch: last step, sum, count
    for s, e, v in losses:
        ends[e], sums[e], counts[e] = s, sums.get(e, 0.0) + v, counts.get(e, 0) + 1
    means = {e: sums[e] / counts[e] for e in ends}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, values, lw=0.6, alpha=0.6, label="per step")
    ax.plot([ends[e] for e in ends], [means[e] for e in ends], "o-", label="epoch mean")
    ax.set(xlabel="training step", ylabel=ylabel, yscale="log", title="training loss")
    ax.legend()
    fig.tight_layout()
    save_atomic(lambda p: fig.savefig(p, dpi=100), path)
    plt.close(fig)

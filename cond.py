"""Conditional DDPM: class labels with classifier-free guidance (Ho & Salimans 2022,
arXiv:2207.12598) and segmentation masks concatenated to the network input.

The diffusion process is DDPM's (ddpm.py). Only two things differ:
- training (Ho & Salimans Alg. 1) replaces the label by the null class with probability p_uncond,
  so one network learns both eps(x_t, t, c) and eps(x_t, t) = eps(x_t, t, null);
- sampling (Alg. 2, eq. 6) uses the guided prediction (1 + w) eps(x_t, t, c) - w eps(x_t, t).
A mask condition needs neither: it is concatenated to x_t inside the network (unet.py),
never noised, and passed unchanged to every call.
"""
import torch
from torch import Tensor, nn

from ddpm import DDPM, SCHEDULES


def guided_eps(eps_cond: Tensor, eps_uncond: Tensor, w: float) -> Tensor:
    """Ho & Salimans eq. (6): eps_tilde = (1 + w) eps(x_t, t, c) - w eps(x_t, t). w = 0: plain conditional."""
    return (1 + w) * eps_cond - w * eps_uncond


class ConditionalDDPM(DDPM):
    """DDPM whose network takes y (class labels, num_classes = null) and/or mask.
    p_uncond: label-drop probability in training; guidance_scale: w in eq. (6)."""
    conditions = ("class", "mask")
    conditional = True
    options = ("min_snr", "p_uncond", "guidance")

    @classmethod
    def from_config(cls, net: nn.Module, config: dict) -> "ConditionalDDPM":
        beta = SCHEDULES[config["schedule"]](config["n_T"], tuple(config["betas"]))
        return cls(net, beta, num_classes=config["num_classes"], p_uncond=config["p_uncond"],
                   guidance_scale=config["guidance"], clip_x0=config.get("clip_x0", False),
                   min_snr_gamma=config.get("min_snr") or 0.0)

    def __init__(self, net: nn.Module, beta: Tensor, num_classes: int = 0, p_uncond: float = 0.1,
                 guidance_scale: float = 2.0, sigma2: str = "beta", clip_x0: bool = False, min_snr_gamma: float = 0.0):
        super().__init__(net, beta, sigma2, clip_x0, min_snr_gamma)
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        if guidance_scale < 0:
            raise ValueError(f"guidance scale w must be >= 0, got {guidance_scale}")
        self.num_classes, self.p_uncond, self.guidance_scale = num_classes, p_uncond, guidance_scale

    def draws(self, x0: Tensor, y: Tensor | None = None, **cond) -> dict:
        """DDPM's t and eps for the whole batch, and which labels are dropped (see loss)."""
        drop = {} if y is None else {"drop": torch.rand(y.shape, device=y.device) < self.p_uncond}
        return {**drop, **super().draws(x0)}

    def loss(self, x0: Tensor, t: Tensor | None = None, eps: Tensor | None = None, y: Tensor | None = None,
             mask: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        """Ho & Salimans Alg. 1: with probability p_uncond, c <- null (drop, drawn here unless given, as t and
        eps are); then DDPM's Algorithm 1."""
        if y is not None:
            if drop is None:
                drop = torch.rand(y.shape, device=y.device) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return super().loss(x0, t, eps, y=y, mask=mask)

    def predict_eps(self, x_t: Tensor, t: Tensor, y: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Guided eps (eq. 6) when labels are given; the two predictions share one batched call."""
        if y is None or self.guidance_scale == 0:
            return self.net(x_t, t, y=y, mask=mask)
        null = torch.full_like(y, self.num_classes)
        two = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731
        eps_cond, eps_uncond = self.net(two(x_t), two(t), y=torch.cat([y, null]), mask=two(mask)).chunk(2)
        return guided_eps(eps_cond, eps_uncond, self.guidance_scale)

"""Denoising Diffusion Gamma Models: Nachmani, San Roman & Wolf 2021, arXiv:2110.05948.

DDPM (ddpm.py) with the Gaussian noise replaced by centred Gamma noise; the beta schedule,
the network, q_sample, the reverse step and the training loop are DDPM's. Symbols:

  forward step    x_t = sqrt(alpha_t) x_{t-1} + (g_t - k_t theta_t),   g_t ~ Gamma(k_t, theta_t)
  scale, shape    theta_t = sqrt(alpha_bar_t) theta_0,   k_t = beta_t / (alpha_bar_t theta_0^2)
                  so Var(g_t) = k_t theta_t^2 = beta_t: DDPM's variance schedule. (Some
                  summaries write alpha_t for alpha_bar_t in k_t; then the variance is not beta_t.)
  closed form     x_t = sqrt(alpha_bar_t) x_0 + (gbar_t - kbar_t theta_t),  gbar_t ~ Gamma(kbar_t, theta_t)
                  kbar_t = sum_{i<=t} k_i = (1 / alpha_bar_t - 1) / theta_0^2 (telescoping sum),
                  because the scaled steps sqrt(alpha_bar_t / alpha_bar_i) g_i all share scale theta_t.
  noise shape     Var = kbar_t theta_t^2 = 1 - alpha_bar_t for every theta_0; skewness 2 / sqrt(kbar_t).
                  theta_0 sets only how skewed the noise is: small theta_0 -> nearly Gaussian.

Choices made here, where sources differ or are silent:
- Training (Alg. 1) regresses the normalised noise eps = (gbar_t - kbar_t theta_t) / sqrt(1 - alpha_bar_t)
  with squared L2 by default (the authors' image code and the coursework; as DDPM, so the two
  compare); the paper's text uses L1, available as loss_type="l1".
- Sampling (Alg. 2) starts from x_T = gbar_T - kbar_T theta_T and replaces DDPM's z by the
  normalised centred draw of that step, z = (g_t - k_t theta_t) / sqrt(beta_t), with
  sigma_t^2 = beta_t and no noise at the last step.
- DDIM (Song et al. 2021) is derived for Gaussian q(x_t | x_0); no Gamma analogue is implemented
  here, so DDGM samples with Algorithm 2 only (samplers).
- Precision: k, theta, kbar and the Gamma draws are float64 (kbar_T theta_T is about 1.6e5 for
  theta_0 = 1e-3, T = 1000; centring it in float32 would quantise the noise); cast only at the end.
"""
import math

import torch
from torch import Tensor, nn

from ddpm import DDPM, SCHEDULES
from process import extract


class DDGM(DDPM):
    """DDPM with Gamma noise. theta_0 > 0 (default 0.001); loss_type "l2" (default) or "l1" (the paper's)."""
    samplers = ("ddpm",)          # Algorithm 2 only: DDIM's eq. (12) is derived for Gaussian noise
    options = ("theta0", "loss")  # no min-SNR weighting: its loss is the paper's

    @classmethod
    def from_config(cls, net: nn.Module, config: dict) -> "DDGM":
        beta = SCHEDULES[config["schedule"]](config["n_T"], tuple(config["betas"]))
        return cls(net, beta, theta_0=config["theta0"], loss_type=config["loss"], clip_x0=config.get("clip_x0", False))

    @property
    def loss_name(self) -> str:
        return "L1 loss" if self.loss_type == "l1" else "MSE loss"

    def __init__(self, net: nn.Module, beta: Tensor, theta_0: float = 0.001,
                 loss_type: str = "l2", sigma2: str = "beta", clip_x0: bool = False):
        super().__init__(net, beta, sigma2, clip_x0)
        if not theta_0 > 0:
            raise ValueError(f"theta_0 must be > 0, got {theta_0}")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got {loss_type!r}")
        self.theta_0, self.loss_type = theta_0, loss_type
        beta = beta.double()
        alpha_bar = torch.cumprod(1 - beta, dim=0)
        self.register_buffer("theta", alpha_bar.sqrt() * theta_0)            # theta_t
        self.register_buffer("k", beta / (alpha_bar * theta_0 ** 2))         # k_t
        self.register_buffer("k_bar", torch.cumsum(self.k, dim=0))           # kbar_t
        self.check_representable()

    def check_representable(self) -> None:
        """Refuse theta_0 and T whose Gamma noise float64 cannot draw: below shape k_t = 1e-4 the draws
        underflow into a few subnormal values (100,000 draws of Gamma(1e-6) hold 59 distinct values, of
        Gamma(1e-4) about 7,000), and kbar_T above 1e24 makes the centred draw gbar - kbar theta lose
        all its digits (std / mean = 1 / sqrt(kbar) < 1e-12: every x_T the same)."""
        k_min, k_bar_T = self.k.min().item(), self.k_bar[-1].item()
        if not (math.isfinite(k_bar_T) and k_min >= 1e-4 and k_bar_T <= 1e24):
            raise ValueError(f"DDGM cannot represent its Gamma noise in float64 for theta_0={self.theta_0:g} and "
                             f"this schedule (smallest shape k_t={k_min:.3g}, kbar_T={k_bar_T:.3g}; needs k_t >= 1e-4 "
                             "and kbar_T <= 1e24): use theta_0 in about 1e-5..1, or a smaller T or beta_T")

    def noise_like(self, x: Tensor, t: Tensor, generator=None, step: bool = False) -> Tensor:
        """Normalised centred Gamma noise shaped like x, for timestep indices t (B,).
        step=False: (gbar_t - kbar_t theta_t) / sqrt(1 - alpha_bar_t), gbar_t ~ Gamma(kbar_t, theta_t);
        step=True:  (g_t - k_t theta_t) / sqrt(beta_t),                 g_t ~ Gamma(k_t, theta_t).
        Both have mean 0 and variance 1 (sqrt(k theta^2) is the exact std); drawn in float64."""
        k = extract(self.k if step else self.k_bar, t, x).expand(x.shape).contiguous()
        theta = extract(self.theta, t, x)
        g = torch._standard_gamma(k, generator=generator) * theta           # g ~ Gamma(k, theta)
        return ((g - k * theta) / (k.sqrt() * theta)).to(x.dtype)

    def x_T_like(self, x: Tensor, generator=None) -> Tensor:
        """DDGM Alg. 2 line 1: x_T = gbar_T - kbar_T theta_T (std sqrt(1 - alpha_bar_T))."""
        t = torch.full((x.shape[0],), self.T - 1, device=x.device, dtype=torch.long)
        return (1 - self.alpha_bar[-1]).sqrt() * self.noise_like(x, t, generator)

    def per_image_loss(self, eps_hat: Tensor, eps: Tensor) -> Tensor:
        """DDGM Alg. 1: || eps - eps_theta(x_t, t) || per image (B,), with L2 (default) or the paper's L1."""
        diff = (eps - eps_hat).flatten(1)
        return diff.abs().mean(1) if self.loss_type == "l1" else diff.square().mean(1)

"""EDM: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", arXiv:2206.00364. The image y is noised as x = y + sigma n, and the network is wrapped so that it is
well conditioned at every noise level ("preconditioning"); sampling is Heun's second-order method on the
probability-flow ODE. Symbols (the paper's; sigma_data 0.5, the std of images in [-1, 1] that they assume):

  denoiser       D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)             (eq. 7)
  Table 1        c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),   c_in = 1 / sqrt(sigma^2 + sigma_data^2),
                 c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),   c_noise = ln(sigma) / 4
  training       ln sigma ~ N(P_mean, P_std^2), P_mean = -1.2, P_std = 1.2  (Table 1)
  loss           lambda(sigma) || D(y + sigma n; sigma) - y ||^2 with lambda = 1 / c_out^2 (eq. 2, Table 1), which
                 is || F(c_in x; c_noise) - (y - c_skip x) / c_out ||^2 with weight 1 (eq. 8)
  sampler        dx/dsigma = (x - D(x; sigma)) / sigma, Heun's method (Algorithm 1) on the steps
                 sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, sigma_N = 0
                 (eq. 5), sigma_min 0.002, sigma_max 80, rho 7

On this repo's grid (process.py) the T noise levels are eq. (5)'s sigmas for N = T in increasing order: index 0
is sigma_min, index T - 1 sigma_max, so that anomaly maps, RePaint and the reverse figures find their levels
as for DDPM; a sampler of N steps visits N of them, evenly spaced (process.timesteps), which is eq. (5) for N.
Training draws sigma off the grid from the log-normal. Departure: c_noise is ln(sigma) stretched affinely onto
0..T-1 (c_noise_index), the range unet.py's sinusoidal embedding was built for; an affine map of ln(sigma) is
what Table 1's ln(sigma) / 4 is too, only at the scale of the paper's own network.
"""
import math

import torch
from torch import Tensor, nn

from process import Process, extract, per_sample

SIGMA_DATA, SIGMA_MIN, SIGMA_MAX, RHO = 0.5, 0.002, 80.0, 7.0  # Table 1 and Sec. 3
P_MEAN, P_STD = -1.2, 1.2                                       # Table 1, training


def karras_sigmas(N: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> Tensor:
    """Eq. (5): sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, evenly spaced in sigma^(1/rho). (N,) float64."""
    i = torch.arange(N, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + i / (N - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


class EDM(Process):
    """Karras et al.'s preconditioned denoiser around a network net(c_in x, c_noise) = F, on eq. (5)'s grid."""
    samplers = ("heun", "euler")  # Algorithm 1; Euler is the same without its correction
    conditions = ("mask",)        # --cond mask: the mask concatenated to the input, as for COND (no guidance)
    loss_name = "MSE loss (EDM, weighted)"

    @classmethod
    def from_config(cls, net: nn.Module, config: dict) -> "EDM":
        return cls(net, config["n_T"], clip_x0=config.get("clip_x0", False))

    def __init__(self, net: nn.Module, T: int, clip_x0: bool = False, sigma_data: float = SIGMA_DATA):
        super().__init__(net, T, clip_x0)
        self.sigma_data = sigma_data
        self.register_buffer("sigma", karras_sigmas(T).flip(0).float())  # index i: increasing noise

    def c_noise_index(self, sigma: Tensor) -> Tensor:
        """Table 1's c_noise, ln(sigma) up to an affine map, put on the grid's scale: 0 at sigma_min, T - 1 at
        sigma_max (a float: training's sigmas fall between and beyond the grid's)."""
        return (sigma.log() - math.log(SIGMA_MIN)) / (math.log(SIGMA_MAX) - math.log(SIGMA_MIN)) * (self.T - 1)

    def preconditioning(self, sigma: Tensor) -> tuple:
        """Table 1: (c_skip, c_out, c_in) of sigma: one level for the whole batch (a 0-dim tensor, as the samplers
        pass), or one per sample shaped (B, 1, ..., 1) to broadcast on x (as training draws them)."""
        sd, root = self.sigma_data, (sigma ** 2 + self.sigma_data ** 2).sqrt()
        return sd ** 2 / root ** 2, sigma * sd / root, 1 / root

    def denoise(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        """Eq. (7): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise). sigma: as for preconditioning."""
        c_skip, c_out, c_in = self.preconditioning(sigma)
        return c_skip * x + c_out * self.net(c_in * x, self.c_noise_index(sigma).flatten().expand(len(x)), **cond)

    def x_T_like(self, x: Tensor, generator=None) -> Tensor:
        """Algorithm 1 line 1: x_0 ~ N(0, sigma_max^2 I) (the paper's step 0 is this repo's index T - 1)."""
        return self.sigma[-1] * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x = y + sigma_t n at grid index t (Sec. 2)."""
        return x0 + extract(self.sigma, t, x0) * eps

    def q_step(self, x_prev: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """One level up the grid, from index t - 1 to t, with the marginals of q_sample: + sqrt(sigma_t^2 -
        sigma_{t-1}^2) z (RePaint)."""
        return x_prev + (extract(self.sigma, t, x_prev) ** 2 - extract(self.sigma, t - 1, x_prev) ** 2).sqrt() * z

    def draws(self, x0: Tensor, **cond) -> dict:
        """Table 1's training noise for a batch: ln sigma ~ N(P_mean, P_std^2), one sigma per sample shaped
        (B, 1, ..., 1) to broadcast on x0, and n ~ N(0, I)."""
        sigma = per_sample((P_MEAN + P_STD * torch.randn(len(x0), device=x0.device)).exp(), x0)
        return {"sigma": sigma, "eps": torch.randn_like(x0)}

    def loss(self, x0: Tensor, sigma: Tensor | None = None, eps: Tensor | None = None, **cond) -> Tensor:
        """Eq. (8) with Table 1's lambda = 1 / c_out^2: || F(c_in x; c_noise) - (y - c_skip x) / c_out ||^2, the mean
        over the batch, x = y + sigma n (x0 is the paper's y). sigma (B, 1, ..., 1), eps: drawn here (draws) unless
        given."""
        if sigma is None:
            drawn = self.draws(x0)
            sigma, eps = drawn["sigma"], drawn["eps"]
        x = x0 + sigma * eps
        c_skip, c_out, c_in = self.preconditioning(sigma)
        F_hat = self.net(c_in * x, self.c_noise_index(sigma).flatten(), **cond)
        return self.per_image_loss(F_hat, (x0 - c_skip * x) / c_out).mean()

    def D(self, x: Tensor, i: int, **cond) -> Tensor:
        """The denoised estimate at grid index i, clipped to [-1, 1] when the model samples with clipped x0."""
        x0_hat = self.denoise(x, self.sigma[i], **cond)
        return x0_hat.clamp(-1, 1) if self.clip_x0 else x0_hat

    def reverse_step(self, x_t: Tensor, t: Tensor, generator=None, **cond) -> Tensor:
        """One Euler step down the grid, from index t to t - 1 (sigma 0 below index 0): RePaint walks with it."""
        i = int(t[0])
        sigma, sigma_next = self.sigma[i], self.sigma[i - 1] if i > 0 else 0.0
        return x_t + (sigma_next - sigma) * (x_t - self.D(x_t, i, **cond)) / sigma

    @torch.no_grad()
    def heun_sample(self, n: int, shape: tuple, *, steps: int, generator=None, x_start: Tensor | None = None,
                    t_start: int | None = None, on_step=None, second_order: bool = True, **cond) -> Tensor:
        """Algorithm 1 (deterministic Heun): from x ~ N(0, sigma_max^2) (or x_start at index t_start) through
        `steps` levels of the grid (eq. 5 for N = steps), then to sigma = 0. on_step(i, x, x0_hat) at each level."""
        x, top = self.start(n, shape, generator, x_start, t_start)
        levels = self.timesteps(steps, top)
        for j, i in enumerate(levels):
            sigma = self.sigma[i]
            sigma_next = self.sigma[levels[j + 1]] if j + 1 < len(levels) else sigma.new_zeros(())
            x0_hat = self.D(x, i, **cond)
            if on_step is not None:
                on_step(i, x, x0_hat)
            d = (x - x0_hat) / sigma                                                    # line 4
            x_next = x + (sigma_next - sigma) * d                                       # line 5: Euler
            if second_order and j + 1 < len(levels):                                    # line 6: sigma_{i+1} != 0
                d_next = (x_next - self.D(x_next, levels[j + 1], **cond)) / sigma_next  # line 7
                x_next = x + (sigma_next - sigma) * (d + d_next) / 2                    # line 8: the trapezoid
            x = x_next
        return x

    def euler_sample(self, n: int, shape: tuple, *, steps: int, **kwargs) -> Tensor:
        """Euler's method on the same ODE: Algorithm 1 without its second-order correction (lines 6-8)."""
        return self.heun_sample(n, shape, steps=steps, second_order=False, **kwargs)

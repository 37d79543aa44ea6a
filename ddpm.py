"""Denoising Diffusion Probabilistic Models: Ho, Jain & Abbeel 2020, arXiv:2006.11239.

Everything the paper defines lives here: the beta schedules, the closed-form forward process q(x_t | x_0)
(eq. 4), the training objective (Algorithm 1, with process.py's loss), ancestral sampling (Algorithm 2) and,
next to it, DDIM sampling (Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12 and 16), which draws from the
same trained network in far fewer steps. The network is any net(x_t, t) from unet.py, predicting eps.
Index i of every schedule tensor holds the paper's timestep t = i + 1 (process.py): beta[0] is beta_1.
"""
import math

import torch
from torch import Tensor, nn

from process import Process, extract, per_sample


def linear_beta_schedule(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> Tensor:
    """Ho et al. Sec. 4: beta_t linear from beta_1 to beta_T. Returns (T,) float64."""
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def cosine_beta_schedule(T: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal 2021 (arXiv:2102.09672) eq. (17): alpha_bar_t = f(t) / f(0),
    f(t) = cos^2(pi/2 (t/T + s) / (1 + s)); beta_t = 1 - alpha_bar_t / alpha_bar_{t-1},
    clipped at 0.999. Returns (T,) float64."""
    steps = torch.arange(T + 1, dtype=torch.float64)  # paper t = 0..T
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    beta = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return beta.clamp(max=0.999)


# Schedules by name: f(T, (beta_1, beta_T)) -> beta (T,) float64. A new one is a function and a line here.
SCHEDULES = {
    "linear": lambda T, betas: linear_beta_schedule(T, *betas),
    "cosine": lambda T, betas: cosine_beta_schedule(T),  # defined by alpha_bar: the betas are not used
}


class DDPM(Process):
    """The Gaussian diffusion process around a noise-prediction network net(x_t, t).

    beta: (T,) schedule. sigma2: "beta" (sigma_t^2 = beta_t) or "beta_tilde" (eq. 7), the two choices of
    Sec. 3.2. clip_x0: sample as the authors' released code does (clip_eps). min_snr_gamma > 0: weight the
    loss by min_snr_weight (not in Ho et al.). Subclasses change the noise (noise_like, x_T_like), the loss
    (per_image_loss, target) or the network call (predict_eps), nothing else.
    """
    samplers = ("ddim", "ddpm", "euler")  # DDIM first: the per-epoch samples' default
    options = ("min_snr",)
    has_beta_schedule = True

    @classmethod
    def from_config(cls, net: nn.Module, config: dict) -> "DDPM":
        """The process a run's config describes (main.py's settings, or a checkpoint's)."""
        beta = SCHEDULES[config["schedule"]](config["n_T"], tuple(config["betas"]))
        return cls(net, beta, clip_x0=config.get("clip_x0", False), min_snr_gamma=config.get("min_snr") or 0.0)

    def __init__(self, net: nn.Module, beta: Tensor, sigma2: str = "beta", clip_x0: bool = False,
                 min_snr_gamma: float = 0.0):
        if sigma2 not in ("beta", "beta_tilde"):
            raise ValueError(f"sigma2 must be 'beta' or 'beta_tilde', got {sigma2!r}")
        if not (beta.dim() == 1 and len(beta) >= 2 and 0 < beta.min() and beta.max() < 1):
            raise ValueError("beta must be a 1-D schedule of at least 2 values in (0, 1)")
        super().__init__(net, len(beta), clip_x0)
        self.min_snr_gamma = min_snr_gamma
        beta = beta.double()
        alpha = 1 - beta                                   # alpha_t = 1 - beta_t
        alpha_bar = torch.cumprod(alpha, dim=0)            # alpha_bar_t = prod_{s<=t} alpha_s
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])  # alpha_bar_0 = 1
        beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta  # eq. (7)
        self.register_buffer("beta", beta.float())
        self.register_buffer("alpha", alpha.float())
        self.register_buffer("alpha_bar", alpha_bar.float())
        self.register_buffer("sigma2", (beta if sigma2 == "beta" else beta_tilde).float())

    def q_step(self, x_prev: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """Eq. (2), one forward step: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, z = noise_like(step=True)."""
        beta = extract(self.beta, t, x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * z

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Eq. (4): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps. x0: (B, C, H, W) or (B, C, D, H, W)."""
        alpha_bar = extract(self.alpha_bar, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """What the network regresses (Alg. 1 line 5): the noise eps itself (vpred.py: v; flow.py: a velocity)."""
        return eps

    def loss_weight(self, t: Tensor) -> Tensor | float:
        """min_snr_weight when min_snr_gamma > 0, else 1: eq. (14), L_simple."""
        return self.min_snr_weight(t) if self.min_snr_gamma else 1.0

    def min_snr_weight(self, t: Tensor) -> Tensor:
        """Min-SNR-gamma weighting for the eps loss (Hang et al. 2023, arXiv:2303.09556, Sec. 3.4):
        w_t = min(SNR(t), gamma) / SNR(t), SNR(t) = alpha_bar_t / (1 - alpha_bar_t). Steps with little
        noise (SNR above gamma) count less, so training spends itself where samples are decided."""
        snr = self.alpha_bar[t] / (1 - self.alpha_bar[t])
        return snr.clamp(max=self.min_snr_gamma) / snr

    def p_sample_step(self, x_t: Tensor, t: Tensor, eps_hat: Tensor, z: Tensor) -> Tensor:
        """Alg. 2 line 4: x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat)
        + sigma_t z, with z ignored at the last step (paper t = 1, index 0)."""
        alpha, beta, alpha_bar = (extract(a, t, x_t) for a in (self.alpha, self.beta, self.alpha_bar))
        mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps_hat) / alpha.sqrt()
        sigma = extract(self.sigma2, t, x_t).sqrt() * per_sample(t > 0, x_t)  # no z at the last step
        return mean + sigma * z

    def predict_x0(self, x_t: Tensor, t: Tensor, eps_hat: Tensor) -> Tensor:
        """Eq. (15): x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), the network's
        current estimate of x_0 (Song et al. eq. 12 calls it the "predicted x_0")."""
        alpha_bar = extract(self.alpha_bar, t, x_t)
        return (x_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()

    def clip_eps(self, x_t: Tensor, t: Tensor, eps_hat: Tensor) -> Tensor:
        """Not in Alg. 2, but in the authors' released sampler: clip x0_hat (eq. 15) to [-1, 1] and return
        the eps that matches it; line 4 then yields the posterior mean mu_tilde(x_t, x0) of eq. (7)."""
        alpha_bar = extract(self.alpha_bar, t, x_t)
        x0 = self.predict_x0(x_t, t, eps_hat).clamp(-1, 1)
        return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    def eps_for_sampling(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """predict_eps, then clip_eps when the model samples with clipped x0 (both samplers call this)."""
        eps_hat = self.predict_eps(x_t, t, **cond)
        return self.clip_eps(x_t, t, eps_hat) if self.clip_x0 else eps_hat

    def predict_eps(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """eps_theta(x_t, t): the network's noise prediction used by sampling."""
        return self.net(x_t, t, **cond)

    def reverse_step(self, x_t: Tensor, t: Tensor, generator=None, **cond) -> Tensor:
        """Alg. 2 lines 3-4, one step from index t to t - 1 (RePaint walks the grid with it)."""
        z = self.noise_like(x_t, t, generator, step=True)
        return self.p_sample_step(x_t, t, self.eps_for_sampling(x_t, t, **cond), z=z)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple, *, generator=None, x_start: Tensor | None = None,
               t_start: int | None = None, on_step=None, **cond) -> Tensor:
        """Algorithm 2: n samples of shape (C, H, W), returned (n, C, H, W) in about [-1, 1].
        x_start, t_start: run only lines 2-5 from t = t_start + 1 down to 1, starting from x_start.
        on_step(i, x_t, x0_hat), if given, sees every step (sample.py --reverse draws the reverse process)."""
        x_t, top = self.start(n, shape, generator, x_start, t_start)                  # line 1
        for i in reversed(range(top + 1)):
            t = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)  # line 2: t = T..1
            z = self.noise_like(x_t, t, generator, step=True)                       # line 3
            eps_hat = self.eps_for_sampling(x_t, t, **cond)
            if on_step is not None:
                on_step(i, x_t, self.predict_x0(x_t, t, eps_hat))
            x_t = self.p_sample_step(x_t, t, eps_hat, z=z)                             # line 4
        return x_t                                                                  # line 6: x_0

    def ddim_step(self, x_t: Tensor, t: Tensor, t_prev: int, eps_hat: Tensor, z: Tensor, eta: float) -> Tensor:
        """Song et al. eq. (12), from index t to index t_prev < t (-1 means x_0, alpha_bar_0 = 1):
        x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z, with a = alpha_bar
        and eq. (16): sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)."""
        a_t = extract(self.alpha_bar, t, x_t)
        a_prev = self.alpha_bar[t_prev] if t_prev >= 0 else self.alpha_bar.new_tensor(1.0)
        x0_hat = self.predict_x0(x_t, t, eps_hat)                                 # "predicted x_0"
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()  # eq. (16)
        direction = (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps_hat       # "direction pointing to x_t"
        return a_prev.sqrt() * x0_hat + direction + sigma * z                      # eq. (12)

    @torch.no_grad()
    def ddim_sample(self, n: int, shape: tuple, *, steps: int, eta: float = 0.0, generator=None,
                    x_start: Tensor | None = None, t_start: int | None = None, on_step=None, **cond) -> Tensor:
        """DDIM (Song et al. Sec. 4): n samples (n, C, H, W) through `steps` timesteps tau of 1..T, evenly spaced
        from paper t = T down to t = 1 (Sec. 4.2; process.timesteps). eta = 0: deterministic given x_T;
        eta = 1: the DDPM posterior variance. x_start, t_start, on_step: as in sample()."""
        x_t, top = self.start(n, shape, generator, x_start, t_start)
        tau = self.timesteps(steps, top)
        for j, i in enumerate(tau):
            t = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)
            eps_hat = self.eps_for_sampling(x_t, t, **cond)
            if on_step is not None:
                on_step(i, x_t, self.predict_x0(x_t, t, eps_hat))
            z = self.noise_like(x_t, t, generator, step=True) if eta > 0 else torch.zeros_like(x_t)
            x_t = self.ddim_step(x_t, t, tau[j + 1] if j + 1 < len(tau) else -1, eps_hat=eps_hat, z=z, eta=eta)
        return x_t

    def euler_sample(self, n: int, shape: tuple, *, steps: int, **kwargs) -> Tensor:
        """Euler's method on the probability-flow ODE, which for this process is DDIM with eta = 0: Song et al.
        Sec. 4.3 show eq. (12) to be Euler's step on dx_bar = eps_theta(x_bar / sqrt(sigma^2 + 1)) dsigma
        (eq. 14), with x_bar = x / sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
        return self.ddim_sample(n, shape, steps=steps, eta=0.0, **kwargs)

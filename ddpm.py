"""Denoising Diffusion Probabilistic Models: Ho, Jain & Abbeel 2020, arXiv:2006.11239.

Everything the paper defines lives here: the beta schedules, the closed-form forward
process q(x_t | x_0) (eq. 4), the training objective (Algorithm 1), ancestral sampling (Algorithm 2) and, next to
it, DDIM sampling (Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12 and 16), which draws from
the same trained network in far fewer steps. The network is any eps_model(x_t, t) from unet.py.

Timestep convention, used everywhere in this repo: the schedule tensors have length T and
index i holds the paper's timestep t = i + 1. So beta[0] is beta_1, alpha_bar[T - 1] is
alpha_bar_T, and a LongTensor t of indices in {0, ..., T - 1} means paper steps 1..T.
The network receives the same index.
"""
import math

import torch
from torch import Tensor, nn

from plumbing.progress import Progress


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


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """One value per sample, v (B,), shaped (B, 1, ..., 1) to broadcast on x: images (B, C, H, W) or
    volumes (B, C, D, H, W) alike, by x's own rank."""
    return v.view(-1, *[1] * (x.dim() - 1))


def extract(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """a[t] for a (T,) schedule and (B,) indices, per_sample on x."""
    return per_sample(a[t], x)


def repaint_times(T: int, jump_length: int, jump_count: int) -> list:
    """RePaint's resampling schedule (Lugmayr et al. 2022, Sec. 4.2), as the paper times visited from T
    down to 0: each block of jump_length steps down is walked jump_count times, going back up by the
    forward process (eq. 2) between walks; the last block (ending at t = 0) is walked once.
    jump_count = 1 is plain Algorithm 2's T, T - 1, ..., 0."""
    times, t = [T], T
    while t > 0:
        low = max(t - jump_length, 0)
        for walk in range(jump_count):
            times += range(t - 1, low - 1, -1)  # down: t - 1, ..., low
            if walk == jump_count - 1 or low == 0:
                break
            times += range(low + 1, t + 1)  # back up: low + 1, ..., t
        t = low
    return times


class DDPM(nn.Module):
    """The Gaussian diffusion process around a noise-prediction network eps_model(x_t, t).

    beta: (T,) schedule. sigma2: "beta" (sigma_t^2 = beta_t) or "beta_tilde" (eq. 7),
    the two choices of Sec. 3.2. clip_x0: sample as the authors' released code does (clip_eps).
    Subclasses change the noise (noise_like, x_T_like), the loss (eps_loss) or the network
    call (predict_eps), nothing else.
    """
    # What the scripts ask of a process (models.PROCESSES), so that none of them tests a process's name:
    samplers = None            # the names in SAMPLERS it can draw with (None: every one)
    conditions = ()            # what its network may be conditioned on (--cond): "class", "mask"
    conditional = False        # True: conditioned by default (on the labels, else the masks)
    options = ("min_snr",)     # the command-line settings of its loss and noise it takes
    loss_name = "MSE loss"     # what loss_curve.png calls its loss
    schedule = True            # it takes a beta schedule (--schedule, --betas; schedules.png)

    @classmethod
    def from_config(cls, eps_model: nn.Module, beta: Tensor, config: dict) -> "DDPM":
        """The process a run's config describes (main.py's settings, or a checkpoint's)."""
        return cls(eps_model, beta, clip_x0=config.get("clip_x0", False), min_snr_gamma=config.get("min_snr", 0.0))

    def __init__(self, eps_model: nn.Module, beta: Tensor, sigma2: str = "beta", clip_x0: bool = False,
                 min_snr_gamma: float = 0.0):
        super().__init__()
        if sigma2 not in ("beta", "beta_tilde"):
            raise ValueError(f"sigma2 must be 'beta' or 'beta_tilde', got {sigma2!r}")
        if not (beta.dim() == 1 and len(beta) >= 2 and 0 < beta.min() and beta.max() < 1):
            raise ValueError("beta must be a 1-D schedule of at least 2 values in (0, 1)")
        self.eps_model, self.clip_x0 = eps_model, clip_x0
        self.min_snr_gamma = min_snr_gamma  # > 0: weight the loss by min_snr_weight (not in Ho et al.)
        beta = beta.double()
        alpha = 1 - beta                                   # alpha_t = 1 - beta_t
        alpha_bar = torch.cumprod(alpha, dim=0)            # alpha_bar_t = prod_{s<=t} alpha_s
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])  # alpha_bar_0 = 1
        beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta  # eq. (7)
        self.register_buffer("beta", beta.float())
        self.register_buffer("alpha", alpha.float())
        self.register_buffer("alpha_bar", alpha_bar.float())
        self.register_buffer("sigma2", (beta if sigma2 == "beta" else beta_tilde).float())

    @property
    def T(self) -> int:
        return len(self.beta)

    def noise_like(self, x: Tensor, t: Tensor, generator=None, step: bool = False) -> Tensor:
        """The noise of the process, shaped like x, for timestep indices t (B,).
        step=False: eps of q(x_t | x_0), eq. (4) (also used for x_T); step=True: the z of one
        reverse step, Alg. 2 line 3. Here both are N(0, I); DDGM makes them Gamma."""
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def q_step(self, x_prev: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """Eq. (2), one forward step: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, z = noise_like(step=True)."""
        beta = extract(self.beta, t, x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * z

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Eq. (4): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps. x0: (B, C, H, W) or (B, C, D, H, W)."""
        alpha_bar = extract(self.alpha_bar, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps

    def eps_loss(self, eps_hat: Tensor, eps: Tensor) -> Tensor:
        """Alg. 1 line 5 (eq. 14, L_simple): || eps - eps_theta(x_t, t) ||^2 per image, the mean over its
        pixels: (B,). loss() weights it per image (min-SNR) and averages over the batch."""
        return ((eps - eps_hat) ** 2).flatten(1).mean(1)

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """What the network regresses (Alg. 1 line 5): the noise eps itself (vpred.py: v; flow.py: a velocity)."""
        return eps

    def draws(self, x0: Tensor, **cond) -> dict:
        """Alg. 1 lines 3-4 for a whole batch x0: t ~ Uniform({1, ..., T}) (as indices 0..T-1) and
        eps = noise_like. loss() calls it when it is given no t; under torchrun, plumbing/run.py calls it for the
        whole batch and gives each process its rows, so that the processes together train as one."""
        t = torch.randint(0, self.T, (x0.shape[0],), device=x0.device)             # line 3
        return {"t": t, "eps": self.noise_like(x0, t)}                               # line 4

    def loss(self, x0: Tensor, t: Tensor | None = None, eps: Tensor | None = None, **cond) -> Tensor:
        """Algorithm 1 for a batch x0 (B, C, H, W) in [-1, 1]: the mean over the batch of L_simple (eq. 14),
        each image weighted by min_snr_weight when min_snr_gamma > 0. t, eps: lines 3-4, both drawn here
        (draws) unless both are given. cond goes to the network."""
        if t is None:
            drawn = self.draws(x0)                                                   # lines 3-4
            t, eps = drawn["t"], drawn["eps"]
        x_t = self.q_sample(x0, t, eps)
        per_image = self.eps_loss(self.eps_model(x_t, t, **cond), self.target(x0, t, eps))  # line 5
        if self.min_snr_gamma:
            per_image = self.min_snr_weight(t) * per_image
        return per_image.mean()

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
        return self.eps_model(x_t, t, **cond)

    def x_T_like(self, x: Tensor, generator=None) -> Tensor:
        """Alg. 2 line 1: x_T ~ N(0, I)."""
        t = torch.full((x.shape[0],), self.T - 1, device=x.device, dtype=torch.long)
        return self.noise_like(x, t, generator)

    def start(self, n: int, shape: tuple, generator=None, x_start: Tensor | None = None,
              t_start: int | None = None) -> tuple:
        """Where the reverse process begins: x_T ~ N(0, I) at index T - 1 (Alg. 2 line 1), or a given
        x_t at index t_start (partial reverse: SDEdit, Meng et al. 2021; AnoDDPM, Wyatt et al. 2022)."""
        if x_start is None:
            return self.x_T_like(torch.empty((n, *shape), device=self.beta.device), generator), self.T - 1
        if t_start is None or not 0 <= t_start < self.T:
            raise ValueError(f"starting from a given x_t needs 0 <= t_start < T = {self.T}, got {t_start}")
        return x_start, t_start

    @torch.no_grad()
    def sample(self, n: int, shape: tuple, generator=None, x_start: Tensor | None = None,
               t_start: int | None = None, on_step=None, **cond) -> Tensor:
        """Algorithm 2: n samples of shape (C, H, W), returned (n, C, H, W) in about [-1, 1].
        x_start, t_start: run only lines 2-5 from t = t_start + 1 down to 1, starting from x_start.
        on_step(i, x_t, x0_hat), if given, sees every step (sample.py --reverse draws the reverse process)."""
        x_t, top = self.start(n, shape, generator, x_start, t_start)                  # line 1
        n, device = x_t.shape[0], x_t.device
        for i in reversed(range(top + 1)):
            t = torch.full((n,), i, device=device, dtype=torch.long)                # line 2: t = T..1
            z = self.noise_like(x_t, t, generator, step=True)                       # line 3
            eps_hat = self.eps_for_sampling(x_t, t, **cond)
            if on_step is not None:
                on_step(i, x_t, self.predict_x0(x_t, t, eps_hat))
            x_t = self.p_sample_step(x_t, t, eps_hat, z)                             # line 4
        return x_t                                                                  # line 6: x_0

    @torch.no_grad()
    def inpaint(self, x0: Tensor, keep: Tensor, jump_length: int = 10, jump_count: int = 10, generator=None,
                progress: bool = False, **cond) -> Tensor:
        """RePaint (Lugmayr et al. 2022, arXiv:2201.09865), Algorithm 1 with the schedule of repaint_times:
        regenerate x0 (B, C, H, W) where keep (B, 1, H, W) is 0 and keep it where keep is 1. Each reverse
        step joins the known pixels, noised to t - 1 by eq. (4), with Algorithm 2's step for the rest;
        each step back up is eq. (2). At t = 0 the known pixels are x0 itself."""
        x_t = self.x_T_like(x0, generator)                                              # line 1: x_T
        times = repaint_times(self.T, jump_length, jump_count)
        B, device = x0.shape[0], x0.device
        for t_now, t_next in Progress(zip(times, times[1:]), len(times) - 1, "inpainting (RePaint)", "steps",
                                      show=progress):
            if t_next > t_now:                                                           # line 10: back up
                t = torch.full((B,), t_next - 1, device=device, dtype=torch.long)      # index of paper t_next
                x_t = self.q_step(x_t, t, self.noise_like(x_t, t, generator, step=True))  # eq. (2)
                continue
            t = torch.full((B,), t_now - 1, device=device, dtype=torch.long)           # index of paper t_now
            if t_now > 1:                                                                # lines 4-5
                known = self.q_sample(x0, t - 1, self.noise_like(x0, t - 1, generator))  # x_{t-1} ~ q, eq. (4)
            else:
                known = x0
            z = self.noise_like(x_t, t, generator, step=True)                            # line 6
            unknown = self.p_sample_step(x_t, t, self.eps_for_sampling(x_t, t, **cond), z)  # line 7 (Alg. 2)
            x_t = keep * known + (1 - keep) * unknown                                    # line 8
        return x_t

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

    def ddim_timesteps(self, steps: int, top: int | None = None) -> list:
        """Song et al. Sec. 4.2, "linear" tau: `steps` indices evenly spaced from top (default T - 1,
        paper t = T) down to 0 (paper t = 1)."""
        top = self.T - 1 if top is None else top
        return torch.linspace(top, 0, steps).round().long().unique_consecutive().tolist()

    @torch.no_grad()
    def ddim_sample(self, n: int, shape: tuple, steps: int, eta: float = 0.0, generator=None,
                    x_start: Tensor | None = None, t_start: int | None = None, on_step=None, **cond) -> Tensor:
        """DDIM (Song et al. Sec. 4): n samples (n, C, H, W) through `steps` timesteps tau of 1..T,
        evenly spaced from paper t = T down to t = 1 (Sec. 4.2). eta = 0: deterministic given x_T;
        eta = 1: the DDPM posterior variance. x_start, t_start, on_step: as in sample()."""
        x_t, top = self.start(n, shape, generator, x_start, t_start)
        if not 1 <= steps <= top + 1:
            raise ValueError(f"DDIM needs 1 <= steps <= {top + 1} (the timesteps to go), got {steps}")
        n, device = x_t.shape[0], x_t.device
        tau = self.ddim_timesteps(steps, top)
        for j, i in enumerate(tau):
            t = torch.full((n,), i, device=device, dtype=torch.long)
            eps_hat = self.eps_for_sampling(x_t, t, **cond)
            if on_step is not None:
                on_step(i, x_t, self.predict_x0(x_t, t, eps_hat))
            z = self.noise_like(x_t, t, generator, step=True) if eta > 0 else torch.zeros_like(x_t)
            x_t = self.ddim_step(x_t, t, tau[j + 1] if j + 1 < len(tau) else -1, eps_hat, z, eta)
        return x_t

    def euler_sample(self, n: int, shape: tuple, steps: int, generator=None, x_start: Tensor | None = None,
                     t_start: int | None = None, on_step=None, **cond) -> Tensor:
        """Euler's method on the probability-flow ODE, which for this process is DDIM with eta = 0: Song et al.
        Sec. 4.3 show eq. (12) to be Euler's step on dx_bar = eps_theta(x_bar / sqrt(sigma^2 + 1)) dsigma
        (eq. 14), with x_bar = x / sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
        return self.ddim_sample(n, shape, steps, 0.0, generator, x_start, t_start, on_step, **cond)


# Samplers share one contract, which every script honours (main.py, sample.py --reverse, anomaly.py):
#   f(model, n, shape, *, steps, eta, generator, x_start=None, t_start=None, on_step=None, **cond) -> x_0
# n samples (n, *shape) in about [-1, 1]; steps, eta: DDIM's (a sampler may ignore them); x_start, t_start:
# start from a given x_t at index t_start instead of x_T (anomaly.py); on_step(i, x_t, x0_hat) at every
# timestep index i visited; cond: the network's conditions (y, mask) only. A new one is a function and a line
# in SAMPLERS.

def ancestral(model: DDPM, n: int, shape: tuple, *, steps: int = 50, eta: float = 0.0, generator=None,
              x_start: Tensor | None = None, t_start: int | None = None, on_step=None, **cond) -> Tensor:
    """Algorithm 2 (DDPM.sample), every step from T (or t_start); steps and eta are DDIM's, unused here."""
    return model.sample(n, shape, generator, x_start, t_start, on_step, **cond)


def ddim(model: DDPM, n: int, shape: tuple, *, steps: int = 50, eta: float = 0.0, generator=None,
         x_start: Tensor | None = None, t_start: int | None = None, on_step=None, **cond) -> Tensor:
    """DDIM (DDPM.ddim_sample, Song et al. eq. 12 and 16) in `steps` steps (at most those left) with eta."""
    top = model.T - 1 if t_start is None else t_start
    return model.ddim_sample(n, shape, min(steps, top + 1), eta, generator, x_start, t_start, on_step, **cond)


def euler(model: DDPM, n: int, shape: tuple, *, steps: int = 50, eta: float = 0.0, generator=None,
          x_start: Tensor | None = None, t_start: int | None = None, on_step=None, **cond) -> Tensor:
    """Euler's method on the process's ODE in `steps` steps (model.euler_sample): flow matching's own sampler
    (flow.py), and DDIM with eta = 0 for DDPM; eta is unused."""
    top = model.T - 1 if t_start is None else t_start
    return model.euler_sample(n, shape, min(steps, top + 1), generator, x_start, t_start, on_step, **cond)


SAMPLERS = {"ddim": ddim, "ddpm": ancestral, "euler": euler}

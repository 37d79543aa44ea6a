"""Flow matching on the straight path (rectified flow): Liu, Gong & Liu 2022, arXiv:2209.03003 ("Flow Straight
and Fast"), and Lipman et al. 2023, arXiv:2210.02747 ("Flow Matching for Generative Modeling", Sec. 4.1, the
optimal-transport path with sigma_min = 0).

Time runs as in the rest of this repo: data at t = 0, noise at t = 1 (the papers put the data at t = 1; the
equations are the same with t -> 1 - t). Symbols:

  path          x_t = (1 - t) x_0 + t eps,  eps ~ N(0, I)        (Liu et al. eq. 1; Lipman et al. eq. 20)
  velocity      u = dx_t / dt = eps - x_0                         (the target; Liu et al. eq. 1, Lipman eq. 21)
  loss          || u - v_theta(x_t, t) ||^2, t uniform            (Liu et al. eq. 1; Lipman et al. eq. 23)
  sampler       x_{t - h} = x_t - h v_theta(x_t, t), from x_1 = eps down to t = 0   (Euler's method on
                dx/dt = v_theta(x, t); Liu et al. Sec. 2, "simulated with Euler's method")
  estimates     x0_hat = x_t - t v_hat,  eps_hat = x_t + (1 - t) v_hat   (both from x_t = (1 - t) x_0 + t eps)

No beta schedule: x_t is a straight line between the image and its noise. Times are the T points
t = i / T, i = 1..T, stored as indices i - 1 = 0..T-1 as everywhere here, and the network receives that
index, as DDPM's does. (For this path one Euler step is also DDIM's eq. 12 with eta = 0: x_{t-h} =
(1 - t + h) x0_hat + (t - h) eps_hat, the same line.)
"""
import torch
from torch import Tensor, nn

from ddpm import DDPM, per_sample, repaint_times
from plumbing.progress import Progress


class FlowMatching(DDPM):
    """The straight-path flow around a velocity network eps_model(x_t, t) -> v (eps_model: DDPM's network slot).
    Only len(beta) is used: the number T of times on the grid."""
    samplers = ("euler",)      # Euler's method on dx/dt = v; Algorithm 2 and DDIM are DDPM's Gaussian steps
    conditions = ("mask",)     # --cond mask: the mask concatenated to x_t, as for COND (no guidance)
    options = ()               # no min-SNR: the loss is the papers' plain regression of u
    schedule = False           # no beta schedule: --schedule and --betas do not apply
    loss_name = "MSE loss (velocity)"

    @classmethod
    def from_config(cls, eps_model: nn.Module, beta: Tensor, config: dict) -> "FlowMatching":
        return cls(eps_model, beta, clip_x0=config.get("clip_x0", False))

    def time(self, t: Tensor, x: Tensor) -> Tensor:
        """The path's time in (0, 1] of index t (B,): (t + 1) / T, shaped to broadcast on x."""
        return per_sample((t + 1).to(x.dtype) / self.T, x)

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The path: x_t = (1 - t) x_0 + t eps (Liu et al. eq. 1, with time reversed)."""
        s = self.time(t, x0)
        return (1 - s) * x0 + s * eps

    def q_step(self, x_prev: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """One step up the path, from the time of index t - 1 to that of t, with the same marginals as q_sample:
        x_t = (1 - t) / (1 - t') x_t' + sqrt(t^2 - ((1 - t) t' / (1 - t'))^2) z, t' the time before (RePaint)."""
        s, s_prev = self.time(t, x_prev), self.time(t - 1, x_prev)
        a = (1 - s) / (1 - s_prev)
        return a * x_prev + (s ** 2 - (a * s_prev) ** 2).clamp(min=0).sqrt() * z

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The velocity of the path, u = dx_t / dt = eps - x_0 (Lipman et al. eq. 21 with sigma_min = 0)."""
        return eps - x0

    def predict_eps(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """eps_hat = x_t + (1 - t) v_hat: the noise the network's velocity implies (anomaly maps, figures)."""
        return x_t + (1 - self.time(t, x_t)) * self.eps_model(x_t, t, **cond)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps_hat: Tensor) -> Tensor:
        """x0_hat = (x_t - t eps_hat) / (1 - t), from the path; undefined at t = 1 (the Euler sampler uses
        x0_hat = x_t - t v_hat instead, which is defined everywhere)."""
        s = self.time(t, x_t)
        return (x_t - s * eps_hat) / (1 - s)

    def min_snr_weight(self, t: Tensor) -> Tensor:
        raise ValueError("flow matching takes no min-SNR weighting: its loss is the plain regression of u")

    @torch.no_grad()
    def euler_sample(self, n: int, shape: tuple, steps: int, generator=None, x_start: Tensor | None = None,
                     t_start: int | None = None, on_step=None, **cond) -> Tensor:
        """Euler's method on dx/dt = v_theta(x, t) from x_1 = eps (or x_start at index t_start) to t = 0, in
        `steps` steps between times evenly spaced (DDPM.ddim_timesteps, then t = 0). With clip_x0 (as DDPM's
        sampler clips), the step is taken from x0_hat clipped to [-1, 1]: x_{t-h} = (1 - t + h) x0_hat + (t - h)
        eps_hat, which is Euler's step itself wherever nothing is clipped, and ends in [-1, 1].
        on_step(i, x_t, x0_hat) sees every step, with x0_hat = x_t - t v_hat."""
        x_t, top = self.start(n, shape, generator, x_start, t_start)
        if not 1 <= steps <= top + 1:
            raise ValueError(f"Euler needs 1 <= steps <= {top + 1} (the times to go), got {steps}")
        grid = self.ddim_timesteps(steps, top)
        for j, i in enumerate(grid):
            t = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)
            v_hat = self.eps_model(x_t, t, **cond)
            s = (i + 1) / self.T
            s_next = (grid[j + 1] + 1) / self.T if j + 1 < len(grid) else 0.0
            x0_hat = x_t - s * v_hat
            if on_step is not None:
                on_step(i, x_t, x0_hat)
            if self.clip_x0:
                eps_hat = x_t + (1 - s) * v_hat
                x_t = (1 - s_next) * x0_hat.clamp(-1, 1) + s_next * eps_hat  # the same line, from a clipped x0_hat
            else:
                x_t = x_t + (s_next - s) * v_hat                              # Euler: x_{t-h} = x_t - h v
        return x_t

    @torch.no_grad()
    def inpaint(self, x0: Tensor, keep: Tensor, jump_length: int = 10, jump_count: int = 10, generator=None,
                progress: bool = False, **cond) -> Tensor:
        """RePaint's scheme (Lugmayr et al. 2022, Alg. 1 and repaint_times) on the straight path: each step down
        joins the known pixels put on the path at the next time (q_sample) with an Euler step for the rest;
        each step back up is q_step. One network call per step, on the grid t = i / T."""
        x_t = self.x_T_like(x0, generator)                                          # x_1 = eps
        times = repaint_times(self.T, jump_length, jump_count)
        B, device = x0.shape[0], x0.device
        for t_now, t_next in Progress(zip(times, times[1:]), len(times) - 1, "inpainting (RePaint, Euler)", "steps",
                                      show=progress):
            if t_next > t_now:                                                       # back up the path
                t = torch.full((B,), t_next - 1, device=device, dtype=torch.long)
                x_t = self.q_step(x_t, t, self.noise_like(x_t, t, generator, step=True))
                continue
            t = torch.full((B,), t_now - 1, device=device, dtype=torch.long)
            known = self.q_sample(x0, t - 1, self.noise_like(x0, t, generator)) if t_now > 1 else x0
            unknown = x_t - self.eps_model(x_t, t, **cond) / self.T                  # Euler, h = 1 / T
            x_t = keep * known + (1 - keep) * unknown
        return x_t

    def sample(self, *args, **kwargs):
        """Refused: Algorithm 2 is the Gaussian reverse step of DDPM; the flow samples with Euler's method."""
        raise ValueError("Algorithm 2 is DDPM's Gaussian reverse step, not the flow's: use --sampler euler")

    def ddim_sample(self, *args, **kwargs):
        """Refused as a name: on the straight path DDIM (eta = 0) is Euler's method; use that."""
        raise ValueError("the flow samples with Euler's method (which is DDIM's eta = 0 step on this path): "
                         "use --sampler euler")

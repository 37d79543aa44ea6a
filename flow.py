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
t = i / T, i = 1..T, stored as indices i - 1 = 0..T-1 as everywhere here (process.py), and the network
receives that index, as DDPM's does. RePaint (process.py) walks the path with reverse_step and q_step.
(For this path one Euler step is also DDIM's eq. 12 with eta = 0: x_{t-h} = (1 - t + h) x0_hat +
(t - h) eps_hat, the same line.)
"""
import torch
from torch import Tensor, nn

from process import Process, per_sample


class FlowMatching(Process):
    """The straight-path flow around a velocity network net(x_t, t) -> v, on the grid t = i / T, i = 1..T."""
    samplers = ("euler",)      # Euler's method on dx/dt = v
    conditions = ("mask",)     # --cond mask: the mask concatenated to x_t, as for COND (no guidance)
    loss_name = "MSE loss (velocity)"

    @classmethod
    def from_config(cls, net: nn.Module, config: dict) -> "FlowMatching":
        return cls(net, config["n_T"], clip_x0=config.get("clip_x0", False))

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
        """eps_hat = x_t + (1 - t) v_hat: the noise the network's velocity implies."""
        return x_t + (1 - self.time(t, x_t)) * self.net(x_t, t, **cond)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps_hat: Tensor) -> Tensor:
        """x0_hat = (x_t - t eps_hat) / (1 - t), from the path; undefined at t = 1 (the Euler sampler uses
        x0_hat = x_t - t v_hat instead, which is defined everywhere)."""
        s = self.time(t, x_t)
        return (x_t - s * eps_hat) / (1 - s)

    def reverse_step(self, x_t: Tensor, t: Tensor, generator=None, **cond) -> Tensor:
        """One Euler step down the grid, h = 1 / T: x_{t-h} = x_t - h v_theta(x_t, t) (RePaint walks with it)."""
        return x_t - self.net(x_t, t, **cond) / self.T

    @torch.no_grad()
    def euler_sample(self, n: int, shape: tuple, *, steps: int, generator=None, x_start: Tensor | None = None,
                     t_start: int | None = None, on_step=None, **cond) -> Tensor:
        """Euler's method on dx/dt = v_theta(x, t) from x_1 = eps (or x_start at index t_start) to t = 0, in
        `steps` steps between times evenly spaced (process.timesteps, then t = 0). With clip_x0 (as DDPM's
        sampler clips), the step is taken from x0_hat clipped to [-1, 1]: x_{t-h} = (1 - t + h) x0_hat + (t - h)
        eps_hat, which is Euler's step itself wherever nothing is clipped, and ends in [-1, 1].
        on_step(i, x_t, x0_hat) sees every step, with x0_hat = x_t - t v_hat."""
        x_t, top = self.start(n, shape, generator, x_start, t_start)
        grid = self.timesteps(steps, top)
        for j, i in enumerate(grid):
            t = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)
            v_hat = self.net(x_t, t, **cond)
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

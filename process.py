"""What every process here shares; ddpm.py, flow.py and edm.py each extend it with what their paper changes.

A process is a network net(x_t, t, **cond) and a grid of T noise levels. Timestep convention, used everywhere
in this repo: index i = 0..T-1 runs from the least noise to the most and holds the paper's timestep t = i + 1
(so DDPM's alpha_bar[T - 1] is alpha_bar_T); a LongTensor t of indices means paper steps 1..T, and the network
receives the same index. Training is Algorithm 1's shape (Ho et al. 2020, arXiv:2006.11239): draw t and the
noise, corrupt x_0 (q_sample), regress what the process names (target). Sampling starts at x_T, or at a given
x_t (start); RePaint (inpaint) walks the grid down and back up with the process's own steps.
"""
import torch
from torch import Tensor, nn


class Process(nn.Module):
    """The part of a diffusion process that does not depend on its paper. Subclasses define q_sample, target,
    q_step (one step up the grid) and reverse_step (one step down), and their samplers."""
    # What the scripts ask of a process (models.PROCESSES), so that none of them tests a process's name:
    samplers = ()              # the names in models.SAMPLERS it draws with; the first is its default
    conditions = ()            # what its network may be conditioned on (--cond): "class", "mask"
    conditional = False        # conditioned by default (on the labels, else the masks)
    options = ()               # the command-line settings of its loss it takes (e.g. "min_snr")
    loss_name = "MSE loss"     # what loss_curve.png calls its loss
    has_beta_schedule = False  # --schedule and --betas apply to it (and schedules.png shows them)

    def __init__(self, net: nn.Module, T: int, clip_x0: bool = False):
        super().__init__()
        self.net, self.T, self.clip_x0 = net, T, clip_x0

    @property
    def device(self) -> torch.device:
        return next(iter([*self.parameters(), *self.buffers()]), torch.empty(0)).device

    def noise_like(self, x: Tensor, t: Tensor, generator=None, step: bool = False) -> Tensor:
        """The noise of the process shaped like x, for indices t (B,): eps of q_sample (step=False) or the z of
        one step (step=True). N(0, I) here; DDGM makes both Gamma."""
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def x_T_like(self, x: Tensor, generator=None) -> Tensor:
        """Where the reverse process begins (Alg. 2 line 1): x_T ~ N(0, I)."""
        t = torch.full((x.shape[0],), self.T - 1, device=x.device, dtype=torch.long)
        return self.noise_like(x, t, generator)

    def draws(self, x0: Tensor, **cond) -> dict:
        """Alg. 1 lines 3-4 for a whole batch x0: t ~ Uniform({1, ..., T}) (as indices 0..T-1) and the noise.
        main.train draws them for the whole batch, so that under torchrun every process draws the same and keeps
        its own rows; loss() draws them itself when given none."""
        t = torch.randint(0, self.T, (x0.shape[0],), device=x0.device)           # line 3
        return {"t": t, "eps": self.noise_like(x0, t)}                             # line 4

    def per_image_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Alg. 1 line 5, || target - prediction ||^2 as the mean over each image's pixels: (B,)."""
        return (target - prediction).square().flatten(1).mean(1)

    def loss_weight(self, t: Tensor) -> Tensor | float:
        """The weight of each image's loss (1: the papers' plain regression)."""
        return 1.0

    def loss(self, x0: Tensor, t: Tensor | None = None, eps: Tensor | None = None, **cond) -> Tensor:
        """Algorithm 1 for a batch x0 (B, C, H, W) in [-1, 1]: the weighted mean over the batch of the network's
        error on target. t, eps: lines 3-4, drawn here unless given. cond goes to the network."""
        if t is None:
            drawn = self.draws(x0)                                                 # lines 3-4
            t, eps = drawn["t"], drawn["eps"]
        x_t = self.q_sample(x0, t, eps)
        per_image = self.per_image_loss(self.net(x_t, t, **cond), self.target(x0, t, eps))  # line 5
        return (self.loss_weight(t) * per_image).mean()

    def start(self, n: int, shape: tuple, generator=None, x_start: Tensor | None = None,
              t_start: int | None = None) -> tuple:
        """(x, index): x_T at index T - 1, or a given x_t at index t_start (a partial reverse process: SDEdit,
        Meng et al. 2021; AnoDDPM, Wyatt et al. 2022)."""
        if x_start is None:
            return self.x_T_like(torch.empty((n, *shape), device=self.device), generator), self.T - 1
        if t_start is None or not 0 <= t_start < self.T:
            raise ValueError(f"starting from a given x_t needs 0 <= t_start < T = {self.T}, got {t_start}")
        return x_start, t_start

    def timesteps(self, steps: int, top: int | None = None) -> list:
        """`steps` indices (at most those left) evenly spaced from top (default T - 1) down to 0: the "linear" tau
        of Song et al. Sec. 4.2, which every few-step sampler here walks."""
        top = self.T - 1 if top is None else top
        if steps < 1:
            raise ValueError(f"a sampler needs at least 1 step, got {steps}")
        return torch.linspace(top, 0, min(steps, top + 1)).round().long().unique_consecutive().tolist()

    @torch.no_grad()
    def inpaint(self, x0: Tensor, keep: Tensor, jump_length: int = 10, jump_count: int = 10, generator=None,
                on_step=None, **cond) -> Tensor:
        """RePaint (Lugmayr et al. 2022, arXiv:2201.09865), Algorithm 1 with the schedule of repaint_times:
        regenerate x0 (B, C, H, W) where keep (B, 1, H, W) is 0 and keep it where keep is 1. Each step down joins
        the known pixels, put at the next noise level by q_sample, with the process's reverse_step for the
        rest; each step back up is q_step. on_step(k, total) after each of the walk's steps."""
        x_t = self.x_T_like(x0, generator)                                          # line 1: x_T
        times = repaint_times(self.T, jump_length, jump_count)
        B, device = x0.shape[0], x0.device
        for k, (t_now, t_next) in enumerate(zip(times, times[1:]), 1):
            if t_next > t_now:                                                       # line 10: back up
                t = torch.full((B,), t_next - 1, device=device, dtype=torch.long)  # index of paper t_next
                x_t = self.q_step(x_t, t, self.noise_like(x_t, t, generator, step=True))
            else:
                t = torch.full((B,), t_now - 1, device=device, dtype=torch.long)   # index of paper t_now
                known = x0 if t_now == 1 else self.q_sample(x0, t - 1, self.noise_like(x0, t - 1, generator))
                unknown = self.reverse_step(x_t, t, generator, **cond)               # line 7
                x_t = keep * known + (1 - keep) * unknown                            # line 8
            if on_step is not None:
                on_step(k, len(times) - 1)
        return x_t


def repaint_times(T: int, jump_length: int, jump_count: int) -> list:
    """RePaint's resampling schedule (Lugmayr et al. 2022, Sec. 4.2), as the paper times visited from T
    down to 0: each block of jump_length steps down is walked jump_count times, going back up by the
    forward process between walks; the last block (ending at t = 0) is walked once.
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


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """One value per sample, v (B,), shaped (B, 1, ..., 1) to broadcast on x: images (B, C, H, W) or
    volumes (B, C, D, H, W) alike, by x's own rank."""
    return v.view(-1, *[1] * (x.dim() - 1))


def extract(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """a[t] for a (T,) schedule and (B,) indices, per_sample on x."""
    return per_sample(a[t], x)

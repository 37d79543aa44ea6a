# %% [markdown]
# # A guided tour: the forward process, a short training run, sampling and the reverse process
#
# Run it cell by cell (VS Code or Jupyter with jupytext open this file as a notebook), or at once:
# `python docs/tour.py`. Everything comes from the repo's own modules; nothing is copied here. It runs
# offline on the synthetic `shapes` data in about a minute on 2 CPU cores and writes into `tour_out/`
# (or `$TOUR_OUT`).

# %%
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.environ.get("TOUR_OUT", os.path.join(ROOT, "tour_out"))
STEPS = int(os.environ.get("TOUR_IMAGES", "1024"))  # training images for the short run
os.makedirs(OUT, exist_ok=True)

import torch  # noqa: E402

import figures  # noqa: E402
from ddpm import DDPM, SCHEDULES  # noqa: E402
from models import draw, model_from_checkpoint  # noqa: E402
from plumbing.checkpoints import load_checkpoint  # noqa: E402
from synthetic import make_shapes  # noqa: E402

# %% [markdown]
# ## 1. The forward process, Ho et al. eq. (4)
# x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Eight training images at t = 0, T/10, ..., T:
# by t = T nothing of the image is left.

# %%
x0 = make_shapes(n=8).images                     # (8, 1, 28, 28) in [-1, 1]
process = DDPM(torch.nn.Identity(), SCHEDULES["linear"](1000, (1e-4, 0.02)))
figures.save_forward_diffusion(process, x0, os.path.join(OUT, "forward_diffusion.png"),
                               torch.Generator().manual_seed(0))
print("alpha_bar at t = 1, 500, 1000:", [round(process.alpha_bar[i].item(), 4) for i in (0, 499, 999)])

# %% [markdown]
# ## 2. The schedules: how much signal is left at t
# Every schedule of `ddpm.SCHEDULES`, at T = 1000.

# %%
figures.save_schedules(1000, "linear", (1e-4, 0.02), os.path.join(OUT, "schedules.png"))

# %% [markdown]
# ## 3. A short training run: Algorithm 1, exactly as `python main.py DDPM` trains
# The training script itself, run as you would type it: one epoch on a few synthetic shapes (too few to
# draw good shapes: this shows the machinery).

# %%
run = os.path.join(OUT, "run")
command = [sys.executable, os.path.join(ROOT, "main.py"), "DDPM", "--dataset", "shapes", "--limit", str(STEPS),
           "--epochs", "1", "--eval-samples", "0", "--num-samples", "16", "--out", run]
if os.path.exists(os.path.join(run, "model.pth")):
    command.append("--overwrite")  # the tour's own run folder from an earlier pass
print(" ".join(command[1:]))
subprocess.run(command, cwd=ROOT, check=True)

# %% [markdown]
# ## 4. Sampling from the checkpoint, and the reverse process made visible
# DDIM in 50 steps; `on_step` sees x_t and the network's x0_hat (eq. 15) at every step, and keeps ten of them.

# %%
ckpt = load_checkpoint(os.path.join(run, "model.pth"))
model = model_from_checkpoint(ckpt, torch.device("cpu"))
kept, seen = [], []


def keep(i, x_t, x0_hat):  # every fifth of DDIM's 50 steps: ten of them
    seen.append(i)
    if len(seen) % 5 == 1:
        kept.append((i, x_t.clone(), x0_hat.clone()))


x = draw(model, 4, (1, 28, 28), sampler="ddim", steps=50, eta=1.0, generator=torch.Generator().manual_seed(1),
         on_step=keep)
figures.save_reverse_process(kept, x, model.T, os.path.join(OUT, "reverse_process.png"))
print("samples", tuple(x.shape), "in", round(x.min().item(), 2), "..", round(x.max().item(), 2))
print("wrote", ", ".join(sorted(os.listdir(OUT))), "in", OUT)

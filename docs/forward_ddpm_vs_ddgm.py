"""Make docs/forward_ddpm_vs_ddgm.png: the same MNIST digits noised by DDPM's Gaussian process and by
DDGM's Gamma process (theta_0 = 0.001, the default, and 0.1, visibly skewed), at t = 0, T/10, ..., T.

    python docs/forward_ddpm_vs_ddgm.py --data-dir data
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from data import load_dataset  # noqa: E402
from ddgm import DDGM  # noqa: E402
from ddpm import DDPM, linear_beta_schedule  # noqa: E402
from figures import forward_diffusion_grid, save_grid  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", default="data")
HERE = os.path.dirname(os.path.abspath(__file__))
parser.add_argument("--out", default=os.path.join(HERE, "forward_ddpm_vs_ddgm.png"))
args = parser.parse_args()
x0 = load_dataset("mnist", args.data_dir, train=False).images[:3]
beta = linear_beta_schedule(1000)
models = [DDPM(torch.nn.Identity(), beta), DDGM(torch.nn.Identity(), beta, theta_0=0.001),
          DDGM(torch.nn.Identity(), beta, theta_0=0.1)]
g = torch.Generator().manual_seed(0)
rows = [forward_diffusion_grid(m, x0[i:i + 1], g)[0] for i in range(len(x0)) for m in models]
save_grid(torch.cat(rows), args.out, nrow=11)
print(f"wrote {args.out}: rows per digit = DDPM, DDGM theta_0=0.001, DDGM theta_0=0.1")

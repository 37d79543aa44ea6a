"""How well a network knows x_0 at each noise level: python -m bench.noise_levels CHECKPOINT [CHECKPOINT ...]
Held-out images x_0 of the checkpoint's data are noised to x_t (Ho et al. eq. 4) at a few timesteps, and the
network's estimate x0_hat (eq. 15, unclipped, from the eps the samplers use) is compared with x_0: its mean
squared error beside the variance of x_0, the error of guessing the mean image, which any network should beat.
An eps network's x0_hat divides its error by sqrt(alpha_bar_t) (vpred.py), so at strong noise it can be far
worse than that guess; a stochastic sampler forgets such errors, a deterministic one (DDIM eta 0) keeps them in
the sample (docs/medical.md). Processes on a beta schedule only (DDPM, COND, VPRED). Nothing here is a test."""
import plumbing.preflight  # noqa: F401  (first, before torch: a bad OMP_NUM_THREADS ends here)

import sys

import torch

from data import load_dataset
from datatypes import DataError
from models import model_from_checkpoint
from plumbing.checkpoints import load_checkpoint
from plumbing.errors import Parser, run_script
from plumbing.settings import SEED_MAX


def x0_errors(model, x0: torch.Tensor, fractions: tuple, seed: int = 0, **cond) -> list:
    """[(index t, alpha_bar_t, mean squared error of x0_hat)] at t = fraction * (T - 1), eps drawn with seed."""
    rows, g = [], torch.Generator().manual_seed(seed)
    for f in fractions:
        t = torch.full((len(x0),), round(f * (model.T - 1)), dtype=torch.long)
        x_t = model.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        with torch.no_grad():
            x0_hat = model.predict_x0(x_t, t, model.predict_eps(x_t, t, **cond))
        rows.append((int(t[0]), model.alpha_bar[t[0]].item(), (x0_hat - x0).square().mean().item()))
    return rows


def run(args) -> None:
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        config, model = ckpt["config"], model_from_checkpoint(ckpt, torch.device("cpu"), path=path)
        if not model.has_beta_schedule:
            raise DataError(f"{path} is a {config['model']} model: only processes on a beta schedule (DDPM, COND, "
                            "VPRED) have the alpha_bar_t this compares at")
        held = load_dataset(config["dataset"], args.data_dir or config["data_dir"], train=False,
                            image_size=config["image_size"], channels=config.get("channels"),
                            data_path=config.get("data_path"), download=False)
        x0 = held.images[:args.n]
        cond = {}  # what the network is given beside x_t, as in main.train
        if config["cond"] == "class":
            cond["y"] = held.labels[:args.n]
        if config["cond"] == "mask":
            cond["mask"] = held.masks[:args.n]
        print(f"{path} ({config['model']}, {config['schedule']} schedule), {len(x0)} held-out images, variance of "
              f"x_0 {x0.var(0).mean().item():.3f}")
        print("| index t | alpha_bar_t | mean squared error of x0_hat |\n|---|---|---|")
        for t, alpha_bar, mse in x0_errors(model, x0, (1, 0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.05), args.seed, **cond):
            print(f"| {t} | {alpha_bar:.2e} | {mse:.3g} |")


def main(argv=None) -> None:
    p = Parser(prog="python -m bench.noise_levels", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="model.pth files of main.py (or shipped weights)")
    p.add_argument("--data-dir", help="the data's folder (default: the one the run was trained on)")
    p.add_argument("--n", type=int, default=64, help="held-out images")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = p.parse_args(argv)
    if not 1 <= args.n <= 10_000:
        p.error("--n must lie in 1..10000")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed must lie in 0..{SEED_MAX}")
    run_script(p, run, args)


if __name__ == "__main__":
    main(sys.argv[1:])

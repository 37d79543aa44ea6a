"""What every script needs to rebuild a trained model: the registries of processes and samplers, the model
from a config, and drawing samples by a sampler's name.

A checkpoint (model.pth) is a dict: model (the network's state dict), ema (the averaged weights and their
update count, or None), optimizer, epoch, config (everything needed to rebuild the model, see build_model),
losses and metrics. main.py writes it; main.py --resume, sample.py, anomaly.py and metrics.py read it safely
with plumbing.checkpoints.load_checkpoint.
"""
import torch

from cond import ConditionalDDPM
from ddgm import DDGM
from ddpm import DDPM, SCHEDULES
from edm import EDM
from flow import FlowMatching
from plumbing.checkpoints import load_weights
from plumbing.errors import DataError
from plumbing.progress import Progress
from process import Process
from unet import NETWORKS
from vpred import VPredictionDDPM

# Processes by name (the MODEL of `python main.py MODEL`): a subclass of process.Process whose class attributes
# say what it supports (samplers, conditions, options). A new one is a file and a line here.
PROCESSES = {"DDPM": DDPM, "DDGM": DDGM, "COND": ConditionalDDPM, "VPRED": VPredictionDDPM, "FLOW": FlowMatching,
             "EDM": EDM}


# Samplers share one contract, which every script honours (main.py, sample.py --reverse, anomaly.py):
#   f(model, n, shape, *, steps, eta, generator, x_start=None, t_start=None, on_step=None, **cond) -> x_0
# n samples (n, *shape) in about [-1, 1]; steps, eta: DDIM's (IGNORES: those a sampler leaves unused); x_start,
# t_start: start from a given x_t at index t_start instead of x_T (anomaly.py); on_step(i, x_t, x0_hat) at every
# timestep index i visited; cond: the network's conditions (y, mask) only. A process names those it can use in its
# `samplers`.

def ancestral(model, n: int, shape: tuple, *, steps: int = 50, eta: float = 0.0, **kwargs) -> torch.Tensor:
    """Algorithm 2 (DDPM.sample), every step from T (or t_start); steps and eta are DDIM's, unused here."""
    return model.sample(n, shape, **kwargs)


def ddim(model, n: int, shape: tuple, *, steps: int = 50, eta: float = 0.0, **kwargs) -> torch.Tensor:
    """DDIM (DDPM.ddim_sample, Song et al. eq. 12 and 16) in `steps` steps (at most those left) with eta."""
    return model.ddim_sample(n, shape, steps=steps, eta=eta, **kwargs)


def euler(model, n: int, shape: tuple, *, steps: int = 50, eta: float = 0.0, **kwargs) -> torch.Tensor:
    """Euler's method on the process's ODE (model.euler_sample): flow matching's sampler, DDIM with eta = 0 for
    DDPM, Algorithm 1 of EDM without its correction; eta is unused."""
    return model.euler_sample(n, shape, steps=steps, **kwargs)


def heun(model, n: int, shape: tuple, *, steps: int = 50, eta: float = 0.0, **kwargs) -> torch.Tensor:
    """Heun's second-order method (EDM.heun_sample, Karras et al. Algorithm 1); eta is unused."""
    return model.heun_sample(n, shape, steps=steps, **kwargs)


SAMPLERS = {"ddim": ddim, "ddpm": ancestral, "euler": euler, "heun": heun}
IGNORES = {"ddpm": ("steps", "eta"), "euler": ("eta",), "heun": ("eta",)}  # what each leaves unused: refused


# The recipe: the defaults, each chosen by the time it takes to reach a quality on a 2-core CPU (README, "The
# defaults"). main.recipe applies them: an option given on the command line always wins, a resumed run keeps its own.
RECIPE = {"dataset": "mnist", "data_dir": "./data", "epochs": 12, "seed": 0, "net": "unet", "n_T": 1000,
          "betas": [1e-4, 0.02], "lr": 2e-3, "warmup": 100, "lr_decay": 0.0, "ema_decay": 0.9999, "min_snr": 5.0,
          "sample_steps": 50, "sample_eta": 1.0, "clip_x0": True, "sample_every": 1, "attention_res": [],
          "theta0": 1e-3, "loss": "l2", "p_uncond": 0.1, "guidance": 2.0, "augment": False}
# --paper-settings: Ho et al. 2020 Sec. 4 and App. B (Adam 2e-4, batch 128, 5000 warm-up steps, EMA 0.9999,
# Algorithm 2 with T = 1000 steps, the linear schedule). Their 35.7M-parameter network is out of a CPU's reach.
PAPER = {"lr": 2e-4, "min_snr": 0.0, "batch_size": 128, "warmup": 5000, "ema_decay": 0.9999, "sampler": "ddpm",
         "schedule": "linear"}
PROCESS_OPTIONS = ("min_snr", "theta0", "loss", "p_uncond", "guidance")  # each process names those it takes


def by_size(model: str, side: int, dims: int, epochs: int) -> dict:
    """The defaults that depend on the data and the run's length, as measured (docs/quality.md, medical.md,
    volumes.md): the U-Net's widths (n widths, n - 1 levels) for the smallest listed side at or above the image's,
    up to 32 px 24 48 48 from 12 epochs on (on MNIST, after 31-36 minutes it beats 16 32 32 trained as long; it
    trails it up to 23); its second design up to 64 px; the cosine schedule for DDPM and COND up to 32 px (fid
    25.45 against 29.29 after one MNIST epoch); on volumes a narrower, deeper U-Net, 8 volumes a batch, 8 a grid."""
    if dims == 3:
        return {"unet_widths": [8, 16, 32, 32], "unet_version": 1, "schedule": "linear", "batch_size": 8,
                "num_samples": 8}
    widths = next(w for s, w in ((32, [24, 48, 48] if epochs >= 12 else [16, 32, 32]), (64, [16, 32, 64, 64]),
                                 (512, [16, 32, 64, 128, 128])) if side <= s)
    return {"unet_widths": widths, "unet_version": 2 if side <= 64 else 1,
            "schedule": "cosine" if model in ("DDPM", "COND") and side <= 32 else "linear", "batch_size": 32,
            "num_samples": 64}


def build_model(config: dict) -> Process:
    """Network and diffusion process from a config (main.py's, or a checkpoint's). Unknown names, and settings a
    process or network cannot take (DDGM's Gamma noise for some theta_0 and T, sides the U-Net cannot halve),
    are one line (DataError)."""
    names = (("model", PROCESSES), ("net", NETWORKS),
             *((("schedule", SCHEDULES),) if getattr(PROCESSES.get(config["model"]), "has_beta_schedule", 0) else ()))
    for key, registry in names:
        if config.get(key) not in registry:
            raise DataError(f"its config has {key}={config.get(key)!r}, which is not one of {', '.join(registry)}: it "
                            "needs a process, network or schedule not registered here, or it was edited or damaged")
    try:
        return PROCESSES[config["model"]].from_config(NETWORKS[config["net"]](config), config)
    except (ValueError, KeyError) as e:  # the process's or the network's own check of its settings: bad input
        raise DataError(f"these settings cannot be built ({e})") from e


def model_from_checkpoint(ckpt: dict, device: torch.device, use_ema: bool = True, path: str = "the checkpoint"):
    """The model a checkpoint describes, in eval mode, with its EMA weights when present and use_ema."""
    try:
        model = build_model(ckpt["config"])
    except DataError as e:  # a checkpoint is input: a config no network or process here can take is one line
        raise DataError(f"{path}: {e}{'' if 'edited' in str(e) else '; the checkpoint was edited or damaged'}") from e
    weights = ckpt["ema"]["weights"] if use_ema and ckpt.get("ema") else ckpt["model"]
    load_weights(model.net, weights, path)
    return model.to(device).eval()


def sample_shape(config: dict) -> tuple:
    """(C, H, W) of one sample of a run, or (C, D, H, W) for a run on volumes (config["dims"] 3)."""
    return (config["in_channels"], *[config["image_size"]] * config.get("dims", 2))


def listed(names) -> str:
    """"A", "A and B", "A, B and C"."""
    names = list(names)
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "none"


def check_sampler(process, sampler: str, **given) -> None:
    """One line if the process (a class or a model) cannot draw with this sampler, or the name is unknown, or an
    option given ({"--steps": 10}, None: not given) is one the sampler ignores (IGNORES)."""
    if sampler not in SAMPLERS:
        raise DataError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)} (models.SAMPLERS)")
    if sampler not in process.samplers:
        name = process.__name__ if isinstance(process, type) else type(process).__name__
        raise DataError(f"{name} samples with {listed(process.samplers)} only, not {sampler}: "
                        f"use --sampler {process.samplers[0]}")
    unused = [o for o, v in given.items() if v is not None and o.split("-")[-1] in IGNORES.get(sampler, ())]
    if unused:
        raise DataError(f"{' and '.join(unused)} do{'es' * (len(unused) == 1)} not apply to --sampler {sampler}: "
                        f"leave {'them' if len(unused) > 1 else 'it'} out (Algorithm 2 takes every step; Euler and "
                        "Heun add no noise)")


@torch.no_grad()
def draw(model, n: int, shape: tuple, *, sampler: str, steps: int = 50, eta: float = 0.0, generator=None,
         x_start: torch.Tensor | None = None, t_start: int | None = None, on_step=None, progress: bool = False,
         **cond) -> torch.Tensor:
    """n samples (n, C, H, W) in about [-1, 1] by a sampler of SAMPLERS, called by its contract. progress: a bar
    over the timesteps the sampler visits, driven by on_step."""
    check_sampler(model, sampler)
    model.eval()
    if progress:
        top = model.T - 1 if t_start is None else t_start
        bar, then = Progress(top + 1, f"sampling ({sampler})", "steps"), on_step

        def on_step(i, x_t, x0_hat):
            bar.at(top + 1 - i)
            if then is not None:
                then(i, x_t, x0_hat)
    x = SAMPLERS[sampler](model, n, shape, steps=steps, eta=eta, generator=generator, x_start=x_start,
                          t_start=t_start, on_step=on_step, **cond)
    if progress:
        bar.close()
    return x
